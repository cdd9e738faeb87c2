"""Real images noised to a point of `heun-split`, then `parzen-local` from there (as SDEdit does): which part of the
flow makes the FD gap? docs/EVAL.md, "Thirteenth push". Exploration only, on validation images; never test images.

    python sdedit.py N SEED K SPEC...    # K: index of the start on heun-split (7: t = 0.376, 8: t = 0.174,
                                         # 9: t = 0.058), or K:STEPS to go on from there on a Karras grid of
                                         # STEPS steps; SPEC: a Python dict literal of parzen-local's options
                                         # ("{'middle': 'patch-composite'}": the patch composite in
                                         # local-gaussian's place)

The N real images are training images 30000-(30000 + N), outside the pool, the validation images and the images
the "matched" column draws from (docs/eval/tenth-push/scoring.py). Each is noised once, x_t = (1 - t) x + t z with
z from SEED, and each SPEC runs Heun from there to t = 0; the first row scores the real images themselves. The
samples are kept in SD-N-SEED-K-SPEC.npy.
"""
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tenth-push"))
from scoring import pool, report  # noqa: E402  (the validation scoring of the tenth push)

from boneless import load_dataset, samplers  # noqa: E402
from boneless.memo import sharing  # noqa: E402
from common import RF, denoiser, grid  # noqa: E402

n, seed = int(sys.argv[1]), int(sys.argv[2])
k, ts = grid(sys.argv[3])
real = load_dataset("fashion-mnist", limit=30000 + n)[30000:]
report(f"real 30000-{30000 + n - 1}", real, time.perf_counter())
t = float(ts[k])
z = torch.randn(real.shape, generator=torch.Generator().manual_seed(seed))
start = ((1 - t) * real.double() + t * z.double()).float()
with sharing():
    for spec in sys.argv[4:]:
        t0 = time.perf_counter()
        den = denoiser(pool, spec)
        S = samplers.heun(den, RF, start.clone(), ts[k:])
        np.save(f"SD-{n}-{seed}-{sys.argv[3].replace(':', '_')}-" + re.sub(r"\W+", "", spec) + ".npy", S.float().numpy())
        report(f"from t={t:.4f} {spec}", S.float(), t0)
