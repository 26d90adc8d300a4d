#!/usr/bin/env bash
# GPU benchmark and GPU-only checks, prepared for ONE run on a lent H100/H200 (about 6 minutes; each
# stage has a time limit, so it ends within 9 minutes (< the 600 s a device command may run) and keeps
# what finished). From the repo root here (the carried folders must stay under 64 MiB in all):
#   ../shared/gpu/fetch-wheels liger-kernel && rm .device-wheels/{bert_score,nltk,rouge_score}-*.whl  # ~25 MB
#   mkdir -p .device-data && gzip -c ../shared/data/alpaca_data.json > .device-data/alpaca_data.json.gz  # 7 MB
#   grep -qx /.device-data/ .git/info/exclude || echo /.device-data/ >> .git/info/exclude
# then run with carry [".device-wheels", ".device-data"] and timeout_s 600:
#   bash bench/gpu.sh "$OUT"
# Results: $out/summary.txt (what to copy into BENCHMARKS.md), full logs and JSON beside it.
# Dry run on the CPU with a tiny shape:  SKIP_INSTALL=1 MODEL_ARGS="--hidden_size 64 --num_layers 2 --num_heads 4
#   --num_kv_heads 2 --intermediate_size 128" bash bench/gpu.sh /tmp/gpu-dry
set -uo pipefail
out=${1:-bench-gpu-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=true
started=$SECONDS
stage() { echo "== $1 (t=$((SECONDS - started)) s)" | tee -a "$out/summary.txt"; }

stage "install"
if [ -z "${SKIP_INSTALL:-}" ]; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .device-wheels/*.whl 2>&1 | tail -3
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee -a "$out/summary.txt"
python3 - <<'PY' 2>&1 | tee -a "$out/summary.txt"
import importlib.metadata as md, torch
def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "missing"
print("torch", torch.__version__, "cuda", torch.version.cuda, "| " + ", ".join(
    f"{m} {version(m)}" for m in ("transformers", "peft", "bitsandbytes", "accelerate", "triton", "liger-kernel")))
PY

data=/tmp/alpaca_data.json
gunzip -c .device-data/alpaca_data.json.gz > "$data"

stage "GPU-only tests (packed_varlen, Liger)"
timeout 75 python3 -m pytest -q -rs -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$out/gpu_tests.log" | tail -5 | tee -a "$out/summary.txt"

stage "model: Llama 1.1B random weights + 32k BPE trained on Alpaca"
timeout 60 python3 bench/make_bench_model.py --data "$data" --output_dir /tmp/llama-1b ${MODEL_ARGS:-} 2>&1 \
    | tee "$out/model.log" | grep parameters | tee -a "$out/summary.txt"

stage "training: baseline vs ours (+ candidate optimisations), batch 16 x 512"
timeout 300 python3 bench/bench_training.py --model /tmp/llama-1b --data "$data" \
    --batch_size 16 --max_seq_length 512 --steps 12 --warmup 3 --window 3 --variant_timeout 90 \
    --variants baseline,ours,ours_varlen,ours_liger,ours_no_checkpointing,ours_compile \
    --json_out "$out/training.json" > "$out/training.log" 2> "$out/training.err"
grep -E '^\||^ratio|^failed' "$out/training.log" | tee -a "$out/summary.txt"
grep -E '^[a-z_]+: \{' "$out/training.log" > "$out/training_partial.log"
grep -qE '^\|' "$out/training.log" || cat "$out/training_partial.log" >> "$out/summary.txt"  # stopped early: what finished

stage "generation: one prompt at a time vs batch 16"
timeout 75 python3 bench/bench_generation.py --base_model /tmp/llama-1b --data_path "$data" \
    --num_prompts 32 --batch_size 16 --max_new_tokens 64 2>&1 | tee "$out/generation.log" \
    | grep -E '^(model|one at|batch of|speed-up|versions)' | tee -a "$out/summary.txt"
stage "done"
cat "$out/summary.txt"
