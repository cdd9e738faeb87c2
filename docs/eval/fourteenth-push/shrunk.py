"""`parzen-local` with shrunk Parzen centres: docs/EVAL.md, "Fourteenth push". Exploration only; score the samples
with dev.py (dev targets from the test split), never against the eval's test images.

    python shrunk.py N SEED C [C ...]    # C: the shrink, 0 to 1 (0: the shipped denoiser)

A kernel estimate's samples spread wider than the data by the kernels' width; Silverman's shrunk smoothed bootstrap
takes that back by moving each centre towards the mean. Here, locally: each Parzen component's mean moves from its
example x_i to x_i + C (xbar_i - x_i), xbar_i the mean of its 32 neighbours (the component's covariance unchanged),
and the rest of the mixture is computed as `ParzenDenoiser` computes it (its attributes are replaced after the
build). N samples from SEED (the noise of `boneless eval --seed SEED`) go down `heun-split` with Heun, and are kept
in K-N-SEED-cC.npy.
"""
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from prototypes import neighbours, pool, sample  # noqa: E402  (the pool, heun-split, the eval's start noise)

from boneless.composites import ParzenLocalDenoiser  # noqa: E402

n, seed = int(sys.argv[1]), int(sys.argv[2])
for c in map(float, sys.argv[3:]):
    t0 = time.perf_counter()
    den = ParzenLocalDenoiser(pool)  # built by its class, outside boneless.memo.sharing(): its own members
    p = den.parzen
    F = p.X  # the examples, centred on their mean
    towards = torch.empty_like(F)
    for i in range(0, len(F), 500):
        towards[i:i + 500] = F[neighbours(p, i, i + 500)].mean(1) - F[i:i + 500]
    # at alpha = 0 (t = 1, the first call) the data's mean is still returned, not the shrunk mixture's mean (they
    # differ by C mean(towards), small)
    p.X = F + c * towards
    p.xx, p.Vx = (p.X * p.X).sum(1), (p.V @ p.X[..., None])[..., 0]
    sample(den, n, seed, f"K-{n}-{seed}-c{c}.npy", f"shrink {c}", t0)
