"""`blend` with `local-wiener` in place of its `local` member, against the shipped `blend`, on VALIDATION images
(Fashion-MNIST training images 10000-10099, outside the pool of the first 10000), never test images.

Both blends fit their weights as `BlendDenoiser` does (the last 32 pool images held out, members on the rest,
then the members refitted on the whole pool); the five shared members are computed once.

    python blend_member.py [N_VALIDATION]
"""
import sys
import time

import torch

import boneless
from boneless.closed_form import GaussianDenoiser, GMMDenoiser
from boneless.composites import BLEND_SIGMAS, fit_weights
from boneless.patches import LocalDenoiser, LocalGaussianDenoiser, PatchCompositeDenoiser, WienerLocalDenoiser

n_val = int(sys.argv[1]) if len(sys.argv) > 1 else 100
SIGMAS = (0.05, 0.1, 0.2, 0.5, 1.0)
X = boneless.load_dataset("fashion-mnist", limit=10000 + n_val)
pool, V = X[:10000], X[10000:]
NAMES = ("local-gaussian", "composite", "local", "local-wiener", "gmm", "gaussian", "identity")


def members(P):
    return [LocalGaussianDenoiser(P), PatchCompositeDenoiser(P), LocalDenoiser(P), WienerLocalDenoiser(P),
            GMMDenoiser(P, components=16, seed=0), GaussianDenoiser(P)]


def estimates(dens, x, sig):
    """Every member's estimate [7, B, ...] (float64) at per-query noise levels ``sig``."""
    out = [d(x, 1.0, sig).double() for d in dens] + [x.double()]
    return torch.stack(out)


t0 = time.perf_counter()
fit_pool, hold = pool[:-32], pool[-32:]
z = torch.randn(hold.shape, generator=torch.Generator().manual_seed(1))  # BlendDenoiser.fit's noise (seed 0 + 1)
sig = torch.tensor(BLEND_SIGMAS, dtype=torch.float64).repeat_interleave(len(hold))
E = estimates(members(fit_pool), torch.cat([hold + s * z for s in BLEND_SIGMAS]), sig)
weights = {}
for label, drop in (("blend (shipped: local)", "local-wiener"), ("blend, local-wiener for local", "local")):
    keep = [i for i, m in enumerate(NAMES) if m != drop]
    W = torch.zeros(len(BLEND_SIGMAS), len(NAMES), dtype=torch.float64)
    W[:, keep] = fit_weights(E[keep], hold)  # BlendDenoiser.fit's least squares
    weights[label] = W
print(f"weights fitted, {time.perf_counter() - t0:.0f} s", flush=True)

dens = members(pool)
wiener = dens[-1]
zv = torch.randn(V.shape, generator=torch.Generator().manual_seed(2))
rows = {label: [] for label in ["local", "local-wiener", *weights]}
logs = torch.log(torch.tensor(BLEND_SIGMAS, dtype=torch.float64))
for s in SIGMAS:
    y = V + s * zv
    Es = torch.cat([estimates(dens, y[i:i + 50], torch.full((len(y[i:i + 50]),), s, dtype=torch.float64))
                    for i in range(0, len(y), 50)], 1)
    ref = float(((wiener(y, 1.0, s).double() - V.double()) ** 2).mean())
    rows["local"].append(float(((Es[2] - V.double()) ** 2).mean()) / ref)
    rows["local-wiener"].append(float(((Es[3] - V.double()) ** 2).mean()) / ref)
    t = min(max(torch.log(torch.tensor(s, dtype=torch.float64)), logs[0]), logs[-1])
    hi = int(torch.searchsorted(logs, t).clamp(1, len(logs) - 1))
    f = float((t - logs[hi - 1]) / (logs[hi] - logs[hi - 1]))
    for label, W in weights.items():
        w = (1 - f) * W[hi - 1] + f * W[hi]
        rows[label].append(float(((torch.einsum("m,m...->...", w, Es) - V.double()) ** 2).mean()) / ref)
    print(f"sigma {s} done, {time.perf_counter() - t0:.0f} s", flush=True)

print("| held-out MSE / Wiener, validation images | " + " | ".join(f"{s:g}" for s in SIGMAS) + " |")
for label, r in rows.items():
    print(f"| {label} | " + " | ".join(f"{v:.3f}" for v in r) + " |")
