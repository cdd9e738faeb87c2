"""Posterior collapse during sampling: the weights of the top training examples and the effective number of
examples over one run of the exact flow (posterior.png)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..data import load_dataset
from ..denoisers import EmpiricalDenoiser
from ..metrics import nearest
from ..plots import pyplot
from ..samplers import sample
from ._common import _save_png, _say


def demo_posterior(out: Path, *, seed: int = 0, quick: bool = False) -> dict:
    """Posterior collapse: during one sampling run, the weights of the top training examples over time and the effective
    number of contributing examples, showing where the posterior collapses onto one example."""
    out = Path(out)
    X = load_dataset("digits")
    den = EmpiricalDenoiser(X)
    steps = 40 if quick else 100
    n = 4 if quick else 8
    res = sample(den, "rectified-flow", n=n, steps=steps, sampler="euler", seed=seed, top_k=5,
                 record_every=max(1, steps // 8))
    tr = res.trajectory.stacked()
    t = tr["times"].numpy()
    top_i, top_w, n_eff = tr["indices"][:, :, 0], tr["weights"][:, :, 0], tr["n_eff"]  # [S, n]
    final = top_i[-1]
    # collapse: first step after which the top example is the final one with weight > 1/2 until the end
    settled = (top_i == final[None]) & (top_w > 0.5)
    unsettled = (~settled).flip(0).double().argmax(0)  # steps from the end to the last unsettled step
    all_settled = settled.all(0)
    collapse_step = torch.where(all_settled, torch.zeros_like(unsettled), len(t) - unsettled)
    t_collapse = [float(t[min(int(s), len(t) - 1)]) for s in collapse_step]
    dist, near = nearest(res.samples, X, k=1)

    plt = pyplot()
    fig = plt.figure(figsize=(15, 8.2))
    gs = fig.add_gridspec(2, 2, height_ratios=[1, 1.25])
    ax_img = fig.add_subplot(gs[0, :])
    ax_w = fig.add_subplot(gs[1, 0])
    ax_n = fig.add_subplot(gs[1, 1])
    s0 = 0
    xs, x0s = tr["x"][:, s0], tr["x0_hat"][:, s0]  # [R, 1, 8, 8]
    cols = [torch.cat([a, b], -2) for a, b in zip(xs.clamp(-1, 1), x0s)]
    cols.append(torch.cat([res.samples[s0], X[final[s0]]], -2))
    strip = torch.cat([F.pad(c, (1, 1, 1, 1), value=1.0) for c in cols], -1)[0]
    ax_img.imshow(strip.numpy(), cmap="gray", vmin=-1, vmax=1)
    w_img = cols[0].shape[-1] + 2
    rec_t = [float(t[i]) for i in tr["steps"].tolist()]
    ax_img.set_xticks([w_img * (j + 0.5) for j in range(len(cols))])
    ax_img.set_xticklabels([f"t = {v:.2f}" for v in rec_t] + ["sample /\n#" + str(int(final[s0]))])
    ax_img.set_yticks([cols[0].shape[-2] / 4, 3 * cols[0].shape[-2] / 4])
    ax_img.set_yticklabels(["x_t", "E[x0 | x_t]"])
    ax_img.set_title(f"sample {s0}: iterates x_t (top) and the exact denoiser's E[x0 | x_t] (bottom); "
                     f"last column: the sample and training example #{int(final[s0])}")
    ids = torch.unique(tr["indices"][:, s0])
    for idx in ids[ids >= 0].tolist():
        w = torch.where(tr["indices"][:, s0] == idx, tr["weights"][:, s0], torch.zeros(())).sum(1)
        if float(w.max()) < 0.05:
            continue
        is_final = idx == int(final[s0])
        ax_w.plot(t, w.numpy(), lw=2.5 if is_final else 1, label=f"#{idx}" + (" (final)" if is_final else ""))
    ax_w.axvline(t_collapse[s0], c="k", ls=":", label=f"collapse, t = {t_collapse[s0]:.2f}")
    ax_w.set_xlim(1, 0)
    ax_w.set_ylim(-0.02, 1.02)
    ax_w.set_xlabel("t (1 = noise, 0 = data)")
    ax_w.set_ylabel("posterior weight p(x_i | x_t)")
    ax_w.set_title(f"sample {s0}: weights of the top training examples")
    ax_w.legend(fontsize=8, loc="upper left")
    for s in range(n):
        ax_n.plot(t, n_eff[:, s].numpy(), lw=1.2, label=f"sample {s} -> #{int(final[s])}")
    ax_n.set_yscale("log")
    ax_n.set_xlim(1, 0)
    ax_n.set_xlabel("t (1 = noise, 0 = data)")
    ax_n.set_ylabel("effective number of examples 1 / sum p_i^2")
    ax_n.set_title(f"posterior collapse over {len(X)} digits: n_eff -> 1")
    ax_n.legend(fontsize=8, ncol=2)
    ax_n.grid(alpha=0.3, which="both")
    fig.tight_layout()
    _save_png(fig, out / "posterior.png")
    result = {"n": n, "steps": steps, "n_examples": len(X), "final_index": final.tolist(),
              "t_collapse": t_collapse, "final_n_eff": n_eff[-1].tolist(), "final_top_weight": top_w[-1].tolist(),
              "n_eff_first": n_eff[0].tolist(), "nearest_index": near[:, 0].tolist(),
              "distance_to_final": float(dist.max()), "files": [str(out / "posterior.png")]}
    lines = [f"sample {s}: lands on #{int(final[s])}, collapses at t = {t_collapse[s]:.3f}; n_eff "
             f"{float(n_eff[0, s]):.1f} at t = {t[0]:.2f} -> {float(n_eff[-1, s]):.4f} at t = {t[-1]:.2f}, "
             f"top weight {float(top_w[-1, s]):.4f}" for s in range(n)]
    _say("posterior", [f"{n} samples, {steps} Euler steps of the exact flow over {len(X)} digits"] + lines + [
        f"max distance from a sample to its nearest training example: {float(dist.max()):.2e}",
        f"wrote {out / 'posterior.png'}"])
    return result
