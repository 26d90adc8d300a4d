"""The Ollama Modelfile written beside an exported GGUF: the run's prompt template in Ollama's Go-template form, its
stop strings, and generation parameters that mirror inference.py's defaults.

The template is derived from the prompt training built, not re-typed: build_prompt (data/prompts.py, the one owner of
prompts) renders the prompt of an instruction that is a marker, and the text around the marker is the template.
So Ollama's prompt for one instruction is, byte for byte, what the model was trained on, for the Alpaca template, a
template file and any chat template. ChatML chat templates (SmolLM2, Qwen: `<|im_start|>`) get Ollama's ChatML
template instead, which also carries a system message and earlier turns; the chat template's default system
message, if it writes one, becomes the Modelfile's SYSTEM.

Ollama reads a value in `"..."` or `\"\"\"...\"\"\"` without escapes (its parser/parser.go), so a text holding `\"\"\"`
cannot be written and is refused in one line.
"""

from __future__ import annotations

from pathlib import Path

from ..cli import fail
from ..data.prompts import build_prompt, is_template_file
from ..data.tokenization import starts_with_bos
from ..generation.settings import GenerationSettings
from .to_gguf import added_specials

MARKER = "ALPACA_QLORA_INSTRUCTION_MARKER"
CHATML_USER = "<|im_start|>user\n"
CHATML_SYSTEM = "<|im_start|>system\n"
CHATML_TURN_END = "<|im_end|>\n"
CHATML_ASSISTANT = "<|im_end|>\n<|im_start|>assistant\n"
CHATML_TEMPLATE = (
    "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n{{ .Response }}<|im_end|>\n"
)
CHATML_STOPS = ("<|im_end|>", "<|im_start|>")
MAX_CONTEXT = 4096  # num_ctx: the model's context, at most this (Ollama allocates the whole KV cache up front)


def prompt_around(template: str, tokenizer) -> tuple[str, str]:
    """The text before and after the instruction in the prompt of a record without an input.

    A chat template that writes the BOS itself (Llama-3's, Mistral-Instruct's) has it at the start of the text; when
    the tokenizer adds a BOS too, the GGUF says so (to_gguf.added_specials) and llama.cpp and Ollama add it: the
    template leaves its own out, so the model reads one BOS, as in training (data/tokenization.encode_text)."""
    text = build_prompt({"instruction": MARKER, "input": ""}, template, tokenizer)
    if text.count(MARKER) != 1:
        fail(f"--gguf: the prompt template {template} does not hold the instruction once as written; it cannot be "
             "turned into an Ollama template; nothing was written")
    if starts_with_bos(tokenizer, text) and added_specials(tokenizer)[0]:
        text = text[len(tokenizer.bos_token):]
    before, after = text.split(MARKER)
    return before, after


def chatml_system(before: str, after: str) -> str | None:
    """For a ChatML prompt, the system message the chat template writes by itself ('' for none); None otherwise."""
    if after != CHATML_ASSISTANT:
        return None
    if before == CHATML_USER:
        return ""
    if before.startswith(CHATML_SYSTEM) and before.endswith(CHATML_TURN_END + CHATML_USER):
        return before[len(CHATML_SYSTEM):-len(CHATML_TURN_END + CHATML_USER)]
    return None


def go_literal(text: str) -> str:
    """Text as literal text of a Go template: only `{{` opens an action, so it is printed by one."""
    return '{{ "{{" }}'.join(text.split("{{"))


def last_line(text: str) -> str:
    """The last non-empty line of the text before the instruction (Alpaca: '### Instruction:'): where a next turn
    would begin, so a stop string."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def ollama_template(template: str, tokenizer) -> tuple[str, str, list[str]]:
    """(TEMPLATE, SYSTEM or '', stop strings)."""
    before, after = prompt_around(template, tokenizer)
    system = chatml_system(before, after)
    if system is not None:
        return CHATML_TEMPLATE, system, list(CHATML_STOPS)
    body = go_literal(before) + "{{ .Prompt }}" + go_literal(after) + "{{ .Response }}"
    return body, "", [last_line(before)]


def quoted(text: str) -> str:
    return f'"""{text}"""' if "\n" in text else f'"{text}"'


def template_name(template: str) -> str:
    return Path(template).name if is_template_file(template) else template


def ollama_modelfile(gguf_name: str, template: str, tokenizer, context_length: int) -> str:
    """The Modelfile's text for the GGUF `gguf_name` beside it."""
    body, system, stops = ollama_template(template, tokenizer)
    if tokenizer.eos_token:
        stops.append(tokenizer.eos_token)
    stops = [stop for index, stop in enumerate(stops) if stop and stop not in stops[:index]]
    for text in (body, system, *stops):
        if '"""' in text:
            fail(f'--gguf: the prompt template {template_name(template)} holds """, which an Ollama Modelfile cannot '
                 "quote; nothing was written")
    lines = [
        f"# Ollama: `ollama create NAME -f Modelfile` in this folder. Prompt template: {template_name(template)}.",
        f"FROM ./{gguf_name}",
        f'TEMPLATE """{body}"""',
    ]
    if system:
        lines.append(f'SYSTEM """{system}"""')
    lines += [f"PARAMETER stop {quoted(stop)}" for stop in stops]
    lines += [
        "PARAMETER temperature 0",  # greedy, as inference.py without sampling flags
        f"PARAMETER num_predict {GenerationSettings().max_new_tokens}",
        f"PARAMETER num_ctx {min(context_length, MAX_CONTEXT)}",
    ]
    return "\n".join(lines) + "\n"
