"""`parzen-local` with the local score machine below a low switch: docs/EVAL.md, "Tenth push".
Exploration only, on validation images (training images 10000-10499), never test images.

    python low.py N SEED "base;K,LAM;..."     # in the flow
    python low.py post "K,LAM;..." RUN...     # after the flow, on the samples of `boneless eval` runs

In the flow: N samples from SEED, Heun on `heun-split` (docs/eval/eighth-push/parzen.py) with `parzen` above the
switch and `local-gaussian` below, down to the grid point t = 0.174 (sigma / alpha = 0.21; kept in
state174-N-SEED.pt). From there ``base`` goes on as before, and ``K,LAM`` answers with `local` of side K (0: its
own schedule) where sigma / alpha < LAM (on this grid any LAM in (0.062, 0.21) gives the same samples, the
default 0.1 among them). ``post``: `local` of side K applied once, at sigma / alpha = LAM and alpha = 1, to the
finished samples of the runs given (their `samples_parzen-local.npy`).

Each row: FD in classifier features against the 500 validation images; the same for real images drawn with the
samples' class counts (training images 10500-29999, mean of 5 draws; "matched") and their difference ("gap": what
the class counts do not explain); nearest distances to the pool over the validation images' (ratio, KS, copy rate);
the classifier's mean confidence; "haze", the share of pixels within 0.1 above the background value -1.
"""
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "eighth-push"))
import parzen as P  # noqa: E402  (heun_split, RF)

from boneless import samplers  # noqa: E402
from boneless.closed_form import ParzenDenoiser  # noqa: E402
from boneless.composites import PARZEN_LOCAL_SWITCH, switched  # noqa: E402
from boneless.memo import build, sharing  # noqa: E402
from boneless.patches import LocalDenoiser, LocalGaussianDenoiser  # noqa: E402
from scoring import R, pool, report, shape  # noqa: E402  (the validation images and the row)

post = sys.argv[1] == "post"
report("real (training 10500-10999)", R[:500], time.perf_counter())
locals_ = {}


def local(k):
    return locals_.setdefault(k, LocalDenoiser(pool, schedule=k if k else None))


if post:
    specs, runs = sys.argv[2].split(";"), sys.argv[3:]
    for run in runs:
        S = torch.from_numpy(np.load(Path(run) / "samples_parzen-local.npy"))
        report(f"{Path(run).name}", S, time.perf_counter())
        for spec in specs:
            t0 = time.perf_counter()
            k, lam = spec.split(",")
            report(f"  post {spec}", local(int(k))(S, 1.0, float(lam)), t0)
    sys.exit()

n, seed, specs = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(";")
ts = torch.tensor(P.heun_split()["times"], dtype=torch.float64)
state = f"state174-{n}-{seed}.pt"
with sharing():  # local-gaussian's answer at t = 0.174 is the same for every row: computed once
    lg = build(LocalGaussianDenoiser, pool)
    if not os.path.exists(state):
        t0 = time.perf_counter()
        coarse = ParzenDenoiser(pool, neighbours=32, scale=1.5)
        x1 = P.RF(1.0).sigma * torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed))
        torch.save(samplers.heun(lambda x, a, s: switched(x, a, s, shape, PARZEN_LOCAL_SWITCH, coarse, lg), P.RF, x1,
                                 ts[:9]), state)  # as boneless.sample(seed=SEED) would, down to ts[8] = 0.174
        print(f"down to t = {float(ts[8]):.3f}: {time.perf_counter() - t0:.0f} s", flush=True)
    x174 = torch.load(state)
    for spec in specs:
        t0 = time.perf_counter()
        if spec == "base":
            fine = lg
        else:
            k, lam = spec.split(",")
            fine = (lambda lam, loc: lambda x, a, s: switched(x, a, s, shape, lam, lg, loc))(float(lam), local(int(k)))
        report(spec, samplers.heun(fine, P.RF, x174.clone(), ts[8:]), t0)
