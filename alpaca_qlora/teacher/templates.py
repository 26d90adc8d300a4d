"""Prompt templates of the teacher: what it is asked to write, for questions and for answers.

A templates file (YAML or JSON) overrides any of the defaults below:

    name: my-templates            # recorded in every pair's provenance, with the sha256 of the text used
    question: "... {source} ... {count} ..."        # text sources: write {count} questions about {source}
    answer: "... {source} ... {question} ..."       # text sources: answer {question} from {source}
    image_question: "... {count} ... {text} ..."    # image sources (the image is shown to the model); {text} optional
    image_answer: "... {question} ... {text} ..."   # image sources; {text} optional
    fixed_questions: ["...", "..."]                 # asked of every source besides the teacher's own (none by default)

`{text}` is an image's accompanying text (empty when it has none). Placeholders are filled by plain replacement (braces inside a source are left alone). A template without one of
its required placeholders, or with an unknown one, is refused before anything runs.

What the parser expects from the question prompt (parse.py): one question per line, numbered (`1.`, `2)`),
bulleted (`-`, `*`) or prefixed (`Q:`), each ending with a question mark; or a JSON list of strings.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from ..cli import fail, read_config_file

DEFAULT_NAME = "default"
DEFAULTS = {
    "question": (
        "Read the text below and write {count} different questions that can be answered from it alone. "
        "Write one question per line, numbered 1., 2., ... and nothing else.\n\nText:\n{source}"
    ),
    "answer": (
        "Answer the question using only the text below. Answer in one to three sentences.\n\n"
        "Text:\n{source}\n\nQuestion: {question}"
    ),
    "image_question": (
        "Look at the image and write {count} different questions about what it shows. "
        "Write one question per line, numbered 1., 2., ... and nothing else.\n{text}"
    ),
    "image_answer": "Look at the image and answer the question in one to three sentences.\n{text}\nQuestion: {question}",
}
REQUIRED = {
    "question": ("{source}", "{count}"),
    "answer": ("{source}", "{question}"),
    "image_question": ("{count}",),
    "image_answer": ("{question}",),
}
ALLOWED = {
    "question": {"{source}", "{count}"},
    "answer": {"{source}", "{question}"},
    "image_question": {"{count}", "{text}"},
    "image_answer": {"{question}", "{text}"},
}
PLACEHOLDER = re.compile(r"\{[a-z_]+\}")


@dataclass(frozen=True)
class Templates:
    name: str
    texts: dict[str, str]
    fixed_questions: tuple[str, ...] = field(default=())

    def sha256(self, kind: str) -> str:
        return hashlib.sha256(self.texts[kind].encode("utf-8")).hexdigest()

    def provenance(self, kind: str) -> dict:
        return {"name": self.name, "kind": kind, "sha256": self.sha256(kind)[:16]}

    def to_dict(self) -> dict:
        return {"name": self.name, **self.texts, "fixed_questions": list(self.fixed_questions)}


def fill(template: str, **values: str) -> str:
    for name, value in values.items():
        template = template.replace("{" + name + "}", value)
    return template


def check_template(kind: str, text: str, where: str) -> None:
    if not isinstance(text, str) or not text.strip():
        fail(f"{where}: template '{kind}' must be non-empty text")
    for placeholder in REQUIRED[kind]:
        if placeholder not in text:
            fail(f"{where}: template '{kind}' lacks the placeholder {placeholder} (it needs {', '.join(REQUIRED[kind])})")
    unknown = sorted(set(PLACEHOLDER.findall(text)) - ALLOWED[kind])
    if unknown:
        fail(f"{where}: template '{kind}' has the unknown placeholder {unknown[0]} (allowed: {', '.join(sorted(ALLOWED[kind]))})")


def load_templates(path: str | None) -> Templates:
    if path is None:
        return Templates(DEFAULT_NAME, dict(DEFAULTS))
    where = f"--templates {path}"
    values = read_config_file(path, "--templates")
    unknown = sorted(set(values) - set(DEFAULTS) - {"name", "fixed_questions"})
    if unknown:
        fail(f"{where}: unknown key '{unknown[0]}' (expected name, {', '.join(DEFAULTS)}, fixed_questions)")
    texts = {kind: values.get(kind, default) for kind, default in DEFAULTS.items()}
    for kind, text in texts.items():
        check_template(kind, text, where)
    fixed = values.get("fixed_questions") or []
    if not isinstance(fixed, list) or not all(isinstance(q, str) and q.strip() for q in fixed):
        fail(f"{where}: fixed_questions must be a list of non-empty questions")
    name = values.get("name", str(path))
    if not isinstance(name, str) or not name.strip():
        fail(f"{where}: name must be text")
    return Templates(name, texts, tuple(q.strip() for q in fixed))
