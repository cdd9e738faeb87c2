"""The six `blend` members' estimates on unseen training images, saved for stack.py.

    OMP_NUM_THREADS=1 python members.py OUT.pt SIGMAS [FIRST N]

Pool: Fashion-MNIST training images 0-9999 (the eval's pool), `blend` built as the registry builds it.
Images: training images FIRST .. FIRST+N-1 (default 20000, 256), which neither the pool, the eval's second pool
(10000-19999) nor the test protocol use. Noise: z drawn once (seed 0) and used at every sigma, alpha = 1.
Saves {sigma: members [6, N, 1, 28, 28] float32}, the clean images, the member names and `blend`'s fitted weights
and levels.
"""
import os
import sys
import time

import torch

from boneless.composites import BLEND_MEMBERS
from boneless.data import load_dataset
from boneless.registry import make_denoiser

out, sigmas = sys.argv[1], [float(v) for v in sys.argv[2].split(",")]
first, n = (int(sys.argv[3]), int(sys.argv[4])) if len(sys.argv) > 4 else (20000, 256)
X = load_dataset("fashion-mnist", split="train")
pool, imgs = X[:10000], X[first:first + n].float()
t0 = time.time()
blend = make_denoiser("blend", pool)
print(f"built in {time.time() - t0:.0f} s", flush=True)
z = torch.randn(imgs.shape, generator=torch.Generator().manual_seed(0))
res = {"clean": imgs, "members": BLEND_MEMBERS, "weights": blend.weights, "sigmas_fit": blend.sigmas}
for s in sigmas:
    t0 = time.time()
    y = imgs + s * z
    res[s] = torch.cat([blend.members(y[b:b + 64], 1.0, s).float() for b in range(0, n, 64)], 1)
    print(f"sigma {s}: {time.time() - t0:.0f} s", flush=True)
    torch.save(res, out + ".tmp")
os.replace(out + ".tmp", out)
