"""Several data files in one run (data/mix.py): every record of every file once by default, a weighted draw with
--data_weights (the rule, over 10,000 draws), per-file field names, the held-out split and --max_samples as for one
file, what the run folder records about each file, and the bad options: one line, exit 2, nothing written."""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from pathlib import Path

import pytest

from alpaca_qlora.cli import UserError, run_cli
from alpaca_qlora.data.mix import changed_data_file, draw_weighted, mix_counts, parse_data_fields, per_file
from alpaca_qlora.data.records import split_order
from alpaca_qlora.run_folder import RunFolder
from alpaca_qlora.training.config import parse_training_config
from alpaca_qlora.training.train import check_resumed_split, load_split
from alpaca_qlora.training.train import main as train_main
from conftest import run_script, training_args

QA_FIELDS = {"instruction": "question", "input": "context", "output": "answer"}


def qa_rows(records: list[dict]) -> list[dict]:
    """Alpaca records under other field names: what --data_fields maps back."""
    return [{"question": r["instruction"], "context": r["input"], "answer": r["output"]} for r in records]


def write_files(folder: Path, tiny_records: list[dict]) -> tuple[Path, Path]:
    """alpaca.json (30 records, Alpaca's fields) and qa.jsonl (20 records, question/context/answer)."""
    alpaca, qa = folder / "alpaca.json", folder / "qa.jsonl"
    alpaca.write_text(json.dumps(tiny_records[:30]), encoding="utf-8")
    qa.write_text("".join(json.dumps(row) + "\n" for row in qa_rows(tiny_records[30:50])), encoding="utf-8")
    return alpaca, qa


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


# ---------------------------------------------------------------------------------------------
# The rule
# ---------------------------------------------------------------------------------------------
def test_weighted_draws_give_each_file_its_share_over_10000_draws():
    sizes, weights, total = [3000, 1000, 500], [0.5, 0.3, 0.2], 10_000
    val, train = draw_weighted(sizes, weights, 0, total, seed=11)
    counts = per_file(train, sizes)
    assert val == [] and len(train) == sum(counts) == total
    for count, weight in zip(counts, weights):
        share = weight / sum(weights)
        sigma = math.sqrt(total * share * (1 - share))
        assert abs(count - total * share) <= 4 * sigma  # what independent draws would give, at 4 sigma
        assert abs(count - total * share) < 1  # the rule itself: each file's share of the draws, rounded
    assert counts == mix_counts(weights, total) == [5000, 3000, 2000]
    # a file repeats as evenly as can be: 2000 draws of 500 records, each 4 times; 3000 of 1000, each 3 times;
    # 5000 of 3000, each once or twice
    times = Counter(train)
    assert {times[i] for i in range(4000, 4500)} == {4} and {times[i] for i in range(3000, 4000)} == {3}
    assert Counter(times[i] for i in range(3000)) == {1: 1000, 2: 2000}
    # the seed picks which records, never how many
    assert draw_weighted(sizes, weights, 0, total, seed=11) == (val, train)
    other = draw_weighted(sizes, weights, 0, total, seed=12)[1]
    assert per_file(other, sizes) == counts and other != train


def test_mix_counts_round_by_largest_remainder():
    assert mix_counts([2, 1], 40) == [27, 13]  # 26.67 and 13.33: the larger remainder gets the record left over
    assert mix_counts([1, 1], 5) == [3, 2]  # a tie: the first file
    assert mix_counts([0, 1, 3], 8) == [0, 2, 6]  # a weight of 0 gives nothing


def test_held_out_and_max_samples_mean_what_they_mean_for_one_file():
    # one file of weight 1: the subset and split of split_order, exactly
    for val_set_size, max_samples in ((0.1, None), (7, 50), (0, 80), (0.25, 120)):
        assert draw_weighted([120], [1.0], val_set_size, max_samples, seed=3) == split_order(120, val_set_size, max_samples, 3)
    # two files: the held-out records are --val_set_size of --max_samples, never drawn for training
    val, train = draw_weighted([60, 40], [1, 1], 0.1, 80, seed=5)
    assert len(val) == 8 and len(train) == 72 and per_file(train, [60, 40]) == [36, 36]
    assert not set(val) & set(train)


# ---------------------------------------------------------------------------------------------
# The options and the records they select (no model is read)
# ---------------------------------------------------------------------------------------------
def test_several_files_without_weights_are_every_record_once(tmp_path, tiny_records):
    alpaca, qa = write_files(tmp_path, tiny_records)
    options = ["--data_path", str(alpaca), str(qa), "--data_fields", json.dumps({str(qa): QA_FIELDS}),
               "--output_dir", str(tmp_path / "run")]
    split = load_split(parse_training_config(options + ["--val_set_size", "0"]))
    ids = [f"{alpaca}:{i}" for i in range(30)] + [f"{qa}:{i}" for i in range(20)]  # unique across the files
    assert [record["id"] for record in split.train] == [ids[i] for i in split_order(50, 0, None, 42)[1]] and not split.val
    by_id = {record["id"]: record for record in split.train}
    source = tiny_records[31]
    assert {key: by_id[f"{qa}:1"][key] for key in ("instruction", "input", "output")} == \
           {key: source[key] for key in ("instruction", "input", "output")}  # read through --data_fields
    assert split.sources["mix"].startswith("concatenated")
    assert [(f["path"], f["records"], f["weight"], f["train"], f["val"]) for f in split.sources["files"]] == [
        (str(alpaca), 30, None, 30, 0), (str(qa), 20, None, 20, 0)]

    # a held-out split and a subset: as from one file of the 50 records
    split = load_split(parse_training_config(options + ["--val_set_size", "10", "--max_samples", "40"]))
    val, train = split_order(50, 10, 40, 42)
    assert [r["id"] for r in split.val] == [ids[i] for i in val] and [r["id"] for r in split.train] == [ids[i] for i in train]


def test_the_config_file_form_and_one_path_saved_as_before(tmp_path):
    config_file = tmp_path / "run.yaml"
    config_file.write_text("data_path: [a.json, b.jsonl]\ndata_weights: [0.7, 0.3]\n"
                           "data_fields:\n  b.jsonl: {instruction: question, output: answer}\n")
    config = parse_training_config(["--config", str(config_file), "--output_dir", str(tmp_path / "run")])
    assert config.data.data_path == ["a.json", "b.jsonl"] and config.data.data_weights == [0.7, 0.3]
    assert parse_data_fields(config.data.data_fields, config.data.data_path) == {
        "b.jsonl": {"instruction": "question", "output": "answer"}}
    assert config.to_dict()["data"]["data_path"] == ["a.json", "b.jsonl"]
    one = parse_training_config(["--data_path", "a.json", "--output_dir", str(tmp_path / "run")])
    assert one.data.data_path == ["a.json"] and one.to_dict()["data"]["data_path"] == "a.json"  # run_config.json as before


def test_a_resume_refuses_a_data_file_changed_since_the_run_started(tmp_path, tiny_records):
    """The ids alone would let an edited file resume on other data: each file's sha256, recorded when the run started
    (of the very bytes parsed), is compared too, and the changed file is named."""
    alpaca, qa = write_files(tmp_path, tiny_records)
    config = parse_training_config(["--data_path", str(alpaca), str(qa), "--data_fields", json.dumps({str(qa): QA_FIELDS}),
                                    "--val_set_size", "5", "--output_dir", str(tmp_path / "run")])
    split = load_split(config)
    assert [f["sha256"] for f in split.sources["files"]] == [hashlib.sha256(p.read_bytes()).hexdigest() for p in (alpaca, qa)]
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    folder.write_info({"data": {"sources": split.sources}})
    folder.write_split(split.val, [record["id"] for record in split.train])
    check_resumed_split(folder, split)  # the same files: the run goes on

    rows = [json.loads(line) for line in qa.read_text().splitlines()]
    rows[4]["answer"] = "another answer"  # same records, same ids: other data
    qa.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    edited = load_split(config)
    assert [r["id"] for r in edited.train] == [r["id"] for r in split.train]
    assert changed_data_file(split.sources, edited.sources) == (
        str(qa), split.sources["files"][1]["sha256"], hashlib.sha256(qa.read_bytes()).hexdigest())
    with pytest.raises(UserError) as refused:
        check_resumed_split(folder, edited)
    assert str(refused.value).startswith(f"--resume_from_checkpoint: {qa} has changed since the run started (sha256 ")
    # a run that recorded no sha256 (a datasets hub id) compares the ids only
    assert changed_data_file({"files": [{**f, "sha256": None} for f in split.sources["files"]]}, edited.sources) is None


# ---------------------------------------------------------------------------------------------
# A weighted run end to end: what the run folder records
# ---------------------------------------------------------------------------------------------
def test_a_weighted_run_records_each_file_its_sha256_and_its_share(tmp_path, tiny_model, tiny_records):
    alpaca, qa = write_files(tmp_path, tiny_records)
    output_dir = tmp_path / "run"
    args = training_args(tiny_model, alpaca, output_dir, "--max_steps", "1", "--val_set_size", "5", "--max_samples", "45",
                         "--data_weights", "2", "1", "--data_fields", json.dumps({str(qa): QA_FIELDS}))
    at = args.index("--data_path")
    args[at + 1 : at + 2] = [str(alpaca), str(qa)]
    result = run_script(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (output_dir / "adapter_model.safetensors").is_file()

    info = json.loads((output_dir / "run_info.json").read_text())["data"]
    assert (info["train_records"], info["val_records"]) == (40, 5)  # 45 drawn, 5 of them held out
    files = info["sources"]["files"]
    assert [f["sha256"] for f in files] == [hashlib.sha256(p.read_bytes()).hexdigest() for p in (alpaca, qa)]
    assert [(f["path"], f["records"], f["weight"]) for f in files] == [(str(alpaca), 30, 2.0), (str(qa), 20, 1.0)]
    assert [f["train"] for f in files] == mix_counts([2, 1], 40) == [27, 13]
    assert sum(f["val"] for f in files) == 5 and info["sources"]["mix"].startswith("weighted")
    train_ids = json.loads((output_dir / "train_ids.json").read_text())
    assert sum(i.startswith(f"{alpaca}:") for i in train_ids) == 27 and sum(i.startswith(f"{qa}:") for i in train_ids) == 13
    config = json.loads((output_dir / "run_config.json").read_text())["data"]
    assert config["data_path"] == [str(alpaca), str(qa)] and config["data_weights"] == [2.0, 1.0]


# ---------------------------------------------------------------------------------------------
# Bad options: one line naming the flag (or the file, record and field), exit 2, nothing written
# ---------------------------------------------------------------------------------------------
def bad_qa(folder: Path) -> str:
    path = folder / "bad_qa.jsonl"
    path.write_text(json.dumps({"question": "Say hi.", "answer": "Hi."}) + "\n"
                    + json.dumps({"prompt": "Say hi.", "answer": "Hi."}) + "\n")
    return str(path)


BAD = [
    ("weights-count", lambda a, b, t: ["--data_path", a, b, "--data_weights", "1"],
     "--data_weights: 1 weight(s) for 2 --data_path file(s)"),
    ("weight-negative", lambda a, b, t: ["--data_path", a, b, "--data_weights", "1", "-1"],
     "--data_weights: the weight of {b} is -1.0"),
    ("weights-sum-zero", lambda a, b, t: ["--data_path", a, b, "--data_weights", "0", "0"],
     "--data_weights 0.0 0.0: the weights must sum to a positive number"),
    ("fields-unknown-file", lambda a, b, t: ["--data_path", a, b, "--data_fields", json.dumps({"c.jsonl": {"output": "x"}})],
     "--data_fields: c.jsonl is not one of the --data_path files"),
    ("fields-not-json", lambda a, b, t: ["--data_path", a, b, "--data_fields", "{b.jsonl"], "--data_fields: not valid JSON"),
    ("fields-unknown-name", lambda a, b, t: ["--data_path", a, b, "--data_fields", json.dumps({b: {"question": "q"}})],
     "unknown field 'question' (map instruction, input, output)"),
    ("field-absent-in-a-record", lambda a, b, t: ["--data_path", a, bad_qa(t), "--data_fields",
                                                  json.dumps({str(t / "bad_qa.jsonl"): {"instruction": "question", "output": "answer"}})],
     "bad_qa.jsonl: record 1: missing field 'question'"),
    ("same-file-twice", lambda a, b, t: ["--data_path", a, a], "is given twice"),
]


@pytest.mark.parametrize("case_id,build,expected", BAD, ids=[case[0] for case in BAD])
def test_bad_mix_options_are_one_line_exit_2_and_nothing_written(case_id, build, expected, tmp_path, tiny_model,
                                                                 tiny_records, capsys):
    alpaca, qa = write_files(tmp_path, tiny_records)
    argv = build(str(alpaca), str(qa), tmp_path)
    output_dir = tmp_path / "run"
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: train_main(["--base_model", str(tiny_model), *argv, "--output_dir", str(output_dir),
                                    "--val_set_size", "0", "--max_steps", "1"]))
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and err and err[-1].startswith("error: "), err
    assert "Traceback" not in "\n".join(err) and expected.format(b=qa) in err[-1], err[-1]
    assert snapshot(tmp_path) == before and not output_dir.exists()
