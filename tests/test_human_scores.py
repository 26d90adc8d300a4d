"""Human pairwise statistics (alpaca_qlora.scoring.human) against small cases worked out by hand, and
evaluate_metrics.py --pairwise_ratings end to end. Offline: BERTScore on the packaged all-MiniLM-L6-v2."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import evaluate_metrics  # noqa: E402
from alpaca_qlora.cli import UserError  # noqa: E402
from alpaca_qlora.scoring.human import (  # noqa: E402
    Judgement, annotator_agreement, bradley_terry, head_to_head, match_file, metric_agreement, win_rates,
)
from alpaca_qlora.scoring.inputs import InputConfig  # noqa: E402
from alpaca_qlora.scoring.metrics import MetricConfig  # noqa: E402
from alpaca_qlora.scoring.report import OutputConfig  # noqa: E402

TOL = 1e-9


def J(prompt, first, second, outcome, annotator="ann"):
    return Judgement(str(prompt), first, second, outcome, annotator)


# ---------------------------------------------------------------- win rates


# Three systems, five choices:
#   p1: 0 vs 1 -> 0 wins          p1: 0 vs 2 -> tie        p2: 0 vs 1 -> 1 wins
#   p2: 1 vs 2 -> both bad        p3: 0 vs 2 -> 0 wins
# system 0: 1 + 1/2 + 0 + 1 = 2.5 of 4 = 0.625;  system 1: 0 + 1 + 1/2 = 1.5 of 3 = 0.5;  system 2: 1/2 + 1/2 + 0 = 1/3
THREE = [J(1, 0, 1, "first"), J(1, 0, 2, "tie"), J(2, 0, 1, "second"), J(2, 1, 2, "both_bad"), J(3, 0, 2, "first")]


def test_win_rates_count_ties_half():
    rates = win_rates(THREE, 3, resamples=500, seed=1)
    assert [(r.system, r.n, r.wins, r.losses, r.ties, r.both_bad) for r in rates] == [
        (0, 4, 2, 1, 1, 0), (1, 3, 1, 1, 0, 1), (2, 3, 0, 1, 1, 1)]
    assert [r.win_rate for r in rates] == pytest.approx([0.625, 0.5, 1 / 3], abs=TOL)
    for rate in rates:
        assert 0.0 <= rate.ci95[0] <= rate.win_rate <= rate.ci95[1] <= 1.0
    assert win_rates(THREE, 3, resamples=500, seed=1) == rates  # seeded


def test_win_rate_interval_of_a_clean_sweep_is_a_point():
    sweep = [J(p, 0, 1, "first") for p in range(6)]
    first, second = win_rates(sweep, 2, resamples=200, seed=0)
    assert (first.win_rate, first.ci95) == (1.0, (1.0, 1.0))
    assert (second.win_rate, second.ci95) == (0.0, (0.0, 0.0))


def test_head_to_head_counts_and_b_win_rate():
    rows = {(h.a, h.b): h for h in head_to_head(THREE, 3, resamples=200, seed=0)}
    assert (rows[0, 1].n, rows[0, 1].a_wins, rows[0, 1].b_wins, rows[0, 1].b_win_rate) == (2, 1, 1, 0.5)
    assert (rows[0, 2].n, rows[0, 2].a_wins, rows[0, 2].ties, rows[0, 2].b_win_rate) == (2, 1, 1, 0.25)
    assert (rows[1, 2].n, rows[1, 2].both_bad, rows[1, 2].b_win_rate) == (1, 1, 0.5)


# ---------------------------------------------------------------- Bradley-Terry (choix)


def test_bradley_terry_recovers_strengths_of_consistent_data():
    # A beats B 3:1, B beats C 3:1, A beats C 9:1: exactly P(A>B) = P(B>C) = 3/4, P(A>C) = 9/10, which a
    # Bradley-Terry model with strengths (ln 3, 0, -ln 3) gives (e.g. 1 / (1 + exp(-2 ln 3)) = 9/10): the MLE.
    data = ([J(i, 0, 1, "first") for i in range(3)] + [J(3, 0, 1, "second")]
            + [J(i, 1, 2, "first") for i in range(3)] + [J(3, 1, 2, "second")]
            + [J(i, 0, 2, "first") for i in range(9)] + [J(9, 0, 2, "second")])
    bt = bradley_terry(data)
    assert bt.exact and bt.systems == [0, 1, 2]
    assert bt.strengths == pytest.approx([math.log(3), 0.0, -math.log(3)], abs=1e-6)


def test_bradley_terry_counts_a_tie_as_half_a_win_each_way():
    # A: one win and one tie against B = 1.5 of 2 = 3/4; B likewise against C; A against C: 4 wins, 1 tie = 9/10.
    data = ([J(1, 0, 1, "first"), J(2, 0, 1, "tie"), J(1, 1, 2, "first"), J(2, 1, 2, "both_bad")]
            + [J(i, 0, 2, "first") for i in range(4)] + [J(9, 0, 2, "tie")])
    bt = bradley_terry(data)
    assert bt.exact
    assert bt.strengths == pytest.approx([math.log(3), 0.0, -math.log(3)], abs=1e-6)


def test_bradley_terry_is_regularised_when_a_system_never_loses():
    bt = bradley_terry([J(1, 0, 1, "first"), J(1, 1, 2, "first"), J(2, 0, 2, "first")])
    assert not bt.exact  # the maximum likelihood does not exist: strengths would run off to infinity
    assert bt.strengths[0] > bt.strengths[1] > bt.strengths[2] and sum(bt.strengths) == pytest.approx(0.0, abs=1e-9)


# ---------------------------------------------------------------- metric agreement (scipy kendalltau)


def test_kendall_tau_and_pairwise_accuracy_by_hand():
    # Ratings (choice sign h, metric difference d = first - second): (+1, 0.5), (-1, -0.2), (0, 0.3).
    # Both orientations: h = 1, -1, 0, -1, 1, 0; d = .5, -.2, .3, -.5, .2, -.3 (6 points, 15 pairs).
    # Pairs tied in h: 3 (one per value), none tied in d. Of the 12 others, discordant: (h=1, d=.2) with
    # (h=0, d=.3) and (h=0, d=-.3) with (h=-1, d=-.2); concordant: 10.  tau-b = (10 - 2) / sqrt(12 * 15).
    scores = {(0, "1"): 0.7, (1, "1"): 0.2, (0, "2"): 0.1, (1, "2"): 0.3, (0, "3"): 0.6, (1, "3"): 0.3}
    agreement = metric_agreement([J(1, 0, 1, "first"), J(2, 0, 1, "second"), J(3, 0, 1, "tie")], scores)
    assert agreement.kendall_tau == pytest.approx(8 / math.sqrt(180), abs=TOL)
    assert (agreement.n, agreement.n_decisive, agreement.pairwise_accuracy, agreement.metric_ties) == (3, 2, 1.0, 0)
    # which file is "first" does not matter: the same ratings with the systems the other way round
    swapped = {(1 - system, prompt): value for (system, prompt), value in scores.items()}
    flipped = metric_agreement([J(1, 0, 1, "second"), J(2, 0, 1, "first"), J(3, 0, 1, "tie")], swapped)
    assert flipped.kendall_tau == pytest.approx(agreement.kendall_tau, abs=TOL)


def test_pairwise_accuracy_counts_a_metric_tie_as_a_miss():
    # decisive: p1 metric agrees, p2 agrees, p4 metric ties (0.4 = 0.4): 2 of 3; p5 has no score: left out
    scores = {(0, "1"): 0.7, (1, "1"): 0.2, (0, "2"): 0.1, (1, "2"): 0.3, (0, "4"): 0.4, (1, "4"): 0.4, (0, "5"): 1.0}
    agreement = metric_agreement([J(1, 0, 1, "first"), J(2, 0, 1, "second"), J(4, 0, 1, "first"),
                                  J(5, 0, 1, "first")], scores)
    assert (agreement.n, agreement.n_decisive, agreement.metric_ties) == (3, 3, 1)
    assert agreement.pairwise_accuracy == pytest.approx(2 / 3, abs=TOL)


# ---------------------------------------------------------------- annotator agreement (sklearn cohen_kappa_score)


def test_cohen_kappa_by_hand():
    # alice: sys0, sys0, sys1, tie; bob: sys0, sys1, sys1, tie. Observed agreement 3/4. Marginals: alice 1/2, 1/4,
    # 1/4; bob 1/4, 1/2, 1/4; chance agreement 1/2 * 1/4 + 1/4 * 1/2 + 1/4 * 1/4 = 5/16.
    # kappa = (3/4 - 5/16) / (1 - 5/16) = (7/16) / (11/16) = 7/11.
    alice = [J(1, 0, 1, "first", "alice"), J(2, 0, 1, "first", "alice"), J(3, 0, 1, "second", "alice"),
             J(4, 0, 1, "tie", "alice")]
    bob = [J(1, 0, 1, "first", "bob"), J(2, 0, 1, "second", "bob"), J(3, 0, 1, "second", "bob"),
           J(4, 0, 1, "tie", "bob")]
    carol = [J(9, 0, 1, "first", "carol")]  # shares no pair with anyone: no row
    [row] = annotator_agreement(alice + bob + carol)
    assert (row.a, row.b, row.n_shared, row.raw_agreement) == ("alice", "bob", 4, 0.75)
    assert row.cohen_kappa == pytest.approx(7 / 11, abs=TOL)


def test_cohen_kappa_undefined_when_both_use_one_label():
    [row] = annotator_agreement([J(1, 0, 1, "first", "a"), J(1, 0, 1, "first", "b")])
    assert row.cohen_kappa is None and row.raw_agreement == 1.0


# ---------------------------------------------------------------- ratings file -> report


def test_match_file_by_path_then_unique_path_ending():
    inputs = ["/data/runs/base/gen.jsonl", "/data/runs/tuned/gen.jsonl"]
    assert match_file("/data/runs/tuned/gen.jsonl", inputs) == 1
    assert match_file("/home/me/runs/base/gen.jsonl", inputs) == 0  # the folder moved: base/gen.jsonl is unique
    assert match_file("/elsewhere/gen.jsonl", inputs) is None  # both end in gen.jsonl: ambiguous
    assert match_file("/x/other.jsonl", inputs) is None


SYSTEMS = {  # answers to 4 prompts; "ref" repeats the reference, the others do not
    "ref": ["Red, blue and yellow.", "Paris is the capital of France.", "Joyful and glad.", "Water boils at 100 C."],
    "near": ["Red and blue.", "The capital is Paris.", "Glad.", "It boils at 100 degrees."],
    "off": ["Green.", "London.", "Sad.", "Ice."],
}
REFERENCES = SYSTEMS["ref"]


def write_generations(folder: Path, name: str) -> Path:
    path = folder / f"{name}.jsonl"
    rows = [{"id": i, "instruction": f"Question {i}?", "input": "", "reference": ref, "prediction": pred,
             "settings": {"num_beams": 1}, "base_model": "tiny", "adapter": name, "precision": None,
             "new_tokens": 3, "seconds": 0.1} for i, (ref, pred) in enumerate(zip(REFERENCES, SYSTEMS[name]))]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def rating(prompt, a: Path, b: Path, choice: str, annotator="alice", files=None) -> dict:
    """A line as the page writes it: `a` shown on side A, `b` on side B."""
    files = files or sorted([str(a.resolve()), str(b.resolve())])
    sides = {"A": str(a.resolve()), "B": str(b.resolve())}
    return {"kind": "pairwise", "prompt_id": prompt, "files": files, "sides": sides, "choice": choice,
            "winner_file": sides.get(choice), "comment": "", "annotator": annotator, "time": "2026-01-01T00:00:00+00:00"}


def write_ratings(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def run_script(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "evaluate_metrics.py", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})


def test_script_reports_win_rates_bradley_terry_and_agreements(tmp_path):
    ref, near, off = (write_generations(tmp_path, name) for name in ("ref", "near", "off"))
    rows = [
        # alice: ref beats off everywhere (sides vary), ref vs near: 2 wins, 1 tie, 1 loss; near vs off: 3-1
        *[rating(p, ref, off, "A") for p in (0, 1)], *[rating(p, off, ref, "B") for p in (2, 3)],
        rating(0, ref, near, "A"), rating(1, near, ref, "B"), rating(2, ref, near, "tie"), rating(3, near, ref, "A"),
        rating(0, near, off, "A"), rating(1, off, near, "B"), rating(2, near, off, "A"), rating(3, off, near, "A"),
        # bob rates ref vs off too: agrees on 0 and 1, says both bad on 2, first says A then changes to B on 3
        rating(0, ref, off, "A", "bob"), rating(1, off, ref, "B", "bob"), rating(2, ref, off, "both_bad", "bob"),
        rating(3, ref, off, "A", "bob"), rating(3, off, ref, "B", "bob"),
        # a rating of a file that is not an input
        rating(0, ref, tmp_path / "elsewhere.jsonl", "A"),
    ]
    ratings = write_ratings(tmp_path / "human.jsonl", rows)
    out = tmp_path / "m"
    result = run_script(ref, near, off, "--output_dir", out, "--bertscore_model", "minilm", "--bootstrap", "200",
                        "--pairwise_ratings", ratings)
    assert result.returncode == 0, result.stderr
    assert "1 rating(s) compare files that are not among the inputs" in result.stderr
    human = json.loads((out / "metrics.json").read_text(encoding="utf-8"))["human_pairwise"]
    assert (human["n_ratings"], human["n_used"], human["n_unmatched"], human["n_repeated"]) == (18, 16, 1, 1)
    systems = {s["label"]: s for s in human["systems"]}
    # ref: alice 4 wins vs off + (2 wins, 1 tie, 1 loss) vs near; bob 3 wins + 1 both bad vs off -> 10 of 12
    # near: alice (1 win, 1 tie, 2 losses) vs ref + 3 wins, 1 loss vs off -> 4.5 of 8
    # off: alice 0 of 4 vs ref + 1 of 4 vs near, bob 0.5 of 4 -> 1.5 of 12
    assert systems["ref"]["win_rate"] == pytest.approx(10 / 12) and systems["ref"]["n"] == 12
    assert systems["near"]["win_rate"] == pytest.approx(4.5 / 8) and systems["near"]["n"] == 8
    assert systems["off"]["win_rate"] == pytest.approx(1.5 / 12) and systems["off"]["n"] == 12
    for system in systems.values():
        low, high = system["win_rate_ci95"]
        assert low <= system["win_rate"] <= high
    strengths = human["bradley_terry"]["strengths"]
    assert strengths["ref"] > strengths["near"] > strengths["off"]
    [pair] = human["annotator_agreement"]  # alice and bob share ref vs off on 4 prompts: equal on 0, 1, 3
    assert (pair["a"], pair["b"], pair["n_shared"], pair["raw_agreement"]) == ("alice", "bob", 4, 0.75)
    rouge = human["metric_agreement"]["rougeL_f1"]
    assert rouge["n"] == 16 and rouge["n_decisive"] == 14
    markdown = (out / "metrics.md").read_text(encoding="utf-8")
    assert "## Human pairwise choices (blind side by side)" in markdown and "Bradley-Terry" in markdown
    assert (out / "metrics.png").stat().st_size > 10_000


def test_ratings_of_no_input_and_foreign_files_are_refused(tmp_path):
    ref, off = write_generations(tmp_path, "ref"), write_generations(tmp_path, "off")
    near = write_generations(tmp_path, "near")
    only_near = write_ratings(tmp_path / "near_only.jsonl", [rating(0, near, tmp_path / "x.jsonl", "A")])
    config = MetricConfig(bertscore_model="minilm", bootstrap=50, no_progress=True)
    with pytest.raises(UserError, match="none of its 1 ratings compares two of the inputs"):
        evaluate_metrics.run([str(ref), str(off)], InputConfig(pairwise_ratings=str(only_near)), config,
                             OutputConfig(output_dir=str(tmp_path / "out1")))
    with pytest.raises(UserError) as error:  # a generations file is not a ratings file
        evaluate_metrics.run([str(ref), str(off)], InputConfig(pairwise_ratings=str(ref)), config,
                             OutputConfig(output_dir=str(tmp_path / "out2")))
    assert str(error.value).startswith(f"--pairwise_ratings {ref}:1: not a pairwise rating")
    bad_choice = rating(0, ref, off, "A")
    bad_choice["choice"] = "C"
    with pytest.raises(UserError, match=r"human.jsonl:2: field 'choice' must be one of A, B, tie, both_bad"):
        evaluate_metrics.run([str(ref), str(off)], InputConfig(pairwise_ratings=str(write_ratings(
            tmp_path / "human.jsonl", [rating(1, ref, off, "B"), bad_choice]))), config,
            OutputConfig(output_dir=str(tmp_path / "out3")))
    assert not any((tmp_path / name).exists() for name in ("out1", "out2", "out3"))
