"""`parzen-local` with one sampler over the whole grid: docs/EVAL.md, "Ninth push". Exploration only, on
validation images (training images 10000-10499), never test images.

    python whole.py N "SAMPLER,ABOVE,BELOW,ETA;..."

N samples from seed 1 (as `boneless.sample`), SAMPLER (with DDIM's ETA) on ABOVE even steps from t = 1 to 0.6,
one step to heun-split's point t = 0.376, and BELOW Karras steps from there to t = 0; scored as in below.py.
"""
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "eighth-push"))
import parzen as P  # noqa: E402  (heun_split, RF)

import boneless  # noqa: E402
from boneless.classifier import fashion_classifier  # noqa: E402
from boneless.composites import ParzenLocalDenoiser  # noqa: E402
from boneless.data import load_dataset  # noqa: E402
from boneless.metrics import PCAFeatures, frechet_distance, nearest_distance_stats  # noqa: E402
from boneless.schedules import time_grid  # noqa: E402

n, specs = int(sys.argv[1]), sys.argv[2].split(";")
X = load_dataset("fashion-mnist", limit=10500)
pool, V = X[:10000], X[10000:10500]
clf = fashion_classifier(progress=False)
pca = PCAFeatures(pool)
fV = {"pca": pca(V), "clf": clf.features(V)}
cV = torch.bincount(clf.probabilities(V).argmax(1), minlength=10)
den = ParzenLocalDenoiser(pool)
t_split = P.heun_split()["times"][7]  # 0.376
for spec in specs:
    sampler, above, below, eta = spec.split(",")
    times = torch.cat([torch.linspace(1, 0.6, int(above) + 1, dtype=torch.float64),
                       torch.tensor([t_split], dtype=torch.float64),
                       time_grid(P.RF, int(below), spacing="karras", t_max=t_split)[1:]])
    t0 = time.perf_counter()
    S = boneless.sample(den, P.RF, n=n, seed=1, sampler=sampler, eta=float(eta), times=times).samples
    q = nearest_distance_stats(S, pool, heldout=V)
    prob = clf.probabilities(S)
    cS = torch.bincount(prob.argmax(1), minlength=10)
    print(spec, f"{len(times) - 1} steps", f"{time.perf_counter() - t0:.0f} s",
          {"ratio": round(q["median_ratio"], 3), "ks": round(q["ks"], 3), "copy": round(q["copy_rate"], 3),
           "fd_pca": round(frechet_distance(pca(S), fV["pca"]), 2),
           "fd_clf": round(frechet_distance(clf.features(S), fV["clf"]), 2),
           "conf": round(float(prob.max(1).values.mean()), 3),
           "tv": round(0.5 * float((cS / n - cV / len(V)).abs().sum()), 3)}, cS.tolist(), flush=True)
