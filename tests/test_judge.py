"""A model as judge (python -m alpaca_qlora.judge) and what evaluate_metrics.py reports of its verdicts: offline, on
the CPU, with the tiny random Llama of conftest.py as the judge (its verdicts mean nothing; their arithmetic does).

- The job end to end: every pair of every prompt in both orders, probabilities over A / B / tie that sum to 1, the
  verdict their argmax, each label's log-probability equal to a plain unbatched forward pass; a rerun resumes (a torn
  last line cut, nothing duplicated, a complete file untouched); every bad input one line, exit 2, nothing written.
- What the judge reads: one BOS under a chat template that writes its own; one tokenization for the three labels;
  no verdict from log-probabilities that are not finite; no conversation judged without its earlier turns.
- One judge and one job per ratings file: another template, other generation files, or answers written again since
  they were judged are refused; one annotator of two models or two precisions is refused by the scoring.
- The statistics on worked cases: a hand-written judge file (position consistency, swap ties, side A, length bias,
  win rates) and a hand-made people's file (Cohen's kappa and accuracy computed here by formula), on generations
  without references (the reference metrics skipped, the ratings reported); judge lines scored as evaluate_metrics.py
  scores the page's lines.
- The study with `judge:` in its config: the judge's column and table, rebuilt byte for byte from committed files.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # evaluate_metrics.py is a script at the repository root
    sys.path.insert(0, str(ROOT))

import evaluate_metrics  # noqa: E402
from alpaca_qlora.cli import UserError  # noqa: E402
from alpaca_qlora.generation.generate import load_for_inference  # noqa: E402
from alpaca_qlora.generation.source import InferenceModelArguments, resolve_model_source  # noqa: E402
from alpaca_qlora.judge import job as judge_job  # noqa: E402
from alpaca_qlora.judge.template import JudgeTemplate, load_judge_template  # noqa: E402
from alpaca_qlora.modeling import load_tokenizer  # noqa: E402
from alpaca_qlora.judge.verdict import context_text, tokenize  # noqa: E402
from alpaca_qlora.scoring.inputs import InputConfig  # noqa: E402
from alpaca_qlora.scoring.metrics import MetricConfig  # noqa: E402
from alpaca_qlora.scoring.report import OutputConfig  # noqa: E402

from conftest import cli_error_line, run_script  # noqa: E402

LABELS = ("A", "B", "tie")
PROMPTS = [("Name three primary colors.", ""), ("What is the capital of France?", ""),
           ("Give a synonym for the word below.", "happy"), ("Sort these numbers from small to large.", "7, 2, 9")]
REFERENCES = ["Red, blue and yellow.", "Paris is the capital of France.", "Joyful.", "2, 7, 9"]
ANSWERS = {
    "base": ["Green, maybe.", "London.", "Sad.", "9, 7, 2"],
    "tuned": ["Red, blue and yellow.", "Paris is the capital of France.", "Joyful.", "2, 7, 9"],
    "other": ["Red {answer_b} and blue.", "Paris.", "Glad and cheerful.", "2, 9, 7"],  # braces stay text
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def write_generations(path: Path, answers: list[str], prompts=PROMPTS, references=REFERENCES) -> Path:
    """A generations file as inference.py writes it (references left out when `references` is None)."""
    rows = []
    for index, ((instruction, context), answer) in enumerate(zip(prompts, answers)):
        row = {"id": index, "instruction": instruction, "input": context}
        if references is not None:
            row["reference"] = references[index]
        rows.append({**row, "prediction": answer, "settings": {"num_beams": 1, "max_new_tokens": 32},
                     "base_model": "tiny-llama", "adapter": path.stem, "precision": {"quantization": "none"},
                     "new_tokens": len(answer.split()), "seconds": 0.05})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def line_key(row: dict) -> tuple:
    return str(row["prompt_id"]), frozenset(row["files"]), row["sides"]["A"]


def judge_argv(files: list[Path], model: Path, ratings: Path, *extra: str) -> list[str]:
    return [*map(str, files), "--judge", str(model), "--ratings_file", str(ratings), *extra]


@pytest.fixture(scope="module")
def judged(tmp_path_factory, tiny_model):
    """Three generation files judged by the tiny model: (files, ratings file, what the job returned)."""
    folder = tmp_path_factory.mktemp("judged")
    files = [write_generations(folder / f"{name}.jsonl", answers) for name, answers in ANSWERS.items()]
    ratings = folder / "judge.jsonl"
    result = judge_job.main(judge_argv(files, tiny_model, ratings, "--batch_size", "3"))
    return files, ratings, result


# ---------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------
def test_every_pair_is_judged_in_both_orders_with_a_distribution_over_the_labels(judged, tiny_model):
    files, ratings, result = judged
    paths = [str(f.resolve()) for f in files]
    rows = read_lines(ratings)
    assert (result.written, result.already, result.total) == (24, 0, 24)  # 4 prompts x 3 pairs x 2 orders
    assert len(rows) == 24 and len({line_key(row) for row in rows}) == 24
    orders: dict[tuple, set] = {}
    for row in rows:
        orders.setdefault((row["prompt_id"], frozenset(row["files"])), set()).add(row["sides"]["A"])
    assert len(orders) == 12 and all(sides == set(pair) for (_, pair), sides in orders.items())  # each file once on A
    template = load_judge_template(None)
    annotator = f"judge:{tiny_model.name}#{template.sha256[:12]}"
    for row in rows:
        assert row["kind"] == "pairwise" and row["annotator"] == annotator
        assert row["files"] in ([paths[0], paths[1]], [paths[0], paths[2]], [paths[1], paths[2]])  # command-line order
        probabilities = row["probabilities"]
        assert set(probabilities) == set(LABELS) and all(0 <= p <= 1 for p in probabilities.values())
        assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-9)
        assert row["choice"] == max(LABELS, key=lambda label: probabilities[label])
        assert row["winner_file"] == row["sides"].get(row["choice"])
        # the probabilities are the softmax of the three log-probabilities
        top = max(row["logprobs"].values())
        total = sum(math.exp(value - top) for value in row["logprobs"].values())
        for label in LABELS:
            assert probabilities[label] == pytest.approx(math.exp(row["logprobs"][label] - top) / total, abs=1e-12)
        assert row["judge"]["format"] == "chat"  # the tiny tokenizer has a chat template: auto takes it
        assert row["judge"]["template_sha256"] == template.sha256 and row["judge"]["template"] == "pairwise-v1"


def test_each_label_log_probability_is_a_plain_forward_pass(judged, tiny_model):
    """Batched, left-padded, with the output layer on the last positions only, the job must give what one unpadded
    forward pass over the context and the label gives (summed over the label's tokens, teacher-forced)."""
    files, ratings, _ = judged
    answers = {str(f.resolve()): dict(enumerate(ANSWERS[f.stem])) for f in files}
    model, tokenizer = load_for_inference(resolve_model_source(InferenceModelArguments(base_model=str(tiny_model))))
    template = load_judge_template(None)
    several_tokens = 0
    for row in read_lines(ratings)[:8]:
        instruction, context_input = PROMPTS[row["prompt_id"]]
        question = template.question(instruction, context_input, answers[row["sides"]["A"]][row["prompt_id"]],
                                     answers[row["sides"]["B"]][row["prompt_id"]])
        tokenized = tokenize(tokenizer, context_text(template, tokenizer, "chat", question), template, "chat")
        start = len(tokenized.context)
        for label, ids in tokenized.labels.items():
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([tokenized.context + ids])).logits[0].float()
            logprobs = torch.log_softmax(logits, dim=-1)
            expected = sum(float(logprobs[start - 1 + j, token]) for j, token in enumerate(ids))
            assert row["logprobs"][label] == pytest.approx(expected, abs=1e-4), (label, row["prompt_id"])
            several_tokens += len(ids) > 1
    print(f"labels of more than one token: {several_tokens} of {8 * 3}")


def test_the_template_fills_in_one_pass_and_its_hash_names_the_prompt(tmp_path):
    template = load_judge_template(None)
    question = template.question("Say {answer_a}.", "", "B says {input}", "{answer_b}")
    assert "Say {answer_a}." in question and "B says {input}" in question and "{answer_b}" in question
    assert "[Input]\n(none)" in question  # a record without an input
    assert "one word" in template.prompt
    changed = tmp_path / "changed.yaml"
    changed.write_text(template_file_text(template, prompt=template.prompt.replace("one word", "a single word")),
                       encoding="utf-8")
    other = load_judge_template(str(changed))
    assert other.sha256 != template.sha256 and other.labels == template.labels


def template_file_text(template, **changes) -> str:
    """A template file holding `template` (with `changes`), as a user would copy and edit the shipped one."""
    import yaml

    values = {"name": template.name, "prompt": template.prompt, "empty_input": template.empty_input,
              "verdict_prefix": template.verdict_prefix, "labels": template.labels, **changes}
    return yaml.safe_dump(values, width=10**6)


def test_a_rerun_resumes_cuts_a_torn_line_and_duplicates_nothing(judged, tiny_model, tmp_path, capsys):
    files, ratings, _ = judged
    whole = ratings.read_text(encoding="utf-8").split("\n")[:-1]
    first_run = {line_key(json.loads(line)): json.loads(line) for line in whole}
    resumed = tmp_path / "judge.jsonl"
    resumed.write_text("\n".join(whole[:22]) + "\n" + whole[22][:40], encoding="utf-8")  # killed writing line 23
    capsys.readouterr()
    result = judge_job.main(judge_argv(files, tiny_model, resumed, "--batch_size", "2"))
    assert "removed a half-written last line" in capsys.readouterr().out
    assert (result.written, result.already, result.total) == (2, 22, 24)
    rows = read_lines(resumed)
    assert len(rows) == 24 and {line_key(row) for row in rows} == set(first_run)
    for row in rows[22:]:  # judged again: the first run's verdicts (another batch, the same numbers)
        before = first_run[line_key(row)]
        assert row["probabilities"] == pytest.approx(before["probabilities"], abs=1e-5)
        first, second = sorted(before["probabilities"].values(), reverse=True)[:2]
        if first - second > 1e-4:  # a near-tie of the random judge may fall either way within rounding
            assert row["choice"] == before["choice"]
    complete = resumed.read_bytes()
    again = judge_job.main(judge_argv(files, tiny_model, resumed))
    assert (again.written, again.already) == (0, 24) and resumed.read_bytes() == complete


def test_a_chat_template_that_writes_its_own_bos_gives_the_judge_one_bos(tiny_model, tmp_path):
    """Llama-3's, Mistral-Instruct's and Gemma's chat templates write {{ bos_token }}, and their tokenizers add a
    BOS too unless told not to: the text the chat template wrote is encoded without the tokenizer's own."""
    files = [write_generations(tmp_path / f"{name}.jsonl", ANSWERS[name]) for name in ("base", "tuned")]
    args, generations = judge_job.parse_args(judge_argv(files, tiny_model, tmp_path / "judge.jsonl"))
    job = judge_job.prepare(args, generations)
    assert job.judge_format == "chat"
    tokenizer = load_tokenizer(str(tiny_model))
    bos = tokenizer.bos_token_id
    assert tokenizer("Hi")["input_ids"][0] == bos  # the tiny tokenizer adds a BOS of its own
    tokenizer.chat_template = "{{ bos_token }}" + tokenizer.chat_template
    for order in job.orders()[:2]:
        ids = judge_job.prompt_of(job, order, tokenizer).context
        assert ids[0] == bos and ids.count(bos) == 1, ids[:4]
    job.judge_format = "plain"  # plain text: the tokenizer's own BOS, once
    ids = judge_job.prompt_of(job, job.orders()[0], tokenizer).context
    assert ids[0] == bos and ids.count(bos) == 1, ids[:4]


def test_when_one_label_merges_into_the_context_all_three_labels_are_tokenized_alone():
    """A SentencePiece-like tokenizer, built here with the tokenizers library: characters, a space marker before the
    first word, one merge (':' + 't'). After the context "X:", the label "tie" merges into the context's last token
    and must be tokenized alone; "A" and "B" do not merge, and are tokenized alone too (with the marker, as "tie"
    is), so the three labels are read alike."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "\u2581": 1, "X": 2, ":": 3, "A": 4, "B": 5, "t": 6, "i": 7, "e": 8, ":t": 9}
    words = Tokenizer(models.BPE(vocab=vocab, merges=[(":", "t")], unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, unk_token="<unk>")
    assert tokenizer("X:")["input_ids"] == [1, 2, 3]
    assert tokenizer("X:A")["input_ids"] == [1, 2, 3, 4]  # "A" follows the context's tokens as they are
    assert tokenizer("X:tie")["input_ids"] == [1, 2, 9, 7, 8]  # "t" merged into the context's ":"
    template = JudgeTemplate(name="merging", prompt="{instruction}{input}{answer_a}{answer_b}", empty_input="",
                             verdict_prefix="", labels={"A": "A", "B": "B", "tie": "tie"})
    tokenized = tokenize(tokenizer, "X:", template, "plain")
    assert tokenized.context == [1, 2, 3]
    assert tokenized.labels == {"A": [1, 4], "B": [1, 5], "tie": [1, 6, 7, 8]}  # each alone: one tokenization


def refuse_to_load(*args, **kwargs):
    raise AssertionError("the judge was loaded before every input was checked")


def test_log_probabilities_that_are_not_finite_are_one_line_naming_the_order_and_the_precision(tiny_model, tmp_path,
                                                                                               monkeypatch):
    """fp16 logits that overflow give nan or inf log-probabilities: refused by name, never a verdict nor a line."""
    files = [write_generations(tmp_path / f"{name}.jsonl", ANSWERS[name]) for name in ("base", "tuned")]
    ratings = tmp_path / "judge.jsonl"

    def overflowed(model, items, pad_token_id):
        return [{"A": float("nan"), "B": float("-inf"), "tie": -1.0} for _ in items]

    monkeypatch.setattr(judge_job, "label_logprobs", overflowed)
    with pytest.raises(UserError) as refused:
        judge_job.main(judge_argv(files, tiny_model, ratings))
    message = str(refused.value)
    assert re.match(r"id \d with .*(base|tuned)\.jsonl as answer A and .*(base|tuned)\.jsonl as answer B \(full-precision "
                    r"base weights, \w+ compute\): log P\(A\) is nan, not a finite number", message), message
    assert "run again with --compute_dtype fp32" in message and "\n" not in message
    assert not ratings.exists()


def test_conversation_generations_are_refused_as_the_template_has_no_place_for_earlier_turns(tiny_model, tmp_path,
                                                                                             capsys, monkeypatch):
    monkeypatch.setattr(judge_job, "load_for_inference", refuse_to_load)
    history = [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello! How can I help?"}]
    files = []
    for name in ("base", "tuned"):
        rows = read_lines(write_generations(tmp_path / f"{name}.jsonl", ANSWERS[name]))
        rows[1]["history"] = history  # id 1 goes on a conversation (the same in both files, as inference.py writes)
        files.append(write_lines(tmp_path / f"{name}.jsonl", rows))
    out = tmp_path / "out" / "judge.jsonl"
    message = cli_error(judge_argv(files, tiny_model, out), capsys)
    assert f"{files[0]}:2: id 1 is a conversation (field 'history')" in message
    assert "judge single-turn generations only" in message
    assert not (tmp_path / "out").exists()


def test_a_rerun_with_another_judge_or_other_generation_files_is_refused_and_writes_nothing(judged, tiny_model,
                                                                                            tmp_path, capsys,
                                                                                            monkeypatch):
    """One judge (model and template) and one set of generation files per ratings file."""
    files, ratings, _ = judged
    monkeypatch.setattr(judge_job, "load_for_inference", refuse_to_load)
    copy = tmp_path / "judge.jsonl"
    shutil.copy(ratings, copy)
    kept = copy.read_bytes()
    shipped = load_judge_template(None)
    changed = tmp_path / "changed.yaml"
    changed.write_text(template_file_text(shipped, prompt=shipped.prompt.replace("one word", "a single word")),
                       encoding="utf-8")
    other = load_judge_template(str(changed))
    message = cli_error(judge_argv(files, tiny_model, copy, "--judge_template", str(changed)), capsys)
    assert (f"--ratings_file {copy}:1: verdicts of 'judge:{tiny_model.name}#{shipped.sha256[:12]}', this judge is "
            f"'judge:{tiny_model.name}#{other.sha256[:12]}' (another model or template)") in message
    assert copy.read_bytes() == kept
    # two of the three files: the verdicts on the third would stay in the file as this job's
    message = cli_error(judge_argv(files[:2], tiny_model, copy), capsys)
    assert f"--ratings_file {copy}:1: judged with generations " in message and "one set of generation files" in message
    assert copy.read_bytes() == kept
    # another file in place of the third
    replaced = write_generations(tmp_path / "replaced.jsonl", ANSWERS["other"])
    message = cli_error(judge_argv([*files[:2], replaced], tiny_model, copy), capsys)
    assert f"--ratings_file {copy}:1: judged with generations " in message
    assert copy.read_bytes() == kept
    assert not list(tmp_path.glob("**/.*.lock"))


def test_a_resume_on_answers_written_again_since_is_refused(tiny_model, tmp_path, capsys, monkeypatch):
    """Each line records the sha256 of the two answers it judged: a generation file written again at the same path
    with other answers never keeps the old verdicts."""
    base = write_generations(tmp_path / "base.jsonl", ANSWERS["base"])
    tuned = write_generations(tmp_path / "tuned.jsonl", ANSWERS["tuned"])
    ratings = tmp_path / "judge.jsonl"
    first = judge_job.main(judge_argv([base, tuned], tiny_model, ratings))
    assert (first.written, first.total) == (8, 8)
    rows = read_lines(ratings)
    assert all(set(row["answers_sha256"]) == {"A", "B"} for row in rows)
    assert len({row["answers_sha256"]["A"] for row in rows}) == 8  # 4 prompts x 2 files: 8 different answers
    kept = ratings.read_bytes()
    monkeypatch.setattr(judge_job, "load_for_inference", refuse_to_load)
    write_generations(tuned, ANSWERS["tuned"])  # written again with the same answers: resumes, nothing left to do
    again = judge_job.main(judge_argv([base, tuned], tiny_model, ratings))
    assert (again.written, again.already) == (0, 8) and ratings.read_bytes() == kept
    write_generations(tuned, [*ANSWERS["tuned"][:2], "Cheerful.", ANSWERS["tuned"][3]])  # id 2 answered anew
    message = cli_error(judge_argv([base, tuned], tiny_model, ratings), capsys)
    assert f"{tuned}: the answer to id 2 is not the one judged at --ratings_file {ratings}:" in message
    assert ratings.read_bytes() == kept


# ---------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing written, no model loaded
# ---------------------------------------------------------------------------------------------
def cli_error(argv: list[str], capsys) -> str:
    return cli_error_line(judge_job.main, argv, capsys)


def test_bad_inputs_are_one_line_exit_2_and_write_nothing(tiny_model, tmp_path, capsys, monkeypatch):
    from test_teacher import tiny_bert

    def refuse(*args, **kwargs):
        raise AssertionError("the judge was loaded before every input was checked")

    monkeypatch.setattr(judge_job, "load_for_inference", refuse)
    base = write_generations(tmp_path / "base.jsonl", ANSWERS["base"])
    tuned = write_generations(tmp_path / "tuned.jsonl", ANSWERS["tuned"])
    fewer = write_generations(tmp_path / "fewer.jsonl", ANSWERS["tuned"][:3], PROMPTS[:3])
    bert = tiny_bert(tiny_model, tmp_path / "bert")
    no_answer_b = tmp_path / "no_answer_b.yaml"
    shipped = load_judge_template(None)
    no_answer_b.write_text(template_file_text(shipped, prompt=shipped.prompt.replace("{answer_b}", "(the second answer)")),
                           encoding="utf-8")
    generations_as_ratings = tmp_path / "kept" / "generations.jsonl"
    generations_as_ratings.parent.mkdir()
    shutil.copy(tuned, generations_as_ratings)
    people = tmp_path / "kept" / "human.jsonl"
    people.write_text(json.dumps({
        "kind": "pairwise", "prompt_id": 0, "files": [str(base.resolve()), str(tuned.resolve())],
        "sides": {"A": str(base.resolve()), "B": str(tuned.resolve())}, "choice": "B",
        "winner_file": str(tuned.resolve()), "comment": "", "annotator": "alice", "time": ""}) + "\n", encoding="utf-8")
    out = tmp_path / "out" / "judge.jsonl"
    cases = {
        "other prompts": ([base, fewer], out, [], "the files must answer the same prompts"),
        "not a causal LM": ([base, tuned], out, ["--judge", str(bert)],
                            f"--judge {bert}: its config.json names BertForMaskedLM, which does not generate text"),
        "template without a placeholder": ([base, tuned], out, ["--judge_template", str(no_answer_b)],
                                           f"--judge_template {no_answer_b}: prompt lacks the placeholder {{answer_b}}"),
        "ratings file of another kind": ([base, tuned], generations_as_ratings, [],
                                         f"--ratings_file {generations_as_ratings}:1: not a pairwise rating"),
        "people's ratings file": ([base, tuned], people, [], f"--ratings_file {people}:1: a person's rating"),
        "one file": ([base], out, [], "the judge compares two or more generation files, got 1"),
        "ratings file is an input": ([base, tuned], tuned, [], "is one of the generation files"),
        "batch size": ([base, tuned], out, ["--batch_size", "0"], "--batch_size must be >= 1, got 0"),
    }
    kept = {path: path.read_bytes() for path in (generations_as_ratings, people, tuned)}
    capsys.readouterr()  # the fixtures' own output (saving the tiny BERT prints a progress bar)
    for name, (files, ratings, extra, message) in cases.items():
        argv = [*map(str, files), "--ratings_file", str(ratings), *extra]
        if "--judge" not in extra:
            argv += ["--judge", str(tiny_model)]
        assert message in cli_error(argv, capsys), name
        assert not (tmp_path / "out").exists(), name
        assert all(path.read_bytes() == data for path, data in kept.items()), name
        assert not list(tmp_path.glob("**/.*.lock")), name
    assert "--judge is required" in cli_error([str(base), str(tuned), "--ratings_file", str(out)], capsys)


# ---------------------------------------------------------------------------------------------
# The statistics, worked out by hand
# ---------------------------------------------------------------------------------------------
# Six prompts, two systems (base = system 0, tuned = system 1), no references. Lengths in characters:
#   p0 tuned longer, p1 base longer, p2 tuned longer, p3 tuned longer, p4 base longer, p5 equal (12 and 12).
WORKED = {
    "base": ["No.", "A long answer from the base.", "Short.", "Brief.", "The base wrote the longer one here.",
             "Same length!"],
    "tuned": ["The tuned answer is longer.", "Tuned.", "A longer tuned answer.", "A longer tuned one.", "Tuned.",
              "Equal sizes!"],
}
WORKED_PROMPTS = [(f"Question {i}?", "") for i in range(6)]
# The judge's choice in each order: (base on side A, tuned on side A).
#   p0 B, A: tuned both times        p1 B, A: tuned both times      p2 A, A: always side A -> changes: a tie
#   p3 tie, tie: a tie both times    p4 A, B: base both times       p5 B, tie: changes -> a tie
JUDGE_CHOICES = [("B", "A"), ("B", "A"), ("A", "A"), ("tie", "tie"), ("A", "B"), ("B", "tie")]
# A person, always shown base as A: p0 tuned, p1 base, p2 tuned, p3 tie, p4 base, p5 both bad.
PERSON_CHOICES = ["B", "A", "B", "tie", "A", "both_bad"]
JUDGE = "judge:tiny#0123456789ab"


def judge_line(prompt: int, a: Path, b: Path, files: list[Path], choice: str) -> dict:
    probabilities = {"A": 0.1, "B": 0.1, "tie": 0.1, choice: 0.8}
    sides = {"A": str(a.resolve()), "B": str(b.resolve())}
    return {"kind": "pairwise", "prompt_id": prompt, "files": [str(f.resolve()) for f in files], "sides": sides,
            "choice": choice, "winner_file": sides.get(choice), "comment": "", "annotator": JUDGE,
            "time": "2026-01-01T00:00:00+00:00",
            "judge": {"model": "tiny", "name": "tiny", "template": "pairwise-v1", "template_sha256": "0123456789ab" * 5,
                      "format": "chat", "precision": {"quantization": "none", "compute_dtype": "fp32"}},
            "probabilities": probabilities, "logprobs": {label: math.log(p) for label, p in probabilities.items()}}


def person_line(prompt: int, a: Path, b: Path, choice: str) -> dict:
    sides = {"A": str(a.resolve()), "B": str(b.resolve())}
    return {"kind": "pairwise", "prompt_id": prompt, "files": [sides["A"], sides["B"]], "sides": sides,
            "choice": choice, "winner_file": sides.get(choice), "comment": "", "annotator": "alice",
            "time": "2026-01-01T00:00:00+00:00"}


def write_lines(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def cohen_kappa(a: list[str], b: list[str]) -> float:
    """(p_o - p_e) / (1 - p_e), written out."""
    labels = set(a) | set(b)
    observed = sum(x == y for x, y in zip(a, b)) / len(a)
    chance = sum((a.count(label) / len(a)) * (b.count(label) / len(b)) for label in labels)
    return (observed - chance) / (1 - chance)


@pytest.fixture
def worked(tmp_path):
    base = write_generations(tmp_path / "base.jsonl", WORKED["base"], WORKED_PROMPTS, references=None)
    tuned = write_generations(tmp_path / "tuned.jsonl", WORKED["tuned"], WORKED_PROMPTS, references=None)
    rows = []
    for prompt, (base_on_a, tuned_on_a) in enumerate(JUDGE_CHOICES):
        rows += [judge_line(prompt, base, tuned, [base, tuned], base_on_a),
                 judge_line(prompt, tuned, base, [base, tuned], tuned_on_a)]
    rows.append(judge_line(3, base, tuned, [base, tuned], "tie"))  # p3 in the first order again: counts once
    judge = write_lines(tmp_path / "judge.jsonl", rows)
    person = write_lines(tmp_path / "human.jsonl",
                         [person_line(prompt, base, tuned, choice) for prompt, choice in enumerate(PERSON_CHOICES)])
    return base, tuned, judge, person


def score(inputs: list[Path], ratings: list[Path], output: Path) -> dict:
    evaluate_metrics.run([str(p) for p in inputs], InputConfig(pairwise_ratings=[str(p) for p in ratings]),
                         MetricConfig(bertscore_model="minilm", bootstrap=200, no_progress=True),
                         OutputConfig(output_dir=str(output)))
    return json.loads((output / "metrics.json").read_text(encoding="utf-8"))


def test_judge_statistics_and_agreement_with_a_person_by_hand(worked, tmp_path, capsys):
    base, tuned, judge, person = worked
    data = score([base, tuned], [person, judge], tmp_path / "m")
    [summary] = data["judge_pairwise"]
    assert summary["annotator"] == JUDGE
    assert (summary["n_lines"], summary["n_repeated"], summary["n_pairs"], summary["n_both_orders"],
            summary["n_one_order"]) == (13, 1, 6, 6, 0)
    # consistent: p0, p1, p3, p4; changed with the order (ties): p2, p5
    assert summary["n_swap_ties"] == 2 and summary["outcomes"] == {"decisive": 3, "tie": 3}
    consistency = summary["position_consistency"]
    assert (consistency["n"], consistency["k"]) == (6, 4) and consistency["value"] == pytest.approx(4 / 6)
    # decisive verdicts of one order: 9 (all but p3's two and p5's second); side A picked: p0, p1 second order,
    # p2 both, p4 first order = 5
    assert (summary["side_a"]["n"], summary["side_a"]["k"]) == (9, 5)
    # one verdict per pair, decisive: p0 tuned (longer), p1 tuned (shorter), p4 base (longer): 2 of 3 longer
    length = summary["length_bias"]
    assert (length["n"], length["k"], length["n_equal_length"]) == (3, 2, 0)
    assert length["value"] == pytest.approx(2 / 3)
    assert (length["people"]["n"], length["people"]["k"]) == (4, 4)  # the person's p0, p1, p2, p4: the longer each time
    systems = {row["label"]: row for row in summary["systems"]}
    assert (systems["tuned"]["wins"], systems["tuned"]["losses"], systems["tuned"]["ties"]) == (2, 1, 3)
    assert systems["tuned"]["win_rate"] == pytest.approx(3.5 / 6) and systems["base"]["win_rate"] == pytest.approx(2.5 / 6)
    for share in (consistency, summary["side_a"], length, systems["tuned"]):
        low, high = share.get("ci95") or share["win_rate_ci95"]
        assert 0 <= low <= (share.get("value") if "value" in share else share["win_rate"]) <= high <= 1
    # the person's decisive pairs: p0 tuned, p1 base, p2 tuned, p4 base; the judge: tuned, tuned, tie, base
    theirs, ours = ["tuned", "base", "tuned", "base"], ["tuned", "tuned", "tie", "base"]
    agreement = summary["agreement_with_people"]
    assert (agreement["n"], agreement["n_pairs"], agreement["judge_ties"]) == (4, 4, 1)
    assert agreement["accuracy"] == pytest.approx(0.5)
    assert cohen_kappa(theirs, ours) == pytest.approx(0.2)  # (1/2 - 3/8) / (1 - 3/8)
    assert agreement["cohen_kappa"] == pytest.approx(cohen_kappa(theirs, ours))
    try:
        from sklearn.metrics import cohen_kappa_score
    except ImportError:
        pass
    else:
        assert agreement["cohen_kappa"] == pytest.approx(cohen_kappa_score(theirs, ours))
    assert agreement["accuracy_ci95"][0] <= 0.5 <= agreement["accuracy_ci95"][1]
    # the person's own section is the person's alone
    human = data["human_pairwise"]
    assert (human["n_ratings"], human["n_used"], human["annotators"]) == (6, 6, ["alice"])
    assert {row["label"]: row["win_rate"] for row in human["systems"]}["tuned"] == pytest.approx(0.5)
    assert human["metric_agreement"] == {}  # no reference: no metric to agree with


def test_without_references_the_ratings_are_reported_and_the_metrics_skipped(worked, tmp_path, capsys):
    base, tuned, judge, person = worked
    out = tmp_path / "m"
    data = score([base, tuned], [judge], out)
    assert "reference metrics skipped: " in capsys.readouterr().err
    assert data["groups"] == [] and data["comparisons"] == []
    assert "no row has a reference (field 'reference')" in data["reference_metrics"]["skipped"]
    assert "human_pairwise" not in data and data["judge_pairwise"][0]["agreement_with_people"] is None
    markdown = (out / "metrics.md").read_text(encoding="utf-8")
    assert "Reference metrics skipped: " in markdown and "Position consistency" in markdown
    assert (out / "metrics.csv").read_text(encoding="utf-8").splitlines()[0] == "input,reference_metrics"
    assert (out / "scores.jsonl").read_text(encoding="utf-8") == ""
    assert (out / "metrics.png").stat().st_size > 5_000
    # people's ratings alone, without references: their statistics, no refusal
    people = score([base, tuned], [person], tmp_path / "people")
    assert people["human_pairwise"]["n_used"] == 6 and "judge_pairwise" not in people


def test_a_judge_line_whose_choice_is_not_its_most_probable_label_is_refused(worked, tmp_path):
    base, tuned, judge, _ = worked
    rows = read_lines(judge)
    assert rows[0]["choice"] == "B"
    rows[0]["probabilities"] = {"A": 0.7, "B": 0.2, "tie": 0.1}
    broken = write_lines(tmp_path / "broken.jsonl", rows)
    with pytest.raises(UserError, match=r"broken.jsonl:1: a judge's choice is its most probable label \(A\), the line "
                                        r"says B"):
        score([base, tuned], [broken], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_one_annotator_judging_with_two_models_or_two_precisions_is_refused(worked, tmp_path):
    """The annotator names the judge by its folder's name: two folders of one name, or one judge at two precisions,
    must not be pooled as one judge's verdicts."""
    base, tuned, judge, _ = worked
    for name, value in (("model", "/elsewhere/tiny"), ("precision", {"quantization": "none", "compute_dtype": "fp16"})):
        rows = read_lines(judge)
        for row in rows:
            row["judge"][name] = value
        other = write_lines(tmp_path / f"other-{name}.jsonl", rows)
        out = tmp_path / f"out-{name}"
        with pytest.raises(UserError, match=rf"other-{name}\.jsonl:1: annotator '{re.escape(JUDGE)}' judged with {name} "
                                            r".*judge\.jsonl:1 with .*: two judges under one name"):
            score([base, tuned], [judge, other], out)
        assert not out.exists()
    # the same lines in two files (one judge, one precision): one judge, each pair and order counted once
    again = write_lines(tmp_path / "again.jsonl", read_lines(judge))
    [summary] = score([base, tuned], [judge, again], tmp_path / "both")["judge_pairwise"]
    assert (summary["annotator"], summary["n_lines"], summary["n_pairs"]) == (JUDGE, 26, 6)


def test_evaluate_metrics_scores_the_judge_file_unchanged(judged, tmp_path):
    """The job's own file, with the generations' references: the metrics as always, the judge's section beside them,
    its win rates those of the file's verdicts combined by hand (the same outcome in both orders, else a tie)."""
    files, ratings, _ = judged
    out = tmp_path / "m"
    result = run_script("evaluate_metrics.py", *map(str, files), "--output_dir", str(out), "--bertscore_model", "minilm",
                        "--bootstrap", "200", "--pairwise_ratings", str(ratings))
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert len(data["groups"]) == 3 and len(data["comparisons"]) == 2 and "human_pairwise" not in data
    [summary] = data["judge_pairwise"]
    paths = [str(f.resolve()) for f in files]
    by_order: dict[tuple, dict[str, str]] = {}
    for row in read_lines(ratings):
        by_order.setdefault((row["prompt_id"], tuple(row["files"])), {})[row["sides"]["A"]] = row["winner_file"] or "tie"
    assert all(len(verdicts) == 2 for verdicts in by_order.values())
    combined = {pair: (next(iter(verdicts.values())) if len(set(verdicts.values())) == 1 else "tie")
                for pair, verdicts in by_order.items()}
    changed = sum(len(set(verdicts.values())) > 1 for verdicts in by_order.values())
    assert (summary["n_pairs"], summary["n_both_orders"], summary["n_swap_ties"]) == (12, 12, changed)
    assert summary["position_consistency"]["value"] == pytest.approx((12 - changed) / 12)
    for system, path in enumerate(paths):
        involved = [(pair, outcome) for pair, outcome in combined.items() if path in pair[1]]
        points = sum(1.0 if outcome == path else 0.5 if outcome == "tie" else 0.0 for _, outcome in involved)
        row = next(r for r in summary["systems"] if r["source"] == str(files[system]))
        assert row["n"] == len(involved) == 8 and row["win_rate"] == pytest.approx(points / len(involved))
    markdown = (out / "metrics.md").read_text(encoding="utf-8")
    assert "## A model as judge" in markdown and "## Scores" in markdown and "BLEU" in markdown


# The study with a judge is tested with the study: tests/test_experiment.py
# (test_a_zero_learning_rate_run_a_recipe_and_a_judge_in_one_study).
