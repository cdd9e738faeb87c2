"""What gen.py and sdedit.py share: the time grid, `heun-split` (docs/EVAL.md, "Seventh push") or its first points
down to point K and a Karras grid of STEPS steps from there, and the denoiser of a SPEC."""
import ast

import torch

from boneless import make_denoiser
from boneless.schedules import get_schedule, time_grid

RF = get_schedule("rectified-flow")


def grid(arg: str) -> tuple[int, torch.Tensor]:
    """``"K"`` or ``"K:STEPS"`` -> (K, times [float64])."""
    k, _, steps = arg.partition(":")
    k, ts = int(k), time_grid(RF, 12, spacing="split")
    if steps:
        ts = torch.cat([ts[:k], time_grid(RF, int(steps), spacing="karras", t_max=float(ts[k]))])
    return k, ts


def denoiser(pool: torch.Tensor, spec: str):
    """`parzen-local` with the options of ``spec``, a Python dict literal (e.g. ``{'middle': 'patch-composite'}``:
    the patch composite answers in `local-gaussian`'s place)."""
    return make_denoiser("parzen-local", pool, **ast.literal_eval(spec))
