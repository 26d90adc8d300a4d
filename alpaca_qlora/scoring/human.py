"""Human pairwise choices (the blind rating page) beside the metrics.

- **Win rate** of a system: its share of the comparisons it took part in, a win counting 1, a tie or "both bad"
  1/2 (neither answer preferred), a loss 0. Its 95% interval is a percentile bootstrap over prompts: a resampled
  prompt brings all of its ratings (every pair of systems, every annotator). Same --bootstrap and --seed as the
  metrics.
- **Bradley-Terry strengths** (more than two systems): `choix.ilsr_pairwise` on the choices, where a tie (or both
  bad) counts half a win each way: each decisive choice enters twice, a tie once in each direction. The estimate
  is the exact maximum likelihood when every system can be reached from every other through wins (the comparison
  graph is strongly connected, scipy's `connected_components`); otherwise it is regularised (alpha 0.01) and the
  report says so. Strengths are log-scale, mean 0: P(i beats j) = 1 / (1 + exp(s_j - s_i)).
- **Metric agreement** with the humans, from each answer's per-sample metric (sentence BLEU, ROUGE-L F1,
  BERTScore F1): *pairwise accuracy*, the share of decisive choices (A or B) where the metric scores the chosen
  answer strictly higher (a metric tie counts as a miss), and *Kendall's tau-b* (`scipy.stats.kendalltau`) between
  the choice (+1 first file wins, 0 tie or both bad, -1 second wins) and the metric difference (first minus
  second), each rating entered in both orientations so the value does not depend on which file is called first.
- **Annotator agreement**: Cohen's kappa (`sklearn.metrics.cohen_kappa_score`) for every two annotators over the
  pairs both rated, on the outcome (which file won, tie, or both bad), with the raw share of equal outcomes.

A pair rated twice by the same annotator (two servers on one file) counts once, with the later choice.

--pairwise_ratings takes one file or several (people's and a judge's, say). A judge's lines (python -m
alpaca_qlora.judge: two per pair, one in each order) are kept apart from the people's: everything above is the
people's, and scoring/judged.py reports each judge beside them.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Optional

import numpy as np

from ..cli import fail
from ..rating.store import PairwiseRating, read_ratings
from .metrics import GroupScores, interval, resample_counts
from .inputs import Group

FLAG = "--pairwise_ratings"
TIE_SCORE = 0.5
BT_REGULARISATION = 0.01
AGREEMENT_METRICS = (("sentence_bleu", "sentence_bleu"), ("rougeL_f1", "rouge_l_f1"), ("bertscore_f1", "bertscore_f1"))


@dataclass(frozen=True)
class Judgement:
    """One human choice between the answers of two systems to one prompt (systems by index, first < second)."""

    prompt: str
    first: int
    second: int
    outcome: str  # "first", "second", "tie" or "both_bad"
    annotator: str = ""

    @property
    def first_score(self) -> float:
        return {"first": 1.0, "second": 0.0}.get(self.outcome, TIE_SCORE)

    @property
    def sign(self) -> int:
        """+1 the first system won, -1 the second, 0 neither."""
        return {"first": 1, "second": -1}.get(self.outcome, 0)

    @property
    def winner(self) -> Optional[int]:
        return {"first": self.first, "second": self.second}.get(self.outcome)

    @property
    def label(self) -> str:
        """The outcome as agreement compares it: the system that won ("system 3"), else the outcome (tie, both_bad)."""
        return {"first": f"system {self.first}", "second": f"system {self.second}"}.get(self.outcome, self.outcome)


# ---------------------------------------------------------------- results


@dataclass
class WinRate:
    system: int
    n: int  # comparisons it took part in
    wins: int
    losses: int
    ties: int
    both_bad: int
    win_rate: float
    ci95: tuple[float, float]


@dataclass
class HeadToHead:
    a: int
    b: int
    n: int
    a_wins: int
    b_wins: int
    ties: int
    both_bad: int
    b_win_rate: float  # b against a, ties half
    ci95: tuple[float, float]


@dataclass
class BradleyTerry:
    systems: list[int]
    strengths: list[float]
    exact: bool  # maximum likelihood without regularisation


@dataclass
class MetricAgreement:
    n: int  # ratings whose two answers both have the metric
    n_decisive: int
    pairwise_accuracy: Optional[float]
    metric_ties: int  # decisive ratings where the metric scores both answers the same (counted as misses)
    kendall_tau: Optional[float]


@dataclass
class AnnotatorAgreement:
    a: str
    b: str
    n_shared: int
    cohen_kappa: Optional[float]
    raw_agreement: float


# ---------------------------------------------------------------- the statistics


def _counts(judgements: list[Judgement], system: int) -> tuple[int, int, int, int]:
    wins = sum(j.winner == system for j in judgements)
    losses = sum(j.winner is not None and j.winner != system for j in judgements)
    ties = sum(j.outcome == "tie" for j in judgements)
    return wins, losses, ties, sum(j.outcome == "both_bad" for j in judgements)


def _bootstrap_share(judgements: list[Judgement], score, prompts: list[str], counts: np.ndarray) -> tuple[float, float]:
    """Percentile interval of sum(score) / n when prompts are resampled (rows of `counts`)."""
    return share_interval([j.prompt for j in judgements], [score(j) for j in judgements], prompts, counts)


def share_interval(units: list, scores: list[float], order: list, counts: np.ndarray) -> tuple[float, float]:
    """Percentile interval of sum(scores) / n when the units (prompts, pairs) are resampled: a resampled unit brings
    every score of its own. `order` lists the distinct units, one per column of `counts`."""
    position = {unit: index for index, unit in enumerate(order)}
    totals, sizes = np.zeros(len(order)), np.zeros(len(order))
    for unit, value in zip(units, scores):
        totals[position[unit]] += value
        sizes[position[unit]] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        resampled = (counts @ totals) / (counts @ sizes)
    resampled = resampled[np.isfinite(resampled)]
    return interval(resampled)


def win_rates(judgements: list[Judgement], n_systems: int, resamples: int, seed: int) -> list[WinRate]:
    """Each system's win rate (ties half) with its bootstrap interval over prompts; systems never rated are left out."""
    prompts = sorted({j.prompt for j in judgements})
    counts = resample_counts(len(prompts), resamples, seed)
    rates = []
    for system in range(n_systems):
        involved = [j for j in judgements if system in (j.first, j.second)]
        if not involved:
            continue

        def score(j: Judgement, system=system) -> float:
            return j.first_score if j.first == system else 1.0 - j.first_score

        rate = sum(score(j) for j in involved) / len(involved)
        rates.append(WinRate(system, len(involved), *_counts(involved, system), rate,
                             _bootstrap_share(involved, score, prompts, counts)))
    return rates


def head_to_head(judgements: list[Judgement], n_systems: int, resamples: int, seed: int) -> list[HeadToHead]:
    """Every two systems that were compared: counts, and b's win rate against a (ties half) with its interval."""
    prompts = sorted({j.prompt for j in judgements})
    counts = resample_counts(len(prompts), resamples, seed)
    rows = []
    for a, b in combinations(range(n_systems), 2):
        pair = [j for j in judgements if (j.first, j.second) == (a, b)]
        if not pair:
            continue
        a_wins, b_wins, ties, both_bad = _counts(pair, a)
        rate = sum(1.0 - j.first_score for j in pair) / len(pair)
        rows.append(HeadToHead(a, b, len(pair), a_wins, b_wins, ties, both_bad, rate,
                               _bootstrap_share(pair, lambda j: 1.0 - j.first_score, prompts, counts)))
    return rows


def bradley_terry(judgements: list[Judgement]) -> BradleyTerry:
    """choix's Bradley-Terry strengths of the systems that were compared (ties half a win each way)."""
    import choix
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    systems = sorted({j.first for j in judgements} | {j.second for j in judgements})
    index = {system: position for position, system in enumerate(systems)}
    data: list[tuple[int, int]] = []
    for j in judgements:
        first, second = index[j.first], index[j.second]
        if j.outcome == "first":
            data += [(first, second)] * 2
        elif j.outcome == "second":
            data += [(second, first)] * 2
        else:
            data += [(first, second), (second, first)]
    winners, losers = zip(*data)
    graph = csr_matrix((np.ones(len(data)), (losers, winners)), shape=(len(systems), len(systems)))
    exact = connected_components(graph, directed=True, connection="strong")[0] == 1
    strengths = choix.ilsr_pairwise(len(systems), data, alpha=0.0 if exact else BT_REGULARISATION)
    strengths = strengths - strengths.mean()
    return BradleyTerry(systems, [float(s) for s in strengths], bool(exact))


def metric_agreement(judgements: list[Judgement], scores: dict[tuple[int, str], float]) -> MetricAgreement:
    """Agreement of one metric (scores by (system, prompt)) with the human choices."""
    from scipy.stats import kendalltau

    scored = [j for j in judgements if (j.first, j.prompt) in scores and (j.second, j.prompt) in scores]
    differences = np.array([scores[(j.first, j.prompt)] - scores[(j.second, j.prompt)] for j in scored])
    signs = np.array([j.sign for j in scored], dtype=np.float64)
    decisive = signs != 0
    agree = np.sign(differences[decisive]) == signs[decisive]
    accuracy = float(agree.mean()) if decisive.any() else None
    tau = None
    if len(scored) >= 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # constant input: tau is undefined (nan), reported as None
            value = kendalltau(np.concatenate([signs, -signs]), np.concatenate([differences, -differences])).statistic
        tau = float(value) if np.isfinite(value) else None
    return MetricAgreement(len(scored), int(decisive.sum()), accuracy,
                           int((differences[decisive] == 0).sum()), tau)


def cohen_kappa(a: list[str], b: list[str], weights: Optional[np.ndarray] = None) -> Optional[float]:
    """Cohen's kappa of two raters' labels (sklearn's), each item weighted by `weights` if given (a bootstrap
    resample); None when it is undefined (one label used by both). Two annotators here, a judge and people in
    scoring/judged.py."""
    from sklearn.metrics import cohen_kappa_score

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one label used by both: kappa is undefined (nan), reported as None
        value = float(cohen_kappa_score(a, b, labels=sorted(set(a) | set(b)), sample_weight=weights))
    return value if np.isfinite(value) else None


def annotator_agreement(judgements: list[Judgement]) -> list[AnnotatorAgreement]:
    """Cohen's kappa of every two annotators over the pairs both rated."""
    outcomes: dict[str, dict[tuple[str, int, int], str]] = {}
    for j in judgements:
        outcomes.setdefault(j.annotator, {})[(j.prompt, j.first, j.second)] = j.label
    rows = []
    for a, b in combinations(sorted(outcomes), 2):
        shared = [key for key in outcomes[a] if key in outcomes[b]]
        if not shared:
            continue
        labels_a, labels_b = [outcomes[a][k] for k in shared], [outcomes[b][k] for k in shared]
        raw = sum(x == y for x, y in zip(labels_a, labels_b)) / len(shared)
        rows.append(AnnotatorAgreement(a, b, len(shared), cohen_kappa(labels_a, labels_b), raw))
    return rows


# ---------------------------------------------------------------- from the ratings file to the report


@dataclass
class PairwiseInput:
    """The ratings of --pairwise_ratings that compare two of the inputs: people's as judgements between input files,
    judges' as read (scoring/judged.py combines each judge's two orders)."""

    path: str  # the file(s) holding people's ratings
    systems: list[Group]  # one per input file, in command-line order
    judgements: list[Judgement]  # people's
    n_ratings: int  # people's
    unmatched: int
    repeated: int  # ratings replaced by a later one of the same annotator for the same pair
    choices: dict[str, int] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)  # the input files' absolute paths, as ratings name them
    judge_ratings: list[tuple[str, PairwiseRating]] = field(default_factory=list)  # (ratings file, a judge's line)


@dataclass
class PairwiseSummary:
    path: str
    labels: list[str]
    sources: list[str]
    n_ratings: int
    n_used: int
    unmatched: int
    repeated: int
    choices: dict[str, int]
    annotators: list[str]
    win_rates: list[WinRate]
    head_to_head: list[HeadToHead]
    bradley_terry: Optional[BradleyTerry]
    metric_agreement: dict[str, MetricAgreement]
    annotator_agreement: list[AnnotatorAgreement]


def match_file(rated: str, inputs: list[str]) -> Optional[int]:
    """The input a rated file is: the same absolute path, else the one input sharing the longest path ending with it
    (a folder moved or mounted elsewhere); None when there is no such input or two are equally close."""
    if rated in inputs:
        return inputs.index(rated)
    rated_parts = Path(rated).parts[::-1]

    def shared_ending(path: str) -> int:
        count = 0
        for mine, theirs in zip(Path(path).parts[::-1], rated_parts):
            if mine != theirs:
                break
            count += 1
        return count

    lengths = [shared_ending(path) for path in inputs]
    best = max(lengths, default=0)
    return lengths.index(best) if best > 0 and lengths.count(best) == 1 else None


def rated_inputs(rating: PairwiseRating, inputs: list[str]) -> Optional[tuple[int, int]]:
    """The two inputs a rating compares (indices, as its files are listed), or None when it compares no two."""
    first, second = (match_file(f, inputs) for f in rating.files)
    return None if first is None or second is None or first == second else (first, second)


def rated_judgement(rating: PairwiseRating, inputs: list[str]) -> Optional[Judgement]:
    """A rating (a person's, or a judge's line) tied to the two inputs it compares, first < second, its outcome in
    their terms ("first", "second", else the choice: tie, both_bad); None when it compares no two inputs."""
    indices = rated_inputs(rating, inputs)
    if indices is None:
        return None
    first, second = sorted(indices)
    winner = match_file(rating.winner_file, inputs) if rating.winner_file else None
    outcome = rating.choice if winner is None else ("first" if winner == first else "second")
    return Judgement(str(rating.prompt_id), first, second, outcome, rating.annotator)


def load_pairwise(paths: list[str] | str, inputs: list[str], per_input: list[list[Group]]) -> PairwiseInput:
    """Read and check the ratings file(s) and tie each rating to two of the inputs (before any scoring); every file
    must compare two of the inputs at least once."""
    paths = [paths] if isinstance(paths, str) else list(paths)
    resolved = [str(Path(p).resolve()) for p in inputs]
    people: list[PairwiseRating] = []
    people_files: list[str] = []
    judged: list[tuple[str, PairwiseRating]] = []
    for path in paths:
        ratings = read_ratings(path, FLAG)
        if not ratings:
            fail(f"{FLAG} {path}: no ratings in it")
        outside = sum(rated_inputs(rating, resolved) is None for rating in ratings)
        if outside == len(ratings):
            named = sorted({f for r in ratings for f in r.files})
            fail(f"{FLAG} {path}: none of its {len(ratings)} ratings compares two of the inputs (it rates "
                 f"{', '.join(named[:4])}{', ...' if len(named) > 4 else ''}); give those generation files as inputs")
        if outside:
            print(f"warning: {path}: {outside} rating(s) compare files that are not among the inputs (left out)",
                  file=sys.stderr)
        own = [rating for rating in ratings if not rating.is_judge]
        people += own
        people_files += [path] if own else []
        judged += [(path, rating) for rating in ratings if rating.is_judge]
    latest: dict[tuple[str, str, frozenset[str]], PairwiseRating] = {}
    for rating in people:
        latest[(rating.annotator, *rating.pair_key)] = rating
    judgements, unmatched, used_inputs = [], 0, set()
    choices = {choice: 0 for choice in ("A", "B", "tie", "both_bad")}
    for rating in latest.values():
        judgement = rated_judgement(rating, resolved)
        if judgement is None:
            unmatched += 1
            continue
        judgements.append(judgement)
        choices[rating.choice] += 1
        used_inputs.update((judgement.first, judgement.second))
    for _, rating in judged:
        used_inputs.update(rated_inputs(rating, resolved) or ())
    for index in sorted(used_inputs):
        if len(per_input[index]) != 1:
            fail(f"{FLAG} {', '.join(paths)}: rates {inputs[index]} as one system, but it holds "
                 f"{len(per_input[index])} groups (models or settings); blind rating compares files of one group each")
    return PairwiseInput(", ".join(people_files or paths), [groups[0] for groups in per_input], judgements, len(people),
                         unmatched, len(people) - len(latest), choices, resolved, judged)


def metric_scores(results: list[Optional[GroupScores]], attribute: str) -> dict[tuple[int, str], float]:
    """A metric's per-sample values by (system, prompt id)."""
    scores = {}
    for system, result in enumerate(results):
        if result is None:
            continue
        values = getattr(result.samples, attribute)
        for record, value in zip(result.group.records, values):
            scores[(system, record.id)] = float(value)
    return scores


def summarise_pairwise(pairwise: PairwiseInput, results: list[Optional[GroupScores]], resamples: int,
                       seed: int, with_metrics: bool = True) -> PairwiseSummary:
    """Every statistic of the module docstring, of the people's ratings; `results` are the inputs' scores in
    command-line order. Without reference metrics (`with_metrics` False) there is no metric agreement."""
    judgements, n_systems = pairwise.judgements, len(pairwise.systems)
    compared = {j.first for j in judgements} | {j.second for j in judgements}
    return PairwiseSummary(
        path=pairwise.path,
        labels=[group.label for group in pairwise.systems],
        sources=[group.source for group in pairwise.systems],
        n_ratings=pairwise.n_ratings,
        n_used=len(judgements),
        unmatched=pairwise.unmatched,
        repeated=pairwise.repeated,
        choices=pairwise.choices,
        annotators=sorted({j.annotator for j in judgements}),
        win_rates=win_rates(judgements, n_systems, resamples, seed),
        head_to_head=head_to_head(judgements, n_systems, resamples, seed),
        bradley_terry=bradley_terry(judgements) if len(compared) > 2 else None,
        metric_agreement={name: metric_agreement(judgements, metric_scores(results, attribute))
                          for name, attribute in AGREEMENT_METRICS} if with_metrics else {},
        annotator_agreement=annotator_agreement(judgements),
    )
