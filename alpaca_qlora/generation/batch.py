"""Batch mode: a prompts file -> one JSONL line per (record, setting), resumable, with sweeps.

Lines are appended and flushed one by one. Started again with the same command, a run reads what is
already there, skips it and writes only what is missing: an interrupted run neither loses nor
duplicates a line. Batches are fixed by the prompts and --batch_size alone (records grouped by their first
tokens, then sorted by prompt length, longest first). A sampled answer is drawn with a generator seeded from the
setting's seed and the record's id (sampling.py), so it is the same in any batch, resumed or not; beam sampling
draws across a row's beams inside `generate` and is seeded per batch (the setting's seed and the batch's index).
"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import yaml
from tqdm.auto import tqdm

from ..cli import UserError, fail
from ..data.conversations import HISTORY, MESSAGES, prompt_messages
from ..data.records import load_records
from ..data.tokenization import encode_text
from ..jsonl import AppendableFile, append_line, drop_torn_tail, read_appendable
from ..vision import IMAGE_FIELD, IMAGE_TEXT_TO_TEXT
from .generate import batch_seed, context_length, generate_answers, prompt_for, record_images, seed_everything
from .sampling import answer_seed
from .settings import SETTING_NAMES, GenerationSettings, parse_setting_value, resolve_settings, settings_key, settings_label
from .source import ModelSource


# ---------------------------------------------------------------------------------------------
# Sweeps
# ---------------------------------------------------------------------------------------------
def parse_sweep(spec: str) -> dict[str, list]:
    """--sweep "top_k=1,10,50 num_beams=1,4" or a YAML/JSON file mapping setting names to lists of values."""
    if spec.endswith((".yaml", ".yml", ".json")) or Path(spec).is_file():
        return read_sweep_file(spec)
    grid = {}
    for item in spec.split():
        name, sep, values = item.partition("=")
        if not sep or not values:
            fail(f"--sweep: '{item}' is not name=value1,value2,... (e.g. --sweep \"top_k=1,10 num_beams=1,4\")")
        if name in grid:
            fail(f"--sweep: '{name}' is given twice")
        grid[name] = sweep_values(name, values.split(","), "--sweep")
    if not grid:
        fail("--sweep is empty")
    return grid


def read_sweep_file(path: str) -> dict[str, list]:
    if not Path(path).is_file():
        fail(f"--sweep {path}: no such file")
    try:
        values = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        fail(f"--sweep {path}: cannot parse: {str(error).splitlines()[0]}")
    if not isinstance(values, dict) or not values:
        fail(f"--sweep {path}: expected a mapping of setting names to lists of values, e.g. top_k: [1, 10, 50]")
    grid = {}
    for name, options in values.items():
        options = options if isinstance(options, list) else [options]
        if not options:
            fail(f"--sweep {path}: '{name}' has no values")
        grid[str(name)] = sweep_values(str(name), [str(option) for option in options], f"--sweep {path}")
    return grid


def sweep_values(name: str, texts: list[str], where: str) -> list:
    if name == "stop":  # a stop string may hold spaces and commas, the separators of a sweep
        fail(f"{where}: stop is not swept; --stop applies to every setting of the sweep")
    try:
        return [parse_setting_value(name, text) for text in texts]
    except UserError as error:
        fail(f"{where}: {error}")


def expand_grid(base: GenerationSettings, sweep: dict[str, list] | None) -> list[dict]:
    """Resolved settings of every combination (the flags give what the sweep leaves out), each checked."""
    if not sweep:
        return [resolve_settings(base)]
    names = list(sweep)
    resolved, seen, combinations = [], set(), 0
    for values in itertools.product(*(sweep[name] for name in names)):
        combinations += 1
        combination = dict(zip(names, values))
        where = "--sweep setting " + " ".join(f"{name}={value}" for name, value in combination.items())
        setting = resolve_settings(replace(base, **combination), where, strict=False)
        if settings_key(setting) not in seen:
            seen.add(settings_key(setting))
            resolved.append(setting)
    if len(resolved) < combinations:
        print(f"note: the sweep's {combinations} combinations are {len(resolved)} distinct decodings (sampling knobs do "
              "nothing without sampling); each is generated and labelled once")
    return resolved


# ---------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------
def load_prompt_records(path: str, max_prompts: int | None, fields: dict[str, str] | None = None,
                        template: str | None = None) -> list[dict]:
    """Alpaca records or conversations (.json/.jsonl, a run folder's val.jsonl included) with unique ids; the output
    (the reference answer: a conversation's last turn when it is the assistant's) is optional: prompts without one
    are generated for, and their lines carry no reference. `template` (the prompts' template): a conversation under
    any template but chat is refused here, naming the file and the record, before a model loads."""
    records = load_records(path, fields, require_output=False, template=template)
    if max_prompts is not None:
        records = records[:max_prompts]
    seen = set()
    for index, record in enumerate(records):
        key = json.dumps(record["id"])
        if key in seen:
            fail(f"{path}: record {index}: duplicate id {record['id']!r} (ids must be unique to resume a run)")
        seen.add(key)
    return records


def plan_batches(prompt_lengths: list[int], batch_size: int, beginnings: list | None = None) -> list[list[int]]:
    """Record indices per batch: prompts that begin alike together (`beginnings`, e.g. their first tokens: the
    template's preamble is then computed once per batch, shared_prefix.py), then by prompt length, longest first
    (little padding; memory limits show at once)."""
    beginnings = beginnings or [()] * len(prompt_lengths)
    order = sorted(range(len(prompt_lengths)), key=lambda i: (beginnings[i], -prompt_lengths[i], i))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


BEGINNING_TOKENS = 16  # prompts are grouped by this many first tokens (the two Alpaca preambles differ within 12)


# ---------------------------------------------------------------------------------------------
# The output file: resume-safe appending
# ---------------------------------------------------------------------------------------------
GENERATION_LINE_KEYS = {"id", "settings", "base_model", "adapter", "prediction"}
LINE_START = '{"id": '  # how every generation line begins (its first key): a half-written one too


def line_key(setting_key: str, record_id) -> tuple[str, str]:
    return setting_key, json.dumps(record_id)


def read_output_file(path: Path) -> AppendableFile:
    """The lines already in --output_file, each recognised as a line this command writes; nothing is changed.

    A file that is not a generations file (the user's data, notes, anything else) is refused even with
    --overwrite: that flag replaces generations, never other files."""
    try:
        existing = read_appendable(path)
    except UserError as error:
        fail(f"--output_file {error}; not a generations file of inference.py: choose another --output_file")
    for number, row in existing.rows:
        if not GENERATION_LINE_KEYS <= set(row) or not isinstance(row["settings"], dict):
            fail(f"--output_file {path}:{number}: not a generation line (no id/settings/base_model/adapter/prediction); "
                 "not a generations file of inference.py: choose another --output_file")
    if not existing.tail_is_ours(LINE_START, lambda row: GENERATION_LINE_KEYS <= set(row)):
        fail(f"--output_file {path}: its last line is not a generation line; not a generations file of inference.py: "
             "choose another --output_file")
    return existing


def done_keys(existing: AppendableFile, source: ModelSource, settings: list[dict], records: list[dict]) -> set:
    """Keys of the lines already written; refuses a file from other settings, another model or other prompts."""
    path = existing.path
    wanted_settings = {settings_key(s) for s in settings}
    wanted_ids = {json.dumps(r["id"]) for r in records}
    done = set()
    for number, row in existing.rows:
        where = f"--output_file {path}:{number}"
        if row.get("precision") != source.precision():
            fail(f"{where}: written with the base at another precision ({row.get('precision')}, now {source.precision()}); "
                 "pass --overwrite to replace the file or choose another --output_file")
        if (row["base_model"], row["adapter"]) != (source.base_model, source.adapter):
            fail(
                f"{where}: written by base model {row['base_model']} with adapter {row['adapter']}, not "
                f"{source.base_model} with adapter {source.adapter}; pass --overwrite to replace the file or choose another --output_file"
            )
        key = line_key(settings_key(row["settings"]), row["id"])
        if key[0] not in wanted_settings:
            fail(f"{where}: written with other generation settings ({settings_label(row['settings'])}); pass --overwrite or choose another --output_file")
        if key[1] not in wanted_ids:
            fail(f"{where}: id {row['id']!r} is not in the prompts file; pass --overwrite or choose another --output_file")
        done.add(key)
    return done


# ---------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------
@dataclass
class BatchJob:
    records: list[dict]
    settings: list[dict]
    output_file: Path
    batch_size: int
    source: ModelSource
    overwrite: bool
    existing: AppendableFile  # what --output_file held when the job was checked


def prepare_batch_job(records, settings, output_file: str, batch_size: int, source: ModelSource, overwrite: bool):
    """Everything checked before a model is loaded: returns the job and the lines already done."""
    path = Path(output_file)
    if path.is_dir():
        fail(f"--output_file {output_file} is a folder")
    check_images_supported(records, source)
    existing = read_output_file(path)
    done = set() if overwrite else done_keys(existing, source, settings, records)
    return BatchJob(records, settings, path, batch_size, source, overwrite, existing), done


def check_images_supported(records: list[dict], source: ModelSource) -> None:
    with_image = next((r for r in records if r.get(IMAGE_FIELD) is not None), None)
    if with_image is not None and source.model_kind != IMAGE_TEXT_TO_TEXT:
        fail(f"record {with_image['id']!r} has an '{IMAGE_FIELD}', but {source.base_model} is a text-only model; "
             "use an image-text model (LLaVA) or prompts without images")


def generation_line(record: dict, answer, setting: dict, source: ModelSource, seconds: float) -> dict:
    line = {"id": record["id"], "instruction": record["instruction"], "input": record["input"]}
    if record.get(IMAGE_FIELD) is not None:  # only image prompts carry the field: text lines are unchanged
        line[IMAGE_FIELD] = record[IMAGE_FIELD]
    if MESSAGES in record:  # a conversation: the turns before its last user turn (the instruction), for the rating page
        line[HISTORY] = prompt_messages(record[MESSAGES])[:-1]
    if record["output"] is not None:  # the reference answer, when the prompts file has one
        line["reference"] = record["output"]
    return {
        **line,
        "prediction": answer.text,
        "settings": setting,
        "base_model": source.base_model,
        "adapter": source.adapter,
        "precision": source.precision(),
        "new_tokens": answer.new_tokens,
        "seconds": round(seconds, 4),
    }


def warn_past_context(lengths: list[int], model, what: str, consequence: str) -> None:
    """One warning for the texts (their lengths in tokens, all that follows them counted) longer than the model's
    context: generation's prompts and the judge's (judge/job.py)."""
    limit = context_length(model)
    too_long = sum(1 for n in lengths if limit and n > limit)
    if too_long:
        print(f"warning: {too_long} of {len(lengths)} {what} exceed the model's {limit}-token context; {consequence}")


def warn_long_prompts(lengths: list[int], settings: list[dict], model) -> None:
    longest_answer = max(s["max_new_tokens"] for s in settings)
    warn_past_context([n + longest_answer for n in lengths], model, f"prompts plus max_new_tokens {longest_answer}",
                      "what is generated past it is unreliable")


@dataclass
class BatchResult:
    written: int
    empty: int  # answers that are empty: the model wrote its end-of-sequence token at once


def run_batch_job(job: BatchJob, done: set, model, tokenizer) -> BatchResult:
    """Generate every missing (setting, record) line."""
    prompts = [prompt_for(record, job.source.prompt_template, tokenizer) for record in job.records]
    token_ids = [encode_text(tokenizer, prompt) for prompt in prompts]
    lengths = [len(ids) for ids in token_ids]
    warn_long_prompts(lengths, job.settings, model)
    batches = plan_batches(lengths, job.batch_size, [tuple(ids[:BEGINNING_TOKENS]) for ids in token_ids])
    total = len(job.settings) * len(job.records)
    print(f"{len(job.settings)} setting(s) x {len(job.records)} prompts = {total} lines; {len(done)} already in {job.output_file}")
    job.output_file.parent.mkdir(parents=True, exist_ok=True)
    written = empty = 0
    if not job.overwrite:
        drop_torn_tail(job.existing)
    mode = "w" if job.overwrite else "a"
    with job.output_file.open(mode, encoding="utf-8") as handle, tqdm(total=total, initial=len(done), unit="line") as bar:
        for setting in job.settings:
            key = settings_key(setting)
            bar.set_description(short_label(setting, job.settings))
            for batch_index, batch in enumerate(batches):
                missing = [i for i in batch if line_key(key, job.records[i]["id"]) not in done]
                if not missing:
                    continue
                seed_everything(batch_seed(setting["seed"], batch_index))
                started = time.perf_counter()
                images = record_images([job.records[i] for i in batch])
                seeds = [answer_seed(setting["seed"], job.records[i]["id"]) for i in batch]
                answers = generate_batch(model, tokenizer, [prompts[i] for i in batch], setting, job.batch_size, images, seeds)
                seconds = (time.perf_counter() - started) / len(batch)
                for i, answer in zip(batch, answers):
                    if i in missing:
                        append_line(handle, generation_line(job.records[i], answer, setting, job.source, seconds))
                        written += 1
                        empty += not answer.text
                        bar.update(1)
        os.fsync(handle.fileno())
    return BatchResult(written, empty)


@contextmanager
def output_lock(output_file: str, flag: str = "--output_file", writer: str = "inference.py"):
    """Hold --output_file for this process from its check to its last line: a second process on the same file
    would write the same lines twice. The lock is a `.NAME.lock` file beside it (flock, released on exit).
    `flag` and `writer` name the file and the command in the refusal (the judge holds its --ratings_file so)."""
    path = Path(output_file)
    lock_path = path.parent / f".{path.name}.lock"
    if not path.parent.is_dir():
        yield
        return
    handle = lock_path.open("a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        fail(f"{flag} {output_file} is being written by another {writer} process; wait for it, "
             f"or choose another {flag}")
    try:
        yield
    finally:
        lock_path.unlink(missing_ok=True)
        handle.close()


def generate_batch(model, tokenizer, prompts: list[str], setting: dict, batch_size: int, images: list | None = None,
                   answer_seeds: list[int] | None = None):
    try:
        return generate_answers(model, tokenizer, prompts, setting, images=images or None, answer_seeds=answer_seeds)
    except torch.cuda.OutOfMemoryError:
        fail(f"out of GPU memory at --batch_size {batch_size}; run again with a smaller one (the lines written so far are kept)")


def short_label(setting: dict, all_settings: list[dict]) -> str:
    """The settings that vary across the sweep, for the progress bar (compared as JSON: stop's value is a list)."""
    varying = [name for name in SETTING_NAMES if len({json.dumps(s.get(name)) for s in all_settings}) > 1]
    return " ".join(f"{name}={setting.get(name)}" for name in varying) or "generating"
