"""Merge a LoRA adapter into its base model and save a standalone model in safetensors.

    python -m alpaca_qlora.merge --adapter runs/my-run --output_dir runs/my-run-merged --dtype bf16

An adapter trained on an NF4 base is merged into the base loaded unquantized (merging into 4-bit weights
would round the update away, qlora#28); the merged model then loads with plain
AutoModelForCausalLM.from_pretrained and works as `inference.py --base_model`. It answers as the adapter
on a full-precision base does, not as the adapter on the NF4 base it was trained and evaluated with:
merge_info.json says so, with the precisions, and lists the files the merge wrote: `--overwrite` replaces those
and keeps anything else in the folder (a user's notes, generations).

`--gguf f16|q8_0` also writes the merged model as `model-<type>.gguf` for llama.cpp / Ollama / LM Studio (model_type
llama, mistral or qwen2; export/to_gguf.py) and an Ollama `Modelfile` with the run's prompt template
(export/modelfile.py).
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..cli import ArgumentParser, check_writable_folder, fail, parse_dataclasses
from ..export.modelfile import ollama_modelfile
from ..export.to_gguf import (
    OFFERED_TYPES, GgufVocab, attention_span, check_exportable, gguf_file_name, gguf_vocab, write_gguf,
)
from ..files import (
    atomic_write_json, atomic_write_text, is_plain_name, move_in, read_json_object, remove_stale_staging, remove_written,
    staging_folder,
)
from ..generation.source import read_run_config, resolve_prompt_template
from ..modeling import DTYPES, attach_adapter, base_model_kind, load_base_model, load_model_config, load_tokenizer_or_processor
from ..run_folder import PROMPT_TEMPLATE_COPY, RUN_CONFIG, TOKENIZER_CONFIG, RunFolder, adapter_base_model, adapter_config

MERGE_INFO = "merge_info.json"
MODELFILE = "Modelfile"


@dataclass
class MergeArguments:
    adapter: str = field(metadata={"help": "Run folder (or any folder) holding adapter_config.json and adapter_model.safetensors."})
    output_dir: str = field(metadata={"help": "Where the merged model is written."})
    dtype: str = field(default="bf16", metadata={"help": "Dtype of the merged weights.", "choices": tuple(DTYPES)})
    base_model: str | None = field(default=None, metadata={"help": "Base model; default: the one named in adapter_config.json."})
    overwrite: bool = field(default=False, metadata={"help": "Replace a merged model this command wrote to --output_dir before "
                                                            "(its own files only: others in the folder are kept)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Run model code from the hub. Off unless you trust it."})
    gguf: str | None = field(
        default=None,
        metadata={"help": "Also write the merged model as model-<type>.gguf (llama.cpp, Ollama, LM Studio) and an Ollama "
                          "Modelfile: f16, or q8_0 (8-bit blocks; rows not a multiple of 32 stay f16). Llama, Mistral and "
                          "Qwen2 models (model_type llama, mistral, qwen2) only.", "choices": OFFERED_TYPES},
    )


def check_output(output: Path, overwrite: bool) -> list[str]:
    """Write only into a new or empty folder, or (with --overwrite) over a merged model this command wrote.

    Returns the names of the merged model there (merge_info.json lists them): --overwrite replaces those only."""
    if output.exists() and not output.is_dir():
        fail(f"--output_dir {output} exists and is not a folder")
    check_writable_folder(output, "--output_dir")
    if not output.is_dir() or not any(output.iterdir()):
        return []
    info = output / MERGE_INFO
    if not info.is_file():
        fail(f"--output_dir {output} is not empty and is not a merged model of this command (no {MERGE_INFO}); "
             "nothing was changed: choose another --output_dir")
    if not overwrite:
        fail(f"--output_dir {output} holds a merged model already; pass --overwrite to replace it")
    files = read_json_object(info, "the merge's information").get("files")
    if files is None:
        fail(f"--overwrite: {info} does not list the files the merge wrote (an older version wrote it); nothing was "
             "changed: remove the merged model yourself or choose another --output_dir")
    if not isinstance(files, list) or not all(is_plain_name(name) for name in files):
        fail(f"{info}: field 'files' must be a list of file names; nothing was changed")
    return files


def staging_prefix(output: Path) -> str:
    """The aside folder's name, beside --output_dir: the merge is written there, then moved in."""
    return f".{output.name}.merging-"


def trained_precision(adapter: str) -> str:
    folder = RunFolder(Path(adapter))
    if not folder.is_run_folder():
        return "unknown (not a training run folder)"
    model = folder.config().get("model", {})
    return f"{model.get('quantization', '?')} base, {folder.config().get('plan', {}).get('compute_dtype', model.get('compute_dtype', '?'))} compute"


@dataclass
class GgufPlan:
    """What --gguf writes, decided (and any refusal made) before a weight is loaded."""

    kind: str
    file_name: str
    vocab: GgufVocab
    modelfile: str


def plan_gguf(args: MergeArguments, config, base_name: str, tokenizer) -> GgufPlan:
    """Check that the tokenizer can be written, and build the Modelfile from the run's prompt template (the one
    generation uses for this adapter: its run_config.json, else alpaca), its context within the span where llama.cpp
    attends as transformers does (a Mistral's sliding window)."""
    file_name = gguf_file_name(args.gguf)
    template = resolve_prompt_template(None, read_run_config(args.adapter), args.adapter)
    return GgufPlan(args.gguf, file_name, gguf_vocab(tokenizer, config.vocab_size, base_name),
                    ollama_modelfile(file_name, template, tokenizer, attention_span(config)))


def merge_adapter(args: MergeArguments) -> Path:
    output = Path(args.output_dir)
    written_before = check_output(output, args.overwrite)
    adapter_config(args.adapter)  # the adapter folder checked before anything loads, --base_model given or not
    base_name = args.base_model or adapter_base_model(args.adapter)
    kind = base_model_kind(base_name, args.trust_remote_code)  # an image-text model merges with its processor
    config = load_model_config(base_name, args.trust_remote_code) if args.gguf else None
    if config is not None:  # an architecture the export cannot write is refused before anything else is loaded
        check_exportable(config, base_name)
    tokenizer_source = args.adapter if (Path(args.adapter) / TOKENIZER_CONFIG).is_file() else base_name
    tokenizer = load_tokenizer_or_processor(tokenizer_source, kind, args.trust_remote_code)
    export = plan_gguf(args, config, base_name, tokenizer) if config is not None else None
    for name in (export.file_name, MODELFILE) if export is not None else ():  # --overwrite replaces the merge's own only
        if (output / name).exists() and name not in written_before:
            fail(f"--output_dir {output}: {name} there was not written by the merge; nothing was changed: move it out first")
    base = load_base_model(base_name, "none", DTYPES[args.dtype], trust_remote_code=args.trust_remote_code, kind=kind)
    model = attach_adapter(base, args.adapter).merge_and_unload()

    remove_stale_staging(output.parent, staging_prefix(output))  # left by a merge killed before it moved in
    with staging_folder(output.parent, staging_prefix(output)) as staging:  # a crash never leaves a half-merged model
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        for name in (RUN_CONFIG, PROMPT_TEMPLATE_COPY):  # the prompt template travels with the model
            if (Path(args.adapter) / name).is_file():
                shutil.copy(Path(args.adapter) / name, staging / name)
        gguf_info = None
        if export is not None:  # the GGUF is written under a .partial name inside the aside folder, then renamed
            gguf_info = write_gguf(model, export.vocab, staging, staging / export.file_name, export.kind, output.name)
            atomic_write_text(staging / MODELFILE, export.modelfile)
        files = sorted([p.name for p in staging.iterdir()] + [MERGE_INFO])
        atomic_write_json(staging / MERGE_INFO, {
            "base_model": base_name, "adapter": str(Path(args.adapter).resolve()), "dtype": args.dtype,
            "trained_with": trained_precision(args.adapter),
            "note": "merged into the unquantized base: answers are those of the adapter on a full-precision base, "
                    "which can differ from the adapter on the quantized base it was trained and evaluated with",
            "files": files,  # what --overwrite replaces (and nothing else in the folder)
            **({"gguf": gguf_info} if gguf_info else {}),
        })
        if output.is_dir() and any(output.iterdir()):  # --overwrite: the earlier merge's files go, the rest stays
            remove_written(output, sorted(set(written_before) - set(files)))
            move_in(staging, output, last=MERGE_INFO)
        else:  # a new (or empty) folder: it appears whole
            staging.rename(output)
    print(f"wrote {output}: {base_name} with the adapter {args.adapter} merged in, weights in {args.dtype} "
          f"(the base model itself is unchanged; trained with {trained_precision(args.adapter)})"
          + (f"; {export.file_name} and {MODELFILE} for llama.cpp and Ollama" if export is not None else ""))
    return output


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(MergeArguments, description=__doc__.split("\n")[0])
    (args,) = parse_dataclasses(parser, sys.argv[1:] if argv is None else argv)
    merge_adapter(args)
