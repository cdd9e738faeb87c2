"""Goal 1: held-out MSE / Wiener with ``x0_hat`` clamped to the pool's range: docs/EVAL.md, "Tenth push".
Validation images (training images 10000 to 10000 + N), never test images.

    python clamp.py N NAME[,NAME...]

Clamping to a box that holds the clean images cannot raise any pixel's error, and the posterior mean of any prior
on the pool lies in the pool's box; so this is the most a range constraint can give. ``global``: the pool's
smallest and largest value; ``pixel``: each pixel's.
"""
import sys
import time

import torch

import boneless
from boneless.data import load_dataset
from boneless.metrics import WienerFilter, denoising_error

n, names = int(sys.argv[1]), sys.argv[2].split(",")
X = load_dataset("fashion-mnist", limit=10000 + n)
pool, V = X[:10000], X[10000:]
sigmas = [0.05, 0.1, 0.2, 0.5, 1.0]
box = {"global": (pool.min(), pool.max()), "pixel": (pool.min(0).values, pool.max(0).values)}
print("validation pixels outside the per-pixel box:", int(((V < box["pixel"][0]) | (V > box["pixel"][1])).sum()))
wiener = denoising_error(WienerFilter(pool), V, sigmas, seed=5).mse
for name in names:
    den = boneless.make_denoiser(name, pool)
    for kind in ["none", "global", "pixel"]:
        t0 = time.perf_counter()

        def clamped(x, a, s, kind=kind):
            out = den(x, a, s)
            return out if kind == "none" else torch.maximum(torch.minimum(out, box[kind][1]), box[kind][0])

        ratio = denoising_error(clamped, V, sigmas, seed=5).mse / wiener
        print(name, kind, " ".join(f"{float(r):.4f}" for r in ratio), f"{time.perf_counter() - t0:.0f} s", flush=True)
