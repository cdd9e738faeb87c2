"""The validation's choice on the test images: `parzen-local`, Heun on `heun-split` down to t = 0.376, then DDIM
(eta 0.5) on 20 Karras steps: docs/EVAL.md, "Ninth push". `boneless eval` takes one sampler per run, so this script
repeats its protocol for this one denoiser: the pool (training images 0-9999), the first 500 test images, start noise
``randn(500, 1, 28, 28)`` from ``--seed``, scores as the eval's (samples clamped to [-1, 1] for the FDs).

    python mixed_test.py SEED RUN_DIR    # RUN_DIR: the eval run of the same seed (Heun on heun-split throughout)

It first scores the eval run's saved samples with its own code (which must give the eval's figures), checks that
its Heun reproduces the first 8 of them, then samples and scores the mixture from the same start.
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "eighth-push"))
import parzen as P  # noqa: E402  (heun_split, RF)

from boneless import samplers  # noqa: E402
from boneless.classifier import fashion_classifier  # noqa: E402
from boneless.composites import ParzenLocalDenoiser  # noqa: E402
from boneless.data import load_dataset  # noqa: E402
from boneless.metrics import PCAFeatures, frechet_distance, nearest_distance_stats  # noqa: E402
from boneless.schedules import time_grid  # noqa: E402

seed, run = int(sys.argv[1]), Path(sys.argv[2])
pool = load_dataset("fashion-mnist", split="train", limit=10000)
test = load_dataset("fashion-mnist", split="test")[:500]
clf = fashion_classifier(progress=False)
pca = PCAFeatures(pool, dim=32)
target = {"pca": pca(test), "clf": clf.features(test)}


def score(S):
    q = nearest_distance_stats(S, pool, heldout=test)
    C = S.clamp(-1, 1)
    prob = clf.probabilities(C)
    return {"ratio": round(q["median_ratio"], 3), "ks": round(q["ks"], 3), "copy": q["copy_rate"],
            "fd_pca": round(frechet_distance(pca(C), target["pca"]), 3),
            "fd_clf": round(frechet_distance(clf.features(C), target["clf"]), 3),
            "conf": round(float(prob.max(1).values.mean()), 3),
            "classes": torch.bincount(prob.argmax(1), minlength=10).tolist()}


saved = torch.from_numpy(np.load(run / "samples_parzen-local.npy"))
ev = json.loads((run / "results.json").read_text())["denoisers"]["parzen-local"]["samples"]
print("eval run, its figures:", {k: round(ev[k], 3) for k in ("median_ratio", "ks", "fd_pca", "fd_classifier",
                                                               "confidence")}, flush=True)
print("eval run, scored here:", score(saved), flush=True)
den = ParzenLocalDenoiser(pool)
ts = torch.tensor(P.heun_split()["times"], dtype=torch.float64)
x = P.RF(1.0).sigma * torch.randn((500, 1, 28, 28), generator=torch.Generator().manual_seed(seed))
heun8 = samplers.heun(den, P.RF, x[:8], ts)
print("Heun here against the eval's first 8 samples: max abs difference", float((heun8 - saved[:8]).abs().max()))
xm = samplers.heun(den, P.RF, x, ts[:8])
below = time_grid(P.RF, 20, spacing="karras", t_max=float(ts[7]))
S = samplers.ddim(den, P.RF, xm, below, eta=0.5, generator=torch.Generator().manual_seed(seed))
print("mixture (Heun above t = 0.376, DDIM eta 0.5 on 20 steps below):", score(S), flush=True)
