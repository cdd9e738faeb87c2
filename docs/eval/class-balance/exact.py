"""Where the class frequencies of generated Fashion-MNIST images are set: docs/EVAL.md, "Seventh push".

    python exact.py grids N GRID,...     # the EXACT flow's endpoints on time grids (default: all); seed 2
    python exact.py handoff N T,...      # exact flow (Heun, grid heun-split) down to time T, local-gaussian below

The exact flow (`EmpiricalDenoiser` on the first 10000 training images) only returns training images, so each
endpoint's class is the label of its nearest training image; "tv" is the total variation between those labels'
frequencies and the pool's. `handoff` starts from seed 1, follows the exact flow down to T, goes on from that state
with `local-gaussian`, and prints the eval classifier's classes of the endpoints, how often they agree with the
label where the exact flow alone ends, and where the exact flow's sandals went. No test image is used.
"""
import sys
import time

import torch

import boneless
from boneless.classifier import fashion_classifier
from boneless.data import load_dataset
from boneless.metrics import nearest
from boneless.schedules import get_schedule, time_grid

RF = get_schedule("rectified-flow")


def split(sampler: str, t: float, above: int, below: int) -> dict:
    """``above`` steps even in t from 1 down to ``t``, then the Karras grid's ``below`` steps from ``t`` to 0."""
    return dict(sampler=sampler, times=torch.cat([torch.linspace(1, t, above + 1, dtype=torch.float64),
                                                  time_grid(RF, below, spacing="karras", t_max=t)[1:]]).tolist())


GRIDS = {f"{sampler}-{steps}{'' if spacing == 'uniform' else '-' + spacing}":
         dict(sampler=sampler, steps=steps, spacing=spacing)
         for sampler, steps, spacing in (("euler", 12, "uniform"), ("euler", 12, "karras"), ("euler", 12, "logsnr"),
                                         ("euler", 16, "uniform"), ("euler", 24, "uniform"), ("euler", 24, "karras"),
                                         ("euler", 100, "uniform"), ("heun", 12, "uniform"), ("heun", 12, "karras"),
                                         ("heun", 24, "karras"), ("heun", 50, "karras"))}
GRIDS |= {"euler-split-0.8-6-10": split("euler", 0.8, 6, 10), "euler-split-0.6-8-8": split("euler", 0.6, 8, 8),
          "euler-split-0.4-12-6": split("euler", 0.4, 12, 6), "euler-split-0.6-16-8": split("euler", 0.6, 16, 8),
          "euler-split-0.6-32-8": split("euler", 0.6, 32, 8), "heun-split": split("heun", 0.6, 6, 6)}

mode, n = sys.argv[1], int(sys.argv[2])
names = sys.argv[3].split(",") if len(sys.argv) > 3 else list(GRIDS) if mode == "grids" else []
if mode not in ("grids", "handoff") or (mode == "grids" and not set(names) <= set(GRIDS)) or not names:
    sys.exit(f"usage: exact.py grids N [{','.join(GRIDS)}] | exact.py handoff N T,...")
X, y = load_dataset("fashion-mnist", limit=10000, with_labels=True)
y = torch.as_tensor(y)
exact = boneless.EmpiricalDenoiser(X)
pool_p = torch.bincount(y, minlength=10).double() / len(y)


def labels(S: torch.Tensor) -> torch.Tensor:
    """The label of each sample's nearest training image."""
    return y[nearest(S, X, k=1)[1][:, 0]]


if mode == "grids":
    print("pool labels", torch.bincount(y, minlength=10).tolist(), flush=True)
    for name in names:
        t0 = time.perf_counter()
        res = boneless.sample(exact, RF, n=n, seed=2, **GRIDS[name])
        c = torch.bincount(labels(res.samples), minlength=10)
        tv = 0.5 * float((c.double() / n - pool_p).abs().sum())
        print(f"{name}: {time.perf_counter() - t0:.0f} s, {res.denoiser_calls} calls, tv {tv:.3f}", c.tolist(),
              [round(float(t), 3) for t in res.ts], flush=True)
else:
    grid = GRIDS["heun-split"]["times"]
    cuts = {min(range(len(grid) - 1), key=lambda i: abs(grid[i] - float(v))) for v in names}  # nearest grid points
    lg, clf = boneless.make_denoiser("local-gaussian", X), fashion_classifier(progress=False)
    run = boneless.samplers.start(exact, RF, n=n, seed=1, sampler="heun", times=grid)
    ts = run.ts
    states = {}
    for i in range(len(grid) - 1):
        if i in cuts:
            states[i] = run.x.clone()
        run.x = boneless.SAMPLERS["heun"](exact, RF, run.x, ts[i:i + 2])
    lab = labels(run.x)
    print("exact flow's labels", torch.bincount(lab, minlength=10).tolist(), "classifier agrees",
          round(float((clf.probabilities(run.x).argmax(1) == lab).double().mean()), 3), flush=True)
    for i, x in sorted(states.items()):
        t0 = time.perf_counter()
        p = clf.probabilities(boneless.SAMPLERS["heun"](lg, RF, x, ts[i:])).argmax(1)
        sandals = torch.bincount(p[lab == 5], minlength=10)
        print(f"local-gaussian from t = {grid[i]:.3f}: {time.perf_counter() - t0:.0f} s, classes",
              torch.bincount(p, minlength=10).tolist(), f"agree {float((p == lab).double().mean()):.3f},",
              "the exact flow's sandals became", sandals.tolist(), flush=True)
