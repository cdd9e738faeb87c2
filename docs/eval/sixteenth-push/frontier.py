"""Every change to `parzen-local` scored on the dev targets, seeds 1 and 11: dev FD against the distance from the
pool (docs/EVAL.md, "Sixteenth push"). The figures are those of the fourteenth to sixteenth pushes' tables in
docs/EVAL.md (each measured by ../fourteenth-push/dev.py on 500 samples); this script only draws them.

    python frontier.py      # writes frontier.png
"""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# setting: (seed 1, seed 11), each (nearest ÷ dev, dev FD), or None where that seed was not run
POINTS = {
    "shipped": ((1.000, 4.92), (0.974, 4.78)),
    "middle=patch-composite": ((1.005, 4.91), (0.976, 4.75)),
    "parzen scale 1.25": ((0.936, 4.78), None),
    "parzen scale 2.0": ((1.110, 5.67), None),
    "parzen K 16": ((0.946, 5.02), None),
    "parzen K 64": ((1.027, 5.08), None),
    "12 even steps to t = 0.6": ((0.991, 4.93), (0.971, 4.86)),
    "local-gaussian side 7": ((0.917, 4.64), (0.898, 4.75)),
    "side 7, shift 1": ((0.919, 4.79), (0.899, 4.68)),
    "scale 1.75, side 7": ((0.973, 4.74), (0.958, 4.72)),
    "scale 2.0, side 7": ((1.027, 5.03), (1.017, 5.03)),
    "8 Karras steps below t = 0.376": ((0.961, 4.76), (0.937, 4.78)),
    "switch 0.65": ((1.047, 5.83), None),
    "switch 0.65, patch-composite": ((1.003, 4.86), None),
    "patch-composite's x0_hat at 0.05 after": ((0.998, 4.86), (0.971, 4.74)),
    "patch-composite's x0_hat at 0.1 after": ((0.977, 4.76), (0.952, 4.68)),
    "centres shrunk, C 0.25": ((1.011, 4.80), None),
    "centres shrunk, C 0.5": ((1.002, 4.81), (0.980, 4.85)),
    "centres shrunk, C 0.75": (None, (0.991, 5.11)),
    "rank 8": ((0.917, 4.95), (0.905, 4.74)),
    "rank 8, scale 2.0": ((1.010, 5.04), (0.978, 4.96)),
    "directions blurred, sd 0.7": ((0.909, 5.28), None),
    "directions blurred, sd 1.2": ((0.853, 5.37), None),
    "variance capped, q 0.75": ((0.983, 4.94), None),
    "capped at q 0.5, scale 1.75": ((1.016, 5.09), None),
    "middle=blend": ((0.997, 4.81), (0.971, 4.66)),
    "Parzen clamped": ((0.962, 4.69), (0.932, 4.93)),
    "middle=blend, Parzen clamped": ((0.951, 4.57), (0.931, 4.60)),
    "the same, scale 1.75": ((0.996, 4.91), (0.997, 4.89)),
}
NEW = ("Parzen clamped", "middle=blend, Parzen clamped", "the same, scale 1.75")
LABELLED = NEW + ("shipped", "middle=blend", "local-gaussian side 7", "centres shrunk, C 0.25", "rank 8")
REAL = (4.13, 0.38)  # fifteen sets of 500 test images on the dev targets: mean, sd ("Fifteenth push")
NEAREST = (0.975, 1.012)  # the range of the eval's five real sets' nearest ÷ dev ("Fourteenth push")

fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), sharey=True)
for k, ax in enumerate(axes):
    ax.add_patch(plt.Rectangle((NEAREST[0], REAL[0] - REAL[1]), NEAREST[1] - NEAREST[0], 2 * REAL[1],
                               color="tab:green", alpha=0.25, label="sets of 500 real test images (FD mean ± sd)"))
    for name, pts in POINTS.items():
        if pts[k] is None:
            continue
        x, y = pts[k]
        style = (dict(marker="*", s=220, color="black", zorder=3) if name == "shipped" else
                 dict(marker="o", s=45, color="tab:red", zorder=3) if name in NEW else
                 dict(marker="o", s=30, color="tab:blue", alpha=0.7))
        ax.scatter(x, y, **style)
        if name in LABELLED:
            ax.annotate(name, (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.axvline(1.0, color="grey", lw=0.8, ls=":")
    ax.set_title(f"seed {(1, 11)[k]}: 500 samples each")
    ax.set_xlabel("median nearest-pool distance ÷ that of real test images (1: as novel)")
axes[0].set_ylabel("FD in classifier features, mean over the 5 dev targets")
axes[0].legend(loc="upper left", fontsize=8)
fig.suptitle(f"{len(POINTS) - 1} changes to parzen-local on the dev targets (blue; red: sixteenth push; star: "
             "shipped): none near the real sets (green); the lowest FDs lie nearer the pool", fontsize=10)
fig.tight_layout()
fig.savefig("frontier.png", dpi=110)
print("wrote frontier.png")
