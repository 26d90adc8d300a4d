#!/usr/bin/env python
"""Build a Llama-shaped model with random weights and a byte-level BPE tokenizer trained on the
Alpaca text, for throughput benchmarks where no hub is reachable (the GPU machine).

Default shape, about 1.1B parameters: hidden 2048, 16 layers, 32 heads, 8 KV heads, intermediate 8192,
vocab 32,000. Sequence lengths then resemble a real tokenizer's on Alpaca.

    python bench/make_bench_model.py --data alpaca_data.json --output_dir /tmp/llama-1b-random

--chat_template chatml gives the tokenizer a ChatML chat template (the tests' tiny model's), so the model can stand
for an instruct model where one is timed (bench/judge_time.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer=trainer)
    from tokenizers.processors import TemplateProcessing

    tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--hidden_size", type=int, default=2048)
    parser.add_argument("--num_layers", type=int, default=16)
    parser.add_argument("--num_heads", type=int, default=32)
    parser.add_argument("--num_kv_heads", type=int, default=8)
    parser.add_argument("--intermediate_size", type=int, default=8192)
    parser.add_argument("--vocab_size", type=int, default=32000)
    parser.add_argument("--chat_template", choices=("none", "chatml"), default="none")
    args = parser.parse_args()

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    records = json.loads(Path(args.data).read_text())
    texts = [" ".join((r["instruction"], r["input"], r["output"])) for r in records]
    tokenizer = train_tokenizer(texts, args.vocab_size)
    if args.chat_template == "chatml":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from alpaca_qlora.data.synthetic import CHAT_TEMPLATE

        tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=args.hidden_size, intermediate_size=args.intermediate_size,
        num_hidden_layers=args.num_layers, num_attention_heads=args.num_heads, num_key_value_heads=args.num_kv_heads,
        max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # random init of 1B weights: seconds on a GPU
        model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)
    print(f"parameters: {sum(p.numel() for p in model.parameters()) / 1e9:.3f}B, vocab {len(tokenizer)}")
    model.save_pretrained(args.output_dir, safe_serialization=True)
    tokenizer.save_pretrained(args.output_dir)


if __name__ == "__main__":
    main()
