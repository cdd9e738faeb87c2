"""Exact denoiser vs the two-product limit over a rectified-flow sampling run, in CPU time of one thread.

For a machine shared with other work, where wall-clock times are not trustworthy: one thread, process CPU time,
the exact denoiser and the two plain float32 products of the same shape timed side by side at every step.
(On a quiet machine use ``boneless bench``, whose figures are wall-clock with the threads you give it.)

    python benchmarks/bench_cputime.py --n 20000 --size 32 --batch 64 --steps 20
"""

import argparse
import time

import torch

from boneless import EmpiricalDenoiser, sample
from boneless.bench import synthetic_images


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--size", type=int, default=32, help="images 3 x SIZE x SIZE")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    X = synthetic_images(args.n, (3, args.size, args.size), seed=args.seed)
    den = EmpiricalDenoiser(X)
    Xf = X.flatten(1)
    g = torch.Generator().manual_seed(args.seed + 1)
    q = torch.randn(args.batch, Xf.shape[1], generator=g)
    w = torch.softmax(torch.randn(args.batch, args.n, generator=g), 1)
    rows = []

    class Timed:
        shape = den.shape

        def __call__(self, x, alpha, sigma):
            t0 = time.process_time()
            y = den(x, alpha, sigma)
            t1 = time.process_time()
            q @ Xf.T, w @ Xf
            rows.append((sigma / alpha if alpha else float("inf"), t1 - t0, time.process_time() - t1))
            return y

    sample(Timed(), "rectified-flow", n=args.batch, steps=args.steps, seed=args.seed, top_k=0, progress=False)
    print("sigma/alpha   exact (ms)   limit (ms)   fraction of limit")
    for r, t, lim in rows:
        print(f"{r:11.3g}   {t * 1e3:10.0f}   {lim * 1e3:10.0f}   {lim / t:6.2f}")
    total, lim = sum(r[1] for r in rows), sum(r[2] for r in rows)
    print(f"over the run: fraction of the limit {lim / total:.2f} (N {args.n}, D {Xf.shape[1]}, B {args.batch}, "
          f"{args.steps} steps, 1 thread, CPU time)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
