"""Stop strings (--stop): an answer ends before the first stop string it holds, in every mode that generates (one
answer, batch mode, sweeps, the interactive /set, the chat page, the study), and the settings record them only when
given. Offline, on the CPU, with the tiny random Llama: each stop string is taken from a greedy answer generated
without one, so the answer it must give is known (the text before its first occurrence)."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # inference.py is a script at the repository root
    sys.path.insert(0, str(REPO))

import inference  # noqa: E402
from alpaca_qlora.cli import UserError  # noqa: E402
from alpaca_qlora.generation import generate  # noqa: E402
from alpaca_qlora.generation.settings import (  # noqa: E402
    GenerationSettings, parse_setting_value, parse_stop_text, resolve_settings, stop_text,
)
from alpaca_qlora.generation.stop_strings import StreamedUntilStop, cut_at_stop  # noqa: E402
from conftest import cli_error_line  # noqa: E402

# Greedy, and long varied answers: the tiny model repeats one token when greedy, the repetition knobs vary its text.
KNOBS = ["--repetition_penalty", "1.5", "--no_repeat_ngram_size", "2", "--max_new_tokens", "40"]
INSTRUCTION = "Name a color."


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def MODEL(tiny_model) -> str:
    return str(tiny_model)


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory, tiny_records) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in tiny_records[:10]))
    return path


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def cli_error(argv: list[str], capsys) -> str:
    return cli_error_line(inference.main, argv, capsys)


def stop_within(answer: str) -> tuple[str, str] | None:
    """A stop string taken from the middle third of a greedy answer, and the answer it must then give: the text
    before its first occurrence (which may come earlier than the middle), stripped. None if the answer has none
    usable: text must come before it and a dozen characters after it (so the answer ends tokens earlier), and it must
    pass the command line and /set as it is (no spaces at its ends, printable ASCII, not a flag, not `none` or JSON,
    no quote or '>' that the terminal session would read otherwise)."""
    for start in range(len(answer) // 3, 2 * len(answer) // 3):
        stop = answer[start : start + 4]
        first = answer.find(stop)
        before = answer[:first].strip()
        if (len(stop) == 4 and stop == stop.strip() and stop.isascii() and stop.isprintable() and not set(stop) & set('">')
                and not stop.startswith("-") and parse_stop_text(stop) == [stop] and before
                and len(answer) - (first + len(stop)) >= 12):
            return stop, before
    return None


def cut(prediction: str, stop: str) -> str:
    """What an answer generated with `stop` must be, given the same answer generated without it."""
    return prediction[: prediction.find(stop)].strip() if stop in prediction else prediction


# ---------------------------------------------------------------------------------------------
# The rule, its text forms and its streaming (no model)
# ---------------------------------------------------------------------------------------------
def test_an_answer_is_cut_before_the_earliest_stop_string():
    assert cut_at_stop("Paris.\n### Instruction:\nName a city.", ["### Instruction:"]) == "Paris.\n"
    assert cut_at_stop("one END two STOP three", ["STOP", "END"]) == "one "  # the earliest, whichever is listed first
    assert cut_at_stop("Paris.", ["###"]) == "Paris." and cut_at_stop("Paris.", []) == "Paris."
    # looked for after the answer's leading whitespace: a base model's answer often begins with a newline
    assert cut_at_stop("\n\nParis.\n\nBerlin.", ["\n\n"]) == "\n\nParis."
    assert cut_at_stop("  ### Instruction:", ["### Instruction:"]) == "  "


def test_a_streamed_answer_never_shows_a_stop_string():
    stream = StreamedUntilStop(["###"])
    shown = [stream.add(piece) for piece in ["Par", "is #", "#", "# Ins", "truction"]] + [stream.add("", end=True)]
    assert shown == ["Par", "is ", "", "", "", ""]  # "#" and "##" held back while they could begin "###"
    stream = StreamedUntilStop(["###"])
    assert [stream.add("a #"), stream.add("b"), stream.add(" c", end=True)] == ["a ", "#b", " c"]  # released
    stream = StreamedUntilStop(["###"])
    assert [stream.add("a #"), stream.add("", end=True)] == ["a ", "#"]  # the end shows what was held back
    stream = StreamedUntilStop([])
    assert [stream.add("a #"), stream.add("##", end=True)] == ["a #", "##"]  # no stop strings: every piece as it is


def test_stop_text_forms_and_the_resolved_settings():
    assert parse_setting_value("stop", "### Instruction:") == ["### Instruction:"]
    assert parse_setting_value("stop", '["\\n\\n", "###"]') == ["\n\n", "###"]  # JSON: several, or a newline
    assert parse_setting_value("stop", "[INST]") == ["[INST]"]  # not a JSON list of strings: the text itself
    assert parse_setting_value("stop", "none") is None
    for stop in (["### Instruction:"], ["\n\n"], ["a", "b"], [" Q:"], ["none"], ['["x"]'], ["[INST]"]):
        assert parse_stop_text(stop_text(stop)) == stop, stop
    assert stop_text(["### Instruction:"]) == "### Instruction:" and stop_text(["\n"]) == '["\\n"]' and stop_text(None) == ""
    # left out when not given, so a file written before --stop existed resumes; recorded, without repeats, when given
    assert "stop" not in resolve_settings(GenerationSettings())
    assert resolve_settings(GenerationSettings(stop=["###", "\n\n", "###"]))["stop"] == ["###", "\n\n"]
    with pytest.raises(UserError, match="--stop: a stop string must not be empty"):
        resolve_settings(GenerationSettings(stop=["###", ""]))


def test_a_json_stop_list_holds_strings_only():
    """'["a", 1]' was taken as one literal stop string; it is refused, naming what is not a string and how to write the
    text itself."""
    with pytest.raises(UserError) as refused:
        parse_setting_value("stop", '["a", 1]')
    assert str(refused.value) == ('stop=["a", 1]: a JSON list of stop strings holds strings only, found 1; to stop at '
                                  'this text itself, write it as a JSON list of one string: ["[\\"a\\", 1]"]')
    with pytest.raises(UserError, match="holds strings only, found null"):
        parse_stop_text("[null]")
    assert parse_stop_text('["[1]"]') == ["[1]"] and stop_text(["[1]"]) == '["[1]"]'  # the text itself, written as JSON
    assert parse_stop_text("[INST]") == ["[INST]"] and parse_stop_text("[]") == []  # not JSON; an empty list


def test_a_stop_string_holding_a_special_token_is_refused(MODEL):
    """Answers are decoded without special tokens, so such a stop string would never be found: refused once the
    tokenizer is known, as the model loads (job.load), before anything is generated or written."""
    from alpaca_qlora.generation import job
    from alpaca_qlora.generation.source import InferenceModelArguments, resolve_model_source
    from alpaca_qlora.generation.stop_strings import check_stop_strings
    from alpaca_qlora.modeling import load_tokenizer

    tokenizer = load_tokenizer(MODEL)
    check_stop_strings(["###", "\n\n", "s>"], tokenizer)  # ordinary text
    with pytest.raises(UserError) as refused:
        check_stop_strings(["###", "</s>"], tokenizer)
    assert str(refused.value) == ('--stop "</s>" is a special token of the tokenizer; answers are decoded without special '
                                  "tokens, so it would never be found (generation already ends at the end-of-sequence "
                                  "token, </s>)")
    with pytest.raises(UserError, match='--stop "x<unk>" holds <unk>, a special token of the tokenizer'):
        check_stop_strings(["x<unk>"], tokenizer)
    source = resolve_model_source(InferenceModelArguments(base_model=MODEL))
    with pytest.raises(UserError, match='--stop "</s>" is a special token'):
        job.load(source, [resolve_settings(GenerationSettings(stop=["</s>"]))])


def test_the_criterion_reads_a_tail_window_and_ends_where_the_whole_answer_does(MODEL):
    """StopAtStrings decodes each row's last tokens, not its whole answer, at every step; asked after every token as
    `generate` asks it (until it says a row has ended), it answers as reading the whole answer would: the leading
    whitespace rule and multi-byte characters cut at the window's start included."""
    import torch

    from alpaca_qlora.generation.stop_strings import StopAtStrings
    from alpaca_qlora.modeling import load_tokenizer

    tokenizer = load_tokenizer(MODEL)
    eos = tokenizer.eos_token_id
    answers = ["The apple is red. " * 12 + "### Instruction: name a colour",
               "\n" * 30 + "Paris.\nBerlin.",  # "\n" counts only after the leading newlines
               "été café école " * 8 + "fromage ### end"]
    for text in answers:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for stops in (["###"], ["### Instruction:"], ["\n"], ["red. The"], ["école fromage"], ["absent"]):
            criterion = StopAtStrings(stops, tokenizer, {eos}, 3)
            whole = [criterion.ended(ids[:n]) for n in range(1, len(ids) + 1)]
            asked = whole.index(True) + 1 if True in whole else len(ids)
            assert [criterion.ended_at_tail(ids[:n]) for n in range(1, asked + 1)] == whole[:asked], (text, stops)
            rows = torch.tensor([[7, 8, 9] + ids[:asked]])  # three prompt columns
            assert criterion(rows, None).tolist() == [whole[asked - 1]]
    assert StopAtStrings(["###"], tokenizer, {eos}, 0).window < len(tokenizer(answers[0])["input_ids"]) // 2


def test_the_repl_set_command_reads_stop_strings():
    from alpaca_qlora.generation.interactive import parse_set_command

    assert parse_set_command("stop=### Instruction:") == {"stop": ["### Instruction:"]}  # the rest of the line
    assert parse_set_command("top_k=10 temperature=0.7 stop=### Input: x") == {
        "top_k": 10, "temperature": 0.7, "stop": ["### Input: x"]}
    assert parse_set_command('stop=["\\n\\n", "###"]') == {"stop": ["\n\n", "###"]}
    assert parse_set_command("stop=none") == {"stop": None}
    assert parse_set_command("top_k=5") == {"top_k": 5}
    with pytest.raises(UserError, match="expected NAME=VALUE"):
        parse_set_command("stop ###")


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------
def test_extract_answer_counts_the_tokens_up_to_the_stop_string(tiny_model):
    from alpaca_qlora.modeling import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model))
    ids = tokenizer("a happy dog. ### Instruction: more", add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    answer = generate.extract_answer(ids + [eos], tokenizer, {eos}, ["###"])
    assert answer.text == "a happy dog."
    assert 0 < answer.new_tokens < len(ids)  # the token completing "###" is the last one counted
    assert "###" in tokenizer.decode(ids[: answer.new_tokens]) and "###" not in tokenizer.decode(ids[: answer.new_tokens - 1])
    assert generate.extract_answer(ids + [eos], tokenizer, {eos}) == generate.Answer(
        text="a happy dog. ### Instruction: more", new_tokens=len(ids) + 1)  # no stop strings: as before


def test_one_answer_and_the_repl_end_before_the_stop_string(MODEL, tmp_path, monkeypatch, capsys):
    """--instruction (one generate call) and the interactive session (streamed): the answer, the printed stream and
    the rating line end before the stop string; /set stop=none removes it."""
    capsys.readouterr()
    inference.main(["--base_model", MODEL, "--instruction", INSTRUCTION, *KNOBS])
    full = capsys.readouterr().out.removesuffix("\n")
    found = stop_within(full)
    assert found is not None, f"no stop string to take from the greedy answer {full!r}"
    stop, expected = found
    inference.main(["--base_model", MODEL, "--instruction", INSTRUCTION, *KNOBS, "--stop", stop])
    assert capsys.readouterr().out == expected + "\n"

    ratings = tmp_path / "ratings.jsonl"
    session = f"/set stop={stop}\n{INSTRUCTION}\n/rate 4\n/set stop=none\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(session))  # ends with EOF, like Ctrl-D
    inference.main(["--base_model", MODEL, *KNOBS, "--ratings_file", str(ratings)])
    out = capsys.readouterr().out
    [row] = read_lines(ratings)
    assert row["prediction"] == expected
    assert row["settings"] == {**resolve_settings(GenerationSettings(repetition_penalty=1.5, no_repeat_ngram_size=2,
                                                                     max_new_tokens=40)), "stop": [stop]}
    streamed = out.split("\n[1] ")[0].rsplit(">>> ", 1)[1]  # what the terminal showed of the answer
    assert streamed.strip() == expected and stop not in streamed
    labels = [line for line in out.splitlines() if "max_new_tokens=40" in line]  # /set prints the settings
    assert labels[0].endswith(f"stop={json.dumps([stop])}") and "stop=" not in labels[-1]


@pytest.fixture(scope="module")
def plain_run(MODEL, prompts_file, tmp_path_factory) -> tuple[Path, dict[str, dict], str, str]:
    """Greedy batch answers without --stop (10 prompts, batches of 5, in segments of 16 tokens), a stop string taken
    from one of them, and that line's key (its id as JSON)."""
    plain = tmp_path_factory.mktemp("plain") / "plain.jsonl"
    inference.main(["--base_model", MODEL, "--prompts_file", str(prompts_file), "--batch_size", "5", *KNOBS,
                    "--output_file", str(plain)])
    rows = {json.dumps(row["id"]): row for row in read_lines(plain)}
    found = [(key, stop_within(row["prediction"])) for key, row in rows.items()]
    key, (stop, _) = next(((key, usable) for key, usable in found if usable), (None, (None, None)))
    assert stop is not None, "no stop string to take from the greedy answers"
    return plain, rows, stop, key


def test_batch_answers_end_before_the_stop_string_and_record_it(MODEL, prompts_file, plain_run, tmp_path, capsys):
    plain, rows, stop, chosen = plain_run
    batch = ["--base_model", MODEL, "--prompts_file", str(prompts_file), "--batch_size", "5", *KNOBS]
    assert len(rows) == 10 and all("stop" not in row["settings"] for row in rows.values())  # as files before --stop
    stopped = tmp_path / "stopped.jsonl"
    inference.main(batch + ["--stop", stop, "--output_file", str(stopped)])
    cut_rows = {json.dumps(row["id"]): row for row in read_lines(stopped)}
    assert cut_rows.keys() == rows.keys()
    for key, row in rows.items():
        assert cut_rows[key]["prediction"] == cut(row["prediction"], stop), key
        assert cut_rows[key]["settings"] == {**row["settings"], "stop": [stop]}
        assert cut_rows[key]["new_tokens"] <= row["new_tokens"]
    assert cut_rows[chosen]["prediction"] != rows[chosen]["prediction"]
    assert cut_rows[chosen]["new_tokens"] < rows[chosen]["new_tokens"]  # it stopped generating there

    # Resume: the same commands add nothing; a file written without --stop is not resumed with it (nor the reverse).
    written = stopped.read_bytes(), plain.read_bytes()
    inference.main(batch + ["--stop", stop, "--output_file", str(stopped)])
    inference.main(batch + ["--output_file", str(plain)])
    assert (stopped.read_bytes(), plain.read_bytes()) == written
    assert "written with other generation settings" in cli_error(batch + ["--stop", stop, "--output_file", str(plain)], capsys)
    assert "written with other generation settings" in cli_error(batch + ["--output_file", str(stopped)], capsys)
    assert (stopped.read_bytes(), plain.read_bytes()) == written


def test_a_sweep_carries_the_stop_strings_to_every_setting(MODEL, prompts_file, plain_run, tmp_path, capsys):
    from alpaca_qlora.generation.batch import expand_grid, parse_sweep

    grid = expand_grid(GenerationSettings(max_new_tokens=5, stop=["###"]), parse_sweep("top_k=1,10 num_beams=1,2"))
    assert len(grid) == 4 and all(setting["stop"] == ["###"] for setting in grid)

    _, rows, stop, _ = plain_run
    output = tmp_path / "sweep.jsonl"
    inference.main(["--base_model", MODEL, "--prompts_file", str(prompts_file), "--batch_size", "5", *KNOBS,
                    "--stop", stop, "--sweep", "num_beams=1,2", "--output_file", str(output)])
    lines = read_lines(output)
    assert len(lines) == 20 and all(line["settings"]["stop"] == [stop] for line in lines)
    greedy = {json.dumps(line["id"]): line["prediction"] for line in lines if line["settings"]["num_beams"] == 1}
    assert greedy == {key: cut(row["prediction"], stop) for key, row in rows.items()}
    assert all(stop not in line["prediction"] for line in lines)  # beam search's answers too
    capsys.readouterr()
    assert "--sweep: stop is not swept; --stop applies to every setting of the sweep" in cli_error(
        ["--base_model", MODEL, "--prompts_file", str(prompts_file), "--output_file", str(tmp_path / "s.jsonl"),
         "--sweep", "stop=a,b"], capsys)


def test_an_empty_stop_string_is_refused_before_anything_is_written(MODEL, prompts_file, tmp_path, monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the flags were checked")

    monkeypatch.setattr(generate, "load_for_inference", refuse)
    batch = ["--base_model", MODEL, "--prompts_file", str(prompts_file), "--output_file", str(tmp_path / "out" / "g.jsonl")]
    message = "error: --stop: a stop string must not be empty (it would end every answer before it begins)"
    assert cli_error(batch + ["--stop", ""], capsys) == message
    assert cli_error(batch + ["--stop", "###", "--stop", ""], capsys) == message  # a repeated --stop adds its strings
    assert cli_error(["--base_model", MODEL, "--instruction", "Hi.", "--stop", ""], capsys) == message
    assert cli_error(batch + ["--stop"], capsys) == "error: --stop: expected at least one argument"
    assert not any(tmp_path.iterdir())  # no output file, no folder, no lock file


def test_a_repeated_stop_flag_adds_its_strings():
    from alpaca_qlora.generation.job import parse_args

    _, settings, _ = parse_args(["--base_model", "m", "--stop", "### Instruction:", "\n\n", "--stop=-x"])
    assert settings.stop == ["### Instruction:", "\n\n", "-x"]
    assert parse_args(["--base_model", "m"])[1].stop is None


# ---------------------------------------------------------------------------------------------
# The chat page and the study
# ---------------------------------------------------------------------------------------------
def test_the_chat_page_shows_and_reads_stop_strings(tmp_path):
    from alpaca_qlora.generation.interactive import RatingsFile
    from alpaca_qlora.rating.chat import ChatSession
    from alpaca_qlora.rating.checks import RequestError
    from alpaca_qlora.rating.pages import chat_page

    defaults = GenerationSettings(max_new_tokens=16, stop=["### Instruction:"])
    page = chat_page("tiny", defaults, "ratings.jsonl")
    assert '<input id="stop" name="stop" value="### Instruction:" placeholder="none"' in page  # the command line's
    assert 'value="[&quot;\\n\\n&quot;]"' in chat_page("tiny", GenerationSettings(stop=["\n\n"]), "r.jsonl")
    session = ChatSession(None, None, None, defaults, RatingsFile(tmp_path / "ratings.jsonl"))
    assert session.settings_from({"stop": "### Instruction:"})["stop"] == ["### Instruction:"]
    assert session.settings_from({"stop": '["\\n\\n", "###"]'})["stop"] == ["\n\n", "###"]
    assert "stop" not in session.settings_from({"stop": ""})  # the field emptied: no stop strings
    assert "stop" not in session.settings_from({"stop": "none"})
    with pytest.raises(RequestError, match="--stop: a stop string must not be empty"):
        session.settings_from({"stop": '["", "###"]'})


def test_the_study_passes_its_stop_strings_to_every_generation(tmp_path, monkeypatch):
    import yaml

    from alpaca_qlora.generation.job import parse_args
    from alpaca_qlora.study import steps
    from alpaca_qlora.study.config import load_study_config

    values = {"name": "s", "base_model": "m", "data_path": "d.json", "run_dir": "run", "results_dir": "results",
              "assets_dir": "assets", "budgets": [2], "stop": ["### Instruction:", "-- end"]}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(values))
    config = load_study_config(str(path), {})
    commands = []
    monkeypatch.setattr(steps, "run_job", lambda title, module, arguments, timings: commands.append(arguments))
    steps.generate(config, "base-none", ["--base_model", "m"], tmp_path / "prompts.jsonl", 3, timings=None)
    [arguments] = commands
    assert parse_args(arguments)[1].stop == ["### Instruction:", "-- end"]  # as inference.py reads the command
    path.write_text(yaml.safe_dump({**values, "stop": None}))
    config = load_study_config(str(path), {})
    assert steps.stop_arguments(config) == []
    path.write_text(yaml.safe_dump({**values, "stop": ["### Instruction:", ""]}))
    with pytest.raises(UserError, match="stop must be a list of non-empty texts"):
        load_study_config(str(path), {})
