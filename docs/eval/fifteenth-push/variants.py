"""`parzen-local` with its Parzen components changed after the build: docs/EVAL.md, "Fifteenth push". Exploration
only; score the samples with ../fourteenth-push/dev.py (dev targets from the test split), never against the eval's
test images.

    python variants.py N SEED SPEC [SPEC ...]    # SPEC: blur:SD[:SCALE] or cap:Q[:SCALE] (SCALE: parzen's, 1.5)

Each Parzen component spreads along the principal directions of its K = 32 neighbours' deviations x_j - x_i.
``blur:SD`` takes those directions from the deviations low-passed by a Gaussian of SD pixels (the same neighbours),
so a component varies the shape and not the fine texture. ``cap:Q`` scales each component's variances down so that
their sum is at most the Q-quantile of all components' sums: the widest components, around isolated examples, are
narrowed and the rest kept. The mixture is otherwise computed as `ParzenDenoiser` computes it. N samples from SEED
(the noise of `boneless eval --seed SEED`) go down `heun-split` with Heun; they are kept in P-N-SEED-SPEC.npy.
"""
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from prototypes import neighbours, pool, sample  # noqa: E402  (the pool, heun-split, the eval's start noise)

from boneless.composites import ParzenLocalDenoiser  # noqa: E402


def blur(v: torch.Tensor, sd: float, side: int = 28) -> torch.Tensor:
    """Rows [..., side * side] low-passed by a separable Gaussian of ``sd`` pixels (zero beyond the edges)."""
    r = max(1, math.ceil(3 * sd))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=v.dtype) / sd) ** 2)
    k = k / k.sum()
    im = v.reshape(-1, 1, side, side)
    im = torch.nn.functional.conv2d(im, k.view(1, 1, 1, -1), padding=(0, r))
    im = torch.nn.functional.conv2d(im, k.view(1, 1, -1, 1), padding=(r, 0))
    return im.reshape(v.shape)


def blurred_directions(p, sd: float, scale: float, step: int = 256) -> None:
    """Replace the Parzen member ``p``'s variances and directions by those of its low-passed neighbour deviations."""
    F, (N, K) = p.X, p.var.shape
    for i in range(0, N, step):
        dev = blur((F[neighbours(p, i, i + step)] - F[i:i + step, None]) * (scale / math.sqrt(K)), sd)
        var, Q = torch.linalg.eigh(dev @ dev.transpose(1, 2))
        keep = var > 1e-12 * var.amax(1, keepdim=True)
        V = Q.transpose(1, 2) @ dev / var.clamp(min=1e-300).sqrt()[..., None]
        p.var[i:i + step], p.V[i:i + step] = torch.where(keep, var, 0.0), torch.where(keep[..., None], V, 0.0)
    p.Vx = (p.V @ F[..., None])[..., 0]


def capped(p, q: float) -> None:
    """Scale each component's variances so that their sum is at most the ``q``-quantile of all the sums."""
    total = p.var.sum(1)
    p.var *= (torch.quantile(total, q) / total).clamp(max=1.0)[:, None]


n, seed = int(sys.argv[1]), int(sys.argv[2])
for spec in sys.argv[3:]:
    t0 = time.perf_counter()
    kind, value, *rest = spec.split(":")
    scale = float(rest[0]) if rest else 1.5
    den = ParzenLocalDenoiser(pool, parzen={"scale": scale})  # by its class, outside boneless.memo.sharing()
    total = float(den.parzen.var.sum(1).mean())
    if kind == "blur":
        blurred_directions(den.parzen, float(value), scale)
    elif kind == "cap":
        capped(den.parzen, float(value))
    else:
        sys.exit(f"variants.py: unknown SPEC {spec!r} (blur:SD[:SCALE] or cap:Q[:SCALE])")
    print(f"{spec}: mean total variance of a component {float(den.parzen.var.sum(1).mean()):.1f} (was {total:.1f})",
          flush=True)
    sample(den, n, seed, f"P-{n}-{seed}-{spec.replace(':', '_')}.npy", spec, t0)
