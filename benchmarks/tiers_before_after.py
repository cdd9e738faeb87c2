"""Side by side in one process: the bank before this session's tier changes (790740b) and after, against the
two plain float32 products, at D = 49152 over the noise levels; interleaved repeats, minimum time."""
import sys, time, torch
sys.path.insert(0, "/tmp/oldpkg")  # made by: git archive 790740b boneless | tar -x -C /tmp/oldpkg, then renamed boneless_old
from boneless_old.bank import Bank as OldBank
from boneless.bank import Bank
from boneless.bench import synthetic_images, _coeffs
threads, N, B = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])  # e.g. 1 6000 16
torch.set_num_threads(threads)
X = synthetic_images(N, (3, 128, 128), seed=0).reshape(N, -1).float()
D = X.shape[1]
g = torch.Generator().manual_seed(1)
x0 = X[torch.randint(0, N, (B,), generator=g)]; eps = torch.randn(B, D, generator=g)
p = torch.softmax(torch.randn(B, N, generator=g), 1)
old, new = OldBank(X), Bank(X)
print(f"N={N} D={D} B={B} threads={threads}")
for r in (0.43, 1.3, 3, 10, 19, 32, 60, 199):
    a, s = _coeffs(r); x = a * x0 + s * eps
    A = torch.full((B,), a, dtype=torch.float64); S = torch.full((B,), s, dtype=torch.float64)
    fns = {"limit": lambda: (x @ X.T, p @ X), "before": lambda: old.reduce(x, A, S), "after": lambda: new.reduce(x, A, S)}
    ts = {k: [] for k in fns}
    for f in fns.values(): f()
    for _ in range(3):
        for k, f in fns.items():
            t = time.perf_counter(); f(); ts[k].append(time.perf_counter() - t)
    lim = min(ts["limit"])
    print(f"sigma/alpha {r:6g}: limit {lim:.3f} s  before {min(ts['before']):.3f} s ({lim/min(ts['before']):.2f})  "
          f"after {min(ts['after']):.3f} s ({lim/min(ts['after']):.2f})", flush=True)
