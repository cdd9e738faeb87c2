"""Pictures: image grids (Pillow), and plots (matplotlib, an optional extra imported lazily).

Every writer goes through :func:`atomic_path`, so an interrupted run never leaves a half-written file.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

from .outputs import atomic_path


def pyplot():
    """matplotlib's pyplot with the Agg back-end, or a clear error when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        raise ValueError("this picture needs matplotlib: pip install 'boneless-flow[plots]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


Range = tuple[float, float]


def display_range(X) -> Range:
    """The values shown from black to white: [-1, 1] for data within it (the loaders map pixels there), else
    the data's own minimum and maximum (latents, data of any range; read from the first rows). Pictures scale
    for display only; the data keep their values."""
    rows = X[:4096]
    lo, hi = float(rows.min()), float(rows.max())
    if lo >= -1 - 1e-6 and hi <= 1 + 1e-6:
        return (-1.0, 1.0)
    return (lo, hi) if hi > lo else (lo - 1.0, hi + 1.0)


def to_uint8(images: torch.Tensor, value_range: Range = (-1.0, 1.0)) -> np.ndarray:
    """[n, C, H, W] -> [n, H, W, c] uint8, ``value_range`` mapped to 0..255 (clipped). 1 or 3 channels are shown
    as they are; more than 3 (latents) by their first three as RGB; 2 by the first."""
    x = images.detach().float().cpu()
    x = x[:, :3] if x.shape[1] > 3 else x[:, :1] if x.shape[1] == 2 else x
    lo, hi = value_range
    x = ((x - lo) / (hi - lo)).clamp(0, 1).mul(255).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def image_grid(rows: list[torch.Tensor], *, value_range: Range = (-1.0, 1.0), min_width: int = 600, pad: int = 2,
               row_labels: list[str] | None = None, col_labels: list[str] | None = None,
               title: str | None = None) -> Image.Image:
    """A grid with one row per tensor [m, C, H, W] (``value_range`` black to white), upscaled (nearest) to at
    least ``min_width`` px; optional labels left of the rows, above the columns, and a title."""
    cols = max(len(r) for r in rows)
    h, w = rows[0].shape[2:]
    c = to_uint8(rows[0][:1]).shape[-1]
    scale = max(1, -(-min_width // (cols * (w + pad))))
    grid = np.full((len(rows) * (h + pad) + pad, cols * (w + pad) + pad, c), 255, dtype=np.uint8)
    for r, imgs in enumerate(rows):
        for j, img in enumerate(to_uint8(imgs, value_range)):
            y0, x0 = pad + r * (h + pad), pad + j * (w + pad)
            grid[y0:y0 + h, x0:x0 + w] = img
    im = Image.fromarray(grid[..., 0] if c == 1 else grid)
    im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    if not (row_labels or col_labels or title):
        return im
    from PIL import ImageDraw, ImageFont

    font = ImageFont.load_default()
    text_w = lambda t: ImageDraw.Draw(im).textlength(t, font=font)  # noqa: E731
    left = int(max(map(text_w, row_labels))) + 8 if row_labels else 0
    top = (16 if title else 0) + (14 if col_labels else 0)
    out = Image.new(im.mode, (im.width + left, im.height + top), 255 if im.mode == "L" else (255, 255, 255))
    out.paste(im, (left, top))
    draw, ink = ImageDraw.Draw(out), 0 if im.mode == "L" else (0, 0, 0)
    if title:
        draw.text((left + 2, 1), title, fill=ink, font=font)
    for j, t in enumerate(col_labels or []):
        draw.text((left + (pad + j * (w + pad)) * scale, top - 13), t, fill=ink, font=font)
    for r, t in enumerate(row_labels or []):
        draw.text((2, top + (pad + r * (h + pad) + h / 2) * scale - 6), t, fill=ink, font=font)
    return out


def save_image(im: Image.Image, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG")


def save_figure(fig, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    pyplot().close(fig)


def samples_grid(samples: torch.Tensor, *, ncols: int | None = None, value_range: Range = (-1.0, 1.0),
                 title: str | None = "samples") -> Image.Image:
    """The samples [n, C, H, W] as a near-square grid, under ``title``."""
    n = len(samples)
    ncols = ncols or int(np.ceil(np.sqrt(n)))
    return image_grid([samples[i:i + ncols] for i in range(0, n, ncols)], value_range=value_range, title=title)


def scatter_samples(samples: torch.Tensor, X: torch.Tensor, *, title: str = "samples"):
    """2-D points: training data in grey, samples in colour."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 6.5))
    ax.scatter(X[:, 0], X[:, 1], s=4, c="0.7", label="training data")
    ax.scatter(samples[:, 0], samples[:, 1], s=12, c="tab:red", label="samples")
    ax.set_aspect("equal")
    ax.set_title(title)
    ax.legend(loc="upper right")
    return fig


def trajectory_figure(traj_x: torch.Tensor, traj_x0: torch.Tensor, times, *, X=None, indices=None,
                      max_samples: int = 8, value_range: Range = (-1.0, 1.0)):
    """The original notebook's grid of iterates: per sample, a row of x_t and a row of x0_hat over the steps
    (columns labelled by t), and, given the training data ``X`` and the recorded posterior ``indices``
    [R, n, k], a row of the most probable training example at each step. ``traj_x``, ``traj_x0`` are
    [R, n, C, H, W]."""
    rows, labels = [], []
    for i in range(min(max_samples, traj_x.shape[1])):
        rows += [traj_x[:, i], traj_x0[:, i]]
        labels += [f"{i}: x_t", f"{i}: x0_hat"]
        if X is not None and indices is not None:
            rows.append(X[indices[:, i, 0].clamp(min=0)])
            labels.append(f"{i}: top example")
    cols = [f"t={float(t):.2f}" for t in times]
    return image_grid(rows, value_range=value_range, row_labels=labels, col_labels=cols,
                      title="sampling trajectories: x_t, the denoiser's x0_hat, the most probable training example")


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
    ax.set_title("sampling trajectories (noise -> data)")
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


def neighbours_grid(samples: torch.Tensor, X: torch.Tensor, nearest_idx: torch.Tensor, *, max_pairs: int = 16,
                    value_range: Range = (-1.0, 1.0)):
    """Each sample (top row) above its nearest training example (bottom row), rows labelled."""
    m = min(max_pairs, len(samples))
    return image_grid([samples[:m], X[nearest_idx[:m]]], value_range=value_range,
                      row_labels=["sample", "nearest training"], title="each sample above its nearest training example")
