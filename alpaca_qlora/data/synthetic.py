"""Synthetic Alpaca-format records, and a tiny random Llama with a tokenizer trained on them.

For the test suite, the benchmarks' small shapes and a first try of the whole toolkit with nothing
downloaded. The records are written here (short tasks whose answers follow from the instruction:
arithmetic, word games, sorting), so a model can learn them, and they carry no third-party text.

    python -m alpaca_qlora.synthetic --output_dir tiny        # tiny/data.json and tiny/model/
    python training_script.py --base_model tiny/model --data_path tiny/data.json --output_dir runs/tiny

The model has random weights: it proves the plumbing (losses fall, files round-trip), not quality.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

WORDS = ("apple", "river", "garden", "window", "yellow", "planet", "silver", "forest", "candle", "pencil",
         "rabbit", "orange", "bridge", "summer", "winter", "castle", "mirror", "dragon", "pepper", "marble")
OPPOSITES = {"hot": "cold", "big": "small", "fast": "slow", "happy": "sad", "light": "dark", "early": "late",
             "open": "closed", "full": "empty", "high": "low", "new": "old"}
FRENCH = {"thank you": "merci", "hello": "bonjour", "cheese": "fromage", "tree": "arbre", "water": "eau",
          "summer": "été", "coffee": "café", "school": "école"}
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")
# A ChatML template, as SmolLM2 and Qwen use: the tiny tokenizer supports --prompt_template chat.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _record(instruction: str, output: str, input_text: str = "") -> dict:
    return {"instruction": instruction, "input": input_text, "output": output}


def _task(rng: random.Random) -> dict:
    kind = rng.randrange(8)
    word = rng.choice(WORDS)
    if kind == 0:
        a, b = rng.randrange(100), rng.randrange(100)
        return _record(f"Add {a} and {b}.", f"{a} + {b} = {a + b}.")
    if kind == 1:
        return _record("Reverse the word.", word[::-1], word)
    if kind == 2:
        return _record("Write the word in capital letters.", word.upper(), word)
    if kind == 3:
        numbers = rng.sample(range(1, 50), rng.randrange(3, 7))
        return _record("Sort these numbers from smallest to largest.", ", ".join(map(str, sorted(numbers))),
                       ", ".join(map(str, numbers)))
    if kind == 4:
        return _record(f"How many letters does the word '{word}' have?", f"The word '{word}' has {len(word)} letters.")
    if kind == 5:
        adjective = rng.choice(sorted(OPPOSITES))
        return _record(f"What is the opposite of {adjective}?", f"The opposite of {adjective} is {OPPOSITES[adjective]}.")
    if kind == 6:
        english = rng.choice(sorted(FRENCH))
        return _record(f"Translate '{english}' into French.", f"In French, '{english}' is '{FRENCH[english]}'.")
    words = rng.sample(WORDS, 3)
    return _record("List these words in alphabetical order.", "\n".join(f"{i}. {w}" for i, w in enumerate(sorted(words), 1)),
                   " ".join(words))


def synthetic_records(count: int = 400, seed: int = 0, empty_outputs: int = 4) -> list[dict]:
    """`count` Alpaca records (instruction, input, output); the last `empty_outputs` have an empty output."""
    rng = random.Random(seed)
    records = [_task(rng) for _ in range(count - empty_outputs)]
    records += [_record("Say nothing at all.", "") for _ in range(empty_outputs)]
    return records


def record_texts(records: list[dict]) -> list[str]:
    """What the tokenizer learns from: each record as an Alpaca prompt and its answer, so prompts are short."""
    from .prompts import build_prompt

    return [build_prompt(r, "alpaca") + r["output"] for r in records]


def build_tokenizer(texts: list[str], vocab_size: int = 512):
    """A byte-level BPE tokenizer trained on `texts`: BOS prepended, EOS and UNK, no pad token (set at training)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                             special_tokens=[("<s>", tokenizer.token_to_id("<s>"))])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def build_tiny_llama(output_dir: str | Path, records: list[dict], seed: int = 0, hidden_size: int = 64,
                     intermediate_size: int = 176, num_layers: int = 2, num_heads: int = 4, num_kv_heads: int = 2,
                     vocab_size: int = 512) -> Path:
    """A random Llama and its tokenizer saved as an ordinary model folder (safetensors).

    The default MLP width, 176, is deliberately not a multiple of 32 while the attention widths are:
    bitsandbytes' packed CPU kernel accepts the second and not the first (modeling.set_packed_cpu_kernel).
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer(record_texts(records), vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
        max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)
    return output_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True, help="writes data.json and model/ here")
    parser.add_argument("--records", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    records = synthetic_records(args.records, args.seed)
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    (output / "data.json").write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    build_tiny_llama(output / "model", records, seed=args.seed)
    print(f"wrote {output / 'data.json'} ({len(records)} records) and {output / 'model'}")


if __name__ == "__main__":
    main()
