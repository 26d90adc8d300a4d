"""QLoRA instruction fine-tuning on Alpaca-format data: training, generation, scoring."""

import logging as _logging
import warnings as _warnings


class _NoHubKernelWarning(_logging.Filter):
    """bitsandbytes (imported by transformers and peft too) tries to fetch a CPU kernel from the Hugging Face
    Hub on CPUs with AVX512-BF16 and logs a warning when it cannot; it then uses its own kernel, so the user
    has nothing to do about it. Installed here, before anything can import bitsandbytes."""

    def filter(self, record: _logging.LogRecord) -> bool:
        return "kernels-community" not in record.getMessage()


_logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_NoHubKernelWarning())


class _NoCpuAcceleratorWarning(_logging.Filter):
    """DeepSpeed (imported by accelerate and transformers when installed) warns at import on every machine
    without a GPU that it falls back to the CPU; with no GPU that is the only choice, so it is noise."""

    def filter(self, record: _logging.LogRecord) -> bool:
        return "Setting accelerator to CPU" not in record.getMessage()


_logging.getLogger("DeepSpeed").addFilter(_NoCpuAcceleratorWarning())
# peft asks transformers for `is_gradient_checkpointing`, which transformers 5.2x renamed: the warning is about
# their code, not the user's.
_warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
# peft looks for the base's config.json at its recorded name when it saves an adapter; a GGUF base is recorded as
# the GGUF (a file, or package:NAME), which has none, so it warns. The vocabulary is never resized here.
_warnings.filterwarnings("ignore", message=r"Could not find a config file in (package:|.*\.gguf)", category=UserWarning)

# transformers 5.2x renames `past_key_values` to `cache` (removal announced for 5.40/6.0); the old name is kept here
# because the lower bound (5.17) may not know the new one. generation/shared_prefix.py passes a prefilled cache.
_warnings.filterwarnings("ignore", message=r"`past_key_values` is deprecated", category=FutureWarning)

__version__ = "0.1.0"
