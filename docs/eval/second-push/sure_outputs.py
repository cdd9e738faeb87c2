# Exploration script of docs/EVAL.md, "Second push" (not part of the package). Run from the repository root.
import time, sys, torch, boneless
from boneless.registry import make_denoiser
from boneless.metrics import noise_draw
torch.set_num_threads(1)
X = boneless.load_dataset("fashion-mnist", limit=10000)
T = boneless.load_dataset("fashion-mnist", split="test")[:200]
SIG = [0.05, 0.1, 0.2, 0.5, 1.0]
names = sys.argv[1].split(",")
z = noise_draw(tuple(T.shape), seed=0)
eps = torch.randn(T.shape, generator=torch.Generator().manual_seed(123))
out = {}
for name in names:
    t0 = time.time(); den = make_denoiser(name, X); t1 = time.time()
    F, Fp = [], []
    for s in SIG:
        y = T + s * z; tau = 0.05 * s
        F.append(den(y, 1.0, s)); Fp.append(den(y + tau * eps, 1.0, s))
    out[name] = (torch.stack(F), torch.stack(Fp))
    print(name, f"build {t1-t0:.0f}s eval {time.time()-t1:.0f}s", flush=True)
    torch.save(out, f"runs/sure_{sys.argv[2]}.pt")
