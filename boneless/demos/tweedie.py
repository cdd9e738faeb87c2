"""Tweedie's formula checked to machine precision: the exact denoiser against the autograd score of the
exact density (tweedie.png)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..data import load_dataset
from ..denoisers import EmpiricalDenoiser, exact_reference, score_from_x0
from ..plots import pyplot
from ._common import _generator, _log_density64, _save_png, _say, log_density


def demo_tweedie(out: Path, *, seed: int = 0, quick: bool = False) -> dict:
    """Tweedie's formula (Efron 2011), E[x | y] = y + sigma^2 grad log p(y): the MMSE denoiser against the score of
    the exact density."""
    out = Path(out)
    X = load_dataset("gmm", n=100 if quick else 200, seed=seed)
    sigma = 0.3
    gen = _generator(seed)
    n = 40 if quick else 80
    pick = torch.randint(0, len(X), (n,), generator=gen)
    y = X[pick].double() + sigma * torch.randn(n, 2, generator=gen, dtype=torch.float64)  # y = x + sigma e
    den = EmpiricalDenoiser(X)
    x0_hat = den(y.float(), 1.0, sigma).double()  # the library's exact MMSE denoiser (float32 arithmetic)
    x0_ref = exact_reference(X, y, 1.0, sigma)  # float64 reference
    y_req = y.clone().requires_grad_(True)
    grad = torch.autograd.grad(_log_density64(X, y_req, 1.0, sigma).sum(), y_req)[0]  # grad log p(y), autograd
    tweedie = y + sigma ** 2 * grad
    res32 = float((x0_hat - tweedie).abs().max())
    res64 = float((x0_ref - tweedie).abs().max())
    score = score_from_x0(y, x0_hat, 1.0, sigma)  # the library's conversion (alpha x0_hat - y) / sigma^2
    score_err = float(((score - grad).norm(dim=1) / grad.norm(dim=1).clamp(min=1e-12)).max())

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8.5, 8))
    g = torch.linspace(-1.6, 1.6, 160, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(g, g, indexing="xy"), -1).reshape(-1, 2)
    logp = log_density(den, grid.float(), 1.0, sigma).reshape(len(g), len(g))
    cs = ax.contourf(g.numpy(), g.numpy(), logp.clamp(min=float(logp.max()) - 12).numpy(), levels=14, cmap="Greys")
    fig.colorbar(cs, ax=ax, label="log p(y)", shrink=0.8)
    ax.scatter(X[:, 0], X[:, 1], s=6, c="tab:green", label="training data x_i")
    ax.scatter(y[:, 0], y[:, 1], s=14, c="tab:blue", label="noisy y = x + sigma e")
    d = (sigma ** 2 * score).numpy()
    ax.quiver(y[:, 0].numpy(), y[:, 1].numpy(), d[:, 0], d[:, 1], angles="xy", scale_units="xy", scale=1,
              width=0.003, color="tab:purple", label="sigma^2 grad log p(y)")
    ax.scatter(x0_hat[:, 0], x0_hat[:, 1], s=16, c="tab:red", marker="x", label="E[x | y] (exact denoiser)")
    ax.set_aspect("equal")
    ax.set_xlim(-1.6, 1.6)
    ax.set_ylim(-1.6, 1.6)
    ax.set_xlabel("x[0]")
    ax.set_ylabel("x[1]")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(f"Tweedie: E[x | y] = y + sigma^2 grad log p(y), sigma = {sigma}\n"
                 f"max residual {res32:.1e} (float32 denoiser), {res64:.1e} (float64 reference)")
    _save_png(fig, out / "tweedie.png")
    result = {"sigma": sigma, "points": n, "max_residual_float32": res32, "max_residual_float64": res64,
              "max_rel_score_error": score_err, "files": [str(out / "tweedie.png")]}
    _say("tweedie", [f"{n} noisy points, sigma = {sigma}, {len(X)} training points; grad log p by autograd of the "
                     "float64 mixture density",
                     f"max |E[x|y] - (y + sigma^2 grad log p(y))| = {res32:.2e} (library, float32; eps32 = 1.2e-7)",
                     f"                                           = {res64:.2e} (float64 reference; eps64 = 2.2e-16)",
                     f"max relative error of score_from_x0 against autograd: {score_err:.2e}",
                     f"wrote {out / 'tweedie.png'}"])
    return result
