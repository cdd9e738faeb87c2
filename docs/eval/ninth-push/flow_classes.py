"""The classes of `parzen-local`'s estimate x0_hat along the flow: docs/EVAL.md, "Ninth push".
Exploration only, on validation images (training images 10000-10499), never test images.

    python flow_classes.py N    # N samples from seed 1, Heun on heun-split (docs/eval/eighth-push/parzen.py)

Prints the classifier's class counts of x0_hat at every denoiser call (clamped to [-1, 1] as the eval scores
samples), of the samples, of the pool and of the validation images (both scaled to N), and how the top class of
the last `parzen` estimate maps to the sample's.
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "eighth-push"))
import parzen as P  # noqa: E402  (heun_split, RF)

import boneless  # noqa: E402
from boneless.classifier import fashion_classifier  # noqa: E402
from boneless.composites import ParzenLocalDenoiser  # noqa: E402
from boneless.data import load_dataset  # noqa: E402

n = int(sys.argv[1])
X = load_dataset("fashion-mnist", limit=10500)
pool, V = X[:10000], X[10000:10500]
clf = fashion_classifier(progress=False)


def classes(images):
    return clf.probabilities(images.clamp(-1, 1)).argmax(1)


for name, Y in (("pool", pool), ("validation", V)):
    print(name, "scaled to N", (torch.bincount(classes(Y), minlength=10) * n / len(Y)).round().int().tolist())
den = ParzenLocalDenoiser(pool)
calls = []


def recording(x, alpha, sigma):
    out = den(x, alpha, sigma)
    calls.append((float(sigma) / float(alpha) if float(alpha) > 0 else float("inf"), out))
    return out


S = boneless.sample(recording, P.RF, n=n, seed=1, shape=tuple(pool.shape[1:]), **P.heun_split()).samples
for lam, x0 in calls:  # the member that answered (the low switch of the tenth push: `local` below it)
    member = "parzen" if lam >= den.switch else "local-gaussian" if lam >= den.low_switch else "local"
    print(f"sigma / alpha {lam:7.3f} {member:14s}", torch.bincount(classes(x0), minlength=10).tolist(), flush=True)
final = classes(S)
print("samples", torch.bincount(final, minlength=10).tolist())
handed = classes([x0 for lam, x0 in calls if lam >= den.switch][-1])
M = torch.zeros(10, 10, dtype=torch.int64)
for a, b in zip(handed.tolist(), final.tolist()):
    M[a, b] += 1
print(f"rows: class of the last parzen estimate; columns: the sample's ({int(M.trace())} of {n} keep it)\n{M}")
