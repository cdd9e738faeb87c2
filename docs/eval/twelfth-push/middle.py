"""`parzen-local` with other members below its switch, from the grid point t = 0.3757 of `heun-split`:
docs/EVAL.md, "Twelfth push". Exploration only, on validation images (training images 10000-10499), never test
images.

    python middle.py N SEED SPEC...    # SPEC: a Python dict literal of parzen-local's options, plus optionally
                                       # "mirror": the members ("local_gaussian", "local") that also get the
                                       # pool's left-right mirror images as training images

N samples from SEED go down `heun-split` (docs/eval/eighth-push/parzen.py) with the shipped `parzen-local` to
t = 0.3757 (sigma / alpha = 0.60, above the switch: `parzen` alone answers there), kept in state376-N-SEED.pt.
From there each SPEC goes on to t = 0; on this grid `local-gaussian` answers at t = 0.174 (sigma / alpha = 0.21)
alone and `local` at the last three points. Each row is scored as in docs/eval/tenth-push/scoring.py; with
"mirror" also against the pool and its mirror images. The samples are kept in M-N-SEED-SPEC.npy.
"""
import ast
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "eighth-push"))
import parzen as P  # noqa: E402  (heun_split, RF)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tenth-push"))
from scoring import V, pool, report, shape  # noqa: E402  (the validation scoring of the tenth push)

from boneless import make_denoiser, samplers  # noqa: E402
from boneless.composites import PARZEN_LOCAL_LOW_SIDE, ParzenLocalDenoiser  # noqa: E402
from boneless.memo import build, sharing  # noqa: E402
from boneless.metrics import nearest_distance_stats  # noqa: E402
from boneless.patches import LocalDenoiser, LocalGaussianDenoiser  # noqa: E402

n, seed = int(sys.argv[1]), int(sys.argv[2])
ts = torch.tensor(P.heun_split()["times"], dtype=torch.float64)
mirrored = torch.cat([pool, pool.flip(-1)])
state = f"state376-{n}-{seed}.pt"
with sharing():
    if not os.path.exists(state):
        t0 = time.perf_counter()
        x1 = P.RF(1.0).sigma * torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed))
        torch.save(samplers.heun(make_denoiser("parzen-local", pool), P.RF, x1, ts[:8]), state)
        print(f"down to t = {float(ts[7]):.4f}: {time.perf_counter() - t0:.0f} s", flush=True)
    x = torch.load(state)
    for spec in sys.argv[3:]:
        t0 = time.perf_counter()
        options = ast.literal_eval(spec)
        mirror = options.pop("mirror", ())
        # with mirror images the members change, so the denoiser is built by its class, not shared (boneless.memo)
        den = (ParzenLocalDenoiser(pool, **options) if mirror else make_denoiser("parzen-local", pool, **options))
        if "local_gaussian" in mirror:
            den.middle = build(LocalGaussianDenoiser, mirrored, **options.get("local_gaussian", {}))
        if "local" in mirror:
            den.local = build(LocalDenoiser, mirrored,
                              **{"schedule": PARZEN_LOCAL_LOW_SIDE, **options.get("local", {})})
        S = samplers.heun(den, P.RF, x.clone(), ts[7:]).float()
        np.save(f"M-{n}-{seed}-" + re.sub(r"\W+", "", spec) + ".npy", S.numpy())
        report(f"s{seed} {spec}", S, t0)
        if mirror:
            q = nearest_distance_stats(S, mirrored, heldout=V)
            print(f"  against the pool and its mirror images: ratio {q['median_ratio']:.3f} ks {q['ks']:.3f} "
                  f"copy {q['copy_rate']:.3f}", flush=True)
