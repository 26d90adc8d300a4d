import torch, time
torch.manual_seed(0)
a=torch.randn(256*1024*1024//4)
for i in range(3):
    t=time.perf_counter(); s=a.sum(); d=time.perf_counter()-t
print("read GB/s", a.numel()*4/d/1e9)
L=30
Ws = [(torch.randn(1536,576), torch.randn(1536,576), torch.randn(576,1536), torch.randn(576,576), torch.randn(192,576), torch.randn(192,576), torch.randn(576,576)) for _ in range(L)]
E = torch.randn(49152,576)
def step(M, lin, prep):
    x=torch.randn(M,576); h=torch.randn(M,1536)
    t=time.perf_counter()
    for (g,u,d,q,k,v,o) in prep:
        lin(x,g); lin(x,u); lin(h,d); lin(x,q); lin(x,k); lin(x,v); lin(x,o)
    lin(x, prep_E)
    return time.perf_counter()-t
F = torch.nn.functional.linear
prep_E = E
for M in (16, 32, 64):
    ts=[step(M, F, Ws) for _ in range(4)]
    print(f"linear M={M}: {min(ts)*1000:.1f} ms")
# pre-transposed
WsT=[tuple(w.t().contiguous() for w in ws) for ws in Ws]
prep_E = E.t().contiguous()
for M in (16, 64):
    ts=[step(M, lambda x,w: x@w, WsT) for _ in range(4)]
    print(f"x@Wt M={M}: {min(ts)*1000:.1f} ms")
# mkl packed
try:
    for M in (16, 64):
        packed=[tuple(torch.ops.mkl._mkl_reorder_linear_weight(w, M) for w in ws) for ws in Ws]
        origs = Ws
        prep_E = torch.ops.mkl._mkl_reorder_linear_weight(E, M)
        def mklin(x, pw, _cache={}):
            return torch.ops.mkl._mkl_linear(x, pw, _orig[id(pw)], None, M)
        _orig = {}
        for ws, ps in zip(Ws, packed):
            for w, p in zip(ws, ps): _orig[id(p)] = w
        _orig[id(prep_E)] = E
        ts=[step(M, mklin, packed) for _ in range(4)]
        print(f"mkl packed M={M}: {min(ts)*1000:.1f} ms")
        x=torch.randn(M,576); print(" maxdiff", (mklin(x, prep_E)-F(x,E)).abs().max().item())
except Exception as e: print("mkl", e)
