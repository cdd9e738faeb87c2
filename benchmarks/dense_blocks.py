"""The dense (broad-posterior) tier's float64 blocks, side by side in one process: the rule before (blocks of at
least 192 rows for every batch: ``DENSE_WIDE = 1`` patched in) and now (8 MB blocks below 16 queries), against
the two plain float32 products, on pure-noise queries (the start of a sampling run) at D = 49152; minimum of
interleaved calls.

    python benchmarks/dense_blocks.py --threads 1 --rows 4000
"""
import argparse
import time
from unittest import mock

import torch

from boneless import EmpiricalDenoiser
from boneless import bank as bank_module
from boneless.bench import _coeffs, synthetic_images

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--threads", type=int, default=1)
p.add_argument("--rows", type=int, default=4000)
p.add_argument("--size", type=int, default=128)
p.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8, 16])
p.add_argument("--ratios", type=float, nargs="+", default=[19.0, 60.0, 199.0])
p.add_argument("--repeats", type=int, default=3)
p.add_argument("--queries", choices=("noise", "forward"), default="noise",
               help="pure noise plus alpha times the data mean (a sampling run's start), or noised training rows")
args = p.parse_args()
torch.set_num_threads(args.threads)
X = synthetic_images(args.rows, (3, args.size, args.size))
Xf = X.reshape(len(X), -1)
den = EmpiricalDenoiser(X)
g = torch.Generator().manual_seed(0)
print(f"N {len(X)}, D {Xf.shape[1]}, {args.threads} thread(s); fraction of the limit (limit / method)")
for ratio in args.ratios:
    a, s = _coeffs(ratio)
    for B in args.batches:
        centre = Xf.mean(0) if args.queries == "noise" else Xf[torch.randint(len(X), (B,), generator=g)]
        x = s * torch.randn(B, Xf.shape[1], generator=g) + a * centre
        w = torch.softmax(torch.randn(B, len(X), generator=g), 1)
        xs = x.reshape(B, *X.shape[1:])

        def before():
            with mock.patch.object(bank_module, "DENSE_WIDE", 1):
                den(xs, a, s)

        fns = {"limit": lambda: (x @ Xf.T, w @ Xf), "before": before, "now": lambda: den(xs, a, s)}
        times = {k: [] for k in fns}
        for _ in range(args.repeats):
            for k, f in fns.items():
                t = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t)
        lim = min(times["limit"])
        print(f"sigma/alpha {ratio:g}, B {B}: limit {lim:.3f} s, before {lim / min(times['before']):.2f}, "
              f"now {lim / min(times['now']):.2f}", flush=True)
