"""Merge a LoRA adapter into its base model and save a standalone model in safetensors.

    python -m alpaca_qlora.merge --adapter runs/my-run --output_dir runs/my-run-merged --dtype bf16

An adapter trained on an NF4 base is merged into the base loaded unquantized (merging into 4-bit
weights would round the update away, qlora#28); the merged model then loads with plain
AutoModelForCausalLM.from_pretrained and works as `inference.py --base_model`.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from ..cli import fail, run_cli
from ..modeling import DTYPES, load_base_model, load_tokenizer
from ..run_folder import RUN_CONFIG, adapter_base_model


@dataclass
class MergeArguments:
    adapter: str = field(metadata={"help": "Run folder (or any folder) holding adapter_config.json and adapter_model.safetensors."})
    output_dir: str = field(metadata={"help": "Where the merged model is written."})
    dtype: str = field(default="bf16", metadata={"help": "Dtype of the merged weights.", "choices": tuple(DTYPES)})
    base_model: str | None = field(default=None, metadata={"help": "Base model; default: the one named in adapter_config.json."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing --output_dir."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Run model code from the hub. Off unless you trust it."})


def merge_adapter(args: MergeArguments) -> Path:
    from peft import PeftModel

    output = Path(args.output_dir)
    if output.exists() and any(output.iterdir()) and not args.overwrite:
        fail(f"--output_dir {output} is not empty; pass --overwrite to replace it")
    base_name = args.base_model or adapter_base_model(args.adapter)
    base = load_base_model(base_name, "none", DTYPES[args.dtype], trust_remote_code=args.trust_remote_code)
    model = PeftModel.from_pretrained(base, args.adapter).merge_and_unload()
    tokenizer_source = args.adapter if (Path(args.adapter) / "tokenizer_config.json").is_file() else base_name
    tokenizer = load_tokenizer(tokenizer_source, args.trust_remote_code)

    # Written into a sibling temporary folder, then moved: a crash never leaves a half-merged model.
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}."))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        if (Path(args.adapter) / RUN_CONFIG).is_file():  # the prompt template travels with the model
            shutil.copy(Path(args.adapter) / RUN_CONFIG, staging / RUN_CONFIG)
        if output.exists():
            shutil.rmtree(output)
        staging.rename(output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    print(f"merged {args.adapter} into {base_name} ({args.dtype}): {output}")
    return output


def main(argv: list[str] | None = None) -> None:
    (args,) = HfArgumentParser(MergeArguments).parse_args_into_dataclasses(args=argv)
    merge_adapter(args)


if __name__ == "__main__":
    run_cli(main)
