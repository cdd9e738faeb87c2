"""coarse-to-fine on the pool augmented with horizontal flips (Niedoba et al.'s augmented source distribution),
scored against VALIDATION images (training 10000-10499), never test. Same scoring as validation_samplers.py; the nearest
distances are taken against the augmented rows (a flipped training image is a copy too)."""
import sys, time
import torch
import boneless
from boneless.data import load_dataset
from boneless.composites import CoarseToFineDenoiser
from boneless.classifier import fashion_classifier
from boneless.metrics import PCAFeatures, frechet_distance, nearest_distance_stats

n = int(sys.argv[1]); sampler = sys.argv[2]; steps = int(sys.argv[3])
X = load_dataset("fashion-mnist", limit=10500)
pool, V = X[:10000], X[10000:10500]
aug = torch.cat([pool, pool.flip(-1)])
clf = fashion_classifier(progress=False)
pca = PCAFeatures(pool)
fv = {"pca": pca(V), "clf": clf.features(V)}
t0 = time.perf_counter()
den = CoarseToFineDenoiser(aug)
print(f"build {time.perf_counter() - t0:.0f} s", flush=True)
S = boneless.sample(den, "rectified-flow", n=n, seed=1, sampler=sampler, steps=steps).samples
torch.save(S, f"/tmp/c2f_val4_{sampler}{steps}.pt")
q = nearest_distance_stats(S, aug, heldout=V)
r = {"ratio": q["median_ratio"], "ks": q["ks"], "copy": q["copy_rate"],
     "fd_pca": frechet_distance(pca(S), fv["pca"]), "fd_clf": frechet_distance(clf.features(S), fv["clf"]),
     "conf": float(clf.probabilities(S).max(1).values.mean())}
print("flip-augmented", sampler, steps, f"{time.perf_counter() - t0:.0f} s", {k: round(v, 3) for k, v in r.items()}, flush=True)
