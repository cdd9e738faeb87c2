"""Noise schedules and time grids.

One time convention, stated once for the whole package: ``t`` in [0, 1], ``t = 0`` is data and ``t = 1`` is
noise, and the noised sample is ``x_t = alpha(t) * x0 + sigma(t) * eps``.

A schedule is an immutable value: ``schedule(t)`` returns :class:`Coeffs` with ``alpha``, ``sigma`` and their
time derivatives, for a float or a tensor ``t``. Every schedule also inverts its noise-to-signal ratio
``lam = sigma / alpha`` (VP's ``sigma / alpha`` is VE's ``sigma``: the two families are one model after
rescaling ``x / alpha``), which is what the Karras and log-SNR grids are built on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple, Union

import torch

Time = Union[float, torch.Tensor]


class Coeffs(NamedTuple):
    """``x_t = alpha * x0 + sigma * eps`` and the time derivatives ``d_alpha``, ``d_sigma``."""

    alpha: Time
    sigma: Time
    d_alpha: Time
    d_sigma: Time


def _lib(t: Time):
    return torch if isinstance(t, torch.Tensor) else math


@dataclass(frozen=True)
class RectifiedFlow:
    """Straight paths: ``alpha = 1 - t``, ``sigma = t`` (the default; the original notebook's path)."""

    name: str = "rectified-flow"

    def __call__(self, t: Time) -> Coeffs:
        return Coeffs(1 - t, t, -1.0 + 0 * t, 1.0 + 0 * t)

    def t_of_lam(self, lam: float) -> float:
        return lam / (1 + lam)  # lam = t / (1 - t)


@dataclass(frozen=True)
class VPCosine:
    """Variance preserving, cosine: ``alpha = cos(pi t / 2)``, ``sigma = sin(pi t / 2)``."""

    name: str = "vp-cosine"

    def __call__(self, t: Time) -> Coeffs:
        m, h = _lib(t), math.pi / 2
        alpha, sigma = m.sin(h * (1 - t)), m.sin(h * t)  # sin(h (1 - t)) is exactly 0 at t = 1
        return Coeffs(alpha, sigma, -h * sigma, h * alpha)

    def t_of_lam(self, lam: float) -> float:
        return math.atan(lam) / (math.pi / 2)  # lam = tan(pi t / 2)


@dataclass(frozen=True)
class VPLinear:
    """Variance preserving, the continuous DDPM schedule: ``beta(t) = beta_0 + t (beta_1 - beta_0)``,
    ``alpha = exp(-B(t) / 2)`` with ``B(t) = int_0^t beta``, ``sigma = sqrt(1 - alpha^2)`` (Song et al. 2021, eq. 33)."""

    beta_0: float = 0.1
    beta_1: float = 20.0
    name: str = "vp-linear"

    def __call__(self, t: Time) -> Coeffs:
        m = _lib(t)
        big_b = self.beta_0 * t + 0.5 * (self.beta_1 - self.beta_0) * t * t
        beta = self.beta_0 + (self.beta_1 - self.beta_0) * t
        alpha = m.exp(-0.5 * big_b)
        sigma = m.sqrt(-m.expm1(-big_b))  # sqrt(1 - alpha^2) without cancellation near t = 0
        d_alpha = -0.5 * beta * alpha
        # d sigma / dt = -alpha d_alpha / sigma, infinite at t = 0 where sigma = 0
        d_sigma = 0.5 * beta * alpha * alpha / sigma if (m is torch or sigma > 0) else math.inf
        return Coeffs(alpha, sigma, d_alpha, d_sigma)

    def t_of_lam(self, lam: float) -> float:
        big_b = math.log1p(lam * lam)  # alpha^2 = 1 / (1 + lam^2)
        a, b = 0.5 * (self.beta_1 - self.beta_0), self.beta_0
        return (-b + math.sqrt(b * b + 4 * a * big_b)) / (2 * a)


@dataclass(frozen=True)
class VE:
    """Variance exploding: ``alpha = 1``, ``sigma = sigma_min (sigma_max / sigma_min)^t`` (Song et al. 2021)."""

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    name: str = "ve"

    def __call__(self, t: Time) -> Coeffs:
        m = _lib(t)
        r = math.log(self.sigma_max / self.sigma_min)
        sigma = self.sigma_min * m.exp(r * t)
        return Coeffs(1.0 + 0 * t, sigma, 0.0 * t, r * sigma)

    def t_of_lam(self, lam: float) -> float:
        return math.log(lam / self.sigma_min) / math.log(self.sigma_max / self.sigma_min)


@dataclass(frozen=True)
class EDM:
    """EDM (Karras et al. 2022): ``alpha = 1``, ``sigma = t * sigma_max``; sample on its Karras rho = 7 grid."""

    sigma_max: float = 80.0
    name: str = "edm"

    def __call__(self, t: Time) -> Coeffs:
        return Coeffs(1.0 + 0 * t, self.sigma_max * t, 0.0 * t, self.sigma_max + 0 * t)

    def t_of_lam(self, lam: float) -> float:
        return lam / self.sigma_max


Schedule = Union[RectifiedFlow, VPCosine, VPLinear, VE, EDM]

SCHEDULES: dict[str, Schedule] = {
    "rectified-flow": RectifiedFlow(),
    "vp-cosine": VPCosine(),
    "vp-linear": VPLinear(),
    "ve": VE(),
    "edm": EDM(),
}
ALIASES = {"rf": "rectified-flow", "vp": "vp-cosine", "cosine": "vp-cosine", "ddpm": "vp-linear", "karras": "edm"}
DEFAULT_SPACING = {"rectified-flow": "uniform", "vp-cosine": "uniform", "vp-linear": "uniform", "ve": "uniform", "edm": "karras"}


def get_schedule(name: str) -> Schedule:
    """The schedule called ``name`` (``rectified-flow``/``rf``, ``vp-cosine``, ``vp-linear``, ``ve``, ``edm``)."""
    key = ALIASES.get(str(name).lower(), str(name).lower())
    if key not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}: choose one of {', '.join(SCHEDULES)} (alias rf)")
    return SCHEDULES[key]


def lam_of_t(schedule: Schedule, t: float) -> float:
    """The noise-to-signal ratio ``sigma / alpha`` at time ``t`` (``inf`` where ``alpha = 0``)."""
    c = schedule(float(t))
    return math.inf if c.alpha <= 0 else c.sigma / c.alpha


Spacing = Literal["uniform", "karras", "logsnr", "split"]
# where the ``split`` grid changes from even steps in t to Karras steps: sigma / alpha = 1.5 (t = 0.6 on the rectified
# flow), below which the exact flow's class frequencies no longer change (docs/EVAL.md, "Seventh push")
SPLIT_LAM = 1.5


def check_times(times) -> torch.Tensor:
    """An explicit time grid as float64 ``[steps + 1]``: finite, strictly decreasing, within [0, 1], at least two
    points (k-diffusion's samplers take their ``sigmas`` the same way)."""
    ts = torch.as_tensor(times, dtype=torch.float64).flatten()
    if len(ts) < 2 or not bool(torch.isfinite(ts).all()) or not bool((ts[1:] < ts[:-1]).all()) \
            or float(ts[0]) > 1 or float(ts[-1]) < 0:
        raise ValueError("times must be at least two strictly decreasing numbers in [0, 1], got "
                         f"{[round(float(t), 6) for t in ts[:8]]}{' ...' if len(ts) > 8 else ''}")
    return ts


def time_grid(schedule: Schedule, steps: int, *, spacing: Spacing | None = None, t_max: float = 1.0,
              t_min: float = 0.0, lam_max: float = 80.0, lam_min: float = 0.002, rho: float = 7.0) -> torch.Tensor:
    """Decreasing times ``[steps + 1]`` from ``t_max`` to ``t_min`` (float64).

    ``uniform`` spaces t evenly (the original notebook's grid). ``karras`` spaces ``lam = sigma / alpha``
    as in EDM eq. 5, ``lam_i = (lam_max^(1/rho) + i / (steps - 1) (lam_min^(1/rho) - lam_max^(1/rho)))^rho``;
    ``logsnr`` spaces ``log lam`` evenly. For those two the first ``steps`` points cover ``lam`` from
    ``min(lam(t_max), lam_max)`` down to ``max(lam(t_min), lam_min)``; the last point is ``t_min``. ``split`` (the
    grid of ``parzen-local``'s measured samples, "heun-split" in docs/EVAL.md) takes ``steps // 2`` even steps in t
    down to the time where ``lam = SPLIT_LAM`` and the other steps on the Karras grid below it; where that time is
    not inside ``(t_min, t_max)``, or ``steps`` is 1, it is the Karras grid.
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not 0.0 <= t_min < t_max <= 1.0:
        raise ValueError(f"need 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")
    spacing = spacing or DEFAULT_SPACING.get(schedule.name, "uniform")
    if spacing == "uniform":
        return torch.linspace(t_max, t_min, steps + 1, dtype=torch.float64)
    if spacing not in ("karras", "logsnr", "split"):
        raise ValueError(f"unknown spacing {spacing!r}: choose uniform, karras, logsnr or split")
    if spacing == "split":
        t_split = schedule.t_of_lam(SPLIT_LAM)
        grid = dict(t_min=t_min, lam_max=lam_max, lam_min=lam_min, rho=rho)
        if steps == 1 or not t_min < t_split < t_max:
            return time_grid(schedule, steps, spacing="karras", t_max=t_max, **grid)
        above = torch.linspace(t_max, t_split, steps // 2 + 1, dtype=torch.float64)
        return torch.cat([above, time_grid(schedule, steps - steps // 2, spacing="karras", t_max=t_split, **grid)[1:]])
    hi = min(lam_of_t(schedule, t_max), lam_max)
    lo = max(lam_of_t(schedule, t_min), lam_min)
    if steps == 1 or hi <= lo:
        lams = torch.tensor([hi], dtype=torch.float64)
    elif spacing == "karras":
        i = torch.linspace(0, 1, steps, dtype=torch.float64)
        lams = (hi ** (1 / rho) + i * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    else:
        lams = torch.logspace(math.log10(hi), math.log10(lo), steps, dtype=torch.float64)
    ts = [min(max(schedule.t_of_lam(float(lam)), t_min), t_max) for lam in lams]
    return torch.tensor(ts + [t_min], dtype=torch.float64)
