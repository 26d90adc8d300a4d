M=/root/.cache/alpaca_qlora/gguf/SmolLM2-135M-Instruct.Q4_1-b179c9523d0e6a0f
cd /work/main
for bs in 32 64 96; do
  s=$(date +%s.%N)
  python inference.py --base_model $M --prompts_file /tmp/gen/p128.jsonl --output_file /tmp/gen/o$bs.jsonl --max_new_tokens 96 --batch_size $bs --overwrite > /tmp/gen/o$bs.log 2>&1
  e=$(date +%s.%N); echo "bs $bs: $(echo "$e - $s" | bc) s"
done
s=$(date +%s.%N); python bench/plain_generation.py $M /tmp/gen/p128.jsonl /tmp/gen/plain128.jsonl --max_new_tokens 96 --batch_size 16 > /dev/null 2>&1; e=$(date +%s.%N); echo "plain16: $(echo "$e - $s" | bc) s"
python - <<'PY'
import json
def load(p): return {json.loads(l)["id"]: json.loads(l)["prediction"] for l in open(p)}
ref = load("/tmp/gen/plain128.jsonl")
for bs in (32, 64, 96):
    o = load(f"/tmp/gen/o{bs}.jsonl"); print(bs, "identical", sum(o[k]==v for k,v in ref.items()), "/", len(ref))
PY
