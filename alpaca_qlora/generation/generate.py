"""Generation: loading a model (+ adapter) for inference, batched `generate`, and extracting the answer.

Shared by the three modes of inference.py (one answer, interactive, batch). The prompt is always built
by data.prompts.build_prompt with the template the adapter was trained with, so a model is asked exactly
what it learned to answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import LogitsProcessorList, StoppingCriteriaList

from ..data.prompts import build_prompt
from ..data.tokenization import encode_text, starts_with_bos
from ..modeling import (
    DTYPES, attach_adapter, default_device_map, load_base_model, load_processor, load_tokenizer,
    use_packed_cpu_kernel,
)
from ..vision import IMAGE_FIELD, IMAGE_TEXT_TO_TEXT, is_processor, load_image, text_tokenizer
from .sampling import RowSeededSampling, samples_per_row
from .segments import generate_in_segments
from .settings import SAMPLING_DEFAULTS
from .shared_prefix import prefix_shared_inputs
from .source import ModelSource
from .stop_strings import StopAtStrings, cut_at_stop, decoded_answer, stop_index, tokens_to_stop


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------
def load_for_inference(source: ModelSource):
    """Tokenizer (left padding) and model in eval mode: the base, quantized or not, with the adapter on top.

    An image-text model comes with its processor in the tokenizer's place (its tokenizer pads on the left too)."""
    if source.model_kind == IMAGE_TEXT_TO_TEXT:
        tokenizer = load_processor(source.tokenizer_path, source.trust_remote_code)
    else:
        tokenizer = load_tokenizer(source.tokenizer_path, source.trust_remote_code)
    text_tokenizer(tokenizer).padding_side = "left"
    compute_dtype = DTYPES[source.compute_dtype]
    model = load_base_model(
        source.base_model, source.quantization, compute_dtype, source.double_quant,
        source.quant_storage, source.attn_implementation, source.trust_remote_code, device_map=default_device_map(),
        packed_cpu_kernel=use_packed_cpu_kernel(source.quantization, compute_dtype), kind=source.model_kind,
    )
    if source.adapter:
        model = attach_adapter(model, source.adapter)
    model.eval()
    model.generation_config.pad_token_id = text_tokenizer(tokenizer).pad_token_id
    return model, tokenizer


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def context_length(model) -> int | None:
    return getattr(model.config, "max_position_embeddings", None)


def describe_device(model) -> str:
    device = model_device(model)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    return f"{device.type} ({name})"


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------
@dataclass
class Answer:
    text: str  # the answer alone: after the prompt's response marker, cut at the first EOS and before a stop string, stripped
    new_tokens: int  # tokens the model wrote for it, its EOS (or the token completing its stop string) included


def prompt_for(record: dict, template: str, tokenizer) -> str:
    """Exactly the text training put before the answer (prompts.build_prompt, same template)."""
    return build_prompt(record, template, tokenizer)


def stop_token_ids(tokenizer, model) -> list[int]:
    """The tokenizer's EOS (what training appended to every answer) and any the model's generation config adds."""
    ids = [text_tokenizer(tokenizer).eos_token_id]
    configured = model.generation_config.eos_token_id
    ids += configured if isinstance(configured, list) else [configured]
    return list(dict.fromkeys(i for i in ids if i is not None))


def generate_kwargs(resolved: dict, tokenizer, model) -> dict:
    """The arguments of `generate`: every decoding setting as resolved, plus pad and stop tokens.

    A sampling knob that does not apply (None: no sampling) is passed at its neutral default, so a model's own
    generation_config (e.g. a top_k of 20) cannot fill it in. Stop strings are not `generate`'s (stop_strings.py)."""
    kwargs = {name: value for name, value in resolved.items() if name not in ("seed", "stop")}
    kwargs.update({name: default for name, default in SAMPLING_DEFAULTS.items() if kwargs[name] is None})
    return {**kwargs, "pad_token_id": text_tokenizer(tokenizer).pad_token_id, "eos_token_id": stop_token_ids(tokenizer, model)}


def seed_everything(seed: int) -> None:
    """Python's, NumPy's and torch's generators (all devices), as transformers.set_seed seeds them. Not set_seed
    itself: importing it loads transformers.trainer_utils, 1.2 s of every inference.py start-up on a 2-core CPU."""
    import random

    import numpy as np

    seed %= 2**32
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # every CUDA device too


def batch_seed(seed: int, batch_index: int) -> int:
    """Seed of one batch: the same for a batch whether the run was interrupted or not."""
    return (seed * 1_000_003 + batch_index) % 2**32


def record_images(records: list[dict]) -> list:
    """The images of a batch's records, in prompt order (records without one have none)."""
    return [load_image(r[IMAGE_FIELD], f"record {r['id']!r}: field '{IMAGE_FIELD}'") for r in records if r.get(IMAGE_FIELD)]


@torch.no_grad()
def generate_answers(model, tokenizer, prompts: list[str], resolved: dict, streamer=None, images: list | None = None,
                     stopping_criteria=None, answer_seeds: list[int] | None = None) -> list[Answer]:
    """Answers to a batch of prompt texts: one `generate` call with the KV cache.

    With a processor (image-text models), `images` are the batch's images in the order of the prompts' image tokens.
    `stopping_criteria` (transformers' StoppingCriteriaList) can end an answer early, e.g. when its reader has left.
    `answer_seeds` (one per prompt) make each sampled answer depend on its own seed only (sampling.py), not on the
    batch it is in. Text prompts that begin alike (a template's preamble) share one forward pass over their common
    tokens (shared_prefix.py); the others are left-padded. Two or more text prompts without beams or streamer are
    generated in segments, finished answers leaving the batch between them (segments.py). An answer that writes one of
    the setting's stop strings ends there and is cut before it (stop_strings.py). Prompts are encoded as training encoded
    them (tokenization.encode_text: a prompt that begins with the BOS gets no second one)."""
    kwargs = generate_kwargs(resolved, tokenizer, model)
    stops = set(stop_token_ids(tokenizer, model))
    stop_strings = resolved.get("stop") or ()
    sampler = (RowSeededSampling.seeded(answer_seeds, model_device(model), resolved)
               if answer_seeds and samples_per_row(resolved) else None)
    if is_processor(tokenizer):
        encoded = tokenizer(text=prompts, images=images or None, return_tensors="pt", padding=True,
                            add_special_tokens=not any(starts_with_bos(tokenizer, prompt) for prompt in prompts))
        inputs = dict(encoded.to(model_device(model)))
    else:
        token_ids = [encode_text(tokenizer, prompt) for prompt in prompts]
        inputs = prefix_shared_inputs(model, token_ids, kwargs["pad_token_id"], resolved["num_beams"])
    until_stop = (StopAtStrings(stop_strings, text_tokenizer(tokenizer), stops, inputs["input_ids"].shape[1])
                  if stop_strings else None)
    if until_stop is not None:
        stopping_criteria = StoppingCriteriaList([*(stopping_criteria or []), until_stop])
    if not is_processor(tokenizer) and len(prompts) > 1 and resolved["num_beams"] == 1 and streamer is None:
        new_ids = generate_in_segments(model, inputs, kwargs, stops, sampler, stopping_criteria, until_stop)
        return [extract_answer(row, text_tokenizer(tokenizer), stops, stop_strings) for row in new_ids]
    output = model.generate(**inputs, **kwargs, use_cache=True, streamer=streamer, stopping_criteria=stopping_criteria,
                            logits_processor=LogitsProcessorList([sampler] if sampler else []))
    new_ids = output[:, inputs["input_ids"].shape[1] :]
    return [extract_answer(row.tolist(), text_tokenizer(tokenizer), stops, stop_strings) for row in new_ids]


def extract_answer(new_ids: list[int], tokenizer, stops: set[int], stop_strings=()) -> Answer:
    """The generated tokens up to the first stop token, as text, cut before the first stop string (stop_strings.py);
    the prompt is never part of it."""
    end = next((i for i, token in enumerate(new_ids) if token in stops), None)
    answer_ids = new_ids if end is None else new_ids[:end]
    text = decoded_answer(answer_ids, tokenizer)
    if stop_index(text, stop_strings) is not None:
        return Answer(text=cut_at_stop(text, stop_strings).strip(),
                      new_tokens=tokens_to_stop(answer_ids, tokenizer, stop_strings))
    return Answer(text=text.strip(), new_tokens=len(new_ids) if end is None else end + 1)
