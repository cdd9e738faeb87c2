"""Manifold Parzen windows (Vincent & Bengio 2002) as a closed-form denoiser at high noise, tried against
`local-gaussian`'s class tilt: docs/EVAL.md, "Eighth push". Exploration only, not part of the package.

    python parzen.py mse N "K,SCALE;K,SCALE;..."    # held-out MSE / Wiener on N validation images, sigma 0.5..5
    python parzen.py switch N "K,SCALE@T;..." [B]   # Parzen above time T, local-gaussian below (Heun, heun-split;
                                                    # B Karras steps below t = 0.6, default 6)

`parzen` (boneless.closed_form.ParzenDenoiser) with K neighbours and SCALE; `switch` runs `parzen-local`
(boneless.composites.ParzenLocalDenoiser) with the switch at time T, or `parzen` alone without @T.
Samples are scored against validation images (training images 10000-10499), as in docs/eval/c2f-500/validation.py.
"""
import sys
import time

import torch

import boneless
from boneless.classifier import fashion_classifier
from boneless.data import load_dataset
from boneless.closed_form import GaussianDenoiser, ParzenDenoiser
from boneless.composites import ParzenLocalDenoiser
from boneless.metrics import PCAFeatures, frechet_distance, nearest_distance_stats
from boneless.schedules import get_schedule, time_grid

RF = get_schedule("rectified-flow")


def heun_split(below=6):
    """docs/eval/c2f-500/validation.py's grid: Heun, 6 even steps down to t = 0.6, ``below`` Karras steps below."""
    return dict(sampler="heun", times=torch.cat([torch.linspace(1, 0.6, 7, dtype=torch.float64), time_grid(
        RF, below, spacing="karras", t_max=0.6)[1:]]).tolist())


def parse(spec):
    """``K,SCALE`` as the Parzen options."""
    K, scale = spec.split(",")
    return dict(neighbours=int(K), scale=float(scale))


if __name__ == "__main__":
    mode, n = sys.argv[1], int(sys.argv[2])
    specs = sys.argv[3].split(";")
    X = load_dataset("fashion-mnist", limit=10500)
    pool, V = X[:10000], X[10000:10500]
    if mode == "mse":
        Vn = V[:n]
        g = torch.Generator().manual_seed(0)
        eps = torch.randn(Vn.shape, generator=g)
        wiener = GaussianDenoiser(pool)
        lg = boneless.DENOISERS["local-gaussian"](pool)
        dens = {"local-gaussian": lg} | {s: ParzenDenoiser(pool, **parse(s)) for s in specs}
        for sig in (0.5, 1.0, 2.0, 5.0):
            xt = Vn + sig * eps
            ref = float(((wiener(xt, 1.0, sig) - Vn) ** 2).mean())
            row = {name: round(float(((d(xt, 1.0, sig) - Vn) ** 2).mean()) / ref, 4) for name, d in dens.items()}
            print(f"sigma {sig}", row, flush=True)
    elif mode == "switch":
        below = int(sys.argv[4]) if len(sys.argv) > 4 else 6
        clf = fashion_classifier(progress=False)
        pca = PCAFeatures(pool)
        fV = {"pca": pca(V), "clf": clf.features(V)}
        cV = torch.bincount(clf.probabilities(V).argmax(1), minlength=10)
        for spec in specs:
            t0 = time.perf_counter()
            p, _, T = spec.partition("@")
            den = (ParzenLocalDenoiser(pool, switch=float(T) / (1 - float(T)), parzen=parse(p)) if T
                   else ParzenDenoiser(pool, **parse(p)))
            S = boneless.sample(den, RF, n=n, seed=1, **heun_split(below)).samples
            q = nearest_distance_stats(S, pool, heldout=V)
            P = clf.probabilities(S)
            cS = torch.bincount(P.argmax(1), minlength=10)
            print(spec, f"{time.perf_counter() - t0:.0f} s",
                  {"ratio": round(q["median_ratio"], 3), "ks": round(q["ks"], 3), "copy": round(q["copy_rate"], 3),
                   "fd_pca": round(frechet_distance(pca(S), fV["pca"]), 2),
                   "fd_clf": round(frechet_distance(clf.features(S), fV["clf"]), 2),
                   "conf": round(float(P.max(1).values.mean()), 3),
                   "tv": round(0.5 * float((cS / n - cV / len(V)).abs().sum()), 3)}, cS.tolist(), flush=True)
    else:
        sys.exit("usage: parzen.py mse|switch N SPEC;SPEC...")
