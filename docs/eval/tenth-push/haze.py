"""The haze, before and after the low switch: docs/EVAL.md, "Tenth push". Writes haze.png.

    python haze.py BEFORE_RUN AFTER_RUN     # two `boneless eval` folders with samples_parzen-local.npy, same seed

Top: the first 12 samples of each run (same starts), shown on a stretched scale (-1 to -0.6) that makes pixels just
above the background visible. Right: the share of pixels at or below each value near the background, for both runs
and the first 500 test images.
"""
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from boneless.data import load_dataset  # noqa: E402

runs = [np.load(Path(r) / "samples_parzen-local.npy").clip(-1, 1) for r in sys.argv[1:3]]
test = load_dataset("fashion-mnist", split="test", limit=500).numpy()
fig = plt.figure(figsize=(13, 3))
gs = fig.add_gridspec(2, 17, left=0.09, right=0.98, bottom=0.18, wspace=0.05)
for r, (S, name) in enumerate(zip(runs, ["local-gaussian\nto the end", "local (3 x 3)\nbelow 0.1"])):
    for i in range(12):
        ax = fig.add_subplot(gs[r, i])
        ax.imshow(S[i, 0], cmap="gray", vmin=-1, vmax=-0.6)
        ax.set_xticks([]), ax.set_yticks([])
        if i == 0:
            ax.set_ylabel(name, fontsize=8)
ax = fig.add_subplot(gs[:, 13:])
grid = np.linspace(-1, -0.5, 201)
for S, label in [(runs[0], "before"), (runs[1], "with the low switch"), (test, "test images")]:
    v = np.sort(S.ravel())
    ax.plot(grid, np.searchsorted(v, grid, side="right") / v.size, label=label)
ax.set_xlabel("pixel value"), ax.set_ylabel("share of pixels <= value", fontsize=8), ax.legend(fontsize=7)
fig.savefig("haze.png", dpi=110)
