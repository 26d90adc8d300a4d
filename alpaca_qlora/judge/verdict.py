"""A judge's verdict on one pair in one order: the log-probability of each label after the prompt.

The verdict is read from the model, never from text it generates, so every pair gets one:

- The prompt (template.py) goes into the judge's chat template when it has one (the user's turn, the assistant's
  reply opened), else it is plain text followed by a blank line; the template's verdict_prefix follows either way.
  The text is encoded as training encodes its prompts (data/tokenization.encode_text): with the tokenizer's own
  special tokens, but no second BOS after one the chat template wrote.
- Each label ("A", "B", "tie" as the template writes them) is tokenized as it follows that text: the whole
  `context + label` is tokenized and the context's tokens cut off its beginning, so the label's tokens are those a
  model reading the text would see. Should any label's first characters merge into the context's last token, all
  three labels are tokenized alone instead: one tokenization for the three, so no label is read differently.
- A log-probability that is not a finite number (fp16 logits that overflowed) is refused, one line naming the
  prompt, the order and --compute_dtype (check_finite).
- log P(label | context) is the sum over the label's tokens of their log-probabilities, teacher-forced: one forward
  pass over `context + label[:-1]` gives them all. Labels of one token share one pass over the context alone, so
  with single-token labels an order costs one pass; a batch of orders is one left-padded forward call, positions
  taken from the attention mask as `generate` takes them, and the output layer runs on the last few positions only
  (transformers' `logits_to_keep`).
- The probabilities are the softmax of the three log-probabilities (they sum to 1); the verdict is the most
  probable label (A before B before tie on an exact tie).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import torch

from ..cli import fail
from ..data.tokenization import encode_text
from ..generation.shared_prefix import left_padded
from ..rating.store import JUDGE_LABELS
from .template import JudgeTemplate

FORMATS = ("auto", "chat", "plain")


@dataclass(frozen=True)
class Tokenized:
    """One prompt to the judge: its context's tokens and each label's tokens after it."""

    context: list[int]
    labels: dict[str, list[int]]


@dataclass(frozen=True)
class Verdict:
    logprobs: dict[str, float]  # label -> log P(label | context), summed over its tokens
    probabilities: dict[str, float]  # softmax of the three
    choice: str


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def resolve_format(requested: str, tokenizer, judge: str) -> str:
    """chat or plain; auto is chat when the judge's tokenizer has a chat template."""
    if requested == "auto":
        return "chat" if has_chat_template(tokenizer) else "plain"
    if requested == "chat" and not has_chat_template(tokenizer):
        fail(f"--judge_format chat: the tokenizer of '{judge}' has no chat template; use --judge_format plain")
    return requested


def context_text(template: JudgeTemplate, tokenizer, judge_format: str, question: str) -> str:
    """What the judge reads before a label."""
    if judge_format == "chat":
        opened = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                               add_generation_prompt=True)
        return opened + template.verdict_prefix
    return f"{question}\n\n{template.verdict_prefix}"


def tokenize(tokenizer, context: str, template: JudgeTemplate, judge_format: str) -> Tokenized:
    """The context's tokens (context_text's, in `judge_format`) and each label's tokens as they follow it."""
    context_ids = encode_text(tokenizer, context)
    labels = {}
    for label in JUDGE_LABELS:
        whole = encode_text(tokenizer, context + template.labels[label])
        if len(whole) > len(context_ids) and whole[: len(context_ids)] == context_ids:
            labels[label] = whole[len(context_ids):]
    if len(labels) < len(JUDGE_LABELS):  # a label's first characters merged into the context's last token
        labels = {label: tokenizer(template.labels[label], add_special_tokens=False)["input_ids"]
                  for label in JUDGE_LABELS}  # all three alone: one tokenization for the three labels
    return Tokenized(context_ids, labels)


def verdict_of(logprobs: dict[str, float]) -> Verdict:
    top = max(logprobs.values())
    weights = {label: math.exp(logprobs[label] - top) for label in JUDGE_LABELS}
    total = sum(weights.values())
    probabilities = {label: weights[label] / total for label in JUDGE_LABELS}
    return Verdict(dict(logprobs), probabilities, max(JUDGE_LABELS, key=lambda label: probabilities[label]))


def check_finite(logprobs: dict[str, float], where: str) -> None:
    """One line when a label's log-probability is inf or nan: fp16 logits that overflowed, not a verdict."""
    for label, value in logprobs.items():
        if not math.isfinite(value):
            fail(f"{where}: log P({label}) is {value}, not a finite number (the judge's logits overflowed at this "
                 "precision); run again with --compute_dtype fp32 (or bf16)")


def takes_logits_to_keep(model) -> bool:
    return "logits_to_keep" in inspect.signature(model.forward).parameters


@torch.inference_mode()
def label_logprobs(model, items: list[Tokenized], pad_token_id: int) -> list[dict[str, float]]:
    """log P(label | context) of every label of every item, in one forward call over the batch."""
    rows: list[list[int]] = []
    row_of: list[dict[str, int]] = []  # per item: label -> its row (labels with the same leading tokens share one)
    for item in items:
        rows_here: dict[tuple[int, ...], int] = {}
        places = {}
        for label, ids in item.labels.items():
            fed = tuple(ids[:-1])  # the label's last token is read from the logits, never fed
            if fed not in rows_here:
                rows_here[fed] = len(rows)
                rows.append(item.context + list(fed))
            places[label] = rows_here[fed]
        row_of.append(places)
    keep = max(len(ids) for item in items for ids in item.labels.values())
    device = next(model.parameters()).device
    inputs = left_padded(rows, pad_token_id, device)
    positions = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)  # each row's own positions, as unpadded
    extra = {"logits_to_keep": keep} if takes_logits_to_keep(model) else {}
    logits = model(**inputs, position_ids=positions, use_cache=False, **extra).logits[:, -keep:]
    logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
    results = []
    for item, places in zip(items, row_of):
        values = {}
        for label, ids in item.labels.items():
            # the row ends with the label's tokens but its last; the logit before token j sits keep - len(ids) + j
            start = keep - len(ids)
            values[label] = math.fsum(float(logprobs[places[label], start + j, token]) for j, token in enumerate(ids))
        results.append(values)
    return results
