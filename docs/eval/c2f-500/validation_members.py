"""coarse-to-fine with one member below the switch (one-hot blend weights), scored against VALIDATION images
(training 10000-10499), never test. Same scoring as validation_samplers.py."""
import sys, time
import torch
import boneless
from boneless.data import load_dataset
from boneless.composites import CoarseToFineDenoiser, BLEND_MEMBERS, BLEND_SIGMAS
from boneless.classifier import fashion_classifier
from boneless.metrics import PCAFeatures, frechet_distance, nearest_distance_stats

n = int(sys.argv[1]); which = sys.argv[2].split(","); sampler = sys.argv[3] if len(sys.argv) > 3 else "euler"
X = load_dataset("fashion-mnist", limit=10500)
pool, V = X[:10000], X[10000:10500]
clf = fashion_classifier(progress=False)
pca = PCAFeatures(pool)
fv = {"pca": pca(V), "clf": clf.features(V)}

def quality(S):
    q = nearest_distance_stats(S, pool, heldout=V)
    return {"ratio": q["median_ratio"], "ks": q["ks"], "copy": q["copy_rate"],
            "fd_pca": frechet_distance(pca(S), fv["pca"]), "fd_clf": frechet_distance(clf.features(S), fv["clf"]),
            "conf": float(clf.probabilities(S).max(1).values.mean())}

for member in which:
    w = torch.zeros(len(BLEND_SIGMAS), len(BLEND_MEMBERS), dtype=torch.float64)
    w[:, BLEND_MEMBERS.index(member)] = 1
    t0 = time.perf_counter()
    den = CoarseToFineDenoiser(pool, blend={"weights": w})
    S = boneless.sample(den, "rectified-flow", n=n, seed=1, sampler=sampler, steps=12).samples
    torch.save(S, f"/tmp/c2f_val2_{member}_{sampler}.pt")
    print(member, sampler, f"{time.perf_counter() - t0:.0f} s", {k: round(v, 3) for k, v in quality(S).items()}, flush=True)
