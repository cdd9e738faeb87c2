"""Goal 1: where `local-gaussian`'s held-out error lies, by kind of pixel: docs/EVAL.md, "Tenth push".
200 validation images (training images 10000-10199), never test images.

Pixels: background far from the garment (exactly -1, no garment pixel among its 8 neighbours), background at its
edge, garment at its edge (a background pixel among its neighbours) and garment inside. For each kind: its share of
the pixels, its share of the squared error, and its mean squared error.
"""
import torch
import torch.nn.functional as F

import boneless
from boneless.data import load_dataset
from boneless.metrics import WienerFilter, noise_draw

X = load_dataset("fashion-mnist", limit=10200)
pool, V = X[:10000], X[10000:]
z = noise_draw(tuple(V.shape), seed=5)
dens = {"wiener": WienerFilter(pool), "local-gaussian": boneless.make_denoiser("local-gaussian", pool)}
garment = V > -0.999
near = F.max_pool2d(garment.float(), 3, 1, 1) > 0  # a garment pixel within the 3 x 3 neighbourhood
inside = -F.max_pool2d(-garment.float(), 3, 1, 1) > 0  # garment pixels only
kinds = {"background far": ~garment & ~near, "background edge": ~garment & near, "garment edge": garment & ~inside,
         "garment inside": inside}
for sigma in [0.05, 0.2, 1.0]:
    for name, den in dens.items():
        err = (den(V + sigma * z, 1.0, sigma) - V) ** 2
        parts = ", ".join(f"{k} {float(m.float().mean()):.2f} / {float(err[m].sum() / err.sum()):.2f} / "
                          f"{float(err[m].mean()):.5f}" for k, m in kinds.items())
        print(f"sigma {sigma} {name}: mse {float(err.mean()):.5f}; {parts}", flush=True)
