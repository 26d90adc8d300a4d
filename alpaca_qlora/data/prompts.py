"""Prompt formatting: the original Stanford Alpaca templates, or the tokenizer's chat template.

Training and generation both build prompts here, so the two can never disagree.
"""

from __future__ import annotations

from typing import Mapping

from ..cli import fail
from ..vision import IMAGE_FIELD, image_token, is_processor

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


def format_alpaca_prompt(instruction: str, input_text: str = "") -> str:
    # str.format would interpret braces inside the record itself; replace() does not.
    template = ALPACA_PROMPT_WITH_INPUT if input_text else ALPACA_PROMPT_NO_INPUT
    return template.replace("{instruction}", instruction, 1).replace("{input}", input_text, 1)


def format_chat_prompt(tokenizer, instruction: str, input_text: str = "", with_image: bool = False) -> str:
    """The chat template's user turn and the assistant's opening. `tokenizer` may be an image-text model's
    processor: its own chat template places the image (content parts, as transformers' processors take them);
    with only a tokenizer's template, the image token leads the text."""
    content = f"{instruction}\n\n{input_text}" if input_text else instruction
    if is_processor(tokenizer) and getattr(tokenizer, "chat_template", None):
        parts = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": content}]
        return tokenizer.apply_chat_template([{"role": "user", "content": parts}], tokenize=False, add_generation_prompt=True)
    text_tokenizer = tokenizer.tokenizer if is_processor(tokenizer) else tokenizer
    if not getattr(text_tokenizer, "chat_template", None):
        fail(
            f"--prompt_template chat: the tokenizer of '{text_tokenizer.name_or_path}' has no chat template; "
            "use --prompt_template alpaca"
        )
    if with_image:
        content = f"{image_token(tokenizer)}\n{content}"
    return text_tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
    )


def build_prompt(record: Mapping[str, str], template: str, tokenizer=None) -> str:
    """The text a model sees before its answer, for one Alpaca record.

    A record with an image (image-text models; `tokenizer` is then the processor) gets the model's image token
    once, before the instruction: LLaVA's own layout (`<image>\n` then the question)."""
    instruction, input_text = record["instruction"], record.get("input", "")
    with_image = record.get(IMAGE_FIELD) is not None
    if template == "alpaca":
        if with_image:
            instruction = f"{image_token(tokenizer)}\n{instruction}"
        return format_alpaca_prompt(instruction, input_text)
    if template == "chat":
        return format_chat_prompt(tokenizer, instruction, input_text, with_image)
    fail(f"unknown prompt template '{template}' (choose from {', '.join(PROMPT_TEMPLATES)})")
