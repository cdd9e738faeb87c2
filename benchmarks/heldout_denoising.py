"""Held-out denoising error of the closed-form denoisers, as a multiple of the Wiener filter's (issue 4 protocol).

Fashion-MNIST: pool = the first ``--pool`` training images, test = the first ``--test`` test images, validation
(for calibration and blend weights only) = the ``--val`` training images after the pool. Every denoiser sees the
same noise draw ``y = x + sigma z`` (``alpha = 1``, VE convention; ``boneless.metrics.denoising_error``), and the
table reports ``MSE / MSE_Wiener`` per sigma, with the Wiener filter (``boneless.metrics.WienerFilter``) built on
the pool. Nothing is tuned on the test images: patch sizes come from the shipped schedules, or with
``--calibrate`` from ``boneless.patches.calibrate`` on the validation images.

    python benchmarks/heldout_denoising.py --out runs/heldout               # the full protocol (slow on 2 cores)
    python benchmarks/heldout_denoising.py --pool 2000 --test 20 --sigmas 0.1,1 --out /tmp/heldout   # a smoke run

``--sweep NAME:k1,k2,...`` also reports each fixed patch size on the test images (an oracle choice, only to
compare with the issue's "best k per sigma" figures). Writes ``heldout.json`` and ``heldout.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from boneless import DENOISERS, load_dataset
from boneless.metrics import WienerFilter, denoising_error
from boneless.patches import PatchSchedule, calibrate
from boneless.plots import atomic_path

DEFAULT = ("empirical", "gaussian", "smoothed", "gmm", "local", "patch-composite", "local-gaussian", "blend")
CALIBRATED = ("local", "patch-composite", "local-equivariant", "local-gaussian")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="fashion-mnist", help="dataset with train/test splits (default fashion-mnist)")
    p.add_argument("--pool", type=int, default=10000, help="training images in the pool (default 10000)")
    p.add_argument("--test", type=int, default=200, help="held-out test images (default 200)")
    p.add_argument("--val", type=int, default=50, help="validation images after the pool (default 50)")
    p.add_argument("--sigmas", default="0.05,0.1,0.2,0.5,1,2", help="noise levels (default 0.05,0.1,0.2,0.5,1,2)")
    p.add_argument("--denoisers", default=",".join(DEFAULT), help=f"comma-separated (default {','.join(DEFAULT)})")
    p.add_argument("--els-pool", type=int, default=300,
                   help="pool of local-equivariant (its cost grows as pool x pixels^2; default 300)")
    p.add_argument("--calibrate", action="store_true",
                   help="calibrate the patch sizes of local, patch-composite, local-equivariant on the validation set")
    p.add_argument("--sweep", action="append", default=[], metavar="NAME:K1,K2",
                   help="also report fixed patch sizes on the test set (oracle, for comparison only)")
    p.add_argument("--in-sample", action="store_true", help="also report in-sample error on --test pool images")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise draw (default 0)")
    p.add_argument("--batch-size", type=int, default=50, help="images per denoiser call (default 50)")
    p.add_argument("--threads", type=int, help="torch threads (on a busy machine 1 is fastest)")
    p.add_argument("--out", default="runs/heldout", help="output folder (default runs/heldout)")
    return p.parse_args(argv)


def build(name: str, pool: torch.Tensor, val: torch.Tensor, sigmas, args, log):
    """The denoiser ``name`` with its defaults, or with a schedule calibrated on ``val`` (never the test set)."""
    cls = DENOISERS[name]
    X = pool[:args.els_pool] if name == "local-equivariant" else pool
    if args.calibrate and name in CALIBRATED:
        t0 = time.perf_counter()
        sch = calibrate(cls, X, val, sigmas, seed=args.seed + 1)
        log(f"  calibrated {name}: sizes {dict(zip(sch.sigmas, sch.sizes))} ({time.perf_counter() - t0:.0f} s)")
        return cls(X, schedule=sch), {"schedule": {"sigmas": list(sch.sigmas), "sizes": list(sch.sizes)}}
    if name == "blend":
        return cls(X, validation=val), {}
    return cls(X), {}


def markdown(rows, sigmas) -> str:
    head = "| denoiser | " + " | ".join(f"sigma {s:g}" for s in sigmas) + " | seconds |"
    lines = [head, "|" + "---|" * (len(sigmas) + 2)]
    for r in rows:
        cells = " | ".join(f"{v:.3f}" for v in r["ratio"])
        lines.append(f"| {r['name']} | {cells} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        sigmas = [float(s) for s in args.sigmas.split(",")]
    except ValueError:
        raise ValueError(f"--sigmas must be comma-separated numbers, got {args.sigmas!r}") from None
    if min(args.pool, args.test, args.val, args.batch_size) < 1:
        raise ValueError("--pool, --test, --val and --batch-size must be positive")
    names = [n for n in args.denoisers.split(",") if n]
    unknown = [n for n in names if n not in DENOISERS]
    if unknown:
        print(f"heldout_denoising: error: unknown denoiser(s) {', '.join(unknown)}", file=sys.stderr)
        return 2

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    train = load_dataset(args.data, split="train", limit=args.pool + args.val)
    pool, val = train[:args.pool], train[args.pool:]
    test = load_dataset(args.data, split="test", limit=args.test)
    wiener = WienerFilter(pool)
    w = denoising_error(wiener, test, sigmas, seed=args.seed, batch_size=args.batch_size).mse
    w_in = denoising_error(wiener, pool[:args.test], sigmas, seed=args.seed, batch_size=args.batch_size).mse
    log(f"pool {len(pool)}, validation {len(val)}, test {len(test)}; Wiener MSE "
        + ", ".join(f"{s:g}: {float(m):.5f}" for s, m in zip(sigmas, w)))
    rows = []

    def measure(name, den, extra):
        t0 = time.perf_counter()
        err = denoising_error(den, test, sigmas, seed=args.seed, batch_size=args.batch_size)
        row = {"name": name, "mse": err.mse.tolist(), "ratio": (err.mse / w).tolist(),
               "seconds": time.perf_counter() - t0, **extra}
        if args.in_sample:
            e_in = denoising_error(den, pool[:args.test], sigmas, seed=args.seed, batch_size=args.batch_size)
            row["in_sample_ratio"] = (e_in.mse / w_in).tolist()
        rows.append(row)
        log(f"  {name}: " + ", ".join(f"{r:.3f}" for r in row["ratio"]) + f"  ({row['seconds']:.0f} s)")

    for name in names:
        log(f"{name} ...")
        t0 = time.perf_counter()
        den, extra = build(name, pool, val, sigmas, args, log)
        extra["build_seconds"] = time.perf_counter() - t0
        if name == "local-equivariant":
            extra["pool"] = min(args.els_pool, len(pool))
        measure(name, den, extra)
    for spec in args.sweep:
        name, _, ks = spec.partition(":")
        for k in [int(v) for v in ks.split(",") if v]:
            den = DENOISERS[name](pool[:args.els_pool] if name == "local-equivariant" else pool,
                                  schedule=PatchSchedule.constant(k))
            measure(f"{name} k={k} (oracle sweep)", den, {"k": k})
    report = {"data": args.data, "pool": len(pool), "test": len(test), "validation": len(val),
              "sigmas": sigmas, "seed": args.seed, "alpha": 1.0, "wiener_mse": w.tolist(),
              "command": " ".join(["python", "benchmarks/heldout_denoising.py", *(argv or sys.argv[1:])]),
              "threads": torch.get_num_threads(), "rows": rows}
    out = Path(args.out)
    with atomic_path(out / "heldout.json") as tmp:
        Path(tmp).write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(rows, sigmas)
    with atomic_path(out / "heldout.md") as tmp:
        Path(tmp).write_text(f"Held-out MSE / Wiener MSE ({args.data}, pool {len(pool)}, test {len(test)}, "
                             f"y = x + sigma z, seed {args.seed})\n\n{table}\n")
    print(table)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ValueError as e:  # bad input: one line, no traceback
        print(f"heldout_denoising: error: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(2)
