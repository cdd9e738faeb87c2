"""Sample sets scored against dev targets from the test split that `boneless eval` never reads: docs/EVAL.md,
"Fourteenth push".

    python dev.py real                       # the eval's real sets (test 500-2999) and sets of training images
    python dev.py SPEC FILE.npy [FILE ...]   # sample sets [n, 1, 28, 28]; SPEC: "none", or "NAME:SIGMA;..." to
                                             # score NAME's x0_hat of each sample read as a query at (1, SIGMA)

The eval scores samples against test images 0-499 and draws its real sets from test images 500-2999. The validation
images of the earlier pushes (training images 10000-10499) are images the classifier was trained on. Here each set
is scored against five other sets of 500 test images, 5000-7499, which neither the classifier nor the eval has
seen: FD in classifier features against each and their mean, and the nearest-training distances over those of test
images 5000-5499 (pool: training images 0-9999, as the eval's). The "vs test 0-499" column is the eval's own figure.
"""
import sys
import time

import numpy as np
import torch

from boneless import make_denoiser
from boneless.classifier import fashion_classifier
from boneless.data import load_dataset
from boneless.metrics import frechet_distance, nearest_distance_stats

train = load_dataset("fashion-mnist")
pool = train[:10000]
T = load_dataset("fashion-mnist", split="test")
clf = fashion_classifier(progress=False)
target = clf.features(T[:500])
devs = [clf.features(T[5000 + 500 * i:5500 + 500 * i]) for i in range(5)]


def score(tag: str, S: torch.Tensor, t0: float) -> None:
    f = clf.features(S)
    fds = [frechet_distance(f, d) for d in devs]
    q = nearest_distance_stats(S, pool, heldout=T[5000:5500])
    each = " / ".join(f"{x:.2f}" for x in fds)
    print(f"| {tag} | {frechet_distance(f, target):.2f} | **{np.mean(fds):.2f}** ({each}) | {q['median_ratio']:.3f} | "
          f"{q['ks']:.3f} | {float(clf.probabilities(S).max(1).values.mean()):.3f} | {time.perf_counter() - t0:.0f} |",
          flush=True)


print("| set of 500 | FD vs test 0-499 | FD vs dev targets: mean (each) | nearest ÷ dev | KS | confidence | seconds |")
print("|---|---:|---:|---:|---:|---:|---:|")
if sys.argv[1] == "real":
    for i in range(5):
        score(f"test {500 + 500 * i}-{999 + 500 * i} (the eval's real set {i + 1})",
              T[500 + 500 * i:1000 + 500 * i], time.perf_counter())
    for a in (0, 2000, 5000, 10000, 30000, 40000, 50000):
        where = "in the pool" if a < 10000 else "outside the pool"
        score(f"training {a}-{a + 499} ({where})", train[a:a + 500], time.perf_counter())
    sys.exit()
for path in sys.argv[2:]:
    S0 = torch.from_numpy(np.load(path)).float()
    for spec in sys.argv[1].split(";"):
        t0 = time.perf_counter()
        name, _, sigma = spec.partition(":")
        if name == "none":
            S = S0.clamp(-1, 1)  # as the eval scores samples
        else:
            n = len(S0)
            S = make_denoiser(name, pool)(S0.double(), torch.ones(n, dtype=torch.float64),
                                          torch.full((n,), float(sigma), dtype=torch.float64)).float().clamp(-1, 1)
        score(f"{path} {spec}", S, t0)
