"""What the scripts that sample a changed `parzen-local` share (fourteenth-push/shrunk.py and rank.py,
fifteenth-push/variants.py): the pool of `boneless eval` (the first 10000 training images), Heun on `heun-split`
(12 steps of the rectified flow), the eval's start noise for a seed, and the Parzen member's neighbours. Exploration only; the samples are scored
with fourteenth-push/dev.py, never against the eval's test images."""
import time

import numpy as np
import torch

from boneless import samplers
from boneless.data import load_dataset
from boneless.schedules import get_schedule, time_grid

pool = load_dataset("fashion-mnist", limit=10000)
RF = get_schedule("rectified-flow")
TIMES = time_grid(RF, 12, spacing="split")


def sample(den, n: int, seed: int, path: str, label: str, t0: float) -> None:
    """``n`` samples of ``den`` from the noise of `boneless eval --seed SEED`, saved to ``path``; prints the
    seconds since ``t0`` (the build included)."""
    x1 = torch.randn((n, 1, 28, 28), generator=torch.Generator().manual_seed(seed))  # sigma(1) = 1
    np.save(path, samplers.heun(den, RF, x1, TIMES).float().numpy())
    print(f"{label}: {time.perf_counter() - t0:.0f} s", flush=True)


def neighbours(p, start: int, stop: int) -> torch.Tensor:
    """The indices [stop - start, K] of the K nearest other examples of the Parzen member ``p``'s rows ``start`` to
    ``stop`` (squared distances in float64 over its centred examples ``p.X``, as the member chose them)."""
    rows = p.X[start:stop]
    d2 = p.xx[start:stop, None] + p.xx[None] - 2 * rows @ p.X.T
    d2[torch.arange(len(rows)), torch.arange(start, start + len(rows))] = float("inf")  # not itself
    return d2.topk(p.var.shape[1], largest=False).indices
