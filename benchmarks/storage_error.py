"""Error of a bank held in float16 / bfloat16 (half of float32's memory), with and without rescoring of each
query's top rows against the original float32 rows, against the float64 reference, per noise level.

    python benchmarks/storage_error.py --rows 2000 --queries 16 --out runs/storage_error.json

Data: synthetic 128 x 128 x 3 images (D = 49152, the original notebook's size; boneless.bench.synthetic_images)
and the bundled faces at 128 x 128 (grey, D = 16384). Queries are forward-noised training rows, the first two
midpoints of two rows (near-ties). Reports the median and maximum relative L2 error of x0_hat per sigma / alpha
and the bytes the bank holds.
"""

import argparse
import json
import statistics
import time

import torch

from boneless import EmpiricalDenoiser, load_dataset
from boneless.bench import _coeffs, synthetic_images
from boneless.denoisers import exact_reference
from boneless.outputs import write_json

RATIOS = (0.01, 0.1, 0.43, 1.3, 3.0, 10.0, 32.0, 199.0)


def queries(X: torch.Tensor, ratio: float, B: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x0 = X[torch.randint(0, len(X), (B,), generator=g)].clone()
    x0[:2] = 0.5 * (X[:2] + X[2:4])
    a, s = _coeffs(ratio)
    x = a * x0 + s * torch.randn(x0.shape, generator=g)
    x[:2] = a * x0[:2]
    return x, a, s


def measure(name: str, X: torch.Tensor, B: int, rescore: int) -> dict:
    out = {"data": name, "N": len(X), "D": X[0].numel(), "queries": B, "levels": {}}
    dens = {"float32": EmpiricalDenoiser(X)}
    for storage in ("float16", "bfloat16"):
        dens[storage] = EmpiricalDenoiser(X, storage=storage)
        dens[f"{storage}+rescore{rescore}"] = EmpiricalDenoiser(X, storage=storage, rescore=rescore)
    out["bank_bytes"] = {k: (d.bank.X.data if hasattr(d.bank.X, "data") else d.bank.X).nbytes for k, d in dens.items()}
    for r in RATIOS:
        x, a, s = queries(X, r, B, seed=int(r * 1000))
        ref = exact_reference(X, x, a, s).double().flatten(1)
        row = {}
        for k, d in dens.items():
            t0 = time.perf_counter()
            y = d(x, a, s).double().flatten(1)
            e = ((y - ref).norm(dim=1) / ref.norm(dim=1)).tolist()
            row[k] = {"median": statistics.median(e), "max": max(e), "seconds": time.perf_counter() - t0}
        out["levels"][f"{r:g}"] = row
        print(name, f"sigma/alpha {r:g}:", {k: f"{v['median']:.1e}/{v['max']:.1e}" for k, v in row.items()}, flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=2000, help="training rows (default 2000)")
    p.add_argument("--queries", type=int, default=16, help="queries per noise level (default 16)")
    p.add_argument("--rescore", type=int, default=64, help="rows rescored per query (default 64)")
    p.add_argument("--out", default="runs/storage_error.json")
    args = p.parse_args()
    faces = load_dataset("faces", size=128)
    faces = faces[:args.rows]  # no repeats: duplicates would only add exact ties
    report = [measure("synthetic 3x128x128", synthetic_images(args.rows, (3, 128, 128), seed=0), args.queries, args.rescore),
              measure("faces 1x128x128", faces, args.queries, args.rescore)]
    write_json(report, args.out)


if __name__ == "__main__":
    main()
