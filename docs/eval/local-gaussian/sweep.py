"""`local-gaussian`'s side and neighbours swept on VALIDATION images (Fashion-MNIST training images 10000-10099,
outside the pool of the first 10000 training images), never test images: one noise draw (seed 1) shared by every
setting; prints the MSE of each setting (docs/EVAL.md, "Fifth push").

    OMP_NUM_THREADS=2 python docs/eval/local-gaussian/sweep.py --sigmas 1,2 --sides 11 --neighbours 20,30,40,50,200
    OMP_NUM_THREADS=2 python docs/eval/local-gaussian/sweep.py --sigmas 2,5 --sides 28 --neighbours 40,200

A side of 28 is the whole image.
"""
import argparse
import time

import torch

from boneless.data import load_dataset
from boneless.evaluate import parse_sigmas
from boneless.patches import LocalGaussianDenoiser


def ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sigmas", type=parse_sigmas, required=True, help="comma-separated noise levels")
    p.add_argument("--sides", type=ints, required=True, help="comma-separated square sides (28: the whole image)")
    p.add_argument("--neighbours", type=ints, required=True, help="comma-separated K")
    p.add_argument("--validation", type=int, default=100, help="validation images (100)")
    p.add_argument("--pool", type=int, default=10000, help="the first POOL training images are the bank (10000)")
    args = p.parse_args()
    X = load_dataset("fashion-mnist", split="train")
    pool, val = X[:min(args.pool, 10000)], X[10000:10000 + args.validation]
    z = torch.randn(val.shape, generator=torch.Generator().manual_seed(1))
    for sigma in args.sigmas:
        for side in args.sides:
            for K in args.neighbours:
                den = LocalGaussianDenoiser(pool, schedule=side, neighbours=K)
                t = time.perf_counter()
                out = den(val + sigma * z, 1.0, sigma)
                mse = ((out - val) ** 2).mean().item()
                print(f"sigma {sigma} side {side} K {K}: MSE {mse:.6f} ({time.perf_counter() - t:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
