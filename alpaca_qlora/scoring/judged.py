"""A model's verdicts (python -m alpaca_qlora.judge) beside the metrics and the people: what to trust of them.

A judge writes two lines per pair, one in each order (each file once on side A). For each judge (annotator
`judge:MODEL#HASH`):

- **One verdict per pair.** The same outcome in both orders (the same file wins, or tie both times) is the verdict;
  a verdict that changes with the order counts as a tie, and the report says how many did. A pair judged in one
  order only (a run cut short) keeps that order's verdict and is counted apart. A line given again for the same
  pair and order counts once, the later one.
- **Position consistency**: the share of the pairs judged in both orders whose verdict survives the swap. **Side A**:
  of the single-order verdicts that pick an answer, the share that pick the one shown first (0.5: no side preferred).
- **Length bias**: of the one-per-pair verdicts that pick an answer between two answers of different length (in
  characters), the share won by the longer one (0.5: length does not decide); the people's share on their own
  decisive choices beside it, when people's ratings are given.
- **Win rates and head to head** of the systems: scoring/human.py's (ties half), on the one-per-pair verdicts.
- **Agreement with people**, over the pairs that a person rated decisively (A or B: not tie, not both bad) and the
  judge judged, each person's rating an item: *accuracy* (the judge picks the person's winner; a judge's tie is a
  miss) and *Cohen's kappa* (`sklearn.metrics.cohen_kappa_score`; labels: which system won, or tie).

One annotator is one judge: its lines must all name one model, prompt format and precision (else one line, exit 2).

Every interval is a 95% percentile bootstrap over pairs (prompt and the two files): a resampled pair brings all of
its items; same --bootstrap and --seed as the metrics. Win rates resample prompts, as the people's do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..cli import fail
from ..rating.store import PairwiseRating
from .human import (
    FLAG, HeadToHead, Judgement, PairwiseInput, WinRate, cohen_kappa, head_to_head, match_file, rated_judgement,
    share_interval, win_rates,
)
from .metrics import interval, resample_counts

Pair = tuple[str, int, int]  # (prompt, first system, second system), first < second
JUDGE_IDENTITY = ("model", "format", "precision")  # what one annotator's lines must agree on


@dataclass(frozen=True)
class OrderVerdict:
    """One line of a judge, tied to the inputs: the pair, the system shown as answer A, and the outcome."""

    prompt: str
    first: int
    second: int
    on_a: int
    outcome: str  # "first", "second" or "tie"

    @property
    def pair(self) -> Pair:
        return self.prompt, self.first, self.second

    @property
    def picked_a(self) -> Optional[bool]:
        """Whether the answer shown as A won; None for a tie."""
        if self.outcome == "tie":
            return None
        return (self.first if self.outcome == "first" else self.second) == self.on_a


@dataclass
class Share:
    """k of n, with its bootstrap interval over pairs; value and interval None when n is 0."""

    n: int
    k: int
    value: Optional[float]
    ci95: Optional[tuple[float, float]]


@dataclass
class PeopleAgreement:
    n: int  # items: a person's decisive rating of a pair the judge judged
    n_pairs: int
    judge_ties: int  # items where the judge's verdict is a tie (misses)
    accuracy: Optional[float]
    accuracy_ci95: Optional[tuple[float, float]]
    cohen_kappa: Optional[float]  # None when undefined (one label only)
    cohen_kappa_ci95: Optional[tuple[float, float]]


@dataclass
class JudgeSummary:
    annotator: str
    labels: list[str]  # the systems (input files), as the report names them
    sources: list[str]
    judge: dict  # the `judge` field of its lines (model, template, format, precision)
    files: list[str]  # the ratings files its lines came from
    n_lines: int
    n_repeated: int  # lines replaced by a later one for the same pair and order
    n_unmatched: int  # lines comparing files that are not among the inputs
    n_pairs: int
    n_both_orders: int
    n_one_order: int
    n_swap_ties: int  # pairs whose verdict changed with the order: counted as ties
    outcomes: dict[str, int]  # one-per-pair verdicts: decisive, tie
    position_consistency: Share
    side_a: Share
    length_bias: Share
    n_equal_length: int  # decisive verdicts between answers of the same length (not in the length bias)
    people_length_bias: Optional[Share]
    win_rates: list[WinRate]
    head_to_head: list[HeadToHead]
    agreement: Optional[PeopleAgreement]
    lines: list[OrderVerdict] = field(default_factory=list, repr=False)


# ---------------------------------------------------------------- reading


def order_verdicts(ratings: list[PairwiseRating], inputs: list[str]) -> tuple[list[OrderVerdict], int]:
    """A judge's lines that compare two inputs, tied to them; and how many do not."""
    verdicts, unmatched = [], 0
    for rating in ratings:
        judgement = rated_judgement(rating, inputs)  # a judge's choice is A, B or tie: its outcome first, second or tie
        on_a = match_file(rating.sides["A"], inputs)
        if judgement is None or on_a is None:
            unmatched += 1
            continue
        verdicts.append(OrderVerdict(judgement.prompt, judgement.first, judgement.second, on_a, judgement.outcome))
    return verdicts, unmatched


def combine(verdicts: list[OrderVerdict]) -> tuple[dict[Pair, str], dict[Pair, bool]]:
    """One outcome per pair, and for each pair judged in both orders whether the two orders agree."""
    by_pair: dict[Pair, dict[int, OrderVerdict]] = {}
    for verdict in verdicts:
        by_pair.setdefault(verdict.pair, {})[verdict.on_a] = verdict  # per order, the last line read
    outcomes, consistent = {}, {}
    for pair, orders in by_pair.items():
        if len(orders) == 2:
            one, other = orders.values()
            consistent[pair] = one.outcome == other.outcome
            outcomes[pair] = one.outcome if consistent[pair] else "tie"
        else:
            [only] = orders.values()
            outcomes[pair] = only.outcome
    return outcomes, consistent


# ---------------------------------------------------------------- statistics


def share(items: list[tuple[Pair, bool]], resamples: int, seed: int) -> Share:
    """The share of True among the items, with its bootstrap interval over their pairs (a pair brings its items)."""
    if not items:
        return Share(0, 0, None, None)
    units = [pair for pair, _ in items]
    hits = [float(hit) for _, hit in items]
    pairs = sorted(set(units))
    counts = resample_counts(len(pairs), resamples, seed)
    k = int(sum(hits))
    return Share(len(items), k, k / len(items), share_interval(units, hits, pairs, counts))


def longer_won(outcomes: list[tuple[Pair, str]], answers: list[dict[str, str]]) -> tuple[list[tuple[Pair, bool]], int]:
    """Of the decisive outcomes between answers of different length (characters): whether the longer won; and how
    many decisive outcomes had answers of equal length. Pairs whose answers are not in the inputs are left out."""
    hits, equal = [], 0
    for pair, outcome in outcomes:
        prompt, first, second = pair
        if outcome not in ("first", "second") or prompt not in answers[first] or prompt not in answers[second]:
            continue
        lengths = len(answers[first][prompt]), len(answers[second][prompt])
        if lengths[0] == lengths[1]:
            equal += 1
            continue
        hits.append((pair, (outcome == "first") == (lengths[0] > lengths[1])))
    return hits, equal


def people_agreement(people: list[Judgement], outcomes: dict[Pair, str], resamples: int,
                     seed: int) -> Optional[PeopleAgreement]:
    """Accuracy and Cohen's kappa of the judge against each decisive rating of a person on a pair it judged."""
    items = [(j, (j.prompt, j.first, j.second)) for j in people if j.outcome in ("first", "second")]
    items = [(j, pair) for j, pair in items if pair in outcomes]
    if not items:
        return None
    theirs = [j.label for j, _ in items]  # a person's decisive choice: the system that won
    ours = [Judgement(*pair, outcomes[pair]).label for _, pair in items]  # the system that won, or tie
    hits = [float(a == b) for a, b in zip(theirs, ours)]
    units = [pair for _, pair in items]
    pairs = sorted(set(units))
    counts = resample_counts(len(pairs), resamples, seed)
    column = {pair: index for index, pair in enumerate(pairs)}
    weights = counts[:, [column[pair] for pair in units]]  # each resample's weight of each item: its pair's count
    value = cohen_kappa(theirs, ours)
    resampled = np.array([k for k in (cohen_kappa(theirs, ours, row) for row in weights) if k is not None])
    return PeopleAgreement(
        n=len(items), n_pairs=len(pairs), judge_ties=sum(text == "tie" for text in ours),
        accuracy=sum(hits) / len(hits), accuracy_ci95=share_interval(units, hits, pairs, counts),
        cohen_kappa=value, cohen_kappa_ci95=interval(resampled) if value is not None and resampled.size else None)


def summarise_judge(annotator: str, ratings: list[tuple[str, PairwiseRating]], pairwise: PairwiseInput,
                    answers: list[dict[str, str]], resamples: int, seed: int) -> JudgeSummary:
    latest: dict[tuple, PairwiseRating] = {}
    for _, rating in ratings:
        latest[rating.line_key] = rating
    lines, unmatched = order_verdicts(list(latest.values()), pairwise.inputs)
    outcomes, consistent = combine(lines)
    judgements = [Judgement(prompt, first, second, outcome, annotator)
                  for (prompt, first, second), outcome in outcomes.items()]
    length_hits, equal = longer_won(list(outcomes.items()), answers)
    people = [((j.prompt, j.first, j.second), j.outcome) for j in pairwise.judgements]
    n_systems = len(pairwise.systems)
    return JudgeSummary(
        annotator=annotator, labels=[system.label for system in pairwise.systems],
        sources=[system.source for system in pairwise.systems], judge=ratings[-1][1].judge, files=list(dict.fromkeys(path for path, _ in ratings)),
        n_lines=len(ratings), n_repeated=len(ratings) - len(latest), n_unmatched=unmatched,
        n_pairs=len(outcomes), n_both_orders=len(consistent), n_one_order=len(outcomes) - len(consistent),
        n_swap_ties=sum(not agree for agree in consistent.values()),
        outcomes={"decisive": sum(o != "tie" for o in outcomes.values()),
                  "tie": sum(o == "tie" for o in outcomes.values())},
        position_consistency=share(list(consistent.items()), resamples, seed),
        side_a=share([(v.pair, v.picked_a) for v in lines if v.picked_a is not None], resamples, seed),
        length_bias=share(length_hits, resamples, seed), n_equal_length=equal,
        people_length_bias=share(longer_won(people, answers)[0], resamples, seed) if people else None,
        win_rates=win_rates(judgements, n_systems, resamples, seed) if judgements else [],
        head_to_head=head_to_head(judgements, n_systems, resamples, seed) if judgements else [],
        agreement=people_agreement(pairwise.judgements, outcomes, resamples, seed),
        lines=lines,
    )


def check_one_judge(annotator: str, ratings: list[tuple[str, PairwiseRating]]) -> None:
    """An annotator's lines all name one model, prompt format and precision (the template is in its name): two
    folders of one name, or one judge at two precisions, would otherwise be pooled as one judge."""
    first_path, first = ratings[0]
    for path, rating in ratings[1:]:
        for name in JUDGE_IDENTITY:
            if rating.judge.get(name) != first.judge.get(name):
                fail(f"{FLAG} {path}:{rating.line}: annotator {annotator!r} judged with {name} "
                     f"{rating.judge.get(name)!r}, at {first_path}:{first.line} with {first.judge.get(name)!r}: two "
                     "judges under one name; score their ratings files in separate runs")


def summarise_judges(pairwise: PairwiseInput, resamples: int, seed: int) -> list[JudgeSummary]:
    """Every judge of the ratings files, in the order its first line was read."""
    by_annotator: dict[str, list[tuple[str, PairwiseRating]]] = {}
    for path, rating in pairwise.judge_ratings:
        by_annotator.setdefault(rating.annotator, []).append((path, rating))
    for annotator, ratings in by_annotator.items():
        check_one_judge(annotator, ratings)
    answers = [system.answers for system in pairwise.systems]
    return [summarise_judge(annotator, ratings, pairwise, answers, resamples, seed)
            for annotator, ratings in by_annotator.items()]
