"""Image-text-to-text models (LLaVA 1.5, LLaVA-NeXT and others with the same API): what differs from a causal LM.

Everything goes through transformers' own classes: AutoModelForImageTextToText for the model, AutoProcessor for
the text and the images (the processor expands each `<image>` placeholder into as many image tokens as the
model's vision tower gives features, and turns images into pixel values). This module only decides:

- whether a model is one (`model_kind`, from its config.json: decided once, before weights load);
- which of its modules are the vision side (the vision tower and the projector): kept out of quantization and
  out of LoRA, so QLoRA touches the language model only;
- how a record's image is read (`load_image`: a file that is not an image is a one-line user error).
"""

from __future__ import annotations

from pathlib import Path

from .cli import fail

CAUSAL_LM = "causal_lm"
IMAGE_TEXT_TO_TEXT = "image_text_to_text"
IMAGE_FIELD = "image"

# The vision side of LLaVA-family models (LLaVA 1.5, LLaVA-NeXT, LLaVA-OneVision, and others that name them alike).
VISION_MODULES = ("vision_tower", "multi_modal_projector")
# transformers' bitsandbytes quantizer matches these as regexes from the module name's start (to a module boundary).
QUANTIZATION_SKIP_PATTERNS = tuple(f".*{name}" for name in VISION_MODULES) + ("lm_head",)
# peft's exclude_modules: a regex over full module names (target_modules stays as the user gave it).
LORA_EXCLUDE_PATTERN = r".*\.(" + "|".join(VISION_MODULES) + r")(\..*)?"


def model_kind(model_config) -> str | None:
    """causal_lm, image_text_to_text, or None for a model that cannot generate text (an encoder, a classifier)."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    if non_generator_class(model_config) is not None:
        return None
    if type(model_config) in AutoModelForCausalLM._model_mapping:
        return CAUSAL_LM
    if type(model_config) in AutoModelForImageTextToText._model_mapping:
        return IMAGE_TEXT_TO_TEXT
    return None


def non_generator_class(model_config) -> str | None:
    """The class config.json names when none of the classes it names generates text, else None.

    A model type can have a causal LM class while its checkpoint is an encoder: transformers maps 'bert' to
    BertLMHeadModel, and a BertForMaskedLM checkpoint would load into it with a new, random head and write noise.
    Classes of remote code (an auto_map) are not transformers' to judge: those are left to the model type."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
    )

    architectures = getattr(model_config, "architectures", None) or []
    if not architectures or getattr(model_config, "auto_map", None):
        return None
    generators = set()
    for names in [*MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values(), *MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.values()]:
        generators.update([names] if isinstance(names, str) else names)
    return None if any(name in generators for name in architectures) else architectures[0]


def not_a_generator(model_config) -> str:
    """Why a model whose model_kind is None is refused, for the one-line error after the flag and the model's name."""
    named = non_generator_class(model_config)
    if named is not None:
        return f"its config.json names {named}, which does not generate text (a causal LM or an image-text-to-text model does)"
    return f"a '{model_config.model_type}' model is not a generator (neither a causal LM nor an image-text-to-text model)"


def model_class(kind: str):
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    return AutoModelForImageTextToText if kind == IMAGE_TEXT_TO_TEXT else AutoModelForCausalLM


def is_processor(tokenizer_or_processor) -> bool:
    from transformers import ProcessorMixin

    return isinstance(tokenizer_or_processor, ProcessorMixin)


def text_tokenizer(tokenizer_or_processor):
    """The tokenizer itself, or a processor's tokenizer: ids, EOS, padding and decoding are the tokenizer's."""
    return tokenizer_or_processor.tokenizer if is_processor(tokenizer_or_processor) else tokenizer_or_processor


def image_token(processor) -> str:
    """The placeholder a prompt holds where the image goes (`<image>` for LLaVA)."""
    token = getattr(processor, "image_token", None)
    if not token:
        fail(f"the processor of '{getattr(processor, 'name_or_path', '')}' names no image token; is this an image-text model?")
    return token


def check_image(path: str | Path, where: str) -> None:
    """A readable image file (its header is parsed; pixels are read when used), else one line naming it."""
    load_image(path, where, decode=False)


def load_image(path: str | Path, where: str, decode: bool = True):
    """The image as RGB; `where` names the record and field (`data.jsonl: record 3: field 'image'`)."""
    from PIL import Image, UnidentifiedImageError

    file = Path(path)
    if not file.is_file():
        fail(f"{where}: {path}: no such image file")
    try:
        image = Image.open(file)
        if decode:
            image = image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as error:
        fail(f"{where}: {path}: not an image ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})")
    return image
