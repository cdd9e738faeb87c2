"""Pictures and animations of the ideas behind diffusion, each computed by the library itself and printing
the numbers it shows: boneless demo NAME --out DIR, boneless demo all --out DIR, boneless demo --list.

Every demo is a function ``demo_x(out, *, seed=0, quick=False) -> dict`` that writes its pictures into ``out``
(through :func:`boneless.outputs.atomic_path`), prints its numbers and returns them; ``quick`` makes a smaller,
faster version (fewer frames and points) for tests. ``DEMOS`` maps a name to ``(function, one-line description)``.
Schedules, the exact denoiser, samplers and the score/velocity conversions all come from the library; the only
formulas written here are the ones being illustrated (a Gaussian blur, the linear Wiener denoiser, a float64
mixture density used as an independent check).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .cli import non_negative_int
from .data import load_dataset
from .denoisers import DENOISERS, EmpiricalDenoiser, exact_reference, per_sample, score_from_x0
from .metrics import copy_rate, nearest
from .outputs import atomic_path, check_output_dir
from .plots import pyplot
from .samplers import sample
from .schedules import get_schedule

GIF_FRAMES = 48  # frames of a full animation (>= 40)
QUICK_FRAMES = 12


# ---------------------------------------------------------------- shared helpers

def _say(name: str, lines: list[str]) -> None:
    for line in lines:
        print(f"{name}: {line}")


def _animate(fig, draw: Callable[[int], None], frames: int, path: Path, *, fps: int = 12) -> list[Path]:
    """Render ``draw(i)`` for ``i < frames`` into a GIF with matplotlib's Pillow writer, and an MP4 beside it
    when an ffmpeg is found (each frame is drawn once per file). Returns the paths written."""
    plt = pyplot()
    from matplotlib import animation

    writers = [(path, animation.PillowWriter(fps=fps))]
    if animation.writers.is_available("ffmpeg"):
        writers.append((path.with_suffix(".mp4"), animation.FFMpegWriter(fps=fps)))
    for target, writer in writers:
        with atomic_path(target) as tmp:
            with writer.saving(fig, tmp, dpi=fig.dpi):
                for i in range(frames):
                    draw(i)
                    writer.grab_frame()
    plt.close(fig)
    return [target for target, _ in writers]


def _save_png(fig, path: Path, *, max_bytes: int = 250_000) -> Path:
    """Save a figure as PNG atomically; a file over ``max_bytes`` (smooth heatmaps) is stored with a 256-colour
    palette instead, which keeps gallery files small."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    pyplot().close(fig)
    data = buf.getvalue()
    if len(data) > max_bytes:
        out = io.BytesIO()
        Image.open(io.BytesIO(data)).convert("RGB").quantize(256).save(out, format="PNG", optimize=True)
        data = out.getvalue()
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)
    return path


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def log_density(den: EmpiricalDenoiser, x: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """``log p_t(x)`` [B] (float64) of the noised empirical distribution ``sum_i w_i N(x; alpha x_i, sigma^2 I)``,
    from the bank's streaming log-sum-exp: the bank's logits are ``(|x|^2 - |x - alpha x_i|^2) / (2 sigma^2)``
    (plus ``log w_i``), so ``log p = m + log s - |x|^2 / (2 sigma^2) - D/2 log(2 pi sigma^2)`` (minus ``log N``
    without weights). ``x`` is [B, *shape]; needs ``sigma > 0``."""
    B = len(x)
    a, s = per_sample(alpha, B, "alpha"), per_sample(sigma, B, "sigma")
    if bool((s <= 0).any()):
        raise ValueError("the density needs sigma > 0")
    flat = x.reshape(B, -1)
    st = den.bank.reduce(flat, a, s, temperature=1.0)
    dev = st.m.device
    a, s = a.to(dev), s.to(dev)
    x_sq = (flat.to(dev, torch.float64) ** 2).sum(1)
    D = flat.shape[1]
    out = st.m + torch.log(st.s) - x_sq / (2 * s * s) - 0.5 * D * torch.log(2 * math.pi * s * s)
    if den.bank.log_w is None:
        out = out - math.log(len(den.bank))
    return out.cpu()


def _log_density64(X: torch.Tensor, y: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
    """The same density written directly in float64 (B x N x D memory; differentiable): the independent check."""
    X64 = X.reshape(len(X), -1).double()
    d2 = ((y[:, None, :] - alpha * X64[None]) ** 2).sum(-1)
    D = X64.shape[1]
    return torch.logsumexp(-d2 / (2 * sigma ** 2), 1) - math.log(len(X)) - 0.5 * D * math.log(2 * math.pi * sigma ** 2)


# ---------------------------------------------------------------- 1. VP vs VE

def demo_vp_ve(out: Path, *, seed: int = 0, quick: bool = False) -> dict:
    """SPEC §2.1: a 2-D dataset noised under VP (cosine) and VE side by side at equal SNR per frame."""
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


# ---------------------------------------------------------------- 2. density

def _count_modes(p: torch.Tensor, floor: float = 1e-3) -> int:
    """Strict local maxima of a 2-D grid of densities above ``floor`` times the largest."""
    padded = F.pad(p[None, None], (1, 1, 1, 1), value=-math.inf)
    neighbours = F.unfold(padded, 3).reshape(9, *p.shape)
    others = torch.cat([neighbours[:4], neighbours[5:]])
    return int(((p > others.max(0).values) & (p > floor * p.max())).sum())


def _ratio(alpha: float, sigma: float) -> str:
    return "inf" if alpha == 0 else f"{sigma / alpha:.4g}"


def demo_density(out: Path, *, seed: int = 0, quick: bool = False) -> dict:
    """SPEC §2.2: the exact noised density p_t of a 2-D dataset narrowing from a Gaussian to one spike per example."""
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
    lines = [f"t = {r_['t']:.2f}  sigma/alpha = {_ratio(r_['alpha'], r_['sigma']):>8s}  integral = {r_['integral']:.6f}  "
             f"peak = {r_['peak']:9.4g}  modes = {r_['modes']}" for r_ in rows]
    _say("density", [f"{N} training points, rectified-flow schedule"] + lines + [f"wrote {out / 'density.png'}"])
    return {"n_examples": N, "rows": rows, "files": [str(out / "density.png")]}


# ---------------------------------------------------------------- 3. flow

def demo_flow(out: Path, *, seed: int = 0, quick: bool = False) -> dict:
    """SPEC §2.3-2.4: particles flowing under the exact ground-truth flow from noise onto training points."""
    out = Path(out)
    X = load_dataset("moons", n=32 if quick else 40, seed=seed)
    den = EmpiricalDenoiser(X)
    steps = QUICK_FRAMES if quick else GIF_FRAMES
    n = 24 if quick else 48
    # log-SNR spacing: the grid reaches sigma/alpha = 0.002 before the last step, where the posterior has collapsed
    res = sample(den, "rectified-flow", n=n, steps=steps, sampler="euler", seed=seed + 1, spacing="logsnr",
                 record_every=1, top_k=0)
    path = torch.cat([torch.stack(res.trajectory.x), res.samples[None]])  # [steps + 1, n, 2]
    times = res.ts.tolist()
    dist, _ = nearest(res.samples, X, k=1)
    landed = copy_rate(res.samples, X)
    spacing = float(nearest(X, X, k=2)[0][:, 1].min())  # closest pair of training points

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.2, 7.2), dpi=90)
    ax.scatter(X[:, 0], X[:, 1], s=40, c="0.75", label=f"{len(X)} training points", zorder=1)
    trails = [ax.plot([], [], lw=0.8, alpha=0.6)[0] for _ in range(n)]
    dots = ax.scatter(path[0, :, 0], path[0, :, 1], s=14, c="tab:red", zorder=3, label=f"{n} particles")
    span = 2.2  # the data lie in [-1, 1]; a few particles start outside and fly in
    ax.set_xlim(-span, span)
    ax.set_ylim(-span, span)
    ax.set_aspect("equal")
    ax.set_xlabel("x[0]")
    ax.set_ylabel("x[1]")
    ax.legend(loc="upper right")
    title = ax.set_title("")

    def draw(i):
        for j, line in enumerate(trails):
            line.set_data(path[:i + 1, j, 0].numpy(), path[:i + 1, j, 1].numpy())
        dots.set_offsets(path[i].numpy())
        last = i == len(path) - 1
        title.set_text(f"exact ground-truth flow (rectified flow, Euler), t = {times[i]:.3f}\n"
                       + (f"{landed:.0%} landed on a training point" if last else "from noise to the data"))

    written = _animate(fig, draw, len(path), out / "flow.gif", fps=10)
    result = {"particles": n, "steps": steps, "frames": len(path), "landing_fraction": landed,
              "max_distance_to_nearest": float(dist.max()), "closest_training_pair": spacing,
              "files": [str(p) for p in written]}
    _say("flow", [f"{n} particles, {steps} Euler steps of the exact flow over {len(X)} training points",
                  f"fraction landing on a training point (nearest/second-nearest distance < 1/3): {landed:.3f}",
                  f"max distance from a particle to its nearest training point: {float(dist.max()):.2e} "
                  f"(closest two training points are {spacing:.3f} apart)",
                  f"wrote {', '.join(result['files'])}"])
    return result


# ---------------------------------------------------------------- 4. Tweedie

def demo_tweedie(out: Path, *, seed: int = 0, quick: bool = False) -> dict:
    """SPEC §2.5: E[x | y] = y + sigma^2 grad log p(y), the MMSE denoiser against the score of the exact density."""
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


# ---------------------------------------------------------------- 5. regression

def demo_regression(out: Path, *, seed: int = 0, quick: bool = False) -> dict:
    """SPEC §2.6: Y = mX + b + e are noisy observations of the line; ascending the Gaussian log-density around
    the fitted model, y <- y + eta s^2 grad_y log N(y; m x + b, s^2), denoises them toward it."""
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


# ---------------------------------------------------------------- 6. blur

def _gaussian_blur(x: torch.Tensor, width: float) -> torch.Tensor:
    """Spatial Gaussian blur of images [B, C, H, W] with standard deviation ``width`` pixels (reflect padding)."""
    r = min(max(1, math.ceil(3 * width)), min(x.shape[-2:]) - 1)
    k = torch.arange(-r, r + 1, dtype=x.dtype)
    g = torch.exp(-k * k / (2 * width * width))
    g = g / g.sum()
    C = x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), g.view(1, 1, 1, -1).expand(C, 1, 1, -1), groups=C)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), g.view(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C)


def _wiener(X: torch.Tensor):
    """The linear (Wiener) denoiser of the Gaussian with the data's mean ``mu`` and covariance ``Sigma``:
    ``x0_hat = mu + Sigma alpha (alpha^2 Sigma + sigma^2 I)^-1 (x - alpha mu)``, in Sigma's eigenbasis (float64)."""
    shape = tuple(X.shape[1:])
    P = X.reshape(len(X), -1).double()
    mu = P.mean(0)
    lam, U = torch.linalg.eigh((P - mu).T @ (P - mu) / len(P))
    lam = lam.clamp(min=0)

    def denoise(x, alpha, sigma):
        a, s = per_sample(alpha, len(x), "alpha")[:, None], per_sample(sigma, len(x), "sigma")[:, None]
        z = (x.reshape(len(x), -1).double() - a * mu) @ U
        return (mu + (z * a * lam / (a * a * lam + s * s)) @ U.T).to(x.dtype).reshape(x.shape)

    denoise.shape = shape
    return denoise


def _psnr(x_hat: torch.Tensor, x: torch.Tensor) -> float:
    """PSNR in dB for data in [-1, 1] (peak-to-peak 2); ``inf`` for an exact copy."""
    mse = float(((x_hat.double() - x.double()) ** 2).mean())
    return 10 * math.log10(4.0 / mse) if mse > 0 else math.inf


def _db(v: float) -> str:
    return "inf" if math.isinf(v) else f"{v:.1f}"


def demo_blur(out: Path, *, seed: int = 0, quick: bool = False) -> dict:
    """SPEC §2.7: one noisy face denoised by the best spatial blur, the Wiener denoiser and the exact denoiser,
    for a face in the dataset and a held-out one."""
    out = Path(out)
    faces = load_dataset("faces")
    held_n = 5
    pool, held = faces[:-held_n], faces[-held_n:]
    sigma = 0.5
    gen = _generator(seed)
    i_in = int(torch.randint(0, len(pool), (1,), generator=gen))
    i_out = int(torch.randint(0, held_n, (1,), generator=gen))
    exact = EmpiricalDenoiser(pool)
    # the library's linear denoiser once registered (issue 4), else the closed form written here
    linear = DENOISERS["gaussian"](pool) if "gaussian" in DENOISERS else _wiener(pool)
    widths = torch.linspace(0.3, 3.0, 10 if quick else 28).tolist()
    cases = []
    for label, x, index in (("in the dataset", pool[i_in], i_in), ("held out", held[i_out], len(pool) + i_out)):
        x = x[None]
        y = x + sigma * torch.randn(x.shape, generator=gen)  # alpha = 1
        blurs = [(_psnr(_gaussian_blur(y, w), x), w) for w in widths]
        best_psnr, best_w = max(blurs)
        post = exact.posterior(y, 1.0, sigma, k=1)
        x_exact, x_wiener = post.x0_hat, linear(y, 1.0, sigma)
        cases.append({"label": label, "index": index, "clean": x, "noisy": y, "blur": _gaussian_blur(y, best_w),
                      "wiener": x_wiener, "exact": x_exact, "width": best_w,
                      "psnr": {"noisy": _psnr(y, x), "blur": best_psnr, "wiener": _psnr(x_wiener, x),
                               "exact": _psnr(x_exact, x)},
                      "top_index": int(post.indices[0, 0]), "top_weight": float(post.weights[0, 0])})

    plt = pyplot()
    fig, axes = plt.subplots(2, 6, figsize=(15, 7), layout="constrained")
    for r, c in enumerate(cases):
        p = c["psnr"]
        panels = [(c["clean"], f"clean (face #{c['index']},\n{c['label']})"),
                  (c["noisy"], f"noisy, sigma = {sigma}\nPSNR {_db(p['noisy'])} dB"),
                  (c["blur"], f"best blur ({c['width']:.1f} px)\nPSNR {_db(p['blur'])} dB"),
                  (c["wiener"], f"linear (Wiener)\nPSNR {_db(p['wiener'])} dB"),
                  (c["exact"], f"exact MMSE (dataset)\nPSNR {_db(p['exact'])} dB"),
                  (pool[c["top_index"]][None], f"its top example #{c['top_index']}\nweight {c['top_weight']:.3f}")]
        for ax, (img, title) in zip(axes[r], panels):
            ax.imshow(img[0, 0].clamp(-1, 1).numpy(), cmap="gray", vmin=-1, vmax=1)
            ax.set_title(title, fontsize=10)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"averaging is denoising: blur averages pixels, Wiener averages along the data's principal axes, "
                 f"the exact denoiser averages the {len(pool)} training faces\n"
                 "exact is perfect on a face it has seen (row 1) and wrong on one it has not (row 2)")
    _save_png(fig, out / "blur.png")
    table = [f"PSNR (dB), sigma = {sigma}, {len(pool)} training faces, {held_n} held out",
             f"{'':22s} {'noisy':>6s} {'blur (width)':>13s} {'Wiener':>7s} {'exact':>7s}  exact's top example"]
    for c in cases:
        p = c["psnr"]
        name = f"{c['label']} (#{c['index']})"
        table.append(f"{name:22s} "
                     f"{_db(p['noisy']):>6s} {_db(p['blur']):>6s} ({c['width']:.1f} px) {_db(p['wiener']):>7s} "
                     f"{_db(p['exact']):>7s}  #{c['top_index']} (weight {c['top_weight']:.3f})")
    _say("blur", table + [f"wrote {out / 'blur.png'}"])
    result = {"sigma": sigma, "files": [str(out / "blur.png")]}
    for key, c in zip(("in_dataset", "held_out"), cases):
        result[key] = {"index": c["index"], "width": c["width"], "top_index": c["top_index"],
                       "top_weight": c["top_weight"], **{f"psnr_{k}": v for k, v in c["psnr"].items()}}
    return result


# ---------------------------------------------------------------- 7. mean face

def _roughness(images: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between neighbouring pixels, per image [B] (low = smooth, blurry)."""
    x = images.double()
    return ((x[..., 1:, :] - x[..., :-1, :]) ** 2).mean((-3, -2, -1)) + ((x[..., 1:] - x[..., :-1]) ** 2).mean((-3, -2, -1))


def demo_mean_face(out: Path, *, seed: int = 0, quick: bool = False) -> dict:
    """SPEC §2.8: the mean face beside typical faces and beside the exact denoiser's output at very high noise."""
    out = Path(out)
    X = load_dataset("faces")
    mean = X.double().mean(0, keepdim=True)  # float64
    den = EmpiricalDenoiser(X)
    sched = get_schedule("rectified-flow")
    gen = _generator(seed)
    x0 = X[int(torch.randint(0, len(X), (1,), generator=gen))][None]
    eps = torch.randn(x0.shape, generator=gen)
    times = [0.9, 0.99, 0.999, 1.0]
    outputs, diffs = [], []
    for t in times:
        c = sched(t)
        x_t = c.alpha * x0 + c.sigma * eps
        x0_hat = den(x_t, c.alpha, c.sigma)
        outputs.append(x0_hat)
        diffs.append(float((x0_hat.double() - mean).abs().max()))
    dist_mean, _ = nearest(mean, X, k=1)
    dist_faces = (X.double().reshape(len(X), -1) - mean.reshape(1, -1)).norm(dim=1)
    rough_mean = float(_roughness(mean)[0])
    rough_faces = _roughness(X)
    idx = torch.randperm(len(X), generator=gen)[:6]

    plt = pyplot()
    fig, axes = plt.subplots(2, 6, figsize=(14, 6.6), layout="constrained")
    i_near = int(nearest(mean, X, k=1)[1][0, 0])
    top = [(mean, f"mean of {len(X)} faces\nroughness {rough_mean:.3f}")]
    top += [(o, f"E[x0 | x_t], t = {t:g}\nsigma/alpha {'inf' if t == 1 else f'{t / (1 - t):.0f}'}, "
                f"max diff {d:.0e}") for o, t, d in zip(outputs, times, diffs)]
    top += [(X[i_near][None], f"face nearest the mean (#{i_near})\n{float(dist_mean[0, 0]):.1f} away")]
    bottom = [(X[i][None], f"face #{int(i)}: {float(dist_faces[i]):.1f} from\nthe mean, roughness "
                           f"{float(rough_faces[i]):.3f}") for i in idx]
    for row, panels in zip(axes, (top, bottom)):
        for ax, (img, title) in zip(row, panels):
            ax.imshow(img[0, 0].float().numpy(), cmap="gray", vmin=-1, vmax=1)
            ax.set_title(title, fontsize=9.5)
            ax.axis("off")
    fig.suptitle("the mean sample is not a typical sample; at high noise the ideal denoiser outputs exactly the mean\n"
                 f"no face lies within {float(dist_faces.min()):.1f} of the mean (median {float(dist_faces.median()):.1f}, "
                 f"L2 over {X[0].numel()} pixels),\nand the mean is {float(rough_faces.median()) / rough_mean:.0f}x "
                 "smoother than the median face (roughness: mean squared neighbour difference)")
    _save_png(fig, out / "mean-face.png")
    result = {"times": times, "max_abs_difference": diffs, "distance_mean_to_nearest_face": float(dist_mean[0, 0]),
              "face_distance_to_mean_median": float(dist_faces.median()), "roughness_mean": rough_mean,
              "roughness_faces_median": float(rough_faces.median()), "roughness_faces_min": float(rough_faces.min()),
              "files": [str(out / "mean-face.png")]}
    lines = [f"t = {t:<6g} sigma/alpha = {'inf' if t == 1 else f'{t / (1 - t):.0f}':>5s}: "
             f"max |E[x0 | x_t] - mean face| = {d:.2e}" for t, d in zip(times, diffs)]
    _say("mean-face", [f"{len(X)} faces of {tuple(X.shape[1:])}"] + lines + [
        f"distance from the mean to its nearest face {float(dist_mean[0, 0]):.2f}; faces lie "
        f"{float(dist_faces.min()):.2f} to {float(dist_faces.max()):.2f} from the mean (median "
        f"{float(dist_faces.median()):.2f}): no face is near the mean",
        f"roughness (mean squared neighbour difference): mean face {rough_mean:.4f}, faces median "
        f"{float(rough_faces.median()):.4f}, smoothest face {float(rough_faces.min()):.4f}",
        f"wrote {out / 'mean-face.png'}"])
    return result


# ---------------------------------------------------------------- 8. posterior

def demo_posterior(out: Path, *, seed: int = 0, quick: bool = False) -> dict:
    """SPEC §2.4: during one sampling run, the weights of the top training examples over time and the effective
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


# ---------------------------------------------------------------- registry and command line

DEMOS: dict[str, tuple[Callable[..., dict], str]] = {
    "vp-ve": (demo_vp_ve, "VP vs VE noising at equal SNR (vp-ve.gif) and the rescaling between them (snr.png)"),
    "density": (demo_density, "the exact noised density p_t: a Gaussian narrowing to one spike per example"),
    "flow": (demo_flow, "particles flowing under the exact ground-truth flow onto training points (flow.gif)"),
    "tweedie": (demo_tweedie, "Tweedie's formula: E[x|y] = y + sigma^2 grad log p(y), checked to machine precision"),
    "regression": (demo_regression, "linear regression as denoising: ascend the log-density around the fitted line"),
    "blur": (demo_blur, "blurring is denoising: spatial blur vs Wiener vs the exact denoiser, seen and unseen faces"),
    "mean-face": (demo_mean_face, "the mean face is nobody's face, and the ideal denoiser's output at high noise"),
    "posterior": (demo_posterior, "posterior weights during sampling: when and onto which example it collapses"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", metavar="NAME", help=f"a demo ({', '.join(DEMOS)}) or 'all'")
    p.add_argument("--list", action="store_true", help="list the demos and exit")
    p.add_argument("--out", default="runs/demos", help="folder for the pictures (default: runs/demos)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the demo's random numbers (default: 0)")
    p.add_argument("--quick", action="store_true", help="smaller, faster versions (fewer frames and points)")


def run(args) -> int:
    if args.list:
        for name, (_, text) in DEMOS.items():
            print(f"{name:11s} {text}")
        return 0
    if args.name is None:
        raise ValueError(f"name a demo ({', '.join(DEMOS)}) or 'all'; boneless demo --list describes them")
    if args.name != "all" and args.name not in DEMOS:
        raise ValueError(f"unknown demo {args.name!r}: choose one of {', '.join(DEMOS)}, or all")
    out = check_output_dir(args.out)
    names = list(DEMOS) if args.name == "all" else [args.name]
    for name in names:
        try:
            DEMOS[name][0](out, seed=args.seed, quick=args.quick)
        except OSError as e:
            raise ValueError(f"demo {name}: cannot write to {out}: {e.strerror or e}") from None
    return 0
