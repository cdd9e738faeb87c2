"""`parzen-local` samples with other options below a point of `heun-split`: docs/EVAL.md, "Thirteenth push".
Exploration only, on validation images (training images 10000-10499); never test images.

    python gen.py N SEED K SPEC...    # K: index on heun-split (6: t = 0.6, 7: t = 0.376), or K:STEPS to go on
                                      # from there on a Karras grid of STEPS steps; SPEC: a Python dict literal
                                      # of parzen-local's options ("{}": the shipped denoiser;
                                      # "{'middle': 'patch-composite'}": the patch composite in
                                      # local-gaussian's place)

N samples from SEED go down `heun-split` with the shipped `parzen-local` to grid point K, kept in
state-K-N-SEED.pt; each SPEC goes on from there to t = 0. With K = 7 and the same SEED the starts are those of
docs/eval/twelfth-push/middle.py. Rows are scored as in docs/eval/tenth-push/scoring.py; the samples are kept in
G-N-SEED-K-SPEC.npy.
"""
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tenth-push"))
from scoring import pool, report, shape  # noqa: E402  (the validation scoring of the tenth push)

from boneless import make_denoiser, samplers  # noqa: E402
from boneless.memo import sharing  # noqa: E402
from common import RF, denoiser, grid  # noqa: E402

n, seed = int(sys.argv[1]), int(sys.argv[2])
k, ts = grid(sys.argv[3])
state = f"state-{k}-{n}-{seed}.pt"
with sharing():
    if not os.path.exists(state):
        t0 = time.perf_counter()
        x1 = torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed))  # sigma(1) = 1
        torch.save(samplers.heun(make_denoiser("parzen-local", pool), RF, x1, ts[:k + 1]), state)
        print(f"down to t = {float(ts[k]):.4f}: {time.perf_counter() - t0:.0f} s", flush=True)
    x = torch.load(state)
    for spec in sys.argv[4:]:
        t0 = time.perf_counter()
        den = denoiser(pool, spec)
        S = samplers.heun(den, RF, x.clone(), ts[k:]).float()
        np.save(f"G-{n}-{seed}-{sys.argv[3].replace(':', '_')}-" + re.sub(r"\W+", "", spec) + ".npy", S.numpy())
        report(f"s{seed} from t={float(ts[k]):.4f} {spec}", S, t0)
