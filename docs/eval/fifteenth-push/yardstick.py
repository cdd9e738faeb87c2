"""How far apart sets of 500 real images are on the dev targets, and what a ruler with less noise would need:
docs/EVAL.md, "Fifteenth push".

    python yardstick.py [FILES ...]    # FILES: a.npy[,b.npy,...], sample files [n, 1, 28, 28] joined into one group

Each set is scored against the five dev targets of ../fourteenth-push/dev.py (test images 5000-7499, which neither
the classifier nor `boneless eval` uses) in three ways: the mean of the five FDs in classifier features; the FD
against the 2500 images as one target; and KID x 1000 (the unbiased squared MMD with the cubic polynomial kernel of
Binkowski et al., (a.b / 128 + 1)^3) against the 2500. Groups: 15 sets of test images (0-4999, 7500-9999), 20 sets of
the pool (training images 0-9999: copies), 20 sets of training images 10000-19999 and 20 of 40000-49999, the exact
flow's own endpoints (`empirical` on the pool, Heun on `heun-split`, 2000 from the noise of seed 5; copies, kept in
exact-2000-5.npy), then the files given, each argument one group, cut into sets of 500.
"""
import sys

import numpy as np
import torch

from boneless import make_denoiser, samplers
from boneless.classifier import fashion_classifier
from boneless.data import load_dataset
from boneless.metrics import frechet_distance
from boneless.schedules import get_schedule, time_grid

X = load_dataset("fashion-mnist")
T = load_dataset("fashion-mnist", split="test")
clf = fashion_classifier(progress=False)
dev = clf.features(T[5000:7500])
devs = dev.split(500)


def kid(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    k = lambda u, v: (u @ v.T / a.shape[1] + 1) ** 3  # noqa: E731
    kaa, kbb = k(a, a), k(b, b)
    m, n = len(a), len(b)
    return float((kaa.sum() - kaa.trace()) / (m * (m - 1)) + (kbb.sum() - kbb.trace()) / (n * (n - 1))
                 - 2 * k(a, b).mean())


def group(name: str, sets) -> None:
    rows = []
    for s in sets:
        f = clf.features(torch.as_tensor(s).clamp(-1, 1))
        rows.append((np.mean([frechet_distance(f, d) for d in devs]), frechet_distance(f, dev), 1000 * kid(f, dev)))
    v = np.array(rows)
    sd = v.std(0, ddof=1) if len(v) > 1 else np.full(3, np.nan)
    print(f"| {name} | {len(v)} | {v[:, 0].mean():.2f} ± {sd[0]:.2f} ({v[:, 0].min():.2f}-{v[:, 0].max():.2f}) | "
          f"{v[:, 1].mean():.2f} ± {sd[1]:.2f} | {v[:, 2].mean():.1f} ± {sd[2]:.1f} |", flush=True)


print("| sets of 500 | sets | FD, mean of the 5 dev targets (range) | FD vs the 2500 dev images | KID x 1000 vs the 2500 |")
print("|---|---:|---:|---:|---:|")
group("test images 0-4999, 7500-9999", [T[i:i + 500] for i in list(range(0, 5000, 500)) + list(range(7500, 10000, 500))])
group("the pool, training images 0-9999 (copies)", [X[i:i + 500] for i in range(0, 10000, 500)])
group("training images 10000-19999", [X[i:i + 500] for i in range(10000, 20000, 500)])
group("training images 40000-49999", [X[i:i + 500] for i in range(40000, 50000, 500)])
RF = get_schedule("rectified-flow")
x1 = torch.randn((2000, 1, 28, 28), generator=torch.Generator().manual_seed(5))
E = samplers.heun(make_denoiser("empirical", X[:10000]), RF, x1, time_grid(RF, 12, spacing="split")).float()
np.save("exact-2000-5.npy", E.numpy())
group("the exact flow's endpoints (copies)", E.split(500))
for arg in sys.argv[1:]:
    S = np.concatenate([np.load(p) for p in arg.split(",")])
    group(arg if len(arg) < 60 else arg[:57] + "...", [S[i:i + 500] for i in range(0, len(S) - 499, 500)])
