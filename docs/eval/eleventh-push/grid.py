"""`parzen-local` as shipped, sampled with Heun on other grids: docs/EVAL.md, "Eleventh push".
Exploration only, on validation images (training images 10000-10499), never test images.

    python grid.py N SEED "A,B;..." [OPTIONS]   # N samples from SEED; A even steps in t down to t = 0.6, B Karras
                                                # steps below; OPTIONS: parzen-local's, a Python dict literal

``6,6`` is `heun-split` (docs/eval/eighth-push/parzen.py), the grid of the test protocol. Each row is scored as in
docs/eval/tenth-push/low.py (FD in classifier features, "matched", "gap", nearest distances, confidence, haze); the
samples are kept in S-N-SEED-A-B[-OPTIONS].npy.
"""
import ast
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "eighth-push"))
import parzen as P  # noqa: E402  (RF)

from boneless import make_denoiser, samplers  # noqa: E402
from boneless.memo import sharing  # noqa: E402
from boneless.schedules import time_grid  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tenth-push"))
from scoring import pool, report, shape  # noqa: E402  (the validation scoring of the tenth push)


def grid(above: int, below: int) -> torch.Tensor:
    """``above`` even steps in t from 1 to 0.6, then ``below`` steps of the Karras grid below (6, 6: heun-split)."""
    return torch.cat([torch.linspace(1, 0.6, above + 1, dtype=torch.float64),
                      time_grid(P.RF, below, spacing="karras", t_max=0.6)[1:]])


n, seed, specs = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(";")
options = ast.literal_eval(sys.argv[4]) if len(sys.argv) > 4 else {}
tag = "-" + re.sub(r"\W+", "", sys.argv[4]) if options else ""  # in the file names
with sharing():
    den = make_denoiser("parzen-local", pool, **options)
    for spec in specs:
        a, b = map(int, spec.split(","))
        t0 = time.perf_counter()
        x1 = P.RF(1.0).sigma * torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed))
        S = samplers.heun(den, P.RF, x1, grid(a, b))
        np.save(f"S-{n}-{seed}-{a}-{b}{tag}.npy", S.float().numpy())
        report(f"heun {spec} {options or ''}", S.float(), t0)
