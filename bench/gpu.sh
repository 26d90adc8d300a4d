#!/usr/bin/env bash
# GPU benchmark and GPU-only checks, prepared for ONE run on a lent H100/H200 (about 6 minutes; each
# stage has a time limit, so it ends within 9 minutes (< the 600 s a device command may run) and keeps
# what finished). From the repo root here (the carried folders must stay under 64 MiB in all):
#   ../shared/gpu/fetch-wheels liger-kernel hjson msgpack ninja einops py-cpuinfo \
#       && rm .device-wheels/{bert_score,nltk,rouge_score}-*.whl                          # ~27 MB
#   pip wheel -q --no-deps -w .device-wheels deepspeed==0.19.8    # DeepSpeed ships a source archive: its pure-Python wheel, 2 MB
#   mkdir -p .device-data && gzip -c ../shared/data/alpaca_data.json > .device-data/alpaca_data.json.gz  # 7 MB
#   grep -qx /.device-data/ .git/info/exclude || echo /.device-data/ >> .git/info/exclude
# then run with carry [".device-wheels", ".device-data"] and timeout_s 600:
#   bash bench/gpu.sh "$OUT"            # the benchmark and GPU-only tests (below)
#   bash bench/gpu.sh "$OUT" engines    # a second call (about 4 minutes): what the CPU cannot check of the engines
#   bash bench/gpu.sh "$OUT" judge      # a model as judge (about 8 minutes): s/pair and peak memory, 8B-shaped judge
# Results: $out/summary.txt (what to copy into BENCHMARKS.md), full logs and JSON beside it.
# Dry run on the CPU with a tiny shape:  SKIP_INSTALL=1 MODEL_ARGS="--hidden_size 64 --num_layers 2 --num_heads 4
#   --num_kv_heads 2 --intermediate_size 128" bash bench/gpu.sh /tmp/gpu-dry
set -uo pipefail
out=${1:-bench-gpu-out}
what=${2:-benchmark}
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

if [ "$what" = judge ]; then
    # A model as judge (bench/judge_time.py, the job's own code): seconds per pair (both orders) and peak GPU memory
    # with a 7B-8B instruct judge. No hub weights reach this machine, so the judge is Llama-3-8B-shaped (hidden 4096,
    # 32 layers, 32 heads, 8 KV heads, MLP 14336) with random weights, a 32k BPE and a ChatML chat template: the time
    # and memory of judging, not its verdicts. JUDGE_MODEL=folder times a real model instead. Only with a GPU.
    if ! python3 -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        stage "judge: no GPU here, skipped"
        cat "$out/summary.txt"
        exit 0
    fi
    judge=${JUDGE_MODEL:-/tmp/llama-8b-judge}
    if [ -z "${JUDGE_MODEL:-}" ]; then
        stage "judge: model (Llama 8B shape, random weights, 32k BPE, ChatML)"
        timeout 200 python3 bench/make_bench_model.py --data "$data" --output_dir "$judge" --hidden_size 4096 \
            --num_layers 32 --num_heads 32 --num_kv_heads 8 --intermediate_size 14336 --chat_template chatml 2>&1 \
            | tee "$out/judge-model.log" | grep parameters | tee -a "$out/summary.txt"
    fi
    for quantization in ${JUDGE_QUANTIZATIONS:-none nf4}; do
        stage "judge: 32 pairs x 2 orders, $quantization, batch 16"
        timeout 150 python3 bench/judge_time.py --judge "$judge" --data "$data" --pairs 32 --batch_size 16 \
            --quantization "$quantization" --json_out "$out/judge-$quantization.json" > "$out/judge-$quantization.log" 2>&1
        echo "exit $?" | tee -a "$out/summary.txt"
        grep -E '^judge |^error:' "$out/judge-$quantization.log" | tee -a "$out/summary.txt"
    done
    stage "done"
    cat "$out/summary.txt"
    exit 0
fi

if [ "$what" = engines ]; then
    # What the CPU cannot check (tests/test_scale_out.py checks the rest with 2 CPU processes): DeepSpeed in bf16
    # (transformers runs 16-bit on the CPU only without DeepSpeed), bitsandbytes' CUDA 4-bit kernels under FSDP2 and
    # ZeRO-3 (4-bit weights stored in bf16, the QLoRA-FSDP / ZeRO-3 recipe), accelerate's own FSDP2 start on a GPU
    # (not the CPU shim), and the configs as shipped. One GPU: 1 process each (NCCL will not put 2 ranks on 1 GPU).
    stage "engines: model (Llama 120M random weights, 8k BPE)"
    timeout 90 python3 bench/make_bench_model.py --data "$data" --output_dir /tmp/llama-engines --hidden_size 1024 \
        --num_layers 8 --num_heads 16 --num_kv_heads 8 --intermediate_size 2816 --vocab_size 8192 2>&1 \
        | tee "$out/engines-model.log" | grep parameters | tee -a "$out/summary.txt"
    for config in fsdp_qlora deepspeed_zero3 deepspeed_zero2 ddp; do
        stage "engines: $config, QLoRA NF4, bf16, 1 process"
        timeout 100 python3 -m accelerate.commands.launch --config_file "configs/accelerate/$config.yaml" --num_processes 1 \
            training_script.py --base_model /tmp/llama-engines --data_path "$data" --output_dir "/tmp/engines-$config" \
            --max_samples 600 --val_set_size 32 --max_steps 8 --per_device_train_batch_size 4 --max_seq_length 256 \
            --logging_steps 2 --save_strategy steps --save_steps 4 --eval_strategy no > "$out/engines-$config.log" 2>&1
        echo "exit $?" | tee -a "$out/summary.txt"
        grep -E '^plan:|4-bit storage|^error:' "$out/engines-$config.log" | head -3 | tee -a "$out/summary.txt"
        python3 - "/tmp/engines-$config" <<'PY' 2>&1 | tee -a "$out/summary.txt"
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
log = [json.loads(l) for l in (run / "train_log.jsonl").read_text().splitlines()] if (run / "train_log.jsonl").is_file() else []
results = json.loads((run / "eval_results.json").read_text()) if (run / "eval_results.json").is_file() else {}
print("losses", [round(r["loss"], 4) for r in log if "loss" in r], "| held-out", {k: round(v["eval_loss"], 4) for k, v in results.items()
      if isinstance(v, dict) and "eval_loss" in v}, "| adapter", (run / "adapter_model.safetensors").is_file(),
      "| peak GiB", results.get("peak_memory_gib"), "| held", results.get("memory_held_per_process"))
PY
        timeout 60 python3 inference.py --adapter "/tmp/engines-$config" --instruction "Name a colour." --max_new_tokens 8 \
            > "$out/engines-$config-inference.log" 2>&1; echo "inference.py --adapter: exit $?" | tee -a "$out/summary.txt"
    done
    stage "done"
    cat "$out/summary.txt"
    exit 0
fi

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

stage "generation: inference.py vs the plain script (whole process, greedy, answers compared)"
timeout 150 python3 bench/bench_generation.py --models /tmp/llama-1b --workloads small,study --pairs 1 \
    --data_path "$data" --output "$out/generation.json" 2>&1 | tee "$out/generation.log" \
    | grep -E '^(machine|/tmp|  =>)' | tee -a "$out/summary.txt"
stage "done"
cat "$out/summary.txt"
