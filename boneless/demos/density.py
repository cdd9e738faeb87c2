"""The exact noised density p_t of a small 2-D dataset at six times (density.png)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data import load_dataset
from ..denoisers import EmpiricalDenoiser
from ..plots import pyplot
from ..schedules import get_schedule
from ._common import _save_png, _say, log_density


def _count_modes(p: torch.Tensor, floor: float = 1e-3) -> int:
    """Strict local maxima of a 2-D grid of densities above ``floor`` times the largest."""
    padded = F.pad(p[None, None], (1, 1, 1, 1), value=-math.inf)
    neighbours = F.unfold(padded, 3).reshape(9, *p.shape)
    others = torch.cat([neighbours[:4], neighbours[5:]])
    return int(((p > others.max(0).values) & (p > floor * p.max())).sum())


def _ratio(alpha: float, sigma: float) -> str:
    return "inf" if alpha == 0 else f"{sigma / alpha:.4g}"


def demo_density(out: Path, *, seed: int = 0, quick: bool = False) -> dict:
    """The exact noised density p_t of a 2-D dataset: backwards in time a broad Gaussian narrows to one spike per
    example."""
    out = Path(out)
    N = 16
    X = load_dataset("moons", n=N, seed=seed)
    den = EmpiricalDenoiser(X)
    sched = get_schedule("rectified-flow")
    times = [1.0, 0.5, 0.25, 0.1, 0.05, 0.02]
    side = 121 if quick else 241  # odd: the origin is a grid point
    lim = 1.6
    g = torch.linspace(-lim, lim, side, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(g, g, indexing="xy"), -1).reshape(-1, 2)
    r = float(X.abs().max())
    plt = pyplot()
    from matplotlib.colors import PowerNorm

    fig, axes = plt.subplots(2, 3, figsize=(13, 8.6))
    rows = []
    for ax, t in zip(axes.flat, times):
        c = sched(t)
        p = log_density(den, grid.float(), c.alpha, c.sigma).exp().reshape(side, side)
        # Riemann sum over a box holding all the mass (half-width alpha r + 8 sigma) with spacing <= sigma / 1.5,
        # where the sum of a Gaussian is exact to ~exp(-2 pi^2 1.5^2) = 1e-19 (Poisson summation)
        h = c.alpha * r + 8 * c.sigma
        gi = torch.linspace(-h, h, max(41, math.ceil(3 * h / c.sigma) + 1), dtype=torch.float64)
        pts = torch.stack(torch.meshgrid(gi, gi, indexing="xy"), -1).reshape(-1, 2)
        cell = float(gi[1] - gi[0]) ** 2
        integral = float(log_density(den, pts.float(), c.alpha, c.sigma).exp().sum()) * cell
        modes = _count_modes(p)
        rows.append({"t": t, "alpha": c.alpha, "sigma": c.sigma, "integral": integral, "peak": float(p.max()),
                     "modes": modes})
        ax.imshow(p.numpy(), origin="lower", extent=(-lim, lim, -lim, lim), cmap="magma",
                  norm=PowerNorm(0.5, vmin=0, vmax=float(p.max())))
        ax.scatter(c.alpha * X[:, 0], c.alpha * X[:, 1], s=10, facecolors="none", edgecolors="c", lw=0.7)
        ax.set_title(f"t = {t:.2f}: alpha = {c.alpha:.2f}, sigma = {c.sigma:.2f}\n"
                     f"{modes} mode{'s' if modes != 1 else ''}, integral {integral:.4f}")
        ax.set_xlabel("x[0]")
        ax.set_ylabel("x[1]")
    fig.suptitle(f"exact noised density p_t(x) = mean_i N(x; alpha x_i, sigma^2 I) of {N} points (circles: alpha x_i)"
                 "\nbackwards in time a broad Gaussian narrows to a mixture of Diracs, one per example")
    fig.tight_layout()
    _save_png(fig, out / "density.png")
    lines = [f"t = {r_['t']:.2f}  sigma/alpha = {_ratio(r_['alpha'], r_['sigma']):>8s}  "
             f"integral = {r_['integral']:.6f}  peak = {r_['peak']:9.4g}  modes = {r_['modes']}" for r_ in rows]
    _say("density", [f"{N} training points, rectified-flow schedule"] + lines + [f"wrote {out / 'density.png'}"])
    return {"n_examples": N, "rows": rows, "files": [str(out / "density.png")]}
