"""Every denoiser by name: ``DENOISERS`` (name -> class, each constructible as ``cls(X)``) and
:func:`make_denoiser`, which builds one with options checked against what the class takes.

This module imports the denoisers; no denoiser module imports it. A new denoiser is one more entry here, and
every sampler, metric, command and adapter then works with it.
"""

from __future__ import annotations

import inspect

import torch

from .closed_form import GaussianDenoiser, GMMDenoiser, ParzenDenoiser, SmoothedDenoiser
from .composites import BlendDenoiser, CoarseToFineDenoiser, ParzenLocalDenoiser
from .denoisers import EmpiricalDenoiser
from .experts import SUREExpertsDenoiser
from .memo import build
from .patches import (EquivariantLocalDenoiser, LocalDenoiser, LocalGaussianDenoiser, PatchCompositeDenoiser,
                      WienerLocalDenoiser)

DENOISERS: dict[str, type] = {
    "empirical": EmpiricalDenoiser,
    "gaussian": GaussianDenoiser,
    "smoothed": SmoothedDenoiser,
    "gmm": GMMDenoiser,
    "parzen": ParzenDenoiser,
    "local": LocalDenoiser,
    "local-equivariant": EquivariantLocalDenoiser,
    "local-wiener": WienerLocalDenoiser,
    "patch-composite": PatchCompositeDenoiser,
    "local-gaussian": LocalGaussianDenoiser,
    "blend": BlendDenoiser,
    "coarse-to-fine": CoarseToFineDenoiser,
    "parzen-local": ParzenLocalDenoiser,
    "sure-experts": SUREExpertsDenoiser,
}


def options_of(name: str) -> tuple[str, ...]:
    """The keyword options the denoiser ``name`` takes (besides the data ``X``)."""
    params = inspect.signature(_class(name)).parameters.values()
    return tuple(p.name for p in params if p.kind == p.KEYWORD_ONLY)


def make_denoiser(name: str, X: torch.Tensor, *, device: torch.device | str | None = None, **options):
    """``DENOISERS[name](X, **options)``; an option the class does not take is a one-line error that names the
    options it does take (nothing is dropped in silence). ``device``: where it computes; the CPU (or None) is
    every denoiser's default and is not passed on, so a class built as ``cls(X)`` alone works on the CPU."""
    if device is not None and torch.device(device).type != "cpu":
        options["device"] = device
    check_options(name, options)
    return build(_class(name), X, **options)  # inside boneless.memo.sharing: one object per class, data and options


def check_options(name: str, options) -> None:
    """A one-line error, naming the options ``name`` takes, when it does not take one of ``options`` (names)."""
    known = options_of(name)
    takes_any = any(p.kind == p.VAR_KEYWORD for p in inspect.signature(_class(name)).parameters.values())
    unknown = [] if takes_any else [k for k in options if k not in known]
    if unknown:
        raise ValueError(f"denoiser {name!r} does not take {', '.join(unknown)}; its options: {', '.join(known)}")


def _class(name: str) -> type:
    if name not in DENOISERS:
        raise ValueError(f"unknown denoiser {name!r}: choose one of {', '.join(DENOISERS)}")
    return DENOISERS[name]
