"""Alpaca-format records: download, load, validate, subset and split.

A record is a dict with string fields `instruction`, `input` (optional: missing means empty) and `output`
(optional for prompts to answer); other field names map onto them (--instruction_field and friends).
A record may also name an `image` (a path, relative to the data file's folder) for image-text models; LLaVA's
own form, `{"id", "image", "conversations": [{"from": "human", "value": "<image>\n..."}, {"from": "gpt", ...}]}`,
is read as one Alpaca record per human/gpt turn.
A multi-turn conversation (`messages`, or ShareGPT's `conversations` without an image: data/conversations.py) is
one record holding its `messages`, with the derived `instruction` (its last user turn), `input` (empty) and `output`
(its last assistant turn, the reference; None when it ends with a user turn) that generation lines and the rating
page show.
Every record is checked on load; a broken file stops the job with one line naming the file, the record
and the field.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ..cli import fail
from ..files import atomic_write_bytes
from ..jsonl import decode_utf8, parse_lines, read_bytes
from ..vision import IMAGE_FIELD, check_image
from .conversations import (
    CONVERSATIONS, MESSAGES, conversation_field, prompt_messages, read_messages, reference_answer, require_chat_template,
)

REQUIRED_FIELDS = ("instruction", "input", "output")
DEFAULT_FIELDS = {name: name for name in REQUIRED_FIELDS}

ALPACA_DATA_URL = "https://raw.githubusercontent.com/tatsu-lab/stanford_alpaca/main/alpaca_data.json"
ALPACA_DATA_SHA256 = "2eddafc6b977608d778aaab8dfc7e50e547b3af9826dfb9e909d9fc362e4a419"
DEFAULT_DATA_PATH = "alpaca_data.json"
# The checkout ships the file at its top level (DATA_LICENSE: CC BY-NC 4.0, research use); a copy of the package
# installed elsewhere, run from a folder without the file, downloads it (sha256-checked).
SHIPPED_DATA = Path(__file__).resolve().parents[2] / DEFAULT_DATA_PATH


def default_data_file() -> Path:
    """The default --data_path: alpaca_data.json here, else the checkout's shipped copy, else here (downloaded)."""
    here = Path(DEFAULT_DATA_PATH)
    return here if here.exists() or not SHIPPED_DATA.is_file() else SHIPPED_DATA


def data_file(data_path: str) -> Path:
    """The file a --data_path names (the default: default_data_file's); a hub id gives a path that does not exist."""
    return default_data_file() if data_path == DEFAULT_DATA_PATH else Path(data_path)


# ---------------------------------------------------------------------------------------------
# Download of the original Alpaca data, for an installed copy without the shipped file
# ---------------------------------------------------------------------------------------------
def download_alpaca_data(destination: Path, url: str | None = None) -> None:
    """Fetch alpaca_data.json, check its sha256 and store it atomically."""
    url = url or os.environ.get("ALPACA_DATA_URL", ALPACA_DATA_URL)
    print(f"{destination} not found: downloading the Stanford Alpaca data from {url}")
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            payload = response.read()
    except Exception as error:  # any network failure means the same thing to the user
        fail(
            f"cannot download {destination.name} from {url} ({type(error).__name__}: {error}); "
            f"download it by hand into {destination} (sha256 {ALPACA_DATA_SHA256}) or pass --data_path"
        )
    digest = hashlib.sha256(payload).hexdigest()
    if digest != ALPACA_DATA_SHA256:
        fail(f"downloaded {url} has sha256 {digest}, expected {ALPACA_DATA_SHA256}; not saved")
    atomic_write_bytes(destination, payload)
    print(f"saved {destination} ({len(payload):,} bytes, sha256 verified)")


# ---------------------------------------------------------------------------------------------
# Loading and validation
# ---------------------------------------------------------------------------------------------
def load_records(data_path: str, fields: dict[str, str] | None = None, require_output: bool = True,
                 template: str | None = None) -> list[dict]:
    """Records from a .json list, a .jsonl file or a datasets hub id, each validated and given an `id`.

    `fields` maps instruction/input/output to the user's field names (default: the same names). Without
    `require_output` (prompts to generate answers for) a record may lack its output: it is then None.
    `template` (training's --prompt_template, generation's template): a conversation is rendered by the chat
    template only, so any other template is refused at the first conversation, naming it."""
    return load_file_records(data_path, fields, require_output, template)[0]


def load_file_records(data_path: str, fields: dict[str, str] | None = None, require_output: bool = True,
                      template: str | None = None) -> tuple[list[dict], str | None]:
    """load_records' records, and the sha256 of the very bytes they were parsed from (the file is read once; None
    for a datasets hub id): what a run records of its data and compares on resume (data/mix.py)."""
    path = data_file(data_path)
    if not path.exists() and data_path == DEFAULT_DATA_PATH:
        download_alpaca_data(path)
    sha256 = None
    if path.is_file():
        if path.suffix not in (".json", ".jsonl"):
            fail(f"{path}: unsupported data file type '{path.suffix}' (use .json or .jsonl)")
        data = read_bytes(path)
        sha256 = hashlib.sha256(data).hexdigest()
        raw = (_parse_json_list(path, data) if path.suffix == ".json"
               else [row for _, row in parse_lines(path, decode_utf8(path, data))])
    elif path.exists():
        fail(f"{path}: is a directory, expected a .json or .jsonl file")
    elif path.suffix in (".json", ".jsonl"):
        fail(f"{path}: no such file")
    else:
        raw = _load_hub_dataset(data_path)
    fields = {**DEFAULT_FIELDS, **(fields or {})}
    records = []
    for index, record in enumerate(raw):
        form = conversation_field(record, fields)
        if form is not None:
            if template is not None:
                require_chat_template(template, f"{data_path}: record {index}: field '{form}'")
            records.append(conversation_record(record, form, data_path, index, require_output))
        elif is_llava_conversation(record, fields):
            records += [validate_record(turn, data_path, index, fields, require_output)
                        for turn in conversation_records(record, data_path, index)]
        else:
            records.append(validate_record(record, data_path, index, fields, require_output))
    if not records:
        fail(f"{data_path}: holds no records")
    folder = path.resolve().parent if path.is_file() else Path.cwd()
    for index, record in enumerate(records):
        if IMAGE_FIELD in record:
            record[IMAGE_FIELD] = str((folder / Path(record[IMAGE_FIELD]).expanduser()).resolve())
            check_image(record[IMAGE_FIELD], f"{data_path}: record {index}: field '{IMAGE_FIELD}'")
    return records, sha256


# ---------------------------------------------------------------------------------------------
# Multi-turn conversations (messages, ShareGPT)
# ---------------------------------------------------------------------------------------------
def conversation_record(record: dict, form: str, source: str, index: int, require_output: bool) -> dict:
    """A conversation record (`form`: its field, messages or conversations): its id and messages, and the derived
    instruction, input and output."""
    where = f"{source}: record {index}"
    messages = read_messages(record, form, where, require_output)
    if record.get(IMAGE_FIELD) is not None:
        fail(f"{where}: field '{IMAGE_FIELD}': a '{MESSAGES}' conversation takes no image (LLaVA's '{CONVERSATIONS}' "
             "form with an image does, one question at a time)")
    return {"id": record_id(record, where, index), MESSAGES: messages, "instruction": prompt_messages(messages)[-1]["content"],
            "input": "", "output": reference_answer(messages)}


# ---------------------------------------------------------------------------------------------
# LLaVA's conversation form (with an image)
# ---------------------------------------------------------------------------------------------
LLAVA_IMAGE_PLACEHOLDER = "<image>"


def is_llava_conversation(record, fields: dict[str, str]) -> bool:
    """LLaVA's form: `conversations` with an image (conversation_field has taken those without one, ShareGPT's)."""
    return isinstance(record, dict) and CONVERSATIONS in record and fields["instruction"] not in record


def conversation_records(record: dict, source: str, index: int) -> list[dict]:
    """One Alpaca record per human/gpt turn of a LLaVA conversation, each with the conversation's image.

    The `<image>` placeholder is dropped from the text: prompts put the model's own image token in one place
    (data/prompts.py), whatever the data wrote. A later turn is read without the earlier ones (each is a
    question about the same image); its id is `<id>-<turn>`."""
    where = f"{source}: record {index}"
    turns = record[CONVERSATIONS]
    if not isinstance(turns, list) or not turns or len(turns) % 2:
        fail(f"{where}: field '{CONVERSATIONS}' must be a list of human/gpt message pairs")
    pairs = []
    for number in range(0, len(turns), 2):
        human, gpt = turns[number], turns[number + 1]
        for position, message, speaker in ((number, human, "human"), (number + 1, gpt, "gpt")):
            if not isinstance(message, dict) or message.get("from") != speaker or not isinstance(message.get("value"), str):
                fail(f"{where}: field '{CONVERSATIONS}' message {position}: expected "
                     f"{{\"from\": \"{speaker}\", \"value\": \"...\"}}")
        question = human["value"].replace(LLAVA_IMAGE_PLACEHOLDER, "").strip()
        pairs.append((question, gpt["value"]))
    base_id = record.get("id", index)
    converted = []
    for turn, (question, answer) in enumerate(pairs):
        item = {"id": base_id if len(pairs) == 1 else f"{base_id}-{turn}", "instruction": question, "input": "", "output": answer}
        if IMAGE_FIELD in record:
            item[IMAGE_FIELD] = record[IMAGE_FIELD]
        converted.append(item)
    return converted


def _parse_json_list(path: Path, data: bytes) -> list:
    try:
        records = json.loads(decode_utf8(path, data))
    except json.JSONDecodeError as error:
        fail(f"{path}:{error.lineno}: not valid JSON ({error.msg} at column {error.colno})")
    if not isinstance(records, list):
        fail(f"{path}: top level must be a JSON list of records, found {type(records).__name__}")
    return records




def _load_hub_dataset(dataset_id: str) -> list:
    try:
        import datasets

        dataset = datasets.load_dataset(dataset_id, split="train")
    except Exception as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        fail(f"{dataset_id}: not a local .json/.jsonl file and not loadable as a datasets hub id ({first_line})")
    return [dict(row) for row in dataset]


def validate_record(record, source: str, index: int, fields: dict[str, str] | None = None, require_output: bool = True) -> dict:
    """{id, instruction, input, output} of one record, or a one-line error naming file, record index and field."""
    fields = fields or DEFAULT_FIELDS
    where = f"{source}: record {index}"
    if not isinstance(record, dict):
        fail(f"{where}: expected an object with {', '.join(repr(fields[name]) for name in REQUIRED_FIELDS)}, "
             f"found {type(record).__name__}")

    def text(name: str, required: bool) -> str | None:
        key = fields[name]
        if key not in record or (record[key] is None and name == "input"):
            if required:
                flag = f" (--{name}_field names another)" if key == DEFAULT_FIELDS[name] else ""
                fail(f"{where}: missing field '{key}'{flag}")
            return "" if name == "input" else None
        if not isinstance(record[key], str):
            fail(f"{where}: field '{key}' must be a string, found {type(record[key]).__name__}")
        return record[key]

    instruction = text("instruction", required=True)
    if not instruction.strip():
        fail(f"{where}: field '{fields['instruction']}' is empty")
    validated = {"id": record_id(record, where, index), "instruction": instruction, "input": text("input", required=False),
                 "output": text("output", required=require_output)}
    if record.get(IMAGE_FIELD) is not None:
        image = record[IMAGE_FIELD]
        if not isinstance(image, str) or not image.strip():
            fail(f"{where}: field '{IMAGE_FIELD}' must be a path to an image file, found {type(image).__name__}")
        validated[IMAGE_FIELD] = image
    return validated


def record_id(record: dict, where: str, index: int):
    """The record's `id`, or its index in the file when it has none."""
    value = record.get("id", index)
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        fail(f"{where}: field 'id' must be a string or an integer, found {type(value).__name__}")
    return value


# ---------------------------------------------------------------------------------------------
# Subset and held-out split
# ---------------------------------------------------------------------------------------------
@dataclass
class DataSplit:
    train: list[dict]
    val: list[dict]
    empty_outputs: int  # records kept whose output is empty: they teach the model to stop at once
    sources: dict = field(default_factory=dict)  # what each data file gave (data/mix.py): run_info.json keeps it


def make_split(train: list[dict], val: list[dict], sources: dict | None = None) -> DataSplit:
    empty_outputs = sum(1 for record in train + val if not record["output"].strip())
    return DataSplit(train=train, val=val, empty_outputs=empty_outputs, sources=sources or {})


def resolve_val_size(val_set_size: float, n_records: int) -> int:
    if val_set_size < 0:
        fail(f"--val_set_size must be >= 0, got {val_set_size}")
    size = round(val_set_size * n_records) if 0 < val_set_size < 1 else int(val_set_size)
    if size >= n_records:
        fail(
            f"--val_set_size {val_set_size} leaves no training records out of {n_records}; "
            "pass a smaller count or a fraction such as 0.1"
        )
    return size


def shuffled_order(n_records: int, seed: int) -> list[int]:
    order = list(range(n_records))
    random.Random(seed).shuffle(order)
    return order


def split_order(n_records: int, val_set_size: float, max_samples: int | None, seed: int) -> tuple[list[int], list[int]]:
    """(held-out, training) indices of the subset and split: the same sizes and seed always give the same ones.
    `max_samples`, when given, is at least 1 (training/config.py check_values owns that rule)."""
    order = shuffled_order(n_records, seed)
    if max_samples is not None:
        order = order[:max_samples]
    n_val = resolve_val_size(val_set_size, len(order))
    return order[:n_val], order[n_val:]


def split_records(records: list[dict], val_set_size: float, max_samples: int | None, seed: int) -> DataSplit:
    """Deterministic: the same records, seed and sizes always give the same subset and split."""
    val, train = split_order(len(records), val_set_size, max_samples, seed)
    return make_split([records[i] for i in train], [records[i] for i in val])
