"""inference.py's job: one answer, a prompts file to JSONL (batch mode, sweeps), or the interactive session.

The doors are `inference.py` and `python -m alpaca_qlora.generate`; this module parses and checks the flags (every
check a user can fail runs before a model is loaded) and hands each mode to batch.py, generate.py or interactive.py.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..cli import ArgumentParser, check_writable_folder, fail, parse_dataclasses
from ..data.records import DEFAULT_FIELDS
from ..vision import IMAGE_FIELD, IMAGE_TEXT_TO_TEXT, check_image, text_tokenizer
from . import batch, generate, interactive
from .settings import GenerationSettings
from .stop_strings import check_stop_strings
from .source import InferenceModelArguments, resolve_model_source

DESCRIPTION = ("Generate with a fine-tuned (or the untuned base) model: interactive, one answer, or a prompts file to "
               "JSONL.")


@dataclass
class JobArguments:
    instruction: str | None = field(default=None, metadata={"help": "Answer this one instruction, print the answer and exit."})
    input: str | None = field(default=None, metadata={"help": "Input (context) for --instruction."})
    image: str | None = field(default=None, metadata={"help": "An image for --instruction (image-text models such as LLaVA). "
                                                              "In a --prompts_file, records name theirs in an 'image' field."})
    prompts_file: str | None = field(default=None, metadata={"help": "Batch mode: Alpaca .json/.jsonl records (a run folder's val.jsonl works); the output (reference) field is optional."})
    output_file: str | None = field(default=None, metadata={"help": "Batch mode: JSONL of generations; a rerun of the same command resumes it."})
    batch_size: int = field(default=64, metadata={"help": "Batch mode: prompts per generate call. 64: the fastest of "
                                                      "32/64/96 on SmolLM2 on a 2-core CPU (BENCHMARKS.md); lower it if memory runs out."})
    max_prompts: int | None = field(default=None, metadata={"help": "Batch mode: only the first N records of --prompts_file."})
    instruction_field: str = field(default=DEFAULT_FIELDS["instruction"], metadata={"help": "Batch mode: field of a record holding the instruction."})
    input_field: str = field(default=DEFAULT_FIELDS["input"], metadata={"help": "Batch mode: field holding the input (optional)."})
    output_field: str = field(default=DEFAULT_FIELDS["output"], metadata={"help": "Batch mode: field holding the reference answer (optional)."})
    sweep: str | None = field(default=None, metadata={"help": "Batch mode: grid of settings, \"top_k=1,10 num_beams=1,4\", or a YAML file of name: [values]."})
    overwrite: bool = field(default=False, metadata={"help": "Batch mode: replace an --output_file of generations written with other settings or another model."})
    rate: bool = field(default=False, metadata={"help": "Interactive mode: ask for a 1-5 rating after every answer."})
    ratings_file: str | None = field(default=None, metadata={"help": "Interactive mode: ratings JSONL (default: ratings.jsonl in the adapter's run folder, else here)."})


BATCH_ONLY = ("output_file", "sweep", "max_prompts", "overwrite")
FIELD_FLAGS = ("instruction_field", "input_field", "output_field")


def parse_args(argv: list[str] | None = None) -> tuple[InferenceModelArguments, GenerationSettings, JobArguments]:
    parser = ArgumentParser((InferenceModelArguments, GenerationSettings, JobArguments), description=DESCRIPTION)
    return parse_dataclasses(parser, sys.argv[1:] if argv is None else argv)


def check_job(job: JobArguments) -> None:
    batch_mode = job.prompts_file is not None
    if job.instruction is not None and batch_mode:
        fail("--instruction and --prompts_file exclude each other: one answer, or a file of prompts")
    if job.input is not None and job.instruction is None:
        fail("--input goes with --instruction")
    if job.image is not None:
        if job.instruction is None:
            fail("--image goes with --instruction (in a --prompts_file, records name their image in an 'image' field)")
        check_image(job.image, "--image")
    if batch_mode and not job.output_file:
        fail("--prompts_file needs --output_file (the JSONL of generations)")
    for flag in BATCH_ONLY:
        if getattr(job, flag) not in (None, False) and not batch_mode:
            fail(f"--{flag} is for batch mode: pass --prompts_file too")
    for flag in FIELD_FLAGS:
        if getattr(job, flag) != DEFAULT_FIELDS[flag.removesuffix("_field")] and not batch_mode:
            fail(f"--{flag} is for batch mode: pass --prompts_file too")
    if (job.rate or job.ratings_file) and (batch_mode or job.instruction is not None):
        fail("--rate and --ratings_file are for interactive mode (no --instruction, no --prompts_file)")
    if job.batch_size < 1:
        fail(f"--batch_size must be >= 1, got {job.batch_size}")
    if job.max_prompts is not None and job.max_prompts < 1:
        fail(f"--max_prompts must be >= 1, got {job.max_prompts}")
    if batch_mode:
        if Path(job.output_file).resolve() == Path(job.prompts_file).resolve():
            fail(f"--output_file {job.output_file} is the --prompts_file: generations go to a file of their own")
        check_writable_folder(Path(job.output_file).parent, "--output_file")
    if job.ratings_file:
        check_writable_folder(Path(job.ratings_file).parent, "--ratings_file")


def run_batch(job: JobArguments, grid: list[dict], source) -> None:
    fields = {name.removesuffix("_field"): getattr(job, name) for name in FIELD_FLAGS}
    records = batch.load_prompt_records(job.prompts_file, job.max_prompts, fields, source.prompt_template)
    with batch.output_lock(job.output_file):
        batch_job, done = batch.prepare_batch_job(records, grid, job.output_file, job.batch_size, source, job.overwrite)
        model, tokenizer = load(source, grid)
        result = batch.run_batch_job(batch_job, done, model, tokenizer)
    empty = f"; {result.empty} of them empty (the model ended its answer at once)" if result.empty else ""
    print(f"wrote {result.written} line(s) to {job.output_file}{empty}")


def load(source, grid: list[dict]):
    """The model and tokenizer; then the settings' stop strings are checked against the tokenizer (the one check that
    needs it), before anything is generated or written."""
    model, tokenizer = generate.load_for_inference(source)
    for setting in grid:
        check_stop_strings(setting.get("stop"), text_tokenizer(tokenizer))
    print(f"loaded {source.base_model}" + (f" + adapter {source.adapter}" if source.adapter else " (no adapter)")
          + f": {source.describe_precision()}, on {generate.describe_device(model)}", file=sys.stderr)
    return model, tokenizer


def main(argv: list[str] | None = None) -> None:
    model_args, settings, job = parse_args(argv)
    # Every check a user can fail runs before a model is loaded.
    check_job(job)
    sweep = batch.parse_sweep(job.sweep) if job.sweep else None
    grid = batch.expand_grid(settings, sweep)
    source = resolve_model_source(model_args)
    if job.prompts_file:
        run_batch(job, grid, source)
    elif job.instruction is not None:
        record = {"id": "--instruction", "instruction": job.instruction, "input": job.input or "", "output": ""}
        if job.image is not None:
            if source.model_kind != IMAGE_TEXT_TO_TEXT:
                fail(f"--image: {source.base_model} is a text-only model; use an image-text model (LLaVA)")
            record[IMAGE_FIELD] = job.image
        model, tokenizer = load(source, grid)
        prompt = generate.prompt_for(record, source.prompt_template, tokenizer)
        generate.seed_everything(grid[0]["seed"])
        images = generate.record_images([record]) or None
        print(generate.generate_answers(model, tokenizer, [prompt], grid[0], images=images)[0].text)
    else:
        ratings = interactive.RatingsFile(job.ratings_file or interactive.default_ratings_path(source))
        model, tokenizer = load(source, grid)
        interactive.run_interactive(model, tokenizer, source, settings, ratings, job.rate)

