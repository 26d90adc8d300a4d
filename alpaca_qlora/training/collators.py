"""Batch collation: padding-free packing (default) or padded batches.

Why a hand-written packer: transformers' DataCollatorWithFlattening puts a whole batch into one row.
With sdpa or eager attention that row gets a dense mask whose cost grows with the square of its
length (measured: slower than plain padding on CPU). This packer keeps the same idea - examples
side by side, position ids restarting at 0 for each one, attention_mask=None so transformers builds
a block-diagonal causal mask - but bounds each row at `max_row_length` tokens, so attention costs
what a padded batch of full-length rows would and no token is spent on padding except the tail of
the shorter rows. With an attention that works per example (packed_attention.py, on the CPU) row
length costs nothing, and `max_row_length=None` lays the whole batch in one row: no padding at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.tokenization import IGNORE_INDEX
from ..vision import IMAGE_FIELD, load_image

def pack_into_rows(lengths: list[int], max_row_length: int) -> list[list[int]]:
    """First-fit decreasing: indices of examples per row, no row longer than max_row_length."""
    rows: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for row_index, free in enumerate(room):
            if lengths[index] <= free:
                rows[row_index].append(index)
                room[row_index] -= lengths[index]
                break
        else:
            rows.append([index])
            room.append(max_row_length - lengths[index])
    return rows


@dataclass
class PackedCollator:
    """Examples packed side by side in rows of at most max_row_length tokens, no cross-attention."""

    pad_token_id: int
    max_row_length: int | None  # None: one row holding the whole batch
    # Also send each sequence's boundaries under transformers' varlen keyword names, so a varlen
    # attention (packed_varlen) need not derive them on the GPU (a device sync per layer).
    sequence_boundaries: bool = False

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        lengths = [len(e["input_ids"]) for e in examples]
        rows = pack_into_rows(lengths, self.max_row_length or sum(lengths))
        row_ids, row_labels, row_positions = [], [], []
        for row in rows:
            ids, labels, positions = [], [], []
            for index in row:
                example = examples[index]
                ids += example["input_ids"]
                labels += example["labels"]
                positions += range(len(example["input_ids"]))
            row_ids.append(ids)
            row_labels.append(labels)
            row_positions.append(positions)
        width = max(len(ids) for ids in row_ids)
        for ids, labels, positions in zip(row_ids, row_labels, row_positions):
            pad = width - len(ids)
            # The padding tail restarts its position ids at 0: transformers sees it as one more
            # sequence of the row, so no real token attends to it, and its labels are ignored.
            ids += [self.pad_token_id] * pad
            labels += [IGNORE_INDEX] * pad
            positions += range(pad)
        batch = {
            "input_ids": torch.tensor(row_ids),
            "labels": torch.tensor(row_labels),
            "position_ids": torch.tensor(row_positions),
        }
        if self.sequence_boundaries:
            cu_seqlens, longest = sequence_boundaries(batch["position_ids"])
            batch.update(cu_seq_lens_q=cu_seqlens, cu_seq_lens_k=cu_seqlens, max_length_q=longest, max_length_k=longest)
        return batch


def sequence_boundaries(position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """cu_seqlens (int32, on the ids' device) and the longest sequence, over all rows read as one list.

    A sequence starts at every row start and wherever the position id is 0 (each example, and each
    row's padding tail, which PackedCollator numbers as a sequence of its own)."""
    begins = position_ids == 0
    begins[:, 0] = True
    flat = begins.reshape(-1)
    starts = torch.nonzero(flat).flatten()
    ends = torch.cat([starts, starts.new_tensor([flat.numel()])])
    return ends.to(torch.int32), int((ends[1:] - ends[:-1]).max())


@dataclass
class PaddedCollator:
    """Right-padded batches with an attention mask: the fallback when packing is off."""

    pad_token_id: int

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(e["input_ids"]) for e in examples)
        input_ids, labels, attention_mask = [], [], []
        for example in examples:
            pad = width - len(example["input_ids"])
            input_ids.append(example["input_ids"] + [self.pad_token_id] * pad)
            labels.append(example["labels"] + [IGNORE_INDEX] * pad)
            attention_mask.append([1] * len(example["input_ids"]) + [0] * pad)
        return {
            "input_ids": torch.tensor(input_ids),
            "labels": torch.tensor(labels),
            "attention_mask": torch.tensor(attention_mask),
        }


@dataclass
class ImageCollator:
    """Padded batches of an image-text model, with the pixel values of the batch's images.

    The images are read here, batch by batch, by the model's own image processor (a dataset of images never
    sits in memory as pixels). Examples without an image have no pixel values: the model places each image's
    features at its image tokens, in order, so a batch may mix the two."""

    processor: object
    pad_token_id: int

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        batch = PaddedCollator(self.pad_token_id)(examples)
        images = [load_image(e[IMAGE_FIELD], f"field '{IMAGE_FIELD}'") for e in examples if e.get(IMAGE_FIELD)]
        if images:
            batch.update(self.processor.image_processor(images, return_tensors="pt"))
        return batch


def token_counts(labels: torch.Tensor) -> tuple[int, int, int]:
    """(tokens in the batch tensor, real tokens, tokens with a label), derived from the labels alone.

    Every example ends in a labelled token (its EOS, or the last answer token kept when it was cut), and
    padding only ever follows the last example of a row, so a row's real tokens end at its last label."""
    labelled = labels != IGNORE_INDEX
    positions = torch.arange(labels.shape[1], device=labels.device)
    last_label = torch.where(labelled, positions, -1).max(dim=1).values
    return labels.numel(), int((last_label + 1).sum()), int(labelled.sum())
