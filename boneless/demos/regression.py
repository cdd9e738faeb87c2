"""Linear regression as denoising: gradient ascent on the fitted model's log-density (regression.png)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..denoisers import score_from_x0
from ..plots import pyplot
from ._common import _generator, _save_png, _say


def demo_regression(out: Path, *, seed: int = 0, quick: bool = False) -> dict:
    """Regression is denoising: Y = mX + b + e are noisy observations of the line; ascending the Gaussian
    log-density around the fitted model, y <- y + eta s^2 grad_y log N(y; m x + b, s^2), denoises them toward it."""
    out = Path(out)
    gen = _generator(seed)
    n = 40 if quick else 80
    m_true, b_true, noise = 0.8, -0.2, 0.15
    x = 2 * torch.rand(n, generator=gen, dtype=torch.float64) - 1
    y = m_true * x + b_true + noise * torch.randn(n, generator=gen, dtype=torch.float64)
    A = torch.stack([x, torch.ones_like(x)], 1)
    m, b = torch.linalg.lstsq(A, y[:, None]).solution[:, 0].tolist()  # least squares
    line = m * x + b  # the model's mean, which is its MMSE denoiser of y
    s = float((y - line).std())
    eta, steps = 0.2, 10
    path, ys = [y], y
    for _ in range(steps):  # gradient ascent on log N(y; line, s^2) with step eta s^2
        ys = ys + eta * s ** 2 * score_from_x0(ys[:, None], line[:, None], 1.0, s)[:, 0]
        path.append(ys)
    resid = [float((p - line).abs().mean()) for p in path]

    plt = pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 5.4), gridspec_kw={"width_ratios": [1.6, 1]})
    for i in range(n):
        ax.plot([x[i], x[i]], [y[i], ys[i]], c="0.7", lw=0.8, zorder=1)
    ax.scatter(x, y, s=16, c="tab:blue", label="observed Y = mX + b + e", zorder=2)
    ax.scatter(x, ys, s=16, c="tab:red", label=f"after {steps} ascent steps", zorder=3)
    xs = torch.tensor([-1.0, 1.0])
    ax.plot(xs, m * xs + b, c="k", lw=2, label=f"fit: m = {m:.3f}, b = {b:.3f}")
    ax.plot(xs, m_true * xs + b_true, c="k", ls="--", lw=1, label=f"truth: m = {m_true}, b = {b_true}")
    ax.set_xlabel("X")
    ax.set_ylabel("Y")
    ax.legend(loc="upper left", fontsize=9)
    ax.set_title(f"regression is denoising: step y += {eta} s^2 grad log N(y; mX + b, s^2), s = {s:.3f}")
    ax2.semilogy(range(steps + 1), resid, "o-", label="mean |y - (mX + b)|")
    ax2.semilogy(range(steps + 1), [resid[0] * (1 - eta) ** k for k in range(steps + 1)], "k--", lw=1,
                 label=f"(1 - eta)^k (eta = {eta})")
    ax2.set_xlabel("ascent step k")
    ax2.set_ylabel("mean residual (log scale)")
    ax2.set_title(f"residual {resid[0]:.4f} -> {resid[-1]:.4f}")
    ax2.legend()
    ax2.grid(alpha=0.3, which="both")
    fig.tight_layout()
    _save_png(fig, out / "regression.png")
    result = {"m": m, "b": b, "m_true": m_true, "b_true": b_true, "s": s, "eta": eta, "steps": steps,
              "residual_before": resid[0], "residual_after": resid[-1], "residuals": resid,
              "files": [str(out / "regression.png")]}
    sign = "+" if b_true >= 0 else "-"
    _say("regression", [f"{n} points Y = {m_true} X {sign} {abs(b_true)} + e, e ~ N(0, {noise}^2)",
                        f"least squares: m = {m:.4f}, b = {b:.4f}, residual std s = {s:.4f}",
                        f"mean |residual| before {resid[0]:.4f}, after {steps} ascent steps {resid[-1]:.4f} "
                        f"(ratio {resid[-1] / resid[0]:.4f} = (1 - {eta})^{steps} = {(1 - eta) ** steps:.4f})",
                        f"wrote {out / 'regression.png'}"])
    return result
