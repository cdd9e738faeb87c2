"""Exact denoiser (B = 64) vs the per-sample pattern, per sample, in CPU time of one thread (N = 20000, D = 3072).

    python benchmarks/bench_per_sample.py
"""
import time, torch
from boneless import EmpiricalDenoiser
from boneless.bench import synthetic_images, per_sample_pattern
torch.set_num_threads(1)
X = synthetic_images(20000, (3, 32, 32), seed=0); Xf = X.flatten(1)
den = EmpiricalDenoiser(X)
g = torch.Generator().manual_seed(1)
x0 = Xf[torch.randint(0, 20000, (64,), generator=g)]; eps = torch.randn(64, 3072, generator=g)
def cpu(f, r=3):
    f(); best = 1e9
    for _ in range(r):
        t = time.process_time(); f(); best = min(best, time.process_time() - t)
    return best
for ratio in (1.0, 4.0):
    a = 1 / (1 + ratio); s = ratio * a
    x = (a * x0 + s * eps)
    te = cpu(lambda: den(x.reshape(64, 3, 32, 32), a, s)) / 64
    tp = cpu(lambda: [per_sample_pattern(Xf, x[i:i+1], a, s) for i in range(2)], r=2) / 2
    print(f"ratio {ratio}: exact {te*1e3:.2f} ms/sample (B=64), per-sample pattern {tp*1e3:.0f} ms/sample, speed-up {tp/te:.0f}x")
