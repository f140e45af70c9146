"""cuBLAS fp16 time at the frame sizes of a 4096-wide layer (K = 4500) against aligned sizes: does an
unaligned K keep cuBLAS off its fast path? Prints one line per shape (GPU only).

    python benchmarks/cublas_alignment.py
"""
import torch, statistics
def t(fn, reps=20):
    for _ in range(3): fn()
    torch.cuda.synchronize(); ts=[]
    for _ in range(reps):
        s,e=torch.cuda.Event(enable_timing=True),torch.cuda.Event(enable_timing=True); s.record(); fn(); e.record(); e.synchronize(); ts.append(s.elapsed_time(e)*1000)
    return statistics.median(ts)
M=12608
for kin,kout in [(4096,4096),(4500,4500),(4504,4504),(4544,4544),(4500,12104),(4544,12160)]:
    x=torch.randn(M,kin,device="cuda",dtype=torch.float16); w=torch.randn(kout,kin,device="cuda",dtype=torch.float16)
    us=t(lambda: torch.matmul(x,w.T)); print(f"M={M} K_in={kin} K_out={kout}: {us:8.1f} us  {2*M*kin*kout/us/1e6:6.1f} TFLOP/s")
