"""The teacher job (python -m alpaca_qlora.teacher): the parser and every filter on written cases, bad input
(one line, exit 2, nothing written), a run killed mid-way and resumed (no line lost or duplicated, the same pairs
as an uninterrupted run), and an image teacher (the tiny LLaVA) writing pairs about images."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from alpaca_qlora.teacher.filters import DuplicateFilter, FilterSettings, copied_share, first_failure, is_refusal
from alpaca_qlora.teacher.parse import clean_answer, parse_questions
from conftest import REPO_ROOT, run_script

POSTS = [
    {"id": f"post-{i}", "text": text, "label": label}
    for i, (text, label) in enumerate([
        ("The bakery on Elm Street sells fresh rye bread every morning before seven.", "allowed"),
        ("Click my link to win a free phone, only today, hurry now!", "remove"),
        ("Our chess club meets on Tuesdays in the school library at six.", "allowed"),
        ("The river trail is closed for repairs until the end of the month.", "allowed"),
        ("Buy followers cheap, thousands of accounts, message me for prices.", "remove"),
        ("The choir needs two more tenors for the winter concert in December.", "allowed"),
    ])
]
TEMPLATES = {"name": "test", "fixed_questions": ["Is this post allowed here?", "Who wrote this post and why?"]}


def teacher(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return run_script("-m", "alpaca_qlora.teacher", *args, env={"OMP_NUM_THREADS": "1"}, timeout=timeout)


def read_lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture()
def sources(tmp_path):
    posts = tmp_path / "posts.jsonl"
    posts.write_text("".join(json.dumps(p) + "\n" for p in POSTS))
    templates = tmp_path / "templates.yaml"
    templates.write_text(json.dumps(TEMPLATES))
    return posts, templates


# ---------------------------------------------------------------------------------------------
# The parser
# ---------------------------------------------------------------------------------------------
def test_parser_reads_numbered_bulleted_prefixed_and_json_questions():
    raw = ("Here are three questions:\n1. What does the post sell?\n2) Is the link safe?\n- Who posted it?\n"
           "Q: Why was it posted?\n**Question 5:** Does it break rule 2?\nThis line is no question.")
    parsed = parse_questions(raw, limit=10)
    assert parsed.questions == ["What does the post sell?", "Is the link safe?", "Who posted it?",
                                "Why was it posted?", "Does it break rule 2?"]
    assert parsed.error is None and parsed.skipped_lines == ["Here are three questions:", "This line is no question."]
    assert parse_questions('["Is it spam?", "Who wrote it?"]', limit=1).questions == ["Is it spam?"]
    assert parse_questions("1. Is it spam?\n2. is it spam?", limit=5).questions == ["Is it spam?"]  # repeated once


@pytest.mark.parametrize("raw", ["", "   \n ", "Sure! I like this post.", "[1, 2]", "{\"a\": 1}", "\x00\x01??", None])
def test_parser_never_crashes_and_says_what_it_expected(raw):
    parsed = parse_questions(raw, limit=3)
    if parsed.questions:  # "\x00\x01??" ends with a question mark: read as one
        assert parsed.error is None
    else:
        assert parsed.error in ("empty output",) or "expected one question per line" in parsed.error


def test_answer_is_cleaned_of_its_label_and_quotes():
    assert clean_answer('Answer: "Remove it: rule 2."') == "Remove it: rule 2."
    assert clean_answer("**A:** Allowed.") == "Allowed."
    assert clean_answer(None) == ""


# ---------------------------------------------------------------------------------------------
# Every filter
# ---------------------------------------------------------------------------------------------
SOURCE = "Click my link to win a free phone, only today, hurry now before the offer ends tonight!"


def pair(question="Is this post spam or not?", answer="Yes, it is spam under rule 2.", new_tokens=10):
    return {"instruction": question, "output": answer, "new_tokens": new_tokens}


@pytest.mark.parametrize("case, expected", [
    (pair(answer="   "), "empty"),
    (pair(new_tokens=64), "truncated"),
    (pair(answer="I'm sorry, but I cannot help with that."), "refusal"),
    (pair(answer="As an AI language model I have no opinion."), "refusal"),
    (pair(answer="Click my link to win a free phone, only today, hurry now"), "copy"),
    (pair(question="Spam?"), "length"),
    (pair(answer=" ".join(["word"] * 30)), "length"),
    (pair(), None),
])
def test_each_filter_drops_what_it_names(case, expected):
    settings = FilterSettings(max_answer_words=20)
    failure = first_failure(case, SOURCE, max_new_tokens=64, settings=settings)
    assert (failure[0] if failure else None) == expected


def test_copy_share_and_refusal_measures():
    assert copied_share("win a free phone", SOURCE) == 1.0
    assert copied_share("sunny weather is mild", SOURCE) == 0.0
    assert copied_share("I say: click my link to win", SOURCE) == pytest.approx(5 / 7)
    assert not is_refusal("The post cannot stay: it breaks rule 2.")


def test_near_duplicates_are_judged_by_rouge_l_against_kept_questions():
    per_source = DuplicateFilter(0.7, "source")
    assert per_source.check("Does this post break a rule?", "a") is None
    assert "ROUGE-L" in per_source.check("Does this post break any rule?", "a")  # F1 5/6 >= 0.7
    assert per_source.check("Does this post break any rule?", "b") is None  # another source
    assert per_source.check("Who is the author of the post?", "a") is None
    everywhere = DuplicateFilter(0.7, "all")
    assert everywhere.check("Does this post break a rule?", "") is None
    assert everywhere.check("Does this post break a rule?", "") is not None


# ---------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing written
# ---------------------------------------------------------------------------------------------
def test_bad_inputs_are_one_line_and_write_nothing(tiny_model, tiny_llava, tiny_images, sources, tmp_path):
    posts, templates = sources
    not_image = tmp_path / "images" / "fake.png"
    not_image.parent.mkdir()
    not_image.write_text("this is text, not a PNG")
    truncated = tmp_path / "truncated.png"  # its header reads; its pixels do not
    truncated.write_bytes(tiny_images[1].read_bytes()[:100])
    image_listing = tmp_path / "images.jsonl"
    image_listing.write_text("".join(json.dumps({"id": f"img-{i}", "image": str(path)}) + "\n"
                                     for i, path in enumerate([tiny_images[0], truncated, tiny_images[2]])))
    bert = tiny_bert(tiny_model, tmp_path / "bert")
    no_placeholder = tmp_path / "bad_templates.yaml"
    no_placeholder.write_text("question: 'Write questions about the text.'\n")
    encoder = tmp_path / "encoder"
    encoder.mkdir()
    (encoder / "config.json").write_text(json.dumps({"model_type": "distilbert", "vocab_size": 10, "dim": 8,
                                                     "n_layers": 1, "n_heads": 1, "hidden_dim": 8}))
    unreadable = tmp_path / "locked.txt"
    unreadable.write_text("a policy")
    unreadable.chmod(0)
    out = tmp_path / "out"
    base = ["--teacher", str(tiny_model), "--output_dir", str(out)]
    cases = {
        "missing source": (["--documents", str(tmp_path / "nope.jsonl")], "nope.jsonl: no such file"),
        "not an image": (["--images", str(not_image.parent)], "fake.png: not an image"),
        "not a generator": (["--teacher", str(encoder), "--documents", str(posts)], "is not a generator"),
        "BERT: an encoder with a causal LM class": (
            ["--teacher", str(bert), "--documents", str(posts)],
            f"--teacher {bert}: its config.json names BertForMaskedLM, which does not generate text (a causal LM or an "
            "image-text-to-text model does)"),
        "truncated image": (["--teacher", str(tiny_llava), "--images", str(image_listing)],
                            f"--images {image_listing}:2: field 'image': {truncated}: not an image (OSError: image file is truncated)"),
        "held out: every source": (["--documents", str(posts), "--heldout", "1000"],
                                   "--heldout 1000 holds out all 6 sources; pass a smaller count or fraction"),
        "held out: a fraction rounding to every source": (["--documents", str(posts), "--heldout", "0.95"],
                                                          "--heldout 0.95 holds out all 6 sources"),
        "template": (["--documents", str(posts), "--templates", str(no_placeholder)], "lacks the placeholder {source}"),
        "images, text teacher": (["--images", str(tmp_path / "nothing")], "--images"),
    }
    if os.geteuid() != 0:  # root reads any file
        cases["unreadable"] = (["--documents", str(unreadable)], "cannot read it")
    for name, (extra, message) in cases.items():
        result = teacher(*base, *extra)
        assert result.returncode == 2, (name, result.stderr[-2000:])
        assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, (name, result.stderr)
        assert not out.exists(), name


def tiny_bert(tiny_model, path):
    """A random BERT (an encoder: transformers maps 'bert' to BertLMHeadModel too) with the tiny Llama's tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=512)
    BertForMaskedLM(config).save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


# ---------------------------------------------------------------------------------------------
# Killed and resumed
# ---------------------------------------------------------------------------------------------
def test_killed_run_resumes_with_no_line_lost_or_duplicated(tiny_model, sources, tmp_path):
    posts, templates = sources
    argv = ["--teacher", str(tiny_model), "--documents", str(posts), "--templates", str(templates),
            "--max_new_tokens", "40", "--batch_size", "1", "--questions_per_source", "2", "--heldout", "2",
            "--teacher_prompt_template", "alpaca", "--min_answer_words", "0", "--max_question_words", "80"]
    out = tmp_path / "out"
    answers = out / "answers.generations.jsonl"
    command = [sys.executable, "-m", "alpaca_qlora.teacher", *argv, "--output_dir", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline and process.poll() is None:
        if answers.exists() and answers.read_text().count("\n") >= 3:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = answers.read_text().count("\n")
    assert 3 <= killed_at < 12 and not (out / "train.jsonl").exists()
    with answers.open("a") as handle:  # as if the kill had come in the middle of a line
        handle.write('{"id": "post-1/f0", "instruction": "half a li')

    resumed = teacher(*argv, "--output_dir", str(out))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "removed a half-written last line" in resumed.stdout
    whole = teacher(*argv, "--output_dir", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr[-3000:]

    lines = read_lines(answers)
    assert len(lines) == 12 and len({row["id"] for row in lines}) == 12  # 6 posts x 2 fixed questions, once each
    for name in ("train.jsonl", "heldout.jsonl", "dropped.jsonl", "unparsed.jsonl"):
        assert read_lines(out / name) == read_lines(tmp_path / "whole" / name), name
    report = json.loads((out / "filter_report.json").read_text())["counts"]
    assert report["sources"] == 6 and report["fixed_questions"] == 12 and report["pairs"] == 12
    assert report["kept"] + sum(report["dropped"].values()) == 12
    assert report["unparsed"] + (report["teacher_questions"] > 0) >= 6 or report["teacher_questions"] > 0
    assert len(read_lines(out / "unparsed.jsonl")) == report["unparsed"]
    for row in read_lines(out / "train.jsonl") + read_lines(out / "heldout.jsonl"):
        assert row["input"] in {p["text"] for p in POSTS} and row["provenance"]["teacher"] == str(tiny_model)
        assert row["provenance"]["settings"]["max_new_tokens"] == 40 and row["provenance"]["answer_template"]["name"] == "test"
    held = {row["source_id"] for row in read_lines(out / "heldout.jsonl")}
    assert not held & {row["source_id"] for row in read_lines(out / "train.jsonl")}

    again = teacher(*argv, "--output_dir", str(out), "--max_new_tokens", "41")  # other options: refused, unchanged
    assert again.returncode == 2 and "max_new_tokens" in again.stderr and len(read_lines(answers)) == 12


# ---------------------------------------------------------------------------------------------
# Images: an image-text teacher writes pairs about them
# ---------------------------------------------------------------------------------------------
def test_image_teacher_writes_pairs_about_images(tiny_llava, tiny_images, tmp_path):
    listing = tmp_path / "images.jsonl"
    listing.write_text("".join(json.dumps({"id": f"img-{i}", "image": str(path), "text": f"Post number {i}."}) + "\n"
                               for i, path in enumerate(tiny_images)))
    templates = tmp_path / "templates.yaml"
    templates.write_text(json.dumps({"name": "images", "fixed_questions": ["What does this image show?"]}))
    out = tmp_path / "qa"
    result = teacher("--teacher", str(tiny_llava), "--images", str(listing), "--templates", str(templates),
                     "--output_dir", str(out), "--max_new_tokens", "12", "--heldout", "2", "--min_answer_words", "0",
                     "--teacher_prompt_template", "chat", "--copy_min_words", "100")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "filter_report.json").read_text())["counts"]
    assert report["image_sources"] == 8 and report["fixed_questions"] == 8
    lines = read_lines(out / "answers.generations.jsonl")
    assert {row["image"] for row in lines} == {str(p.resolve()) for p in tiny_images}
    # a random teacher fills its budget: those answers are dropped (as empty, or else as truncated), and counted
    dropped = {d["id"]: d for d in read_lines(out / "dropped.jsonl")}
    assert len(dropped) == sum(report["dropped"].values()) and all(d["filter"] and d["why"] for d in dropped.values())
    for row in lines:
        if row["new_tokens"] >= 12:
            assert dropped[row["id"]]["filter"] == ("empty" if not row["prediction"].strip() else "truncated")
    kept = read_lines(out / "train.jsonl") + read_lines(out / "heldout.jsonl")
    assert len(kept) == report["kept"] and all(row["image"] and row["input"].startswith("Post number") for row in kept)


# ---------------------------------------------------------------------------------------------
# The moderation experiment's verdicts
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("answer, expected", [
    ("Verdict: allowed. It asks a question about the library.", "allowed"),
    ("Verdict: remove (R2). It advertises watches.", "R2"),
    ("**Verdict:** Remove (rule 3): it posts a phone number.", "R3"),
    ("This post breaks rule R4 because it encourages damage.", "R4"),
    ("The post does not break any rule.", "allowed"),
    ("It should be removed.", "remove"),
    ("A nice post about bread.", None),
    ("", None),
])
def test_verdicts_are_read_from_answers(answer, expected):
    from alpaca_qlora.teacher.moderation import parse_verdict

    assert parse_verdict(answer) == expected


def test_verdict_scores_are_accuracy_and_per_class_precision_recall():
    from alpaca_qlora.teacher.moderation import verdict_scores

    truth = ["allowed", "allowed", "R1", "R2", "R2"]
    scores = verdict_scores(truth, ["allowed", "R1", "R1", "R2", None])
    assert scores["accuracy"] == pytest.approx(3 / 5) and scores["no_verdict"] == 1
    assert scores["binary_accuracy"] == pytest.approx(3 / 5)  # a missing verdict is never right
    assert scores["per_class"]["R1"] == {"precision": 0.5, "recall": 1.0, "support": 1}
    assert scores["per_class"]["R2"] == {"precision": 1.0, "recall": 0.5, "support": 2}
    assert scores["per_class"]["allowed"]["recall"] == 0.5


def test_moderation_verdict_section_states_distribution_agreement_and_a_constant_verdict():
    from alpaca_qlora.teacher.moderation import verdict_section, verdict_summary

    truth = ["allowed", "allowed", "R2", "R3"]
    teacher = ["R1", None, "R2", "allowed"]
    base = [None, None, "allowed", "remove"]
    rows = [{"id": f"p{i}/f0", "post": f"p{i}", "truth": t, "teacher": a, "base": b, "tuned": "R1"}
            for i, (t, a, b) in enumerate(zip(truth, teacher, base))]
    train_rows = [{"id": "q/f0", "post": "q", "truth": "R4", "teacher": "R4"}]
    held = verdict_summary(rows, train_rows)["heldout"]
    assert held["tuned"]["agrees_with_teacher"] == 1 and held["base"]["agrees_with_teacher"] == 0  # None never agrees
    assert held["tuned"]["predicted"] == {"R1": 4} and held["base"]["predicted"] == {"allowed": 1, "no verdict": 2, "remove": 1}
    lines = verdict_section("Is it allowed?", rows, train_rows)
    assert "| accuracy (allowed vs remove) | 25% (1 of 4) | 25% (1 of 4) | 50% (2 of 4) |" in lines
    assert "| agreement with the teacher's verdict | (itself) | 0% (0 of 4) | 25% (1 of 4) |" in lines
    assert "| verdicts given: R1 | 1 | 0 | 4 |" in lines
    assert "| verdicts given: none (no verdict read) | 1 | 2 | 0 |" in lines
    assert ("tuned answers R1 to all 4 posts: its allowed-vs-remove accuracy is the share of posts labelled remove (2 of 4); "
            "its class accuracy is the share labelled R1 (0 of 4).") in lines
    assert not [line for line in lines if line.startswith(("teacher answers", "base answers"))]


# ---------------------------------------------------------------------------------------------
# The moderation bot, end to end on the tiny model (plumbing: a random model's verdicts mean nothing)
# ---------------------------------------------------------------------------------------------
SHIPPED = REPO_ROOT / "experiments" / "moderation"


def moderation_config(tiny_model, root, results) -> dict:
    return {
        "name": "moderation-tiny", "policy": str(SHIPPED / "policy.md"), "posts": str(SHIPPED / "posts.jsonl"),
        "templates": str(SHIPPED / "templates.yaml"), "teacher": str(tiny_model), "student": str(tiny_model),
        "run_dir": str(root / "run"), "results_dir": str(results), "max_new_tokens": 8,
        "generation_batch_size": 20,
        "teacher_options": {"questions_per_source": 1, "heldout": 0.3, "split_seed": 42, "teacher_prompt_template": "alpaca",
                            "min_answer_words": 0, "keep_truncated": True},  # a random model's answers: all cut off
        "training": {"max_steps": 2, "per_device_train_batch_size": 8, "max_seq_length": 512,
                     "val_set_size": 0.1,  # as the shipped config: not used, the held-out loss is on qa/heldout.jsonl
                     "save_strategy": "no", "eval_strategy": "no"},
        "bertscore_model": "minilm", "bootstrap": 50, "side_by_side": 1,
    }


def moderation(config_path, *extra: str, timeout: int = 900) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "alpaca_qlora.teacher.moderation", "--config", str(config_path), *extra]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def moderation_run(tiny_model, tmp_path_factory):
    """The experiment run once on the tiny model: (its config file, the completed process)."""
    root = tmp_path_factory.mktemp("moderation")
    path = root / "moderation.json"
    path.write_text(json.dumps(moderation_config(tiny_model, root, root / "results")))
    return path, moderation(path)


def test_moderation_experiment_runs_end_to_end_and_a_rerun_does_nothing_again(moderation_run):
    path, result = moderation_run
    assert result.returncode == 0, result.stderr[-3000:]
    root, results = path.parent, path.parent / "results"
    verdicts = json.loads((results / "verdicts.json").read_text())
    assert set(verdicts["heldout"]) == {"teacher", "base", "tuned"}
    posts = [json.loads(line) for line in (SHIPPED / "posts.jsonl").read_text().splitlines() if line.strip()]
    for scores in verdicts["heldout"].values():  # every held-out post judged by every system, none dropped
        assert 0 < scores["n"] < len(posts) and 0.0 <= scores["accuracy"] <= 1.0
        assert sum(scores["predicted"].values()) == scores["n"]
    assert len({scores["n"] for scores in verdicts["heldout"].values()}) == 1
    rows = read_lines(results / "verdict_rows.jsonl")
    for name in ("base", "tuned"):
        agree = sum(row[name] is not None and row[name] == row["teacher"] for row in rows)
        assert verdicts["heldout"][name]["agrees_with_teacher"] == agree
    report = (results / "report.md").read_text()
    assert "| agreement with the teacher's verdict | (itself) |" in report
    assert (results / "filter_report.md").is_file()
    assert json.loads((results / "metrics" / "metrics.json").read_text())["groups"]

    # the student's held-out loss: on qa/heldout.jsonl (whole posts it never trained on), the config's val_set_size unused
    qa, student = root / "run" / "qa", root / "run" / "student"
    heldout, train = read_lines(qa / "heldout.jsonl"), read_lines(qa / "train.jsonl")
    assert "[note] training.val_set_size (0.1) is not used" in result.stdout
    assert json.loads((student / "run_config.json").read_text())["data"]["val_data_path"] == str(qa / "heldout.jsonl")
    info = json.loads((student / "run_info.json").read_text())["data"]
    assert (info["train_records"], info["val_records"]) == (len(train), len(heldout))
    evaluation = json.loads((student / "eval_results.json").read_text())
    summary = json.loads((results / "student.json").read_text())
    held_posts = {row["source_id"] for row in heldout}
    assert not held_posts & {row["source_id"] for row in train}
    assert (summary["records"], summary["pairs"], summary["posts"]) == (len(heldout), len(heldout), len(held_posts))
    assert (summary["before"], summary["after"], summary["tokens"]) == (
        evaluation["before_training"]["eval_loss"], evaluation["after_training"]["eval_loss"],
        evaluation["after_training"]["eval_tokens"])
    assert (f"about the {len(held_posts)} held-out posts, which it never trained on (`qa/heldout.jsonl`, training's "
            f"--val_data_path: {len(heldout)} pairs, {summary['tokens']:,} answer tokens): "
            f"{summary['before']:.3f} before, {summary['after']:.3f} after 2 steps.") in report
    for name in ("base", "tuned"):  # the students' answers beside the report
        assert (results / "generations" / f"{name}.jsonl").read_bytes() == (root / "run" / "generations" / f"{name}.jsonl").read_bytes()

    before = {p: p.stat().st_mtime_ns for p in (root / "run").rglob("*") if p.is_file()}
    again = moderation(path, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    changed = [p for p, t in before.items() if p.exists() and p.stat().st_mtime_ns != t]
    generated = [p for p in changed if p.name.endswith(".generations.jsonl") or p.parent.name == "generations"
                 or p.suffix == ".safetensors"]
    assert not generated, generated  # nothing generated or trained again (the teacher's split is rewritten, the same)


def test_moderation_check_passes_untouched_and_fails_on_a_tampered_row(moderation_run, tiny_model, tmp_path):
    import shutil

    path, result = moderation_run
    assert result.returncode == 0, result.stderr[-3000:]
    untouched = moderation(path, "--check", timeout=300)
    assert untouched.returncode == 0 and "rebuilt from the committed files, identical" in untouched.stdout, untouched.stderr

    def tampered(change) -> subprocess.CompletedProcess:
        results = tmp_path / f"results-{len(list(tmp_path.iterdir()))}"
        shutil.copytree(path.parent / "results", results)
        rows = read_lines(results / "verdict_rows.jsonl")
        change(rows[0])
        (results / "verdict_rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        config = tmp_path / f"{results.name}.json"
        config.write_text(json.dumps(moderation_config(tiny_model, path.parent, results)))
        return moderation(config, "--check", timeout=300)

    first = read_lines(path.parent / "results" / "verdict_rows.jsonl")[0]
    other_class = "R1" if first["truth"] != "R1" else "R2"
    relabelled = tampered(lambda row: row.update(truth=other_class))
    assert relabelled.returncode == 1 and "report.md differs from its rebuild" in relabelled.stderr
    support = [line for line in relabelled.stdout.splitlines() if f"| {other_class} precision / recall (n=" in line]
    assert [line[0] for line in support] == ["-", "+"], relabelled.stdout  # the committed line, then the rebuilt one
    other_verdict = "R3" if first["tuned"] != "R3" else "R4"
    reverdicted = tampered(lambda row: row.update(tuned=other_verdict))
    assert reverdicted.returncode == 1
    assert f"verdict_rows.jsonl {first['id']}: tuned verdict '{other_verdict}', its answer reads {first['tuned']!r}" in reverdicted.stdout
