"""Blurring is denoising: a noisy face denoised by the best spatial blur, the Wiener filter and the exact
denoiser, for a face in the dataset and a held-out one (blur.png)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from ..closed_form import GaussianDenoiser
from ..data import load_dataset
from ..denoisers import EmpiricalDenoiser
from ..plots import pyplot
from ._common import _generator, _save_png, _say


def _gaussian_blur(x: torch.Tensor, width: float) -> torch.Tensor:
    """Spatial Gaussian blur of images [B, C, H, W] with standard deviation ``width`` pixels (reflect padding)."""
    r = min(max(1, math.ceil(3 * width)), min(x.shape[-2:]) - 1)
    k = torch.arange(-r, r + 1, dtype=x.dtype)
    g = torch.exp(-k * k / (2 * width * width))
    g = g / g.sum()
    C = x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), g.view(1, 1, 1, -1).expand(C, 1, 1, -1), groups=C)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), g.view(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C)


def _psnr(x_hat: torch.Tensor, x: torch.Tensor) -> float:
    """PSNR in dB for data in [-1, 1] (peak-to-peak 2); ``inf`` for an exact copy."""
    mse = float(((x_hat.double() - x.double()) ** 2).mean())
    return 10 * math.log10(4.0 / mse) if mse > 0 else math.inf


def _db(v: float) -> str:
    return "inf" if math.isinf(v) else f"{v:.1f}"


def demo_blur(out: Path, *, seed: int = 0, quick: bool = False) -> dict:
    """Averaging is denoising: one noisy face denoised by the best spatial blur, the Wiener filter and the exact
    denoiser, for a face in the dataset and a held-out one."""
    out = Path(out)
    faces = load_dataset("faces")
    held_n = 5
    pool, held = faces[:-held_n], faces[-held_n:]
    sigma = 0.5
    gen = _generator(seed)
    i_in = int(torch.randint(0, len(pool), (1,), generator=gen))
    i_out = int(torch.randint(0, held_n, (1,), generator=gen))
    exact = EmpiricalDenoiser(pool)
    linear = GaussianDenoiser(pool)  # the Wiener filter: the posterior mean under a Gaussian fitted to the pool
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
