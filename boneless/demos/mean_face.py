"""The mean face is nobody's face, and it is the ideal denoiser's output at very high noise (mean-face.png)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..data import load_dataset
from ..denoisers import EmpiricalDenoiser
from ..metrics import nearest
from ..plots import pyplot
from ..schedules import get_schedule
from ._common import _generator, _save_png, _say


def _roughness(images: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between neighbouring pixels, per image [B] (low = smooth, blurry)."""
    x = images.double()
    dims = (-3, -2, -1)
    return ((x[..., 1:, :] - x[..., :-1, :]) ** 2).mean(dims) + ((x[..., 1:] - x[..., :-1]) ** 2).mean(dims)


def demo_mean_face(out: Path, *, seed: int = 0, quick: bool = False) -> dict:
    """The mean sample is not a typical sample: the mean face beside typical faces and beside the exact denoiser's
    output at very high noise, which is that mean."""
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
                 f"no face lies within {float(dist_faces.min()):.1f} of the mean "
                 f"(median {float(dist_faces.median()):.1f}, L2 over {X[0].numel()} pixels),\n"
                 f"and the mean is {float(rough_faces.median()) / rough_mean:.0f}x smoother than the median face "
                 "(roughness: mean squared neighbour difference)")
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
