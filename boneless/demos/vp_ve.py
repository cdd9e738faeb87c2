"""VP and VE are one process: a 2-D dataset noised under both at equal SNR (vp-ve.gif), the log-SNR of every
schedule and the rescaling x_VE = x_VP / alpha between them (snr.png)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ..data import load_dataset
from ..denoisers import EmpiricalDenoiser
from ..plots import pyplot
from ..schedules import get_schedule
from ._common import GIF_FRAMES, QUICK_FRAMES, _animate, _generator, _save_png, _say


def demo_vp_ve(out: Path, *, seed: int = 0, quick: bool = False) -> dict:
    """Two views of one noising process: a 2-D dataset noised under VP (cosine) and VE side by side, at equal
    SNR in every frame, where x_VE = x_VP / alpha with the same noise."""
    out = Path(out)
    X, labels = load_dataset("moons", n=200 if quick else 400, seed=seed, with_labels=True)
    vp, ve = get_schedule("vp-cosine"), get_schedule("ve")
    frames = QUICK_FRAMES if quick else GIF_FRAMES
    # noise-to-signal ratios lam = sigma / alpha, log-spaced inside VE's range [sigma_min, sigma_max]
    lams = torch.logspace(math.log10(0.01), math.log10(50.0), frames, dtype=torch.float64)
    eps = torch.randn(X.shape, generator=_generator(seed), dtype=torch.float64)
    x0 = X.double()
    den = EmpiricalDenoiser(X)
    rows, err_lam, err_x, err_den = [], 0.0, 0.0, 0.0
    for i, lam in enumerate(lams.tolist()):
        c_vp, c_ve = vp(vp.t_of_lam(lam)), ve(ve.t_of_lam(lam))
        x_vp = c_vp.alpha * x0 + c_vp.sigma * eps  # x_t = alpha x0 + sigma eps, alpha^2 + sigma^2 = 1
        x_ve = c_ve.alpha * x0 + c_ve.sigma * eps  # alpha = 1, sigma unbounded
        err_lam = max(err_lam, abs(c_vp.sigma / c_vp.alpha - c_ve.sigma) / lam)
        err_x = max(err_x, float((x_vp / c_vp.alpha - x_ve).abs().max()))
        if i % max(1, frames // 6) == 0 or i == frames - 1:  # the same model after rescaling x / alpha
            d_vp = den(x_vp.float(), c_vp.alpha, c_vp.sigma)
            d_ve = den((x_vp / c_vp.alpha).float(), 1.0, c_vp.sigma / c_vp.alpha)
            err_den = max(err_den, float((d_vp - d_ve).abs().max()))
        rows.append((lam, vp.t_of_lam(lam), c_vp.alpha, c_vp.sigma, ve.t_of_lam(lam), c_ve.sigma, x_vp, x_ve))

    plt = pyplot()
    fig, (ax_vp, ax_ve) = plt.subplots(1, 2, figsize=(10, 5), dpi=72)
    colours = np.where(labels.numpy() == 0, "tab:blue", "tab:orange")
    for ax in (ax_vp, ax_ve):
        ax.scatter(X[:, 0], X[:, 1], s=4, c="0.8", label="data (t = 0)")
    sc_vp = ax_vp.scatter(X[:, 0], X[:, 1], s=6, c=colours)
    sc_ve = ax_ve.scatter(X[:, 0], X[:, 1], s=6, c=colours)
    for ax in (ax_vp, ax_ve):
        ax.set_aspect("equal")
        ax.set_xlabel("x[0]")
        ax.set_ylabel("x[1]")
    ax_vp.set_xlim(-3.2, 3.2)
    ax_vp.set_ylim(-3.2, 3.2)
    fig.subplots_adjust(left=0.08, right=0.97, top=0.82, bottom=0.1, wspace=0.3)
    sup = fig.suptitle("")

    def draw(i):
        lam, t_vp, a, s, t_ve, s_ve, x_vp, x_ve = rows[i]
        sc_vp.set_offsets(x_vp.numpy())
        sc_ve.set_offsets(x_ve.numpy())
        lim = 1.3 + 3.2 * s_ve
        ax_ve.set_xlim(-lim, lim)
        ax_ve.set_ylim(-lim, lim)
        ax_vp.set_title(f"VP (cosine), t = {t_vp:.3f}\nalpha = {a:.3f}, sigma = {s:.3f}  (fixed axes)")
        ax_ve.set_title(f"VE, t = {t_ve:.3f}\nalpha = 1, sigma = {s_ve:.3g}  (axes grow with sigma)")
        sup.set_text(f"equal SNR: VP's sigma/alpha = VE's sigma = {lam:.3g}   (log-SNR {-2 * math.log(lam):+.2f})")

    written = _animate(fig, draw, frames, out / "vp-ve.gif", fps=10)

    # snr.png: log-SNR over t, and the rescaling that maps VP onto VE
    t = torch.linspace(0.001, 0.999, 400, dtype=torch.float64)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    for name in ("vp-cosine", "vp-linear", "rectified-flow", "ve"):
        c = get_schedule(name)(t)
        ax1.plot(t.numpy(), (2 * torch.log(c.alpha / c.sigma)).numpy(), label=name)
    ax1.set_xlabel("t (0 = data, 1 = noise)")
    ax1.set_ylabel("log-SNR = log(alpha^2 / sigma^2)")
    ax1.set_title("every schedule sweeps the same signal-to-noise ratios")
    ax1.legend()
    ax1.grid(alpha=0.3)
    c = vp(t)
    ax2.plot(t.numpy(), c.sigma.numpy(), label="VP sigma (stays in [0, 1])")
    ax2.plot(t.numpy(), c.alpha.numpy(), label="VP alpha", ls="--")
    ax2.plot(t.numpy(), (c.sigma / c.alpha).numpy(), label="VP sigma / alpha (unbounded)", lw=2.5)
    t_marks = torch.linspace(0.05, 0.99, 14, dtype=torch.float64)
    lam_marks = (vp(t_marks).sigma / vp(t_marks).alpha).tolist()
    ve_sigma = [float(ve(ve.t_of_lam(lam)).sigma) for lam in lam_marks]
    ax2.plot(t_marks.numpy(), ve_sigma, "o", ms=7, mfc="none", mec="k", label="VE sigma at the same SNR")
    ax2.set_yscale("log")
    ax2.set_xlabel("VP time t")
    ax2.set_ylabel("value (log scale)")
    ax2.set_title("sigma in [0, 1], or growing without bound? VP's sigma/alpha\nis VE's sigma: x_VE = x_VP / alpha, "
                  "the same model rescaled")
    ax2.legend(loc="upper left", fontsize=9)
    ax2.grid(alpha=0.3, which="both")
    fig.tight_layout()
    _save_png(fig, out / "snr.png")

    result = {"frames": frames, "lam_range": [float(lams[0]), float(lams[-1])],
              "max_rel_error_sigma_ratio": err_lam, "max_rescaling_error": err_x,
              "max_denoiser_rescaling_error": err_den,
              "files": [str(p) for p in written] + [str(out / "snr.png")]}
    _say("vp-ve", [
        f"{frames} frames at equal SNR, sigma/alpha from {lams[0]:.3g} to {lams[-1]:.3g}",
        f"max |VP sigma/alpha - VE sigma| / (sigma/alpha) = {err_lam:.2e}",
        f"max |x_VP / alpha - x_VE| over all points and frames = {err_x:.2e}  (same noise eps)",
        f"max |E[x0 | x_VP] - E[x0 | x_VP / alpha] under VE| = {err_den:.2e}  (one model after rescaling)",
        f"wrote {', '.join(result['files'])}"])
    return result
