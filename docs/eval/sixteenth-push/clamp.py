"""`parzen-local` with the Parzen member's estimate clamped to the pool's per-pixel range: docs/EVAL.md, "Sixteenth
push". Exploration only; score with ../fourteenth-push/dev.py.

    python clamp.py N SEED SPEC     # N samples from the noise of `boneless eval --seed SEED`

SPEC: a Python dict literal of parzen-local's options, e.g. "{}" (the shipped generator) or "{'middle': 'blend'}".
Above the switch the Parzen member's x0_hat reaches -4 and +4 on data in [-1, 1] (its components are wide); here it
is clamped, pixel by pixel, to the range of the pool's images, which holds every posterior mean of a prior on the
pool. The output is G-N-SEED-clamp-TAG.npy, TAG the SPEC's letters and digits; it prints the copy rate.
"""
import ast
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from prototypes import pool, sample  # noqa: E402  (the pool, heun-split, the eval's start noise)

from boneless.composites import ParzenLocalDenoiser  # noqa: E402
from boneless.metrics import copy_rate  # noqa: E402

n, seed, spec = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
t0 = time.perf_counter()
den = ParzenLocalDenoiser(pool, **ast.literal_eval(spec))  # by its class, outside boneless.memo.sharing()
parzen, lo, hi = den.parzen, pool.amin(0), pool.amax(0)
den.parzen = lambda x, a, s: torch.maximum(torch.minimum(parzen(x, a, s), hi.to(x.dtype)), lo.to(x.dtype))
tag = re.sub(r"\W+", "", spec)
path = f"G-{n}-{seed}-clamp-{tag}.npy"
sample(den, n, seed, path, f"samples, Parzen clamped, {spec}", t0)
print(f"copy rate {copy_rate(torch.from_numpy(np.load(path)), pool):.4f}")
