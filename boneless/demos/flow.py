"""Particles carried by the exact ground-truth flow from noise onto training points (flow.gif)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..data import load_dataset
from ..denoisers import EmpiricalDenoiser
from ..metrics import copy_rate, nearest
from ..plots import pyplot
from ..samplers import sample
from ._common import GIF_FRAMES, QUICK_FRAMES, _animate, _say


def demo_flow(out: Path, *, seed: int = 0, quick: bool = False) -> dict:
    """The ideal denoiser's flow reproduces its training set: particles flow under the exact ground-truth velocity
    from noise onto training points."""
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
