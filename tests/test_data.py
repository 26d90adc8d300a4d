"""Loading, validation, download and splitting of Alpaca-format data."""

from __future__ import annotations

import hashlib
import json

import pytest

from alpaca_qlora.cli import run_cli
from alpaca_qlora.data.records import ALPACA_DATA_SHA256, load_records, split_records
from alpaca_qlora.training.train import main as train_main
from conftest import run_script

GOOD = {"instruction": "Say hi.", "input": "", "output": "Hi."}

BROKEN_FILES = {
    "broken_json": ("data.json", '[{"instruction": "a", "input": "", "output": "b"},', "data.json:1: not valid JSON"),
    "not_a_list": ("data.json", json.dumps({"instruction": "a"}), "top level must be a JSON list of records, found dict"),
    "missing_key": ("data.json", json.dumps([GOOD, {"instruction": "a", "input": ""}]), "record 1: missing field 'output'"),
    "non_string": ("data.json", json.dumps([GOOD, GOOD, {"instruction": "a", "input": 3, "output": "b"}]), "record 2: field 'input' must be a string, found int"),
    "record_not_object": ("data.json", json.dumps([GOOD, ["x"]]), "record 1: expected an object"),
    "jsonl_broken_line": ("data.jsonl", json.dumps(GOOD) + "\n{oops\n", "data.jsonl:2: not valid JSON"),
    "jsonl_missing_key": ("data.jsonl", json.dumps(GOOD) + "\n" + json.dumps({"input": "", "output": ""}) + "\n", "record 1: missing field 'instruction'"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_FILES))
def test_broken_data_gives_one_line_error_exit_2_and_no_run_folder(case, tmp_path, capsys):
    name, text, expected = BROKEN_FILES[case]
    data = tmp_path / name
    data.write_text(text)
    output_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: train_main(["--data_path", str(data), "--output_dir", str(output_dir), "--base_model", "unused"]))
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err.strip()
    assert len(stderr.splitlines()) == 1 and expected in stderr and str(data) in stderr
    assert not output_dir.exists()


def test_training_script_reports_bad_data_without_traceback(tmp_path):
    data = tmp_path / "data.json"
    data.write_text(json.dumps([GOOD, {"instruction": "a", "input": "", "output": None}]))
    result = run_script("training_script.py", "--data_path", str(data), "--output_dir", str(tmp_path / "run"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"error: {data}: record 1: field 'output' must be a string, found NoneType"
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_empty_outputs_are_kept_and_counted(tmp_path):
    records = [GOOD, {"instruction": "Be silent.", "input": "", "output": ""}] * 5
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    split = split_records(load_records(str(path)), val_set_size=2, max_samples=None, seed=1)
    assert len(split.train) + len(split.val) == 10
    assert split.empty_outputs == 5


def test_split_and_subset_of_synthetic_records(tiny_data):
    records = load_records(str(tiny_data))
    assert len(records) == 400 and [r["id"] for r in records] == list(range(400))
    first = split_records(records, val_set_size=0.1, max_samples=200, seed=42)
    second = split_records(records, val_set_size=0.1, max_samples=200, seed=42)
    other_seed = split_records(records, val_set_size=0.1, max_samples=200, seed=43)
    assert [r["id"] for r in first.val] == [r["id"] for r in second.val]
    assert [r["id"] for r in first.train] == [r["id"] for r in second.train]
    assert [r["id"] for r in first.val] != [r["id"] for r in other_seed.val]
    assert len(first.val) == 20 and len(first.train) == 180
    assert not {r["id"] for r in first.val} & {r["id"] for r in first.train}
    assert split_records(records, 20, None, 42).empty_outputs == 4


def test_the_shipped_data_is_the_original_and_the_default(tmp_path, monkeypatch):
    """alpaca_data.json ships at the top level, byte-identical to Stanford Alpaca's (DATA_LICENSE beside it), and is
    what the default --data_path reads from any folder of a checkout: no download."""
    from alpaca_qlora.data import records as data

    assert hashlib.sha256(data.SHIPPED_DATA.read_bytes()).hexdigest() == ALPACA_DATA_SHA256
    assert "CC BY-NC 4.0" in (data.SHIPPED_DATA.parent / "DATA_LICENSE").read_text()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ALPACA_DATA_URL", "http://127.0.0.1:9/unreachable")  # a download would fail loudly
    assert len(load_records("alpaca_data.json")) == 52002
    assert not (tmp_path / "alpaca_data.json").exists()


def test_download_is_checked_against_the_pinned_sha256(tiny_data, tmp_path, monkeypatch, capsys):
    from alpaca_qlora.data import records as data

    monkeypatch.setattr(data, "SHIPPED_DATA", tmp_path / "not-shipped" / "alpaca_data.json")  # an installed copy
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ALPACA_DATA_URL", tiny_data.as_uri())
    monkeypatch.setattr(data, "ALPACA_DATA_SHA256", hashlib.sha256(tiny_data.read_bytes()).hexdigest())
    assert len(load_records("alpaca_data.json")) == 400
    assert (tmp_path / "alpaca_data.json").read_bytes() == tiny_data.read_bytes()
    (tmp_path / "alpaca_data.json").unlink()
    monkeypatch.setattr(data, "ALPACA_DATA_SHA256", "0" * 64)
    with pytest.raises(SystemExit):
        run_cli(lambda: load_records("alpaca_data.json"))
    assert "expected " + "0" * 64 in capsys.readouterr().err
    assert not (tmp_path / "alpaca_data.json").exists()


def test_split_and_subset_are_deterministic_and_disjoint(alpaca_json):
    records = load_records(str(alpaca_json))
    assert len(records) == 52002
    first = split_records(records, val_set_size=0.1, max_samples=500, seed=42)
    second = split_records(records, val_set_size=0.1, max_samples=500, seed=42)
    assert [r["id"] for r in first.val] == [r["id"] for r in second.val]
    assert [r["id"] for r in first.train] == [r["id"] for r in second.train]
    assert len(first.val) == 50 and len(first.train) == 450
    assert not {r["id"] for r in first.val} & {r["id"] for r in first.train}
    assert split_records(records, 2000, None, 42).empty_outputs == 28  # all of the original's empty outputs


def test_val_set_larger_than_data_is_a_user_error(tmp_path, capsys):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([GOOD] * 10))
    with pytest.raises(SystemExit):
        run_cli(lambda: train_main(["--data_path", str(path), "--output_dir", str(tmp_path / "run")]))
    assert "--val_set_size 2000 leaves no training records out of 10" in capsys.readouterr().err


@pytest.fixture
def installed_elsewhere(tmp_path, monkeypatch):
    """A copy of the package installed without the shipped alpaca_data.json beside it."""
    from alpaca_qlora.data import records as data

    monkeypatch.setattr(data, "SHIPPED_DATA", tmp_path / "not-shipped" / "alpaca_data.json")


def test_missing_default_data_is_downloaded_and_checked(alpaca_json, tmp_path, monkeypatch, installed_elsewhere):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ALPACA_DATA_URL", alpaca_json.as_uri())
    records = load_records("alpaca_data.json")
    assert len(records) == 52002
    assert hashlib.sha256((tmp_path / "alpaca_data.json").read_bytes()).hexdigest() == ALPACA_DATA_SHA256


def test_download_with_wrong_checksum_is_refused_and_not_saved(tmp_path, monkeypatch, capsys, installed_elsewhere):
    fake = tmp_path / "fake.json"
    fake.write_text(json.dumps([GOOD]))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ALPACA_DATA_URL", fake.as_uri())
    with pytest.raises(SystemExit):
        run_cli(lambda: load_records("alpaca_data.json"))
    assert "expected " + ALPACA_DATA_SHA256 in capsys.readouterr().err
    assert not (tmp_path / "alpaca_data.json").exists()


def test_offline_download_failure_says_how_to_get_the_data(tmp_path, monkeypatch, capsys, installed_elsewhere):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ALPACA_DATA_URL", (tmp_path / "nowhere.json").as_uri())
    with pytest.raises(SystemExit):
        run_cli(lambda: load_records("alpaca_data.json"))
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1 and "--data_path" in message and ALPACA_DATA_SHA256 in message
