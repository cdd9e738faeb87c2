"""The approximate FAISS back-end against the exact denoiser for large N (synthetic images): build time, time per
step, speed-up and relative error, with the estimated and bounded tail mass. Needs ``pip install faiss-cpu``.

    python benchmarks/bench_faiss.py --n 100000 300000 1000000 --out runs/faiss    # ~2 GB at N = 1e6, D = 256
"""

import argparse
import json
import sys
from pathlib import Path

import torch

from boneless.bench import bench_faiss, markdown, plots
from boneless.plots import atomic_path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, nargs="+", default=[100000, 300000, 1000000], help="dataset sizes")
    p.add_argument("--shape", type=int, nargs=3, default=[1, 16, 16], metavar=("C", "H", "W"))
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/faiss")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    res = bench_faiss(args.n, tuple(args.shape), B=args.batch, device=torch.device("cpu"), repeats=args.repeats,
                      seed=args.seed)
    report = {"command": "python benchmarks/bench_faiss.py " + " ".join(sys.argv[1:]),
              "machine": {"torch": torch.__version__, "threads": torch.get_num_threads()},
              "grid": [], "sweep_N": [], "sweep_D": [], "sweep_B": [], "sampling": [], "faiss": res}
    out = Path(args.out)
    with atomic_path(out / "faiss.json") as tmp:
        Path(tmp).write_text(json.dumps(report, indent=2) + "\n")
    with atomic_path(out / "faiss.md") as tmp:
        Path(tmp).write_text(markdown(report))
    plots(report, out)
    print(f"wrote {out}/faiss.json, faiss.md, faiss.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
