import json, sys, time, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
M="/root/.cache/alpaca_qlora/gguf/SmolLM2-135M-Instruct.Q4_1-b179c9523d0e6a0f"
n=int(sys.argv[1]); new=int(sys.argv[2]); sizes=[int(x) for x in sys.argv[3].split(",")]; cache=sys.argv[4] if len(sys.argv)>4 else None
tok = AutoTokenizer.from_pretrained(M, padding_side="left")
model = AutoModelForCausalLM.from_pretrained(M, dtype=torch.float32).eval()
recs = json.load(open("/work/shared/data/alpaca_data.json"))[:n]
def prompt(r):
    if r["input"]:
        return ("Below is an instruction that describes a task, paired with an input that provides further context. "
                "Write a response that appropriately completes the request.\n\n"
                f"### Instruction:\n{r['instruction']}\n\n### Input:\n{r['input']}\n\n### Response:\n")
    return ("Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
            f"### Instruction:\n{r['instruction']}\n\n### Response:\n")
prompts=[prompt(r) for r in recs]
lens=[len(x) for x in tok(prompts).input_ids]
ref=None
for bs in sizes:
  for sort in ((True,) if len(sys.argv)>5 else (False, True)):
    order = sorted(range(n), key=lambda i: -lens[i]) if sort else list(range(n))
    outs={}
    t=time.perf_counter(); ntok=0
    for s in range(0,n,bs):
        idx=order[s:s+bs]
        enc=tok([prompts[i] for i in idx], return_tensors="pt", padding=True)
        with torch.no_grad():
            kw = {"cache_implementation": cache} if cache else {}
            o=model.generate(**enc, max_new_tokens=new, do_sample=False, pad_token_id=tok.pad_token_id, **kw)
        for i,row in zip(idx,o[:,enc.input_ids.shape[1]:].tolist()):
            eos = row.index(tok.eos_token_id)+1 if tok.eos_token_id in row else len(row)
            outs[i]=row[:eos]; ntok+=eos
    d=time.perf_counter()-t
    if ref is None: ref=outs
    same=sum(outs[i]==ref[i] for i in range(n))
    print(f"bs {bs} sorted {sort}: {d:.1f} s, {ntok} answer tokens, {ntok/d:.1f} tok/s, identical {same}/{n}", flush=True)
