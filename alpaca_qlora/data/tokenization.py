"""Turning records into training examples: token ids and labels with the prompt masked out.

The end-of-sequence token is appended to every response that fits and is always a label, so the
model learns to stop. Labels are built here from positions, never derived from pad ids, so a
tokenizer whose pad token equals its EOS token cannot mask the EOS out of the loss.

For an image-text model `tokenizer` is its processor: a record with an image is encoded by the processor, which
expands the prompt's image token into the model's image tokens (part of the prompt, so masked like it); the
example keeps the image's path, and the collator turns it into pixel values.

A conversation (data/conversations.py) is one example: the whole conversation as the chat template renders it
(prompts.render_chat), labels on every assistant turn (its content and the template's end-of-turn text) and nowhere
else, EOS after the last turn unless the template's own turn end is it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..cli import fail
from ..vision import IMAGE_FIELD, is_processor, load_image, text_tokenizer
from .conversations import MESSAGES, record_where, require_chat_template
from .prompts import build_prompt, render_chat

IGNORE_INDEX = -100


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]
    truncated: bool


@dataclass
class TokenizationReport:
    examples: int = 0
    truncated: int = 0  # longer than max_seq_length: the response was cut and has no EOS
    prompt_too_long: int = 0  # the prompt alone fills max_seq_length: nothing left to learn, left out
    left_out_ids: list = field(default_factory=list)

    def summary(self, name: str) -> str:
        return (
            f"{name}: {self.examples} examples, {self.truncated} truncated to max_seq_length, "
            f"{self.prompt_too_long} left out because their prompt alone fills max_seq_length"
        )


def tokenize_example(
    record: dict, tokenizer, template: str, max_seq_length: int, train_on_inputs: bool, source: str | None = None
) -> TokenizedExample | None:
    """One record as ids and labels; None when its prompt leaves no room for a single response token. `source`: the
    file(s) the record came from, named with the record in a bad-input line."""
    if MESSAGES in record:
        return tokenize_conversation(record, tokenizer, template, max_seq_length, train_on_inputs, source)
    prompt = build_prompt(record, template, tokenizer, source)
    encode = encoder(record, tokenizer)
    text = text_tokenizer(tokenizer)
    prompt_ids = encode(prompt)
    full_ids = encode(prompt + record["output"])
    if full_ids[: len(prompt_ids)] != prompt_ids:
        # The tokenizer merged the last prompt token with the first response token: keep the prompt's
        # own tokens so the masked prefix is exactly what generation will be given.
        full_ids = prompt_ids + text(record["output"], add_special_tokens=False)["input_ids"]
    input_ids = full_ids + [text.eos_token_id]
    if len(prompt_ids) >= max_seq_length:
        return None
    truncated = len(input_ids) > max_seq_length
    input_ids = input_ids[:max_seq_length]
    prompt_labels = input_ids[: len(prompt_ids)] if train_on_inputs else [IGNORE_INDEX] * len(prompt_ids)
    labels = prompt_labels + input_ids[len(prompt_ids) :]
    # No token predicts the first one. Ignoring it here also keeps packed examples apart in the
    # loss: in a packed row the previous example's last token would otherwise "predict" it.
    labels[0] = IGNORE_INDEX
    return TokenizedExample(input_ids=input_ids, labels=labels, truncated=truncated)


def assistant_spans(record: dict, tokenizer, source: str | None = None) -> tuple[str, list[tuple[int, int]]]:
    """The conversation through its last assistant turn as the template renders it (prompts.render_chat), and the
    character span of every assistant turn in it.

    Why spans from prefixes: transformers' own mask (`apply_chat_template(..., return_assistant_tokens_mask=True)`)
    needs `{% generation %}` blocks in the template, which few templates have (without them it warns and masks
    nothing). Instead each assistant turn i is located by rendering the conversation twice: up to turn i with the
    assistant's opening (add_generation_prompt) and through turn i. The turn is what the second adds to the first:
    its content and the end-of-turn text the template writes after it (`<|im_end|>` and a newline in ChatML).
    This needs a template that renders history as it renders the latest turn (each rendering a prefix of the
    next), and that writes each answer's content in its span (the content, stripped, must be found there: a template
    that rewrites or drops it would have the loss on other text); one that does not is refused with one line."""
    where = record_where(record, source)
    messages = record[MESSAGES]
    last = max(i for i, message in enumerate(messages) if message["role"] == "assistant")
    text = render_chat(tokenizer, messages[: last + 1], False, where)
    spans = []
    for turn, message in enumerate(messages[: last + 1]):
        if message["role"] != "assistant":
            continue
        before = render_chat(tokenizer, messages[:turn], True, where)
        through = render_chat(tokenizer, messages[: turn + 1], False, where)
        if not (through.startswith(before) and text.startswith(through)):
            fail(f"{where}: the chat template renders turn {turn} of this conversation differently as history than "
                 "as the latest turn, so its answer cannot be located by prefixes")
        if message["content"].strip() not in through[len(before):]:
            fail(f"{where}: the chat template does not write the content of turn {turn} (an assistant turn) where the "
                 "turn is rendered (it rewrites or drops it), so the loss cannot be put on that answer")
        spans.append((len(before), len(through)))
    return text, spans


def tokenize_conversation(
    record: dict, tokenizer, template: str, max_seq_length: int, train_on_inputs: bool, source: str | None = None
) -> TokenizedExample | None:
    """A conversation as ids and labels; None when the text before its first answer fills max_seq_length.

    The rendered conversation is encoded prefix by prefix, up to the start and the end of every assistant turn
    (assistant_spans), as tokenize_example encodes a prompt and then prompt + answer: each piece is
    what encoding the longer prefix adds, so the labels fall exactly on the answers' tokens and each masked prefix
    is the tokens generation is given for it; where the tokenizer merged tokens across a boundary, the piece is
    encoded on its own instead (as tokenize_example does). A cut at max_seq_length that lands after an answer leaves
    out the masked turns after it (they would teach nothing), so the example still ends on a label, as the
    collators' token counts expect."""
    require_chat_template(template, record_where(record, source))
    text, spans = assistant_spans(record, tokenizer, source)
    encode, plain = encoder(record, tokenizer), text_tokenizer(tokenizer)
    input_ids: list[int] = []
    labels: list[int] = []
    prompt_length, done, answer = None, 0, []
    for start, end in spans:
        for boundary, is_answer in ((start, False), (end, True)):
            whole = encode(text[:boundary])
            piece = (whole[len(input_ids):] if whole[: len(input_ids)] == input_ids
                     else plain(text[done:boundary], add_special_tokens=False)["input_ids"])
            input_ids += piece
            labels += piece if is_answer or train_on_inputs else [IGNORE_INDEX] * len(piece)
            done, answer = boundary, piece
            prompt_length = len(input_ids) if prompt_length is None else prompt_length
    if plain.eos_token_id not in answer:
        input_ids.append(plain.eos_token_id)
        labels.append(plain.eos_token_id)
    if prompt_length >= max_seq_length:
        return None
    truncated = len(input_ids) > max_seq_length
    input_ids, labels = input_ids[:max_seq_length], labels[:max_seq_length]
    while labels and labels[-1] == IGNORE_INDEX:
        input_ids.pop()
        labels.pop()
    if len(labels) < 2:  # only an empty answer and no room left for its EOS: nothing to learn
        return None
    labels[0] = IGNORE_INDEX  # as in tokenize_example: nothing predicts the first token
    return TokenizedExample(input_ids=input_ids, labels=labels, truncated=truncated)


def starts_with_bos(tokenizer, text: str) -> bool:
    """Whether the text begins with the BOS token as text: what a chat template that writes {{ bos_token }} itself
    (Llama-3's, Mistral-Instruct's, Gemma's) puts first."""
    bos = text_tokenizer(tokenizer).bos_token
    return bool(bos) and text.startswith(bos)


def encode_text(tokenizer, text: str) -> list[int]:
    """The token ids of one text (training's prompts and answers, generation's prompts, the judge's): with the
    tokenizer's own special tokens, unless the text already begins with the BOS (starts_with_bos), which then is not
    added twice. The rule transformers' processors apply to chat-template text; it leaves every text without a BOS of
    its own as the tokenizer encodes it (the Alpaca template, template files, ChatML chat templates)."""
    return text_tokenizer(tokenizer)(text, add_special_tokens=not starts_with_bos(tokenizer, text))["input_ids"]


def encoder(record: dict, tokenizer):
    """text -> ids: encode_text; for a record with an image, the processor's (image tokens expanded)."""
    if not is_processor(tokenizer) or record.get(IMAGE_FIELD) is None:
        return lambda text: encode_text(tokenizer, text)
    image = load_image(record[IMAGE_FIELD], f"record {record['id']!r}: field '{IMAGE_FIELD}'")
    return lambda text: [int(i) for i in tokenizer(text=[text], images=[image],
                                                   add_special_tokens=not starts_with_bos(tokenizer, text))["input_ids"][0]]


def tokenize_records(
    records: list[dict], tokenizer, template: str, max_seq_length: int, train_on_inputs: bool, source: str | None = None
) -> tuple[list[dict], TokenizationReport]:
    """Every record as an example, with the report of what was cut or left out. `source`: the file(s) the records
    came from, named in a bad-input line."""
    if text_tokenizer(tokenizer).eos_token_id is None:
        fail(f"the tokenizer of '{tokenizer.name_or_path}' has no EOS token; training could not teach it to stop")
    report = TokenizationReport()
    examples = []
    for record in records:
        example = tokenize_example(record, tokenizer, template, max_seq_length, train_on_inputs, source)
        if example is None:
            report.prompt_too_long += 1
            report.left_out_ids.append(record["id"])
            continue
        report.examples += 1
        report.truncated += example.truncated
        item = {"input_ids": example.input_ids, "labels": example.labels}
        if record.get(IMAGE_FIELD) is not None:
            item[IMAGE_FIELD] = record[IMAGE_FIELD]
        examples.append(item)
    return examples, report
