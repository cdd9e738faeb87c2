"""`local-gaussian`'s side and neighbours swept on VALIDATION images (Fashion-MNIST training images 10000-10099,
outside the pool of the first 10000 training images), never test images: one noise draw (seed 1) shared by every
setting; prints the MSE of each setting (docs/EVAL.md, "Fifth push").

    OMP_NUM_THREADS=2 python docs/eval/local-gaussian/sweep.py --sigmas 1,2 --sides 11 --neighbours 20,30,40,50,200
    OMP_NUM_THREADS=2 python docs/eval/local-gaussian/sweep.py --sigmas 2,5 --sides 28 --neighbours 40,200

Small pools ("Sixth push"; side or K 0: the default schedule's, capped on small pools):

    OMP_NUM_THREADS=2 python docs/eval/local-gaussian/sweep.py --pool 50 --sigmas 2 --sides 28,19,13,9,0 --neighbours 200
    OMP_NUM_THREADS=2 python docs/eval/local-gaussian/sweep.py --faces --sigmas 1,2 --sides 25,17,13,10,0 --neighbours 50

A side of 28 is the whole image; K is at most the pool. ``--faces``: the 50 faces of ``boneless eval --data faces
--pool 50 --test 25`` (seed 0) as the pool, the 25 faces outside its pool and test set as the validation images.
"""
import argparse
import time

import torch

from boneless.data import load_dataset
from boneless.evaluate import parse_sigmas, split_data
from boneless.patches import LocalGaussianDenoiser


def ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sigmas", type=parse_sigmas, required=True, help="comma-separated noise levels")
    p.add_argument("--sides", type=ints, required=True,
                   help="comma-separated square sides (28: the whole image; 0: the default schedule)")
    p.add_argument("--neighbours", type=ints, required=True, help="comma-separated K (0: the default schedule)")
    p.add_argument("--faces", action="store_true", help="the 50 faces and their 25 validation faces instead")
    p.add_argument("--validation", type=int, default=100, help="validation images (100)")
    p.add_argument("--pool", type=int, default=10000, help="the first POOL training images are the bank (10000)")
    args = p.parse_args()
    if not 1 <= args.pool <= 10000:
        p.error("--pool must be 1-10000 (the validation images start at 10000)")
    if args.faces:
        split = split_data("faces", pool=50, test=25, extra=100, second_pool=False, size=None, seed=0)
        pool, val = split["pool"], split["reference"]
    else:
        X = load_dataset("fashion-mnist", split="train")
        pool, val = X[:args.pool], X[10000:10000 + args.validation]
    z = torch.randn(val.shape, generator=torch.Generator().manual_seed(1))
    for sigma in args.sigmas:
        for side in args.sides:
            for K in args.neighbours:
                den = LocalGaussianDenoiser(pool, schedule=side or None, neighbours=K or None)
                t = time.perf_counter()
                out = den(val + sigma * z, 1.0, sigma)
                mse = ((out - val) ** 2).mean().item()
                side_K = f"side {den.patch_size(sigma)} K {den.neighbour_count(sigma)}"
                print(f"sigma {sigma} {side_K}: MSE {mse:.6f} ({time.perf_counter() - t:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
