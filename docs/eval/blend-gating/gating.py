"""`blend`'s weights per bin of a per-pixel feature instead of one weight per member and noise level, measured on
VALIDATION images (Fashion-MNIST training images 10000-10199, outside the pool of the first 10000), never test images
(docs/EVAL.md, "Sixth push"). The members' estimates are computed once and kept in MEMBERS.pt; the weights are
fitted on the first 100 validation images and scored on the other 100, as MSE / the Wiener filter's MSE.

    OMP_NUM_THREADS=2 python docs/eval/blend-gating/gating.py runs/gating-members.pt
"""
import sys
import time
from pathlib import Path

import torch

from boneless.composites import BLEND_MEMBERS, BLEND_SIGMAS, BlendDenoiser
from boneless.data import load_dataset

SIGMAS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


def members(path: Path) -> dict:
    if path.exists():
        return torch.load(path)
    X = load_dataset("fashion-mnist", split="train", limit=10200)
    pool, val = X[:10000], X[10000:10200]
    blend = BlendDenoiser(pool, weights=torch.zeros(len(BLEND_SIGMAS), len(BLEND_MEMBERS)), refit=False)
    z = torch.randn(val.shape, generator=torch.Generator().manual_seed(7))
    out = {"val": val, "members": {}}
    for s in SIGMAS:
        t = time.perf_counter()
        out["members"][s] = torch.cat([blend.members(val[i:i + 100] + s * z[i:i + 100], 1.0, s) for i in (0, 100)], 1)
        print(f"members at sigma {s}: {time.perf_counter() - t:.0f} s", flush=True)
    torch.save(out, path)
    return out


def lstsq(E: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return torch.linalg.lstsq(E.T, t[:, None], rcond=1e-4, driver="gelsd").solution[:, 0]


def main() -> None:
    d = members(Path(sys.argv[1]))
    val = d["val"].double()
    A, B = slice(0, 100), slice(100, 200)
    for s, E in d["members"].items():
        EA, EB = E[:, A].reshape(len(E), -1), E[:, B].reshape(len(E), -1)
        tA, tB = val[A].reshape(-1), val[B].reshape(-1)
        wiener = ((EB[BLEND_MEMBERS.index("gaussian")] - tB) ** 2).mean()
        w = lstsq(EA, tA)
        res = [f"sigma {s}: one weight per member {((w @ EB - tB) ** 2).mean() / wiener:.4f}"]
        features = {"local-gaussian's value": E[0], "members' spread": E[:4].std(0),
                    "|local-gaussian - composite|": (E[0] - E[1]).abs(), "noisy pixel": E[5]}
        for name, F in features.items():
            for bins in (4, 8, 16):
                FA, FB = F[A].reshape(-1), F[B].reshape(-1)
                edges = torch.quantile(FA[torch.randperm(len(FA), generator=torch.Generator().manual_seed(0))[:100000]],
                                       torch.linspace(0, 1, bins + 1)[1:-1].double())
                bA, bB = torch.bucketize(FA, edges), torch.bucketize(FB, edges)
                pred = torch.empty_like(tB)
                for k in range(bins):
                    wk = lstsq(EA[:, bA == k], tA[bA == k]) if int((bA == k).sum()) > 50 else w
                    pred[bB == k] = wk @ EB[:, bB == k]
                res.append(f"{name} / {bins} bins {((pred - tB) ** 2).mean() / wiener:.4f}")
        print("\n  ".join(res), flush=True)


if __name__ == "__main__":
    main()
