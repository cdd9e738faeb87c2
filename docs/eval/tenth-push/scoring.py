"""The validation scoring of docs/eval/tenth-push/low.py and docs/eval/eleventh-push/grid.py (docs/EVAL.md, "Tenth
push" and "Eleventh push"): the pool (training images 0-9999), the validation images V (10000-10499) every set is
scored against, and the real images R (10500-29999) that the "matched" column draws from. Never test images.
"""
import time

import numpy as np
import torch

from boneless.classifier import fashion_classifier
from boneless.data import load_dataset
from boneless.metrics import frechet_distance, nearest_distance_stats

X = load_dataset("fashion-mnist", limit=30000)
pool, V, R = X[:10000], X[10000:10500], X[10500:30000]
shape = tuple(pool.shape[1:])
clf = fashion_classifier(progress=False)
fV, fR = clf.features(V), clf.features(R)
cR = clf.probabilities(R).argmax(1)


def matched(counts, draws=5):
    """Mean FD of real images (from R) drawn with these class counts."""
    g, fd = torch.Generator().manual_seed(0), []
    for _ in range(draws):
        idx = torch.cat([torch.nonzero(cR == c)[:, 0][torch.randperm(int((cR == c).sum()), generator=g)[:int(k)]]
                         for c, k in enumerate(counts)])
        fd.append(frechet_distance(fR[idx], fV))
    return float(np.mean(fd))


def report(tag, S, t0):
    """One row: FD in classifier features against V, "matched", "gap" (their difference), nearest distances over
    V's (ratio, KS, copy rate), mean confidence, haze (share of pixels in (-0.999, -0.9]), seconds since t0."""
    q = nearest_distance_stats(S, pool, heldout=V)
    prob = clf.probabilities(S)
    fd, m = frechet_distance(clf.features(S), fV), matched(torch.bincount(prob.argmax(1), minlength=10))
    haze = float(((S > -0.999) & (S <= -0.9)).float().mean())
    print(f"{tag:24s} fd {fd:.2f} matched {m:.2f} gap {fd - m:.2f} ratio {q['median_ratio']:.3f} ks {q['ks']:.3f} "
          f"copy {q['copy_rate']:.3f} conf {float(prob.max(1).values.mean()):.3f} haze {haze:.3f} "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
