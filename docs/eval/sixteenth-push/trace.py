"""Follow a few starts of `boneless eval --seed SEED` down the flow: at each step, the nearest pool image to the
denoiser's x0_hat, its distance and its ratio to the second-nearest, the distance of x / alpha from the pool, and
x0_hat's range; for the shipped `parzen-local` and for `middle="blend"`. docs/EVAL.md, "Sixteenth push".

    python trace.py SEED J[,J...]      # e.g. 11 397,3,186: seed 11's copy under middle=blend, and two near-ties
"""
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from prototypes import RF, TIMES, pool  # noqa: E402  (the pool, heun-split)

from boneless import samplers  # noqa: E402
from boneless.composites import ParzenLocalDenoiser  # noqa: E402
from boneless.metrics import nearest  # noqa: E402

seed, picks = int(sys.argv[1]), [int(j) for j in sys.argv[2].split(",")]
x1 = torch.randn((500, 1, 28, 28), generator=torch.Generator().manual_seed(seed))[picks]  # the eval's 500 starts


def show(label: str, x: torch.Tensor, x0_hat: torch.Tensor, alpha: float) -> None:
    d, i = nearest(x0_hat.float(), pool, k=2)
    cells = [f"[{int(a)} {float(b):.2f} {float(c):.2f}]" for a, b, c in zip(i[:, 0], d[:, 0] / d[:, 1], d[:, 0])]
    xa = nearest((x / alpha).float(), pool, k=1)[0][:, 0] if alpha else None
    far = " x/alpha " + " ".join(f"{float(v):.1f}" for v in xa) if xa is not None else ""
    print(f"  {label}  " + "  ".join(cells) + f"  x0_hat in [{float(x0_hat.min()):.2f}, {float(x0_hat.max()):.2f}]"
          + far, flush=True)


print("each start: [nearest pool image, nearest / second-nearest, distance] of x0_hat")
for middle in ("local-gaussian", "blend"):
    t0 = time.perf_counter()
    den = ParzenLocalDenoiser(pool, middle=middle)
    print(f"middle={middle}")
    end = samplers.heun(den, RF, x1, TIMES, callback=lambda c: show(
        f"t {c['t']:.3f} sigma/alpha {c['sigma'] / c['alpha'] if c['alpha'] else float('inf'):7.3f}", c["x"],
        c["x0_hat"], c["alpha"]))
    show(f"the samples ({time.perf_counter() - t0:.0f} s)   ", end, end.clamp(-1, 1), 0.0)
