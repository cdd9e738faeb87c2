"""Pictures and animations of the ideas behind diffusion, each computed by the library itself and printing
the numbers it shows: boneless demo NAME --out DIR, boneless demo all --out DIR, boneless demo --list.

Every demo is a function ``demo_x(out, *, seed=0, quick=False) -> dict`` that writes its pictures into ``out``
(through :func:`boneless.outputs.atomic_path`), prints its numbers and returns them; ``quick`` makes a smaller,
faster version (fewer frames and points) for tests. ``DEMOS`` maps a name to ``(function, one-line description)``.
Each demo is one module of this package (``vp_ve``, ``density``, ``flow``, ``tweedie``, ``regression``, ``blur``,
``mean_face``, ``posterior``); ``_common`` holds what they share. Schedules, the exact denoiser, the Wiener filter,
samplers and the score/velocity conversions all come from the library; the only formulas written here are the ones
being illustrated (a Gaussian blur, a float64 mixture density used as an independent check).
"""

from __future__ import annotations

import argparse
from typing import Callable

from ..options import non_negative_int
from ..outputs import check_output_dir
from ._common import log_density
from .blur import demo_blur
from .density import demo_density
from .flow import demo_flow
from .mean_face import demo_mean_face
from .posterior import demo_posterior
from .regression import demo_regression
from .tweedie import demo_tweedie
from .vp_ve import demo_vp_ve

__all__ = ["DEMOS", "add_arguments", "run", "log_density", "demo_vp_ve", "demo_density", "demo_flow", "demo_tweedie",
           "demo_regression", "demo_blur", "demo_mean_face", "demo_posterior"]

DEMOS: dict[str, tuple[Callable[..., dict], str]] = {
    "vp-ve": (demo_vp_ve, "VP vs VE noising at equal SNR (vp-ve.gif) and the rescaling between them (snr.png)"),
    "density": (demo_density, "the exact noised density p_t: a Gaussian narrowing to one spike per example"),
    "flow": (demo_flow, "particles flowing under the exact ground-truth flow onto training points (flow.gif)"),
    "tweedie": (demo_tweedie, "Tweedie's formula: E[x|y] = y + sigma^2 grad log p(y), checked to machine precision"),
    "regression": (demo_regression, "linear regression as denoising: ascend the log-density around the fitted line"),
    "blur": (demo_blur, "blurring is denoising: spatial blur vs Wiener vs the exact denoiser, seen and unseen faces"),
    "mean-face": (demo_mean_face, "the mean face is nobody's face, and the ideal denoiser's output at high noise"),
    "posterior": (demo_posterior, "posterior weights during sampling: when and onto which example it collapses"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", metavar="NAME", help=f"a demo ({', '.join(DEMOS)}) or 'all'")
    p.add_argument("--list", action="store_true", help="list the demos and exit")
    p.add_argument("--out", default="runs/demos", help="folder for the pictures (default: runs/demos)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the demo's random numbers (default: 0)")
    p.add_argument("--quick", action="store_true", help="smaller, faster versions (fewer frames and points)")


def run(args) -> int:
    if args.list:
        for name, (_, text) in DEMOS.items():
            print(f"{name:11s} {text}")
        return 0
    if args.name is None:
        raise ValueError(f"name a demo ({', '.join(DEMOS)}) or 'all'; boneless demo --list describes them")
    if args.name != "all" and args.name not in DEMOS:
        raise ValueError(f"unknown demo {args.name!r}: choose one of {', '.join(DEMOS)}, or all")
    out = check_output_dir(args.out)
    names = list(DEMOS) if args.name == "all" else [args.name]
    for name in names:
        try:
            DEMOS[name][0](out, seed=args.seed, quick=args.quick)
        except OSError as e:
            raise ValueError(f"demo {name}: cannot write to {out}: {e.strerror or e}") from None
    return 0
