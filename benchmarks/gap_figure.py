"""The figure and table of docs/GAP.md from several ``boneless gap`` runs (one per training-set size N).

    python benchmarks/gap_figure.py runs/gap-10 runs/gap-100 runs/gap-1000 runs/gap-10000 --out docs/gap

Reads each folder's ``gap.json`` and the model's ``reference.json`` (training time, parameters); writes
``OUT/gap.png`` (gap to the ideal denoiser on training and held-out images; held-out error against the ideal and
Wiener denoisers) and prints a Markdown table.
"""

import argparse
import json
import sys
from pathlib import Path

from boneless.plots import pyplot, save_figure


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="boneless gap output folders")
    p.add_argument("--out", required=True, help="folder for gap.png")
    args = p.parse_args(argv)
    results = sorted((json.loads((Path(r) / "gap.json").read_text()) for r in args.runs), key=lambda r: r["n_train"])
    plt = pyplot()
    fig, (left, right, ratio) = plt.subplots(1, 3, figsize=(17, 4.8))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for r, c in zip(results, colours):
        n, lams = r["n_train"], r["sigmas"]
        left.loglog(lams, r["train"]["gap"], "-", c=c, marker="o", ms=3, label=f"N = {n}, training images")
        left.loglog(lams, r["heldout"]["gap"], "--", c=c, marker="o", ms=3, label=f"N = {n}, held-out images")
        right.loglog(lams, r["heldout"]["model_mse"], "-", c=c, marker="o", ms=3, label=f"network, N = {n}")
        right.loglog(lams, r["heldout"]["ideal_mse"], ":", c=c, label=f"ideal, N = {n}")
        ratio.loglog(lams, [a / b for a, b in zip(r["train"]["model_mse"], r["heldout"]["model_mse"])], "-", c=c,
                       marker="o", ms=3, label=f"network, N = {n}")
    last = results[-1]
    right.loglog(last["sigmas"], last["heldout"]["wiener_mse"], "-.", c="k", lw=1,
                 label=f"Wiener, N = {last['n_train']}")
    ratio.axhline(1.0, c="k", lw=0.8)
    ratio.set_title("network's error on its training images / on held-out images")
    ratio.set_xlabel("noise level sigma / alpha (pixels in [-1, 1])")
    ratio.set_ylabel("MSE ratio (1: no memorisation; log scale)")
    ratio.grid(True, alpha=0.3)
    ratio.legend(fontsize=7)
    left.set_title("gap: mean (network x0_hat - ideal x0_hat)^2 per pixel")
    right.set_title("held-out images: error against the clean image")
    for ax in (left, right):
        ax.set_xlabel("noise level sigma / alpha (pixels in [-1, 1])")
        ax.set_ylabel("mean squared error per pixel")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, ncol=1)
    fig.suptitle(f"UNets trained on N Fashion-MNIST images ({'x'.join(map(str, last['shape'][1:]))}) against the "
                 "exact denoiser of the same N images")
    fig.tight_layout()
    save_figure(fig, Path(args.out) / "gap.png")

    print("| N | training s | gap, training (mean over levels) | gap, held-out | held-out MSE at sigma/alpha = "
          f"{last['sigmas'][5]:.3g}: network / ideal / Wiener | network MSE training / held-out, lowest over levels "
          "(at sigma/alpha) | copy rate | median nearest distance, samples / held-out |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        info = json.loads((Path(r["model"]) / "reference.json").read_text())
        k = 5
        h, s = r["heldout"], r["samples"]
        mean = lambda v: sum(v) / len(v)
        q, j = min((a / b, j) for j, (a, b) in enumerate(zip(r["train"]["model_mse"], h["model_mse"])))
        print(f"| {r['n_train']} | {info['seconds']:.0f} | {mean(r['train']['gap']):.4f} | {mean(h['gap']):.4f} | "
              f"{h['model_mse'][k]:.4f} / {h['ideal_mse'][k]:.4f} / {h['wiener_mse'][k]:.4f} | {q:.2f} "
              f"({r['sigmas'][j]:.2g}) | {s['copy_rate']:.2f} "
              f"| {s['nearest_median']:.2f} / {s['heldout_nearest_median']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
