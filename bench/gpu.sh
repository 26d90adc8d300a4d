#!/usr/bin/env bash
# GPU benchmark, prepared for one run on a lent H100/H200 (under 8 minutes). From the repo root here:
#   ../shared/gpu/fetch-wheels                      # wheels the GPU image lacks -> .device-wheels/
#   mkdir -p .device-data && cp ../shared/data/alpaca_data.json .device-data/ && echo /.device-data/ >> .git/info/exclude
# then run with carry [".device-wheels", ".device-data"]:
#   bash bench/gpu.sh "$OUT"
set -euo pipefail
out=${1:-bench-gpu-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=true
python3 -m pip install -q --no-index --no-deps --target /tmp/site .device-wheels/*.whl
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
python3 bench/make_bench_model.py --data .device-data/alpaca_data.json --output_dir /tmp/llama-1b 2>&1 | tee "$out/model.log"
python3 bench/bench_training.py --model /tmp/llama-1b --data .device-data/alpaca_data.json \
    --batch_size 16 --max_seq_length 512 --steps 12 --warmup 3 --window 3 \
    --json_out "$out/training.json" 2>&1 | tee "$out/training.log"
python3 bench/bench_generation.py --base_model /tmp/llama-1b --data_path .device-data/alpaca_data.json \
    --num_prompts 64 --batch_size 16 --max_new_tokens 128 2>&1 | tee "$out/generation.log"
