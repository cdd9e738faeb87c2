"""Pictures: image grids (Pillow), and plots (matplotlib, an optional extra imported lazily).

Every writer goes through :func:`atomic_path`, so an interrupted run never leaves a half-written file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; move it into place only when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def pyplot():
    """matplotlib's pyplot with the Agg back-end, or a clear error when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        raise ValueError("this picture needs matplotlib: pip install 'boneless-flow[plots]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[n, C, H, W] in [-1, 1] -> [n, H, W, C] uint8."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def image_grid(rows: list[torch.Tensor], *, min_width: int = 600, pad: int = 2) -> Image.Image:
    """A grid with one row per tensor [m, C, H, W] (in [-1, 1]), upscaled (nearest) to at least ``min_width`` px."""
    cols = max(len(r) for r in rows)
    c, h, w = rows[0].shape[1:]
    scale = max(1, -(-min_width // (cols * (w + pad))))
    grid = np.full((len(rows) * (h + pad) + pad, cols * (w + pad) + pad, c), 255, dtype=np.uint8)
    for r, imgs in enumerate(rows):
        for j, img in enumerate(to_uint8(imgs)):
            y0, x0 = pad + r * (h + pad), pad + j * (w + pad)
            grid[y0:y0 + h, x0:x0 + w] = img
    im = Image.fromarray(grid[..., 0] if c == 1 else grid)
    return im.resize((im.width * scale, im.height * scale), Image.NEAREST)


def save_image(im: Image.Image, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG")


def save_figure(fig, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    pyplot().close(fig)


def samples_grid(samples: torch.Tensor, *, ncols: int | None = None) -> Image.Image:
    """The samples [n, C, H, W] as a near-square grid."""
    n = len(samples)
    ncols = ncols or int(np.ceil(np.sqrt(n)))
    return image_grid([samples[i:i + ncols] for i in range(0, n, ncols)])


def scatter_samples(samples: torch.Tensor, X: torch.Tensor, *, title: str = "samples"):
    """2-D points: training data in grey, samples in colour."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 6.5))
    ax.scatter(X[:, 0], X[:, 1], s=4, c="0.7", label="training data")
    ax.scatter(samples[:, 0], samples[:, 1], s=12, c="tab:red", label="samples")
    ax.set_aspect("equal")
    ax.set_xlim(-1.1, 1.1)
    ax.set_ylim(-1.1, 1.1)
    ax.set_title(title)
    ax.legend(loc="upper right")
    return fig


def trajectory_figure(traj_x: torch.Tensor, traj_x0: torch.Tensor, times, *, max_samples: int = 8):
    """The original notebook's grid of iterates: per sample, a row of x_t and a row of x0_hat over the steps.
    ``traj_x``, ``traj_x0`` are [R, n, C, H, W]."""
    rows = []
    for i in range(min(max_samples, traj_x.shape[1])):
        rows += [traj_x[:, i].clamp(-1, 1), traj_x0[:, i]]
    return image_grid(rows)


def trajectory_scatter(traj_x: torch.Tensor, X: torch.Tensor, samples: torch.Tensor):
    """2-D trajectories from noise to data."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 6.5))
    ax.scatter(X[:, 0], X[:, 1], s=4, c="0.75")
    for i in range(traj_x.shape[1]):
        path = torch.cat([traj_x[:, i], samples[i:i + 1]])
        ax.plot(path[:, 0], path[:, 1], lw=0.8, alpha=0.7)
    ax.scatter(samples[:, 0], samples[:, 1], s=12, c="tab:red", zorder=3)
    ax.set_aspect("equal")
    ax.set_title("trajectories of the exact flow (noise -> data)")
    return fig


def posterior_figure(times: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, n_eff: torch.Tensor, *,
                     max_samples: int = 4):
    """The original notebook's plot of posterior weights over time: for a few samples, the weight of each
    training example that ever entered its top-k, against t; and the effective number of examples."""
    plt = pyplot()
    m = min(max_samples, weights.shape[1])
    fig, axes = plt.subplots(1, m + 1, figsize=(4.2 * (m + 1), 3.8), squeeze=False)
    t = times.numpy()
    for s in range(m):
        ax = axes[0, s]
        ids = torch.unique(indices[:, s])
        ids = ids[ids >= 0]
        final = indices[-1, s, 0].item()
        for idx in ids.tolist():
            w = torch.where(indices[:, s] == idx, weights[:, s], torch.zeros_like(weights[:, s])).sum(1)
            if w.max() < 0.05:
                continue
            ax.plot(t, w.numpy(), lw=2 if idx == final else 1, label=f"#{idx}" + (" (final)" if idx == final else ""))
        ax.set_xlim(t.max(), t.min())
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("t (1 = noise, 0 = data)")
        ax.set_ylabel("posterior weight")
        ax.set_title(f"sample {s}")
        ax.legend(fontsize=7, loc="upper left")
    ax = axes[0, m]
    for s in range(weights.shape[1]):
        ax.plot(t, n_eff[:, s].numpy(), lw=0.8, alpha=0.6)
    ax.set_yscale("log")
    ax.set_xlim(t.max(), t.min())
    ax.set_xlabel("t (1 = noise, 0 = data)")
    ax.set_ylabel("effective number of examples")
    ax.set_title("posterior collapse")
    fig.tight_layout()
    return fig


def neighbours_grid(samples: torch.Tensor, X: torch.Tensor, nearest_idx: torch.Tensor, *, max_pairs: int = 16):
    """Each sample (top row) above its nearest training example (bottom row)."""
    m = min(max_pairs, len(samples))
    return image_grid([samples[:m], X[nearest_idx[:m]]])
