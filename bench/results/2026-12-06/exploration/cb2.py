import json, sys, time, torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
from transformers.generation.configuration_utils import ContinuousBatchingConfig
M="/root/.cache/alpaca_qlora/gguf/SmolLM2-135M-Instruct.Q4_1-b179c9523d0e6a0f"
n=int(sys.argv[1]); new=int(sys.argv[2]); mbt=int(sys.argv[3])
tok = AutoTokenizer.from_pretrained(M, padding_side="left")
model = AutoModelForCausalLM.from_pretrained(M, dtype=torch.float32, attn_implementation="sdpa").eval()
recs = json.load(open("/work/shared/data/alpaca_data.json"))[:n]
ids = [tok("Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n" f"### Instruction:\n{r['instruction']}\n\n### Response:\n")["input_ids"] for r in recs]
gc = GenerationConfig(max_new_tokens=new, do_sample=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
cbc = ContinuousBatchingConfig(max_batch_tokens=mbt)
t=time.perf_counter()
with torch.no_grad():
    out = model.generate_batch(inputs=ids, generation_config=gc, continuous_batching_config=cbc)
d=time.perf_counter()-t
ntok=sum(len(v.generated_tokens) for v in out.values())
print("cb", mbt, f"{d:.1f} s", ntok, "tokens", f"{ntok/d:.1f} tok/s")
