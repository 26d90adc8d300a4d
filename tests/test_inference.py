"""Generation job (inference.py): offline, on the CPU, with the tiny random Llama (stories260K where marked shared)."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # inference.py is a script at the repository root
    sys.path.insert(0, str(REPO))

import inference  # noqa: E402
from alpaca_qlora.cli import run_cli  # noqa: E402
from alpaca_qlora.data.tokenization import IGNORE_INDEX, tokenize_example  # noqa: E402
from alpaca_qlora.generation import generate  # noqa: E402
from alpaca_qlora.generation.settings import GenerationSettings, resolve_settings  # noqa: E402
from alpaca_qlora.generation.source import InferenceModelArguments as ModelArguments, resolve_model_source  # noqa: E402
from conftest import cli_error_line  # noqa: E402

LINE_KEYS = {"id", "instruction", "input", "reference", "prediction", "settings", "base_model", "adapter", "precision", "new_tokens", "seconds"}
RATING_KEYS = {"id", "instruction", "input", "prediction", "rating", "comment", "settings", "base_model", "adapter", "precision"}
SETTING_KEYS = {"top_k", "top_p", "temperature", "num_beams", "max_new_tokens", "repetition_penalty", "no_repeat_ngram_size", "do_sample", "seed"}

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def MODEL(tiny_model) -> str:
    """The base model folder the tests generate with."""
    return str(tiny_model)


@pytest.fixture(scope="module")
def base(MODEL):
    source = resolve_model_source(ModelArguments(base_model=MODEL))
    model, tokenizer = generate.load_for_inference(source)
    return model, tokenizer, source


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory, tiny_records) -> Path:
    records = tiny_records[:40]
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, MODEL, tiny_data) -> Path:
    """A short adapter trained here (plain LoRA: NF4 is slow on the CPU)."""
    from alpaca_qlora.training.train import main as train_main

    output = tmp_path_factory.mktemp("run") / "run"
    train_main([
        "--base_model", MODEL, "--data_path", str(tiny_data), "--max_samples", "40", "--val_set_size", "8",
        "--output_dir", str(output), "--max_steps", "4", "--per_device_train_batch_size", "8",
        "--learning_rate", "1e-2", "--save_steps", "1000", "--eval_strategy", "no", "--quantization", "none",
        "--max_seq_length", "256", "--report_to", "none",
    ])
    return output


def greedy(**changes) -> dict:
    return resolve_settings(GenerationSettings(**changes))


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def without_timing(rows: list[dict]) -> list[dict]:
    return sorted(({k: v for k, v in row.items() if k != "seconds"} for row in rows), key=lambda r: json.dumps(r, sort_keys=True))


# ---------------------------------------------------------------------------------------------
# Generation on the real model
# ---------------------------------------------------------------------------------------------
def test_once_upon_a_time_continues_as_documented(model_dir):
    """The pretrained stories260K continues its documented sample (../shared)."""
    model, tokenizer = generate.load_for_inference(resolve_model_source(ModelArguments(base_model=str(model_dir))))
    [answer] = generate.generate_answers(model, tokenizer, ["Once upon a time"], greedy(max_new_tokens=32))
    assert answer.text.startswith(", there was a little girl named Lily. She loved to play outside in the park.")
    assert answer.new_tokens == 32


def test_batch_of_mixed_lengths_equals_each_prompt_alone(base):
    model, tokenizer, source = base
    record = {"instruction": "Give three tips for staying healthy.", "input": "", "output": ""}
    prompts = ["Once upon a time", "Tom and his dog went to the park to play with a big red ball. Then",
               generate.prompt_for(record, source.prompt_template, tokenizer), "The sun"]
    settings = greedy(max_new_tokens=40)
    batched = generate.generate_answers(model, tokenizer, prompts, settings)
    alone = [generate.generate_answers(model, tokenizer, [p], settings)[0] for p in prompts]
    assert len({len(tokenizer(p)["input_ids"]) for p in prompts}) == len(prompts)
    assert batched == alone


def test_prompt_is_exactly_trainings_and_never_echoed(base):
    model, tokenizer, source = base
    record = {"instruction": "Name three primary colors.", "input": "Colors: red, {x}", "output": "Red, blue, yellow."}
    prompt = generate.prompt_for(record, "alpaca", tokenizer)
    example = tokenize_example(record, tokenizer, "alpaca", 512, train_on_inputs=False)
    n_prompt = sum(1 for label in example.labels if label == IGNORE_INDEX)
    assert example.input_ids[:n_prompt] == tokenizer(prompt)["input_ids"]
    assert prompt.endswith("### Response:")
    [answer] = generate.generate_answers(model, tokenizer, [prompt], greedy(max_new_tokens=30))
    assert "### Instruction" not in answer.text and "Name three primary colors" not in answer.text


def test_answer_is_cut_at_the_first_eos(base):
    _, tokenizer, _ = base
    ids = tokenizer("a happy dog", add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    answer = generate.extract_answer(ids + [eos] + ids + [tokenizer.pad_token_id] * 3, tokenizer, {eos})
    assert answer == generate.Answer(text="a happy dog", new_tokens=len(ids) + 1)
    assert generate.extract_answer(ids, tokenizer, {eos}).new_tokens == len(ids)


def test_every_flag_reaches_generate_unchanged(MODEL, base, monkeypatch, capsys):
    model, tokenizer, source = base
    calls = []
    original = model.generate

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "generate", spy)
    monkeypatch.setattr(generate, "load_for_inference", lambda _source: (model, tokenizer))
    flags = {"top_k": 7, "top_p": 0.9, "temperature": 0.6, "num_beams": 1, "max_new_tokens": 5,
             "repetition_penalty": 1.3, "no_repeat_ngram_size": 2, "do_sample": True}
    argv = ["--base_model", MODEL, "--instruction", "Say hi.", "--seed", "5"]
    for name, value in flags.items():
        argv += [f"--{name}", str(value)]
    inference.main(argv)
    assert len(calls) == 1 and {name: calls[0][name] for name in flags} == flags
    assert calls[0]["pad_token_id"] == tokenizer.pad_token_id and tokenizer.eos_token_id in calls[0]["eos_token_id"]
    # Beams with a sampling knob: beam sampling, the knob as given.
    calls.clear()
    inference.main(["--base_model", MODEL, "--instruction", "Say hi.", "--num_beams", "3", "--temperature", "0.7", "--max_new_tokens", "3"])
    assert (calls[0]["num_beams"], calls[0]["do_sample"], calls[0]["temperature"]) == (3, True, 0.7)
    # Greedy: the sampling knobs do not apply; they reach generate at their neutral values (not the model's own).
    calls.clear()
    inference.main(["--base_model", MODEL, "--instruction", "Say hi.", "--max_new_tokens", "3"])
    assert (calls[0]["do_sample"], calls[0]["top_k"], calls[0]["top_p"], calls[0]["temperature"]) == (False, 50, 1.0, 1.0)


def test_a_sweep_labels_each_distinct_decoding_once(capsys):
    from alpaca_qlora.generation.batch import expand_grid, parse_sweep

    grid = expand_grid(GenerationSettings(max_new_tokens=5), parse_sweep("top_k=1,10 do_sample=false,true num_beams=1,2"))
    # greedy and beam search ignore top_k: 2 of those combinations per beam width collapse into one
    assert len(grid) == 6 and len({json.dumps(g, sort_keys=True) for g in grid}) == 6
    assert sum(not g["do_sample"] for g in grid) == 2 and all(g["top_k"] is None for g in grid if not g["do_sample"])
    assert "the sweep's 8 combinations are 6 distinct decodings" in capsys.readouterr().out


def test_sampling_is_on_only_when_asked():
    assert greedy()["do_sample"] is False
    assert greedy(temperature=0.7)["do_sample"] is True
    assert greedy(top_p=0.9)["do_sample"] is True
    assert greedy(top_k=10, num_beams=4)["do_sample"] is True  # beam sampling
    assert greedy(num_beams=4, do_sample=True)["do_sample"] is True
    assert greedy(num_beams=4)["do_sample"] is False
    assert set(greedy()) == SETTING_KEYS
    # Without sampling the knobs do not apply: recorded as None, so equal decodings are equal settings.
    assert (greedy()["top_k"], greedy()["top_p"], greedy()["temperature"]) == (None, None, None)
    assert greedy(temperature=0.7)["top_k"] == 50  # sampling: the unset knobs take transformers' defaults


def test_a_knob_that_cannot_take_effect_is_refused():
    from alpaca_qlora.cli import UserError

    with pytest.raises(UserError, match="--top_k has no effect with --do_sample false"):
        greedy(top_k=10, do_sample=False)
    with pytest.raises(UserError, match="--temperature must be a finite number"):
        greedy(temperature=float("nan"))


def test_beam_sampling_temperature_changes_the_answers(base):
    """With beams, a sampling knob takes effect (beam sampling): two temperatures, same seed, other text."""
    model, tokenizer, source = base
    prompts = [generate.prompt_for(r, source.prompt_template, tokenizer) for r in
               ({"instruction": "Add 3 and 4.", "input": ""}, {"instruction": "Reverse the word.", "input": "apple"})]
    answers = {}
    for temperature in (0.3, 1.5):
        generate.seed_everything(7)
        answers[temperature] = generate.generate_answers(model, tokenizer, prompts, greedy(num_beams=2, temperature=temperature,
                                                                                             max_new_tokens=12))
    assert answers[0.3] != answers[1.5]


ALPACA_RECORDS = [
    {"instruction": "Give three tips for staying healthy.", "input": ""},
    {"instruction": "Name a colour.", "input": ""},
    {"instruction": "Tom and his dog went to the park to play with a big red ball. What did they play with?", "input": ""},
    {"instruction": "Reverse the word.", "input": "apple"},
    {"instruction": "Add the numbers.", "input": "3 and 4, then 5"},
]


def test_a_shared_preamble_is_computed_once_and_changes_no_answer(base):
    """Alpaca prompts begin with the same preamble: it is prefilled once per batch (shared_prefix.py), the rows keep
    their positions, and every greedy answer and next-token distribution equals the left-padded batch's."""
    from alpaca_qlora.generation.shared_prefix import MIN_SHARED_TOKENS, left_padded, prefix_shared_inputs, shared_length

    model, tokenizer, source = base
    for records in (ALPACA_RECORDS[:3], ALPACA_RECORDS[3:]):  # without and with an input: two preambles
        prompts = [generate.prompt_for(r, "alpaca", tokenizer) for r in records]
        token_ids = tokenizer(prompts)["input_ids"]
        shared = shared_length(token_ids)
        assert shared >= MIN_SHARED_TOKENS and all(ids[:shared] == token_ids[0][:shared] for ids in token_ids)
        pad = tokenizer.pad_token_id
        with torch.no_grad():
            inputs = prefix_shared_inputs(model, token_ids, pad, num_beams=1)
            assert inputs["past_key_values"].get_seq_length() == shared
            assert inputs["input_ids"].shape[1] == shared + max(len(ids) for ids in token_ids) - shared
            positions = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)  # as generate derives them
            with_prefix = model(input_ids=inputs["input_ids"][:, shared:], attention_mask=inputs["attention_mask"],
                                position_ids=positions[:, shared:], past_key_values=inputs["past_key_values"]).logits[:, -1]
            padded = left_padded(token_ids, pad, "cpu")
            padded = model(**padded, position_ids=(padded["attention_mask"].cumsum(-1) - 1).clamp(min=0)).logits[:, -1]
        torch.testing.assert_close(with_prefix, padded, rtol=0, atol=1e-5)
        settings = greedy(max_new_tokens=40)
        alone = [generate.generate_answers(model, tokenizer, [p], settings)[0] for p in prompts]
        assert generate.generate_answers(model, tokenizer, prompts, settings) == alone
    assert prefix_shared_inputs(model, token_ids, pad, num_beams=2).keys() == {"input_ids", "attention_mask"}


@pytest.mark.parametrize("sampled", [False, True])
def test_answers_generated_in_segments_equal_one_generate_call(base, sampled):
    """segments.py drops finished rows between segments of 16 tokens: every row's tokens equal those of one
    `generate` call over the whole batch (greedy; sampled with each row's own generator), rows ending at different
    steps (a token the first row writes early is made a stop token as well)."""
    from transformers import LogitsProcessorList

    from alpaca_qlora.generation.sampling import RowSeededSampling
    from alpaca_qlora.generation.segments import SEGMENT_TOKENS, generate_in_segments
    from alpaca_qlora.generation.shared_prefix import prefix_shared_inputs

    model, tokenizer, _ = base
    prompts = [generate.prompt_for(r, "alpaca", tokenizer) for r in ALPACA_RECORDS]
    # the tiny model repeats one token when greedy: the repetition knobs (which read each row's tokens so far, across
    # segments too) make rows of many tokens
    knobs = {"temperature": 1.0, "top_k": 40} if sampled else {"repetition_penalty": 1.5, "no_repeat_ngram_size": 2}
    settings = greedy(max_new_tokens=3 * SEGMENT_TOKENS + 5, **knobs)
    kwargs = generate.generate_kwargs(settings, tokenizer, model)
    token_ids = tokenizer(prompts)["input_ids"]
    sampler = lambda: RowSeededSampling.seeded(list(range(len(prompts))), "cpu", settings) if sampled else None  # noqa: E731
    with torch.no_grad():
        inputs = prefix_shared_inputs(model, token_ids, kwargs["pad_token_id"], 1)
        first = model.generate(**inputs, **kwargs, logits_processor=LogitsProcessorList([s for s in [sampler()] if s]))
    width = inputs["input_ids"].shape[1]
    row = first[0, width:].tolist()  # row 0 is to end in its second segment: at a token it has not written before
    extra_stop = next(token for i, token in enumerate(row) if i >= 18 and token not in row[:i])
    kwargs["eos_token_id"] = kwargs["eos_token_id"] + [extra_stop]
    stops = set(kwargs["eos_token_id"])
    with torch.no_grad():
        whole = model.generate(**prefix_shared_inputs(model, token_ids, kwargs["pad_token_id"], 1), **kwargs,
                               logits_processor=LogitsProcessorList([s for s in [sampler()] if s]))[:, width:].tolist()
        segmented = generate_in_segments(model, prefix_shared_inputs(model, token_ids, kwargs["pad_token_id"], 1), kwargs,
                                         stops, sampler())

    def until_stop(tokens):
        end = next((i for i, t in enumerate(tokens) if t in stops), len(tokens) - 1)
        return tokens[: end + 1]

    lengths = [len(until_stop(row)) for row in whole]
    assert SEGMENT_TOKENS < lengths[0] < max(lengths)  # rows end in different segments
    assert [until_stop(row) for row in segmented] == [until_stop(row) for row in whole]


def test_batch_sampling_obeys_top_k_and_temperature(MODEL, prompts_file, tmp_path):
    """The per-answer sampler draws from scores warped by the settings: top_k 1 is greedy whatever the temperature,
    and top_k 1 against 40 changes answers (until 2026-12-06 the knobs had no effect in batch mode)."""
    base = ["--base_model", MODEL, "--prompts_file", str(prompts_file), "--max_prompts", "10", "--max_new_tokens", "16",
            "--batch_size", "5"]
    outputs = {}
    for name, extra in (("greedy", []), ("top1", ["--top_k", "1", "--temperature", "3.0"]),
                        ("top40", ["--top_k", "40", "--temperature", "3.0"])):
        inference.main(base + extra + ["--output_file", str(tmp_path / f"{name}.jsonl")])
        outputs[name] = {row["id"]: row["prediction"] for row in read_lines(tmp_path / f"{name}.jsonl")}
    assert outputs["top1"] == outputs["greedy"]
    assert sum(outputs["top40"][i] != outputs["greedy"][i] for i in outputs["greedy"]) >= 5


def test_a_sampled_answer_is_the_same_in_any_batch(MODEL, prompts_file, tmp_path):
    """Batch mode seeds each sampled answer from the seed and the record's id: batch size 1 or 5, same answers;
    another seed, other answers."""
    argv = ["--base_model", MODEL, "--prompts_file", str(prompts_file), "--max_prompts", "10", "--max_new_tokens", "24",
            "--temperature", "1.0", "--top_k", "40"]
    outputs = {}
    for name, extra in (("one", ["--batch_size", "1"]), ("five", ["--batch_size", "5"]),
                        ("other_seed", ["--batch_size", "5", "--seed", "43"])):
        inference.main(argv + extra + ["--output_file", str(tmp_path / f"{name}.jsonl")])
        outputs[name] = {row["id"]: row["prediction"] for row in read_lines(tmp_path / f"{name}.jsonl")}
    assert len(outputs["one"]) == 10
    assert outputs["one"] == outputs["five"]
    assert sum(outputs["one"][i] != outputs["other_seed"][i] for i in outputs["one"]) >= 5


# ---------------------------------------------------------------------------------------------
# Flag checks: one line, exit code 2, before anything is loaded
# ---------------------------------------------------------------------------------------------
INVALID = [
    (["--temperature", "0"], "--temperature 0.0 with sampling"),
    (["--temperature", "-1", "--do_sample", "true", "--num_beams", "2"], "--temperature -1.0 with sampling"),
    (["--top_k", "-1"], "--top_k must be >= 0"),
    (["--top_p", "0"], "--top_p must be in (0, 1]"),
    (["--top_p", "1.5"], "--top_p must be in (0, 1]"),
    (["--num_beams", "0"], "--num_beams must be >= 1"),
    (["--max_new_tokens", "0"], "--max_new_tokens must be >= 1"),
    (["--repetition_penalty", "0"], "--repetition_penalty must be > 0"),
    (["--prompts_file", "x.jsonl"], "--instruction and --prompts_file exclude each other"),
    (["--sweep", "top_k=1,10"], "--sweep is for batch mode"),
    (["--rate"], "--rate and --ratings_file are for interactive mode"),
]


@pytest.fixture
def no_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the flags were checked")

    for name in ("load_for_inference", "load_base_model", "load_tokenizer"):
        monkeypatch.setattr(generate, name, refuse)


def cli_error(argv: list[str], capsys) -> str:
    return cli_error_line(inference.main, argv, capsys)


@pytest.mark.parametrize("flags,message", INVALID, ids=[" ".join(f) for f, _ in INVALID])
def test_invalid_flags_stop_before_loading(MODEL, flags, message, no_loading, capsys):
    assert message in cli_error(["--base_model", MODEL, "--instruction", "Hi."] + flags, capsys)


def test_invalid_batch_inputs_stop_before_loading(MODEL, no_loading, capsys, tmp_path, prompts_file):
    batch = ["--base_model", MODEL, "--prompts_file", str(prompts_file), "--output_file", str(tmp_path / "g.jsonl")]
    assert "--sweep setting top_k=-5" in cli_error(batch + ["--sweep", "top_k=1,-5"], capsys)
    assert "--sweep: unknown setting 'beams'" in cli_error(batch + ["--sweep", "beams=1,2"], capsys)
    assert "--sweep: top_k=a: 'a' is not an integer" in cli_error(batch + ["--sweep", "top_k=1,a"], capsys)
    assert "needs --output_file" in cli_error(["--base_model", MODEL, "--prompts_file", str(prompts_file)], capsys)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"instruction": "a", "input": "", "output": "b"}\n{"instruction": "a", "input": 3, "output": "b"}\n')
    assert "record 1: field 'input' must be a string" in cli_error(batch[:2] + ["--prompts_file", str(broken), "--output_file", "g.jsonl"], capsys)
    assert "pass --adapter" in cli_error(["--instruction", "Hi."], capsys)
    assert "no such folder" in cli_error(["--adapter", str(tmp_path / "missing"), "--instruction", "Hi."], capsys)
    assert "nowhere: no such folder" in cli_error(["--base_model", str(tmp_path / "nowhere"), "--instruction", "Hi."], capsys)


# ---------------------------------------------------------------------------------------------
# A trained adapter
# ---------------------------------------------------------------------------------------------
def test_adapter_changes_outputs_and_finds_its_base(MODEL, run_dir, tmp_path):
    common = ["--prompts_file", str(run_dir / "val.jsonl"), "--max_prompts", "6", "--max_new_tokens", "24", "--batch_size", "6"]
    inference.main(["--adapter", str(run_dir), "--output_file", str(tmp_path / "tuned.jsonl")] + common)
    inference.main(["--base_model", MODEL, "--output_file", str(tmp_path / "base.jsonl")] + common)
    tuned, untuned = read_lines(tmp_path / "tuned.jsonl"), read_lines(tmp_path / "base.jsonl")
    assert len(tuned) == len(untuned) == 6
    assert all(set(row) == LINE_KEYS and set(row["settings"]) == SETTING_KEYS for row in tuned + untuned)
    assert {row["base_model"] for row in tuned + untuned} == {MODEL}
    assert {row["adapter"] for row in tuned} == {str(run_dir.resolve())} and {row["adapter"] for row in untuned} == {None}
    by_id = {row["id"]: row["prediction"] for row in untuned}
    assert sum(row["prediction"] != by_id[row["id"]] for row in tuned) >= 4
    val = {json.loads(line)["id"]: json.loads(line) for line in (run_dir / "val.jsonl").read_text().splitlines()}
    assert all(row["reference"] == val[row["id"]]["output"] and row["instruction"] == val[row["id"]]["instruction"] for row in tuned)

    # A merged model directory works as --base_model and answers as base + adapter do.
    model, tokenizer = generate.load_for_inference(resolve_model_source(ModelArguments(adapter=str(run_dir))))
    model.merge_and_unload().save_pretrained(tmp_path / "merged")
    tokenizer.save_pretrained(tmp_path / "merged")
    inference.main(["--base_model", str(tmp_path / "merged"), "--output_file", str(tmp_path / "merged.jsonl")] + common)
    merged = {row["id"]: row["prediction"] for row in read_lines(tmp_path / "merged.jsonl")}
    assert sum(row["prediction"] == merged[row["id"]] for row in tuned) >= 5


def test_run_config_fixes_template_and_precision(MODEL, run_dir, tmp_path, no_loading, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("*.safetensors", "checkpoint-*"))
    config = json.loads((copy / "run_config.json").read_text())
    config["model"]["quantization"] = "nf4"
    (copy / "run_config.json").write_text(json.dumps(config))
    source = resolve_model_source(ModelArguments(adapter=str(copy)))
    assert (source.base_model, source.quantization, source.prompt_template, source.tokenizer_path) == (MODEL, "nf4", "alpaca", str(copy))
    assert resolve_model_source(ModelArguments(adapter=str(copy), quantization="none")).quantization == "none"
    assert "trained with the 'alpaca' template" in cli_error(["--adapter", str(copy), "--prompt_template", "chat", "--instruction", "Hi."], capsys)
    config["data"]["prompt_template"] = "chat"
    (copy / "run_config.json").write_text(json.dumps(config))
    assert resolve_model_source(ModelArguments(adapter=str(copy))).prompt_template == "chat"


# ---------------------------------------------------------------------------------------------
# Batch mode: resume and sweeps
# ---------------------------------------------------------------------------------------------
def test_killed_run_resumes_without_losing_or_duplicating(MODEL, prompts_file, tmp_path):
    output = tmp_path / "gen.jsonl"
    argv = ["--base_model", MODEL, "--prompts_file", str(prompts_file), "--max_prompts", "30", "--batch_size", "2",
            "--max_new_tokens", "48", "--temperature", "0.8", "--top_k", "40"]
    command = [sys.executable, "inference.py", *argv, "--output_file", str(output)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if output.exists() and output.read_text().count("\n") >= 5:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = output.read_text().count("\n")
    assert 5 <= killed_at < 30
    with output.open("a") as handle:  # as if the kill had come in the middle of a line
        handle.write('{"id": 3, "instruction": "half a li')

    inference.main(argv + ["--output_file", str(output)])  # the same command again (in this process: faster)
    inference.main(argv + ["--output_file", str(tmp_path / "uninterrupted.jsonl")])
    resumed, uninterrupted = read_lines(output), read_lines(tmp_path / "uninterrupted.jsonl")
    assert len(resumed) == 30 and len({row["id"] for row in resumed}) == 30
    assert without_timing(resumed) == without_timing(uninterrupted)


def test_sweep_writes_every_setting_and_prompt_once(MODEL, prompts_file, run_dir, tmp_path, capsys):
    output = tmp_path / "sweep.jsonl"
    argv = ["--base_model", MODEL, "--prompts_file", str(prompts_file), "--max_prompts", "3", "--max_new_tokens", "6",
            "--output_file", str(output), "--sweep", "top_k=1,10 num_beams=1,2 temperature=0.7"]
    inference.main(argv)
    rows = read_lines(output)
    keys = [(json.dumps(row["settings"], sort_keys=True), row["id"]) for row in rows]
    assert len(rows) == 12 and len(set(keys)) == 12
    grid = {(r["settings"]["top_k"], r["settings"]["num_beams"], r["settings"]["do_sample"]) for r in rows}
    assert grid == {(1, 1, True), (10, 1, True), (1, 2, True), (10, 2, True)}  # with beams: beam sampling
    assert {r["settings"]["seed"] for r in rows} == {42}
    by_setting = {}
    for row in rows:
        by_setting.setdefault(json.dumps(row["settings"], sort_keys=True), []).append(row["prediction"])
    assert len(by_setting) == 4

    inference.main(argv)  # done already: nothing is added
    assert read_lines(output) == rows
    yaml_sweep = tmp_path / "sweep.yaml"
    yaml_sweep.write_text("top_k: [1, 10]\nnum_beams: [1, 2]\ntemperature: 0.7\n")
    inference.main(argv[:-1] + [str(yaml_sweep)])  # the same grid from a file: still nothing to add
    assert read_lines(output) == rows

    capsys.readouterr()
    assert "written with other generation settings" in cli_error(argv[:-2] + ["--top_k", "3"], capsys)
    assert "written by base model" in cli_error(["--adapter", str(run_dir)] + argv[2:], capsys)
    inference.main(argv[:-2] + ["--top_k", "3", "--overwrite"])
    assert len(read_lines(output)) == 3


# ---------------------------------------------------------------------------------------------
# Interactive mode
# ---------------------------------------------------------------------------------------------
SESSION = """Name a color.
/rate 4 clear answer
/set top_k=10 temperature=0.7
\"\"\"Write a line
about the sea.\"\"\"
/rate 2
/input apples, pears
Sort these fruits.
/rate 6
/rate 5 good
/set top_k=-1
/settings
/bogus
"""


def test_interactive_session_writes_the_ratings(MODEL, tmp_path, monkeypatch, capsys):
    ratings = tmp_path / "ratings.jsonl"
    argv = ["--base_model", MODEL, "--max_new_tokens", "12", "--ratings_file", str(ratings)]
    monkeypatch.setattr(sys, "stdin", io.StringIO(SESSION))  # ends with EOF, like Ctrl-D
    inference.main(argv)
    out = capsys.readouterr().out
    rows = read_lines(ratings)
    assert [(r["id"], r["rating"], r["comment"]) for r in rows] == [(1, 4, "clear answer"), (2, 2, ""), (3, 5, "good")]
    assert all(set(r) == RATING_KEYS and r["base_model"] == MODEL and r["adapter"] is None for r in rows)
    assert rows[0]["settings"] == greedy(max_new_tokens=12)
    assert rows[1]["settings"] == greedy(max_new_tokens=12, top_k=10, temperature=0.7)
    assert rows[1]["instruction"] == "Write a line\nabout the sea." and rows[2]["input"] == "apples, pears"
    assert rows[2]["instruction"] == "Sort these fruits." and rows[0]["input"] == ""
    assert "error: a rating is a whole number from 1 to 5" in out and "error: --top_k must be >= 0" in out
    assert "error: unknown command /bogus" in out and "bye: 3 rating(s)" in out

    # --rate asks after every answer; a second session numbers on and keeps the first one's ratings.
    monkeypatch.setattr(sys, "stdin", io.StringIO("Say hi.\n3 fine\nSay bye.\n\n"))
    inference.main(argv + ["--rate"])
    rows = read_lines(ratings)
    assert [(r["id"], r["rating"], r["comment"]) for r in rows[3:]] == [(4, 3, "fine")]


class CtrlCAtEnd(io.StringIO):
    """Terminal input that ends with the user pressing Ctrl-C at the prompt."""

    def readline(self, *args):
        line = super().readline(*args)
        if not line:
            raise KeyboardInterrupt
        return line


def test_ctrl_c_leaves_cleanly_and_keeps_ratings(MODEL, tmp_path, monkeypatch, capsys):
    ratings = tmp_path / "ratings.jsonl"
    monkeypatch.setattr(sys, "stdin", CtrlCAtEnd("Name a color.\n/rate 5 nice\nName a fruit.\n"))
    run_cli(lambda: inference.main(["--base_model", MODEL, "--max_new_tokens", "8", "--ratings_file", str(ratings)]))
    assert "bye: 1 rating(s)" in capsys.readouterr().out
    assert [(r["id"], r["rating"], r["comment"]) for r in read_lines(ratings)] == [(1, 5, "nice")]
