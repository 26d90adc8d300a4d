"""Several data files in one run: the records each gives, and what the run folder keeps about them.

    --data_path a.json b.jsonl                      every record of every file once: the files as one file of them
                                                    all, in order (--max_samples and --val_set_size as for one file)
    --data_weights 0.7 0.3                          training records drawn from the files in these proportions (the
                                                    held-out records from all the files' records, whatever the weights)
    --data_fields '{"b.jsonl": {"instruction": "question", "output": "answer"}}'
                                                    field names of one file (a mapping under data_fields in --config)

With several files a record's id becomes `<path as given>:<id>`, so ids stay unique (val.jsonl is a prompts file).
The run records, per file, its sha256, its records, its weight and how many records it gave to training and to the
held-out set (run_info.json, data.sources).

Why not datasets.interleave_datasets: it needs one Arrow schema across the files (an Alpaca file and a
conversation file have none in common), and it draws the file of every record at random with no control of the
count per file; mix_counts below gives each file its share exactly.
"""

from __future__ import annotations

import bisect
import json
import math
from dataclasses import dataclass

from ..cli import fail
from .records import (
    DEFAULT_FIELDS, DataSplit, data_file, load_file_records, make_split, resolve_val_size, shuffled_order, split_order,
)

CONCATENATED = "concatenated: every record of every file once"
WEIGHTED = "weighted: --data_weights shares of the training records (data/mix.py mix_counts)"


@dataclass
class DataFile:
    path: str  # as given
    records: list[dict]
    file: str | None  # the file read (absolute); None for a datasets hub id
    sha256: str | None

    def facts(self) -> dict:
        """What the run folder keeps about it."""
        return {"path": self.path, "file": self.file, "sha256": self.sha256, "records": len(self.records)}


def read_data_file(path: str, fields: dict[str, str], template: str) -> DataFile:
    """A --data_path file's records and facts; its sha256 is that of the bytes its records were parsed from."""
    records, sha256 = load_file_records(path, fields, template=template)
    if sha256 is None:  # a datasets hub id
        return DataFile(path, records, None, None)
    file = data_file(path)  # after load_file_records, which downloads the default file where it is missing
    return DataFile(path, records, str(file.resolve()), sha256)


def source_files(sources: dict) -> list[dict]:
    """Each file's facts in a split's sources (run_info.json's data.sources): the --data_path files, then the
    --val_data_path file."""
    files = [facts for facts in sources.get("files", []) if isinstance(facts, dict)]
    return files + ([sources["val_data_path"]] if isinstance(sources.get("val_data_path"), dict) else [])


def changed_data_file(recorded: dict, current: dict) -> tuple[str, str, str] | None:
    """(path as given, recorded sha256, sha256 now) of the first data file whose bytes differ from those a run
    recorded (`recorded`: its data.sources; `current`: the sources as read now), else None. A file is matched by its
    path as given; one without a recorded sha256 (a datasets hub id, a run from before sources were recorded) is not
    compared."""
    then = {facts.get("path"): facts.get("sha256") for facts in source_files(recorded)}
    for facts in source_files(current):
        before = then.get(facts["path"])
        if before and facts["sha256"] and before != facts["sha256"]:
            return facts["path"], before, facts["sha256"]
    return None


# ---------------------------------------------------------------------------------------------
# The options, checked before anything is read
# ---------------------------------------------------------------------------------------------
def check_mix_options(paths: list[str], weights: list[float] | None, fields_text: str | None) -> None:
    """--data_path, --data_weights and --data_fields together: one line naming the flag for any mistake."""
    if not paths:
        fail("--data_path is empty")
    for index, path in enumerate(paths):
        if path in paths[:index]:
            fail(f"--data_path {path} is given twice (to weigh a file up, use --data_weights)")
    if weights is not None:
        if len(weights) != len(paths):
            fail(f"--data_weights: {len(weights)} weight(s) for {len(paths)} --data_path file(s); give one per file, in order")
        for path, weight in zip(paths, weights):
            if not math.isfinite(weight) or weight < 0:
                fail(f"--data_weights: the weight of {path} is {weight}; weights are numbers >= 0")
        if not sum(weights) > 0:
            fail(f"--data_weights {' '.join(map(str, weights))}: the weights must sum to a positive number")
    parse_data_fields(fields_text, paths)


def parse_data_fields(text: str | None, paths: list[str]) -> dict[str, dict[str, str]]:
    """--data_fields: {file as given in --data_path: {instruction|input|output: the file's field name}}."""
    if text is None or not text.strip():
        return {}
    try:
        mapping = json.loads(text)
    except json.JSONDecodeError as error:
        fail(f"--data_fields: not valid JSON ({error.msg} at column {error.colno}); e.g. "
             '\'{"b.jsonl": {"instruction": "question", "output": "answer"}}\'')
    if not isinstance(mapping, dict):
        fail(f"--data_fields: expected a mapping of --data_path files to field names, found {type(mapping).__name__}")
    for path, names in mapping.items():
        if path not in paths:
            fail(f"--data_fields: {path} is not one of the --data_path files ({', '.join(paths)})")
        if not isinstance(names, dict):
            fail(f"--data_fields {path}: expected a mapping such as {{\"instruction\": \"question\"}}, found {type(names).__name__}")
        for name, field_name in names.items():
            if name not in DEFAULT_FIELDS:
                fail(f"--data_fields {path}: unknown field '{name}' (map {', '.join(DEFAULT_FIELDS)})")
            if not isinstance(field_name, str) or not field_name.strip():
                fail(f"--data_fields {path}: {name} must name a field, found {field_name!r}")
    return mapping


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------
def load_data_files(paths: list[str], fields: dict[str, str], fields_text: str | None, template: str) -> list[DataFile]:
    """Every --data_path file's records (`fields`: the --*_field names, which --data_fields overrides per file)."""
    per_file_fields = parse_data_fields(fields_text, paths)
    files = [read_data_file(path, {**fields, **per_file_fields.get(path, {})}, template) for path in paths]
    if len(files) > 1:
        for file in files:
            for record in file.records:
                record["id"] = f"{file.path}:{record['id']}"
    return files


# ---------------------------------------------------------------------------------------------
# The mix
# ---------------------------------------------------------------------------------------------
def mix_counts(weights: list[float], total: int) -> list[int]:
    """The rule: how many training records each file gives, its weight's share of `total`, rounded so that the counts
    sum to `total` (largest remainder: the files whose shares lost most to rounding down get one more, the first
    file first on a tie)."""
    whole = sum(weights)
    shares = [weight / whole * total for weight in weights]
    counts = [math.floor(share) for share in shares]
    by_remainder = sorted(range(len(weights)), key=lambda i: (counts[i] - shares[i], i))
    for index in by_remainder[: total - sum(counts)]:
        counts[index] += 1
    return counts


def draw_weighted(sizes: list[int], weights: list[float], val_set_size: float, max_samples: int | None, seed: int,
                  names: list[str] | None = None) -> tuple[list[int], list[int]]:
    """(held-out, training) indices into the files' records laid end to end, drawn by --data_weights.

    The held-out records come first, as from one file of all the records: the same seeded shuffle as split_order,
    --val_set_size counted on --max_samples when given (else on all the records). The training records are then
    N minus the held-out ones, N being --max_samples (which may exceed the records: files then repeat) or all the
    records; file i gives mix_counts(weights, that)[i] of them, taken from its own records that are not held out,
    in the shuffled order: as many whole passes over them as its share holds, then the first ones of one more pass.
    So a file repeats only when its share exceeds what it has, and then every record of it as evenly as can be. With
    one file and N no more than its records this is split_order's split exactly. The held-out records do not follow
    the weights: they are drawn from the pool of every file's records (a file of weight 0 gives held-out records
    too), so the held-out loss measures that pool. `max_samples`, when given, is at least 1 (training/config.py
    check_values owns that rule)."""
    names = names or [f"file {index + 1}" for index in range(len(sizes))]
    total = sum(sizes)
    order = shuffled_order(total, seed)
    wanted = total if max_samples is None else max_samples
    n_val = resolve_val_size(val_set_size, min(wanted, total))
    left: list[list[int]] = [[] for _ in sizes]
    for index, file in zip(order[n_val:], owners(order[n_val:], sizes)):
        left[file].append(index)
    train = []
    for file, count in enumerate(mix_counts(weights, wanted - n_val)):
        if count and not left[file]:
            fail(f"--data_weights: every record of {names[file]} is held out (--val_set_size {val_set_size}); none is "
                 "left to draw its share of the training records from")
        passes, extra = divmod(count, len(left[file])) if count else (0, 0)
        train += left[file] * passes + left[file][:extra]
    return order[:n_val], train


def owners(indices: list[int], sizes: list[int]) -> list[int]:
    """The file each of `indices` (into the files' records laid end to end) falls in."""
    starts = [sum(sizes[:file]) for file in range(len(sizes))]
    return [bisect.bisect_right(starts, index) - 1 for index in indices]


def per_file(indices: list[int], sizes: list[int]) -> list[int]:
    """How many of `indices` fall in each file, repeats counted."""
    counts = [0] * len(sizes)
    for file in owners(indices, sizes):
        counts[file] += 1
    return counts


def split_files(files: list[DataFile], weights: list[float] | None, val_set_size: float, max_samples: int | None,
                seed: int) -> DataSplit:
    """The training and held-out records of the files, concatenated (no weights) or drawn by draw_weighted, with
    each file's facts for the run folder."""
    sizes = [len(file.records) for file in files]
    pool = [record for file in files for record in file.records]
    if weights is None:
        val, train = split_order(len(pool), val_set_size, max_samples, seed)
    else:
        val, train = draw_weighted(sizes, weights, val_set_size, max_samples, seed, [file.path for file in files])
    facts = [{**file.facts(), "weight": None if weights is None else weights[index], "train": trained, "val": held_out}
             for index, (file, trained, held_out) in enumerate(zip(files, per_file(train, sizes), per_file(val, sizes)))]
    return make_split([pool[i] for i in train], [pool[i] for i in val],
                      {"mix": CONCATENATED if weights is None else WEIGHTED, "files": facts})
