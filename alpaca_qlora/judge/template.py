"""The judge's prompt: a template file (YAML or JSON) read and checked before anything runs, and its hash.

The package ships templates/pairwise.yaml (its comments say what each key is); --judge_template FILE replaces it.
A template needs {instruction}, {input}, {answer_a} and {answer_b} in its prompt, each once, and labels for A, B and
tie; anything else is one line naming the file and the key. The sha256 of what is used (prompt, empty_input,
verdict_prefix, labels: not the name or description) is recorded in every verdict and ends the judge's annotator
name, so verdicts of two different prompts never pass for one judge's.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..cli import fail, read_config_file
from ..data.prompts import fill_placeholders
from ..rating.store import JUDGE_LABELS

FLAG = "--judge_template"
DEFAULT_TEMPLATE = Path(__file__).resolve().parent / "templates" / "pairwise.yaml"
PLACEHOLDERS = ("{instruction}", "{input}", "{answer_a}", "{answer_b}")
PLACEHOLDER = re.compile(r"\{[a-z_]+\}")
KEYS = ("name", "description", "prompt", "empty_input", "verdict_prefix", "labels")
DEFAULTS = {"empty_input": "(none)", "verdict_prefix": ""}


@dataclass(frozen=True)
class JudgeTemplate:
    name: str
    prompt: str
    empty_input: str  # what stands for {input} when a record has none
    verdict_prefix: str  # the start of the judge's reply, before the label
    labels: dict[str, str]  # A, B, tie -> the text that follows verdict_prefix
    description: str = ""

    @property
    def sha256(self) -> str:
        used = {"prompt": self.prompt, "empty_input": self.empty_input, "verdict_prefix": self.verdict_prefix,
                "labels": self.labels}
        return hashlib.sha256(json.dumps(used, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()

    def question(self, instruction: str, input_text: str, answer_a: str, answer_b: str) -> str:
        """The prompt filled in, in one pass (braces inside a record or an answer stay as they are)."""
        return fill_placeholders(self.prompt, {"instruction": instruction,
                                               "input": input_text if input_text.strip() else self.empty_input,
                                               "answer_a": answer_a, "answer_b": answer_b})


def load_judge_template(path: str | None) -> JudgeTemplate:
    """The shipped template (path None) or a user's file, checked; one line naming the file and the key otherwise."""
    file = DEFAULT_TEMPLATE if path is None else Path(path).expanduser()
    where = f"{FLAG} {path}" if path is not None else str(file)
    values = read_config_file(str(file), FLAG)
    unknown = sorted(map(str, set(values) - set(KEYS)))
    if unknown:
        fail(f"{where}: unknown key(s) {', '.join(unknown)} (a judge template holds {', '.join(KEYS)})")
    for key in ("name", "description", "prompt", "empty_input", "verdict_prefix"):
        if key in values and not isinstance(values[key], str):
            fail(f"{where}: {key} must be a text, got {values[key]!r}")
    prompt = values.get("prompt")
    if not prompt or not prompt.strip():
        fail(f"{where}: prompt is missing or empty")
    check_placeholders(prompt, where)
    labels = check_labels(values.get("labels"), where)
    return JudgeTemplate(name=values.get("name") or file.stem, prompt=prompt, labels=labels,
                         empty_input=values.get("empty_input", DEFAULTS["empty_input"]),
                         verdict_prefix=values.get("verdict_prefix", DEFAULTS["verdict_prefix"]),
                         description=values.get("description", ""))


def check_placeholders(prompt: str, where: str) -> None:
    for placeholder in PLACEHOLDERS:
        count = prompt.count(placeholder)
        if count != 1:
            found = "lacks" if count == 0 else f"holds {count} times"
            fail(f"{where}: prompt {found} the placeholder {placeholder} (it needs {', '.join(PLACEHOLDERS)}, each once)")
    unknown = sorted(set(PLACEHOLDER.findall(prompt)) - set(PLACEHOLDERS))
    if unknown:
        fail(f"{where}: prompt has the unknown placeholder {unknown[0]} (allowed: {', '.join(PLACEHOLDERS)})")


def check_labels(labels: object, where: str) -> dict[str, str]:
    """A, B and tie, each a non-blank text of its own."""
    if not isinstance(labels, dict) or set(map(str, labels)) != set(JUDGE_LABELS):
        fail(f"{where}: labels must map {', '.join(JUDGE_LABELS)} to the text of each verdict, got {labels!r}")
    labels = {str(key): value for key, value in labels.items()}
    for label in JUDGE_LABELS:
        if not isinstance(labels[label], str) or not labels[label].strip():
            fail(f"{where}: labels.{label} must be a non-blank text, got {labels[label]!r}")
    if len(set(labels.values())) != len(labels):
        fail(f"{where}: labels must be three different texts, got {labels!r}")
    return {label: labels[label] for label in JUDGE_LABELS}
