"""coarse-to-fine samples under several samplers, scored against VALIDATION images (training 10000-10499), never test."""
import json, sys, time
import torch
import boneless
from boneless.data import load_dataset
from boneless.composites import CoarseToFineDenoiser
from boneless.classifier import fashion_classifier
from boneless.metrics import PCAFeatures, frechet_distance, nearest_distance_stats

n = int(sys.argv[1]) if len(sys.argv) > 1 else 64
which = sys.argv[2].split(",") if len(sys.argv) > 2 else None
X = load_dataset("fashion-mnist", limit=10000 + 500 + 5 * n)
pool, V, ref = X[:10000], X[10000:10500], X[10500:]
clf = fashion_classifier(progress=False)
pca = PCAFeatures(pool)
fv = {"pca": pca(V), "clf": clf.features(V)}

def quality(S):
    q = nearest_distance_stats(S, pool, heldout=V)
    return {"ratio": q["median_ratio"], "ks": q["ks"], "copy": q["copy_rate"],
            "fd_pca": frechet_distance(pca(S), fv["pca"]), "fd_clf": frechet_distance(clf.features(S), fv["clf"]),
            "conf": float(clf.probabilities(S).max(1).values.mean())}

real = [quality(ref[i * n:(i + 1) * n]) for i in range(5)]
print("real", {k: (round(float(torch.tensor([r[k] for r in real]).mean()), 3),
                   round(float(torch.tensor([r[k] for r in real]).std()), 3)) for k in real[0]}, flush=True)
t0 = time.perf_counter()
den = CoarseToFineDenoiser(pool)
print(f"build {time.perf_counter() - t0:.0f} s", flush=True)
variants = {
    "euler-12": dict(sampler="euler", steps=12),
    "euler-24": dict(sampler="euler", steps=24),
    "heun-12": dict(sampler="heun", steps=12),
    "em-12": dict(sampler="euler-maruyama", steps=12, churn=1.0),
    "em-24": dict(sampler="euler-maruyama", steps=24, churn=1.0),
    "ddpm-12": dict(sampler="ddpm", steps=12),
    "em-24-c0.3": dict(sampler="euler-maruyama", steps=24, churn=0.3),
    "heun-24": dict(sampler="heun", steps=24),
    "euler-48": dict(sampler="euler", steps=48),
}
for name, opts in variants.items():
    if which and name not in which:
        continue
    t0 = time.perf_counter()
    S = boneless.sample(den, "rectified-flow", n=n, seed=1, **opts).samples
    q = quality(S)
    torch.save(S, f"/tmp/c2f_val_{name}.pt")
    print(name, f"{time.perf_counter() - t0:.0f} s", {k: round(v, 3) for k, v in q.items()}, flush=True)
