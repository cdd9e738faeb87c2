"""`parzen-local` with other samplers (or another member) below the switch: docs/EVAL.md, "Ninth push".
Exploration only, on validation images (training images 10000-10499), never test images.

    python below.py N "SAMPLER,STEPS,KNOB;..." [MEMBER]
    python below.py whole N "SAMPLER,ABOVE,BELOW,ETA;..."

The first form: all variants share one state, N samples from seed 1, Heun on `heun-split`
(docs/eval/eighth-push/parzen.py) down to its grid point t = 0.376 (sigma / alpha = 0.60, still above the switch
0.3 / 0.7 = 0.43). From there SAMPLER (euler, heun, ddim, ddpm, euler-maruyama) runs to t = 0 on STEPS Karras
steps (``split``: heun-split's own 5 points below t = 0.376), with KNOB as ddim's eta or euler-maruyama's churn
(seed 2 for their noise). MEMBER (a registry name, default local-gaussian) answers below the switch, `parzen` above.

``whole``: one SAMPLER (with DDIM's ETA) over a whole grid, N samples from seed 1 (as `boneless.sample`): ABOVE
even steps from t = 1 to 0.6, one step to t = 0.376, and BELOW Karras steps from there to t = 0.
"""
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "eighth-push"))
import parzen as P  # noqa: E402  (heun_split, RF)

import boneless  # noqa: E402
from boneless import samplers  # noqa: E402
from boneless.classifier import fashion_classifier  # noqa: E402
from boneless.closed_form import ParzenDenoiser  # noqa: E402
from boneless.composites import PARZEN_LOCAL_SWITCH, switched  # noqa: E402
from boneless.data import load_dataset  # noqa: E402
from boneless.metrics import PCAFeatures, frechet_distance, nearest_distance_stats  # noqa: E402
from boneless.schedules import time_grid  # noqa: E402

whole = sys.argv[1] == "whole"
args = sys.argv[2:] if whole else sys.argv[1:]
n, specs = int(args[0]), args[1].split(";")
member = args[2] if len(args) > 2 else "local-gaussian"
X = load_dataset("fashion-mnist", limit=10500)
pool, V = X[:10000], X[10000:10500]
clf = fashion_classifier(progress=False)
pca = PCAFeatures(pool)
fV = {"pca": pca(V), "clf": clf.features(V)}
cV = torch.bincount(clf.probabilities(V).argmax(1), minlength=10)
coarse, fine = ParzenDenoiser(pool, neighbours=32, scale=1.5), boneless.DENOISERS[member](pool)
shape = tuple(pool.shape[1:])  # Fashion-MNIST's spread is the reference spread: the switch as it is
ts = torch.tensor(P.heun_split()["times"], dtype=torch.float64)
t_split = float(ts[7])  # 0.376


def den(x, alpha, sigma):
    return switched(x, alpha, sigma, shape, PARZEN_LOCAL_SWITCH, coarse, fine)


def report(spec, S, t0):
    q = nearest_distance_stats(S, pool, heldout=V)
    prob = clf.probabilities(S)
    cS = torch.bincount(prob.argmax(1), minlength=10)
    print(spec, member, f"{time.perf_counter() - t0:.0f} s",
          {"ratio": round(q["median_ratio"], 3), "ks": round(q["ks"], 3), "copy": round(q["copy_rate"], 3),
           "fd_pca": round(frechet_distance(pca(S), fV["pca"]), 2),
           "fd_clf": round(frechet_distance(clf.features(S), fV["clf"]), 2),
           "conf": round(float(prob.max(1).values.mean()), 3),
           "tv": round(0.5 * float((cS / n - cV / len(V)).abs().sum()), 3)}, cS.tolist(), flush=True)


if whole:
    for spec in specs:
        sampler, above, below, eta = spec.split(",")
        times = torch.cat([torch.linspace(1, 0.6, int(above) + 1, dtype=torch.float64), ts[7:8],
                           time_grid(P.RF, int(below), spacing="karras", t_max=t_split)[1:]])
        t0 = time.perf_counter()
        report(spec, boneless.sample(den, P.RF, n=n, seed=1, shape=shape, sampler=sampler, eta=float(eta),
                                     times=times).samples, t0)
else:
    t0 = time.perf_counter()
    x1 = P.RF(1.0).sigma * torch.randn((n, *shape), generator=torch.Generator().manual_seed(1))
    xm = samplers.heun(den, P.RF, x1, ts[:8])  # down to ts[7] = 0.376 (as boneless.sample(seed=1) would)
    print(f"down to t = {t_split:.3f}: {time.perf_counter() - t0:.0f} s", flush=True)
    for spec in specs:
        t0 = time.perf_counter()
        name, steps, knob = spec.split(",")
        grid = ts[7:] if steps == "split" else time_grid(P.RF, int(steps), spacing="karras", t_max=t_split)
        kw = {"ddim": {"eta": float(knob)}, "euler-maruyama": {"churn": float(knob)}}.get(name, {})
        report(spec, samplers.SAMPLERS[name](den, P.RF, xm.clone(), grid, generator=torch.Generator().manual_seed(2),
                                             **kw), t0)
