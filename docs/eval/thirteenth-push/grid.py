"""The time grid of gen.py and sdedit.py: `heun-split` (docs/EVAL.md, "Seventh push"), or its first points down
to point K and a Karras grid of STEPS steps from there."""
import torch

from boneless.schedules import get_schedule, time_grid

RF = get_schedule("rectified-flow")


def grid(arg: str) -> tuple[int, torch.Tensor]:
    """``"K"`` or ``"K:STEPS"`` -> (K, times [float64])."""
    k, _, steps = arg.partition(":")
    k, ts = int(k), time_grid(RF, 12, spacing="split")
    if steps:
        ts = torch.cat([ts[:k], time_grid(RF, int(steps), spacing="karras", t_max=float(ts[k]))])
    return k, ts
