import json, sys, time, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
M="/root/.cache/alpaca_qlora/gguf/SmolLM2-135M-Instruct.Q4_1-b179c9523d0e6a0f"
tok = AutoTokenizer.from_pretrained(M, padding_side="left")
model = AutoModelForCausalLM.from_pretrained(M, dtype=torch.float32).eval()
print(model.config._attn_implementation, torch.get_num_threads())
recs = json.load(open("/work/shared/data/alpaca_data.json"))[:16]
prompts = [f"### Instruction:\n{r['instruction']}\n\n### Response:\n" for r in recs]
enc = tok(prompts, return_tensors="pt", padding=True)
with torch.no_grad():
    t=time.perf_counter(); o = model.generate(**enc, max_new_tokens=64, do_sample=False, pad_token_id=tok.pad_token_id, min_new_tokens=64); gen=time.perf_counter()-t
    print("generate 64 tokens", gen, "per step", gen/64)
    # manual decode loop
    from transformers import DynamicCache
    cache = DynamicCache()
    t=time.perf_counter()
    out = model(**enc, past_key_values=cache, use_cache=True, logits_to_keep=1)
    print("prefill", time.perf_counter()-t, enc.input_ids.shape)
    mask = enc.attention_mask
    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    times=[]
    for s in range(64):
        mask = torch.cat([mask, mask.new_ones(16,1)], 1)
        t=time.perf_counter()
        out = model(input_ids=nxt, attention_mask=mask, past_key_values=cache, use_cache=True)
        times.append(time.perf_counter()-t)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    print("manual step", sum(times)/64)
    from torch.profiler import profile, ProfilerActivity
    with profile(activities=[ProfilerActivity.CPU]) as p:
        for s in range(8):
            mask = torch.cat([mask, mask.new_ones(16,1)], 1)
            out = model(input_ids=nxt, attention_mask=mask, past_key_values=cache, use_cache=True)
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
