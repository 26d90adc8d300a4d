#!/usr/bin/env python
"""Memory per GPU for Llama-2-shaped 7B/13B/34B/70B bases under each engine: the arithmetic behind README's table.

Estimates, not measurements (no GPU machine has run them yet). Per GPU, with N GPUs in all:

  base     4-bit linear weights: 0.5 byte + 0.127 bit of double-quantized constants per weight (blocks of 64);
           embeddings and LM head stay 16-bit (2 bytes x 2 x vocab x hidden). A 16-bit base: 2 bytes per weight.
  adapter  LoRA r=16 on every linear layer: r x (in + out) per layer; fp32 weight 4 + gradient 4 + AdamW 8 = 16 bytes.
  work     activations with gradient checkpointing for T tokens per GPU: each layer's input kept
           (layers x T x hidden x 2 bytes), one layer's working set recomputed (T x (3 x ffn + 8 x hidden) x 2),
           full-vocabulary fp32 logits and their gradient (T x vocab x 8: FSDP/DeepSpeed run the model's own loss).
  gathered FSDP / ZeRO-3 gather a unit's full weights for its forward and backward: two decoder layers at a time
           (the one running and the one prefetched).
  runtime  CUDA context and allocator slack: 1.5 GB.
  at load  a 4-bit base is quantized whole on each process's GPU before FSDP2 / DeepSpeed shard it (accelerate
           1.15 and transformers 5.24 do not shard bitsandbytes weights while loading): base + runtime, a peak
           before training; a 16-bit base under ZeRO-3 is partitioned as it loads (zero.Init), no such peak.

  DDP          base + adapter + work
  FSDP2        base/N + adapter/N + gathered + work            (QLoRA: 4-bit stored in bf16, sharded)
  ZeRO-2       base + adapter weights (4 B) + (grad + AdamW, 12 B)/N + work
  ZeRO-3       base/N + adapter/N + gathered + work            (QLoRA, or a 16-bit base)

    python bench/memory_estimates.py [--gpus 8] [--tokens 4096]
"""

from __future__ import annotations

import argparse

GB = 1e9
# name: (layers, hidden, ffn, kv width (GQA), vocab)
MODELS = {
    "7B": (32, 4096, 11008, 4096, 32000),
    "13B": (40, 5120, 13824, 5120, 32000),
    "34B": (48, 8192, 22016, 1024, 32000),
    "70B": (80, 8192, 28672, 1024, 32000),
}
RANK = 16
RUNTIME = 1.5 * GB


def shapes(layers, hidden, ffn, kv, vocab):
    linear = hidden * hidden * 2 + hidden * kv * 2 + hidden * ffn * 3  # q, o; k, v; gate, up, down
    lora = RANK * ((hidden + hidden) * 2 + (hidden + kv) * 2 + (hidden + ffn) * 3)
    return layers * linear, layers * lora, 2 * vocab * hidden


def estimate(name: str, gpus: int, tokens: int) -> dict[str, float]:
    layers, hidden, ffn, kv, vocab = MODELS[name]
    linear, lora, embeddings = shapes(layers, hidden, ffn, kv, vocab)
    base4 = linear * (0.5 + 0.127 / 8) + embeddings * 2
    base16 = (linear + embeddings) * 2
    adapter = lora * 16
    work = layers * tokens * hidden * 2 + tokens * (3 * ffn + 8 * hidden) * 2 + tokens * vocab * 8 + RUNTIME
    layer4, layer16 = linear / layers * (0.5 + 0.127 / 8), linear / layers * 2
    return {
        "parameters (B)": (linear + embeddings) / 1e9,
        "LoRA (M)": lora / 1e6,
        "DDP QLoRA": (base4 + adapter + work) / GB,
        "FSDP2 QLoRA": (base4 / gpus + adapter / gpus + 2 * layer4 + work) / GB,
        "ZeRO-2 QLoRA": (base4 + lora * 4 + lora * 12 / gpus + work) / GB,
        "ZeRO-3 QLoRA": (base4 / gpus + adapter / gpus + 2 * layer4 + work) / GB,
        "ZeRO-3 LoRA 16-bit": (base16 / gpus + adapter / gpus + 2 * layer16 + work) / GB,
        "QLoRA load peak (FSDP2/ZeRO-3)": (base4 + RUNTIME) / GB,
        "DDP LoRA 16-bit": (base16 + adapter + work) / GB,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=4096, help="tokens per GPU per micro-batch")
    args = parser.parse_args()
    rows = {name: estimate(name, args.gpus, args.tokens) for name in MODELS}
    columns = list(next(iter(rows.values())))
    print(f"GB per GPU, {args.gpus} GPUs, {args.tokens} tokens per GPU per micro-batch, gradient checkpointing on")
    print("| base | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(f"{value:.1f}" for value in row.values()) + " |")


if __name__ == "__main__":
    main()
