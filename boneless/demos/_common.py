"""What the demos share: printing their numbers, writing PNGs and animations atomically, seeded generators,
and the exact log-density of the noised empirical distribution (with an independent float64 version)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import torch

from ..denoisers import EmpiricalDenoiser, per_sample
from ..outputs import atomic_path
from ..plots import pyplot

GIF_FRAMES = 48  # frames of a full animation (>= 40)
QUICK_FRAMES = 12


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
        out = out - math.log(den.n_total)
    return out.cpu()


def _log_density64(X: torch.Tensor, y: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
    """The same density written directly in float64 (B x N x D memory; differentiable): the independent check."""
    X64 = X.reshape(len(X), -1).double()
    d2 = ((y[:, None, :] - alpha * X64[None]) ** 2).sum(-1)
    D = X64.shape[1]
    return torch.logsumexp(-d2 / (2 * sigma ** 2), 1) - math.log(len(X)) - 0.5 * D * math.log(2 * math.pi * sigma ** 2)
