import json, sys, time, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
M="/root/.cache/alpaca_qlora/gguf/SmolLM2-135M-Instruct.Q4_1-b179c9523d0e6a0f"
B=int(sys.argv[1]); cache=sys.argv[2] if len(sys.argv)>2 else None
tok = AutoTokenizer.from_pretrained(M, padding_side="left")
model = AutoModelForCausalLM.from_pretrained(M, dtype=torch.float32).eval()
recs = json.load(open("/work/shared/data/alpaca_data.json"))[:B]
prompts = [("Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n" f"### Instruction:\n{r['instruction']}\n\n### Response:\n") for r in recs]
enc = tok(prompts, return_tensors="pt", padding=True)
from torch.profiler import profile, ProfilerActivity
kw = {"cache_implementation": cache} if cache else {}
with torch.no_grad():
    t=time.perf_counter(); model.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id, **kw); print("warm", time.perf_counter()-t)
    t=time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as p:
        model.generate(**enc, max_new_tokens=32, min_new_tokens=32, do_sample=False, pad_token_id=tok.pad_token_id, **kw)
    print("32 steps", time.perf_counter()-t)
print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=14))
