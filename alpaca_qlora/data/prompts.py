"""Prompt formatting: the original Stanford Alpaca templates, the tokenizer's chat template, or a template file.

Training and generation both build prompts here, so the two can never disagree. A template file is alpaca-lora's
format (templates/*.json there): `prompt_input` (with {instruction} and {input}), `prompt_no_input` (with
{instruction}, without {input}), `response_split` (the text the answer follows, in both), optional `description`;
JSON or YAML. A training run keeps a copy (prompt_template.json in the run folder) that generation reads.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from ..cli import fail, read_config_file
from ..vision import IMAGE_FIELD, image_token, is_processor, text_tokenizer
from .conversations import MESSAGES, prompt_messages, record_where, require_chat_template

# Byte-exact copies of PROMPT_DICT in tatsu-lab/stanford_alpaca train.py. As there, the response
# follows "### Response:" directly and the end-of-sequence token follows the response.
ALPACA_PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)

PROMPT_TEMPLATES = ("alpaca", "chat")
TEMPLATE_FILE_SUFFIXES = (".json", ".yaml", ".yml")
TEMPLATE_FILE_KEYS = ("prompt_input", "prompt_no_input", "response_split")


@dataclass(frozen=True)
class TemplateFile:
    prompt_input: str
    prompt_no_input: str
    response_split: str
    description: str = ""


def is_template_file(template: str) -> bool:
    return template.endswith(TEMPLATE_FILE_SUFFIXES)


def load_template_file(path: str) -> TemplateFile:
    """A template file (`~` expanded), validated: one line naming the file and the key for any mistake."""
    return _load_template_file(str(Path(path).expanduser()))


@functools.lru_cache(maxsize=8)
def _load_template_file(path: str) -> TemplateFile:
    where = f"--prompt_template {path}"
    values = read_config_file(path, "--prompt_template")
    unknown = sorted(set(values) - {*TEMPLATE_FILE_KEYS, "description"})
    if unknown:
        fail(f"{where}: unknown key(s) {', '.join(map(str, unknown))} (a template holds {', '.join(TEMPLATE_FILE_KEYS)} "
             "and an optional description)")
    for key in (*TEMPLATE_FILE_KEYS, "description"):
        if key in values and not isinstance(values[key], str):
            fail(f"{where}: {key} must be a text, got {values[key]!r}")
        if key in TEMPLATE_FILE_KEYS and not str(values.get(key, "")).strip():
            fail(f"{where}: {key} is missing or empty")
    template = TemplateFile(**values)
    for key, needed, banned in (("prompt_input", ("{instruction}", "{input}"), ()),
                                ("prompt_no_input", ("{instruction}",), ("{input}",))):
        text = getattr(template, key)
        for placeholder in needed:
            if text.count(placeholder) != 1:
                fail(f"{where}: {key} must hold {placeholder} once, found it {text.count(placeholder)} times")
        for placeholder in banned:
            if placeholder in text:
                fail(f"{where}: {key} must not hold {placeholder} (records without an input use it)")
        if template.response_split not in text:
            fail(f"{where}: response_split {template.response_split!r} is not in {key}")
    return template


def check_prompt_template(template: str, flag: str = "--prompt_template") -> None:
    """A template name, or a template file that loads and validates."""
    if is_template_file(template):
        load_template_file(template)
    elif template not in PROMPT_TEMPLATES:
        fail(f"{flag} {template}: choose {', '.join(PROMPT_TEMPLATES)}, or a template file (.json/.yaml with "
             f"{', '.join(TEMPLATE_FILE_KEYS)})")


def fill(template: str, instruction: str, input_text: str) -> str:
    """The template's {instruction} and {input} replaced in one pass (fill_placeholders)."""
    return fill_placeholders(template, {"instruction": instruction, "input": input_text})


def fill_placeholders(template: str, values: Mapping[str, str]) -> str:
    """Each `{name}` of `values` replaced in one pass: str.format would read braces inside the record, and one
    replace() after another would fill an "{input}" written inside the instruction (or an answer)."""
    pattern = "|".join(re.escape("{" + name + "}") for name in values)
    return re.sub(pattern, lambda found: values[found[0][1:-1]], template)


def format_alpaca_prompt(instruction: str, input_text: str = "") -> str:
    return fill(ALPACA_PROMPT_WITH_INPUT if input_text else ALPACA_PROMPT_NO_INPUT, instruction, input_text)


def render_chat(tokenizer, messages: list[dict], add_generation_prompt: bool, where: str = "",
                with_image: bool = False) -> str:
    """Chat messages ({"role", "content": text}) as the chat template writes them: the one renderer of generation's
    chat prompts (format_chat_prompt, conversation_prompt) and of training's conversations (tokenization.py).

    `tokenizer` may be an image-text model's processor. A processor's own chat template takes content parts, as
    transformers' processors do ([{"type": "text", "text": ...}]): LLaVA-style templates loop over the parts and write
    nothing of a plain string. A tokenizer's template (or the processor's tokenizer's, when the processor has none)
    takes strings. `with_image`: the first user turn carries the image (an image part first; with strings, the
    model's image token leads its text). No chat template, or one that refuses the messages (its own
    raise_exception), is one line; `where` names the record."""
    from jinja2.exceptions import TemplateError

    text = text_tokenizer(tokenizer)
    own_template = is_processor(tokenizer) and getattr(tokenizer, "chat_template", None)
    if not (own_template or getattr(text, "chat_template", None)):
        fail(f"--prompt_template chat: the tokenizer of '{text.name_or_path}' has no chat template; use "
             "--prompt_template alpaca (a conversation record needs a chat template)")
    first_user = next((i for i, message in enumerate(messages) if message["role"] == "user"), None)
    rendered = []
    for index, message in enumerate(messages):
        image = with_image and index == first_user
        if own_template:
            content = ([{"type": "image"}] if image else []) + [{"type": "text", "text": message["content"]}]
        else:
            content = f"{image_token(tokenizer)}\n{message['content']}" if image else message["content"]
        rendered.append({**message, "content": content})
    try:
        return (tokenizer if own_template else text).apply_chat_template(
            rendered, tokenize=False, add_generation_prompt=add_generation_prompt)
    except TemplateError as error:
        fail(f"{where + ': ' if where else ''}the chat template refuses these messages "
             f"({str(error).strip() or 'TemplateError'})")


def format_chat_prompt(tokenizer, instruction: str, input_text: str = "", with_image: bool = False) -> str:
    """The chat template's user turn and the assistant's opening (render_chat; an image-text model's processor
    places the image by its own template, else the image token leads the text)."""
    content = f"{instruction}\n\n{input_text}" if input_text else instruction
    return render_chat(tokenizer, [{"role": "user", "content": content}], True, with_image=with_image)


def conversation_prompt(record: dict, tokenizer, source: str | None = None) -> str:
    """A conversation's last user turn with the turns before it, and the assistant's opening."""
    return render_chat(tokenizer, prompt_messages(record[MESSAGES]), True, record_where(record, source))


def build_prompt(record: Mapping[str, str], template: str, tokenizer=None, source: str | None = None) -> str:
    """The text a model sees before its answer, for one Alpaca record, or for a conversation (its last user turn
    with the turns before it, by the chat template: data/conversations.py).

    A record with an image (image-text models; `tokenizer` is then the processor) gets the model's image token
    once, before the instruction: LLaVA's own layout (`<image>\n` then the question). `source`: the file(s) the
    record came from, for a bad-input line."""
    if MESSAGES in record:
        require_chat_template(template, record_where(record, source))
        return conversation_prompt(record, tokenizer, source)
    instruction, input_text = record["instruction"], record.get("input", "")
    with_image = record.get(IMAGE_FIELD) is not None
    if template == "alpaca":
        if with_image:
            instruction = f"{image_token(tokenizer)}\n{instruction}"
        return format_alpaca_prompt(instruction, input_text)
    if template == "chat":
        return format_chat_prompt(tokenizer, instruction, input_text, with_image)
    if is_template_file(template):
        if with_image:
            instruction = f"{image_token(tokenizer)}\n{instruction}"
        loaded = load_template_file(template)
        text = loaded.prompt_input if input_text else loaded.prompt_no_input
        return fill(text, instruction, input_text)
    fail(f"unknown prompt template '{template}' (choose from {', '.join(PROMPT_TEMPLATES)})")
