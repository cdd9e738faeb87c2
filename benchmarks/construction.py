"""Construction time of the exact denoiser against smalldiffusion's ideal denoiser, and where it goes.

Interleaved repeats, in one process, for N rows of synthetic images of D = 3 size^2: ``EmpiricalDenoiser(X)``;
its parts (the data check, the bank's float64 squared norms as ``Bank.__init__`` computed them before, in 128 MB
float64 blocks, and as it computes them now, through one reused 4 MB float64 buffer squared in place, bitwise the
same; the mean); and smalldiffusion's ``IdealDenoiser(X)`` (when installed).

    python benchmarks/construction.py --rows 20000 --size 32 128 --repeats 3
"""

import argparse
import time

import torch

from boneless.bench import interleaved, smalldiffusion_ideal, synthetic_images
from boneless.data import check_data
from boneless.denoisers import EmpiricalDenoiser
from boneless.rows import _block_rows


def norms64(X: torch.Tensor) -> torch.Tensor:
    """|x_i|^2 in float64 as ``Bank.__init__`` computes them: float64 copies of 128 MB blocks."""
    return torch.cat([(r.double() ** 2).sum(1) for r in X.split(_block_rows(X.shape[1]))])


def norms64_buffer(X: torch.Tensor) -> torch.Tensor:
    """The same values through one reused 4 MB float64 buffer, squared in place (no allocation per block)."""
    buf = torch.empty(min(_block_rows(X.shape[1], 1 << 22), len(X)), X.shape[1], dtype=torch.float64)
    out = torch.empty(len(X), dtype=torch.float64)
    for j in range(0, len(X), len(buf)):
        b = buf[:min(len(buf), len(X) - j)].copy_(X[j:j + len(buf)])
        torch.sum(b.mul_(b), 1, out=out[j:j + len(b)])
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=20000)
    p.add_argument("--size", type=int, nargs="+", default=[32], help="image sides (D = 3 size^2), one table each")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    found = smalldiffusion_ideal()
    for size in args.size:
        X = synthetic_images(args.rows, (3, size, size))
        Xf = X.reshape(len(X), -1)

        fns = {"EmpiricalDenoiser(X)": lambda: EmpiricalDenoiser(X),
               "  check_data": lambda: check_data(X),
               "  float64 norms, 128 MB blocks (Bank.__init__ before)": lambda: norms64(Xf),
               "  float64 norms, reused 4 MB buffer (Bank.__init__ now)": lambda: norms64_buffer(Xf)}
        assert torch.equal(norms64(Xf), norms64_buffer(Xf))
        den = EmpiricalDenoiser(X)
        fns["  mean (_stats_mean)"] = lambda: den._stats_mean(None)
        if found:
            fns[f"smalldiffusion {found[1]} IdealDenoiser(X)"] = lambda: found[0](X)
        cpu0 = time.process_time()
        times = interleaved(fns, args.repeats, torch.device("cpu"))
        print(f"\nN {args.rows}, D {Xf.shape[1]}, {torch.get_num_threads()} threads, {args.repeats} interleaved "
              f"repeats (process CPU time of the whole table: {time.process_time() - cpu0:.1f} s)\n")
        print("| what | min | median |\n|---|---|---|")
        for name, ts in times.items():
            print(f"| {name} | {min(ts):.3f} s | {sorted(ts)[len(ts) // 2]:.3f} s |")
        del X, Xf, den
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
