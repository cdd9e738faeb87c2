"""Side by side in one process: another version of boneless/patches.py (a file, e.g. from `git show`), loaded as
`boneless.patches_before`, against this one, on the first 10000 Fashion-MNIST training images and B held-out
images at the six default noise levels. Warm instances (one call per level first: kept norms and banks), then
calls alternating before / after, timed in single-thread CPU time; the largest difference of the outputs.

    git show cf6f91d:boneless/patches.py > /tmp/patches_before.py
    OMP_NUM_THREADS=1 python benchmarks/patches_side_by_side.py /tmp/patches_before.py local-gaussian,local 32
"""

import importlib.util
import sys
import time

import torch

import boneless.patches as after
from boneless.data import load_dataset

CLASSES = {"local-gaussian": "LocalGaussianDenoiser", "local": "LocalDenoiser",
           "patch-composite": "PatchCompositeDenoiser", "local-equivariant": "EquivariantLocalDenoiser"}
SIGMAS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


def main(path: str, names: str, B: int) -> None:
    spec = importlib.util.spec_from_file_location("boneless.patches_before", path)
    before = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = before
    spec.loader.exec_module(before)
    X = load_dataset("fashion-mnist", split="train", limit=10000)
    T = load_dataset("fashion-mnist", split="test", limit=B)
    z = torch.randn(T.shape, generator=torch.Generator().manual_seed(0))
    for name in names.split(","):
        d0, d1 = getattr(before, CLASSES[name])(X), getattr(after, CLASSES[name])(X)
        for s in SIGMAS:
            d0(T[:2] + s * z[:2], 1.0, s)
            d1(T[:2] + s * z[:2], 1.0, s)
        total0 = total1 = 0.0
        for s in SIGMAS:
            y = T + s * z
            t = time.process_time()
            o0 = d0(y, 1.0, s)
            t0 = time.process_time() - t
            t = time.process_time()
            o1 = d1(y, 1.0, s)
            t1 = time.process_time() - t
            total0, total1 = total0 + t0, total1 + t1
            d = (o0.double() - o1.double()).abs()
            print(f"{name} B={B} sigma={s}: before {t0:.2f} s, after {t1:.2f} s ({t0 / t1:.2f}x); largest difference "
                  f"{float(d.max()):.2g}, values more than 1e-5 apart: {int((d > 1e-5).sum())} of {d.numel()}",
                  flush=True)
        print(f"{name} B={B}, all six levels: before {total0:.1f} s, after {total1:.1f} s ({total0 / total1:.2f}x)")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
