import json, sys, time, torch
sys.path.insert(0, "/work/main")
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache
from alpaca_qlora.generation.shared_prefix import prefix_shared_inputs
M="/root/.cache/alpaca_qlora/gguf/SmolLM2-135M-Instruct.Q4_1-b179c9523d0e6a0f"
n=int(sys.argv[1]); new=int(sys.argv[2]); bs=int(sys.argv[3]); seg=int(sys.argv[4])
tok = AutoTokenizer.from_pretrained(M)
model = AutoModelForCausalLM.from_pretrained(M, dtype=torch.float32).eval()
recs = [json.loads(l) for l in open("/tmp/gen/p128.jsonl")][:n]
WI = ("Below is an instruction that describes a task, paired with an input that provides further context. "
      "Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:")
WO = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
      "request.\n\n### Instruction:\n{instruction}\n\n### Response:")
prompts = [(WI if r["input"] else WO).format(**r) for r in recs]
ids = tok(prompts)["input_ids"]
pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
eos = tok.eos_token_id
order = sorted(range(n), key=lambda i: (tuple(ids[i][:16]), -len(ids[i]), i))
@torch.no_grad()
def run(rows_ids):
    inputs = prefix_shared_inputs(model, rows_ids, pad, 1)
    cache = inputs.get("past_key_values") or DynamicCache(config=model.config)
    input_ids, mask = inputs["input_ids"], inputs["attention_mask"]
    start = input_ids.shape[1]
    rows = list(range(len(rows_ids))); result = {}; produced = 0
    while rows:
        steps = min(seg, new - produced) if seg else new - produced
        out = model.generate(input_ids=input_ids, attention_mask=mask, past_key_values=cache, max_new_tokens=steps,
                             do_sample=False, pad_token_id=pad, eos_token_id=eos)
        got = out.shape[1] - input_ids.shape[1]
        produced += got
        mask = torch.cat([mask, mask.new_ones(len(rows), got)], 1)
        keep = []
        for j, r in enumerate(rows):
            gen = out[j, start:].tolist()
            if eos in gen or produced >= new:
                result[r] = gen
            else:
                keep.append(j)
        if not keep: break
        idx = torch.tensor(keep)
        cache.batch_select_indices(idx)
        input_ids, mask = out[idx], mask[idx]
        rows = [rows[j] for j in keep]
    return [result[r] for r in range(len(rows_ids))]
t = time.perf_counter(); res = {}
for s in range(0, n, bs):
    idx = order[s:s+bs]
    for i, g in zip(idx, run([ids[i] for i in idx])):
        if eos in g: g = g[:g.index(eos)]
        res[i] = tok.decode(g, skip_special_tokens=True).strip()
d = time.perf_counter() - t
ref = {json.loads(l)["id"]: json.loads(l)["prediction"] for l in open("/tmp/gen/plain128.jsonl")}
print(f"seg {seg} bs {bs}: {d:.1f} s, identical {sum(ref[i]==res[i] for i in range(n))}/{n}")
