"""Synthetic Alpaca-format records, and a tiny random Llama with a tokenizer trained on them.

For the test suite, the benchmarks' small shapes and a first try of the whole toolkit with nothing
downloaded. The records are written here (short tasks whose answers follow from the instruction:
arithmetic, word games, sorting), so a model can learn them, and they carry no third-party text.

    python -m alpaca_qlora.data.synthetic --output_dir tiny   # tiny/data.json, tiny/model/ and tiny/model.gguf
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


IMAGE_TOKEN = "<image>"
# The chat template of the tiny LLaVA's processor: ChatML, with an image part written as the image token.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% else %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_llava(output_dir: str | Path, records: list[dict], seed: int = 0, image_size: int = 32, patch_size: int = 8) -> Path:
    """A random LLaVA (LLaVA 1.5's architecture: a CLIP vision tower, a 2-layer MLP projector, a Llama) and its
    processor (a CLIP image processor and the tiny tokenizer with an `<image>` token), saved as a model folder.

    Built from transformers' config classes, as its own tests build tiny LLaVAs: a 2-layer CLIP of width 32 on
    32x32 images in 8x8 patches (16 image tokens per image, its CLS feature dropped as LLaVA 1.5 does) and the
    tiny Llama of build_tiny_llama. Random weights: it tests the plumbing, not the quality."""
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tokenizer = build_tokenizer(record_texts(records))
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=image_size, patch_size=patch_size, projection_dim=32)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
                         vision_feature_layer=-1, vision_feature_select_strategy="default")
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    # num_additional_image_tokens=1: the CLS feature the tower adds, which the "default" strategy then drops.
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=LLAVA_CHAT_TEMPLATE)
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir, safe_serialization=True)
    processor.save_pretrained(output_dir)
    return output_dir


def synthetic_images(folder: str | Path, count: int = 8, size: int = 48) -> list[Path]:
    """`count` small PNG images (coloured shapes on a background), drawn here with PIL."""
    from PIL import Image, ImageDraw

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    colours = ((200, 30, 30), (30, 160, 60), (40, 70, 200), (230, 190, 20), (120, 40, 160), (20, 20, 20))
    paths = []
    for index in range(count):
        image = Image.new("RGB", (size, size + index % 3 * 8), colours[(index + 3) % len(colours)])
        draw = ImageDraw.Draw(image)
        box = (6 + index, 6, size - 6, size - 6 - index)
        (draw.ellipse if index % 2 else draw.rectangle)(box, fill=colours[index % len(colours)])
        path = folder / f"image_{index}.png"
        image.save(path)
        paths.append(path)
    return paths


def write_gguf(model_dir: str | Path, gguf_path: str | Path) -> Path:
    """The tiny Llama (build_tiny_llama) as an unquantized (f32) GGUF file, so the GGUF path is tested with nothing
    downloaded. Written by the project's one GGUF writer, the merge's export (export/to_gguf.py)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..export.to_gguf import gguf_vocab
    from ..export.to_gguf import write_gguf as export_gguf

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    vocab = gguf_vocab(tokenizer, model.config.vocab_size, str(model_dir))
    export_gguf(model, vocab, Path(model_dir), Path(gguf_path), "f32", Path(model_dir).name)
    return Path(gguf_path)


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
    write_gguf(output / "model", output / "model.gguf")
    print(f"wrote {output / 'data.json'} ({len(records)} records), {output / 'model'} and {output / 'model.gguf'}")


if __name__ == "__main__":
    main()
