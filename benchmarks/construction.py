"""Construction time of the exact denoiser against smalldiffusion's ideal denoiser, and where it goes.

Interleaved repeats, in one process, for N rows of synthetic images of D = 3 size^2: ``EmpiricalDenoiser(X)`` as
it is; the same with the bank's float64 squared norms computed in 1 MB blocks (``boneless.bank._block_rows``
patched: the change proposed for ``Bank.__init__``, whose 128 MB float64 temporaries cost page faults); its parts
(the data check, the float64 norms in 128 MB and in 1 MB blocks, the mean); and smalldiffusion's
``IdealDenoiser(X)`` (when installed).

    python benchmarks/construction.py --rows 20000 --size 32 --repeats 5
"""

import argparse
import time

import torch

import boneless.bank as bank_mod
from boneless.bench import interleaved, smalldiffusion_ideal, synthetic_images
from boneless.data import check_data
from boneless.denoisers import EmpiricalDenoiser
from boneless.rows import _block_rows


def norms64(X: torch.Tensor, nbytes: int) -> torch.Tensor:
    """|x_i|^2 in float64 over float64 blocks of ``nbytes`` (the expression of ``Bank.__init__``)."""
    return torch.cat([(r.double() ** 2).sum(1) for r in X.split(_block_rows(X.shape[1], nbytes))])


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

        def patched():
            old = bank_mod._block_rows
            bank_mod._block_rows = lambda dim, nbytes=1 << 20: old(dim, 1 << 20)
            try:
                return EmpiricalDenoiser(X)
            finally:
                bank_mod._block_rows = old

        fns = {"EmpiricalDenoiser(X)": lambda: EmpiricalDenoiser(X),
               "EmpiricalDenoiser(X), norms in 1 MB blocks": patched,
               "  check_data": lambda: check_data(X),
               "  float64 norms, 128 MB blocks (as now)": lambda: norms64(Xf, 1 << 27),
               "  float64 norms, 1 MB blocks": lambda: norms64(Xf, 1 << 20)}
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
