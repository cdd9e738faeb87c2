"""FD in classifier features against distance from the pool, for sets of validation samples: docs/EVAL.md,
"Twelfth push". Exploration only, on validation images (training images 10000-10499), never test images.

    python frontier.py OUT.png "LABEL sSEED=S.npy" ...   # sample files of grid.py / middle.py (500 samples each)

Each set is scored as in docs/eval/tenth-push/scoring.py; five disjoint sets of 500 real images (training images
10500-12999) are scored the same way, and give the band a generator's samples should fall in. Prints one row per
set and draws FD classifier (y) against the median nearest distance over the validation images' (x).
"""
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tenth-push"))
from scoring import R, fV, V, clf, pool  # noqa: E402

from boneless.metrics import frechet_distance, nearest_distance_stats  # noqa: E402


def score(S):
    q = nearest_distance_stats(S, pool, heldout=V)
    return frechet_distance(clf.features(S), fV), q["median_ratio"]


out, sets = sys.argv[1], [a.split("=", 1) for a in sys.argv[2:]]
real = [score(R[500 * i:500 * (i + 1)]) for i in range(5)]
for i, (fd, ratio) in enumerate(real):
    print(f"real {i + 1}: fd {fd:.2f} ratio {ratio:.3f}")
rows = []
for label, path in sets:
    fd, ratio = score(torch.from_numpy(np.load(path)))
    rows.append((label, fd, ratio))
    print(f"{label}: fd {fd:.2f} ratio {ratio:.3f}", flush=True)

import matplotlib  # noqa: E402
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

fig, ax = plt.subplots(figsize=(7, 4.5))
rf, rr = np.array(real).T
ax.axvspan(rr.mean() - rr.std(ddof=1), rr.mean() + rr.std(ddof=1), color="tab:green", alpha=0.12,
           label="real sets: nearest ratio, mean ± sd")
ax.axhspan(rf.mean() - rf.std(ddof=1), rf.mean() + rf.std(ddof=1), color="tab:green", alpha=0.12)
ax.scatter(rr, rf, color="tab:green", marker="s", label="real sets of 500")
colours = {}
for label, fd, ratio in rows:
    name, seed = label.rsplit(" ", 1)  # points of one seed share a colour (paired starts)
    new = seed not in colours
    c = colours.setdefault(seed, f"C{len(colours)}")
    ax.scatter(ratio, fd, color=c, label=f"samples from seed {seed[1:]}" if new else None)
    ax.annotate(name, (ratio, fd), textcoords="offset points", xytext=(4, 3), fontsize=6, color=c)
ax.set_xlabel("median nearest distance to the pool ÷ validation images'  (1: as far as unseen real images)")
ax.set_ylabel("FD in classifier features (against validation images)")
ax.set_title("parzen-local's settings on 500 validation samples: quality against distance from the pool", fontsize=9)
ax.legend(fontsize=7, loc="upper left")
fig.tight_layout()
fig.savefig(out, dpi=120)
print(f"wrote {out}")
