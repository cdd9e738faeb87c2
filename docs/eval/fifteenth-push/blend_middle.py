"""`parzen-local` with `blend` between the switches, in `local-gaussian`'s place: docs/EVAL.md, "Fifteenth push".
Exploration only; score with ../fourteenth-push/dev.py. (`middle="blend"` was added to the package in this push;
the runs were made with a scratch copy that registered it for itself, the same computation.)

    python blend_middle.py real N SEED SPEC      # real images 30000-(30000 + N) noised to t = 0.376 with SEED's
                                                 # noise, then the flow from there (as ../thirteenth-push/sdedit.py)
    python blend_middle.py samples N SEED SPEC   # N samples from the noise of `boneless eval --seed SEED`

SPEC: a Python dict literal of parzen-local's options, e.g. "{'middle': 'blend'}" or "{'middle': 'blend', 'switch':
0.65}". The output is SD-N-SEED-7-TAG.npy or G-N-SEED-TAG.npy, TAG the SPEC's letters and digits; `samples` also
prints the copy rate against the pool.
"""
import ast
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from prototypes import RF, TIMES, pool, sample  # noqa: E402  (the pool, heun-split, the eval's start noise)

from boneless import load_dataset, samplers  # noqa: E402
from boneless.composites import ParzenLocalDenoiser  # noqa: E402
from boneless.metrics import copy_rate  # noqa: E402

mode, n, seed, spec = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
tag = re.sub(r"\W+", "", spec)
t0 = time.perf_counter()
den = ParzenLocalDenoiser(pool, **ast.literal_eval(spec))  # by its class, outside boneless.memo.sharing()
if mode == "real":
    k = 7  # t = 0.376 on heun-split
    real = load_dataset("fashion-mnist", limit=30000 + n)[30000:]
    t = float(TIMES[k])
    z = torch.randn(real.shape, generator=torch.Generator().manual_seed(seed))
    start = ((1 - t) * real.double() + t * z.double()).float()
    np.save(f"SD-{n}-{seed}-7-{tag}.npy", samplers.heun(den, RF, start, TIMES[k:]).float().numpy())
    print(f"real, from t = {t:.4f}, {spec}: {time.perf_counter() - t0:.0f} s", flush=True)
elif mode == "samples":
    path = f"G-{n}-{seed}-{tag}.npy"
    sample(den, n, seed, path, f"samples, {spec}", t0)
    print(f"copy rate {copy_rate(torch.from_numpy(np.load(path)), pool):.4f}")
else:
    sys.exit(__doc__)
