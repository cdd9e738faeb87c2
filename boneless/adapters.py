"""Adapters between the boneless protocol and k-diffusion's and diffusers' conventions, both ways.

boneless: ``denoiser(x, alpha, sigma) -> x0_hat`` for ``x = alpha x0 + sigma eps``.

k-diffusion: ``model(x, sigma) -> denoised`` in the variance-exploding convention ``x = x0 + sigma eps``
(``alpha = 1``; Karras et al. 2022). A VP query is the VE query ``(x / alpha, sigma / alpha)``.

diffusers, schedulers with ``alphas_cumprod`` (DDPM, DDIM, Euler, ...): in the standard loop the network receives
the VP sample ``x = sqrt(abar) x0 + sqrt(1 - abar) eps`` (Euler's ``scale_model_input`` divides its VE sample by
``sqrt(sigma^2 + 1)``, which gives the same) and a timestep, and returns by ``prediction_type`` the noise
``eps``, the data ``x0`` (``sample``) or ``v = sqrt(abar) eps - sqrt(1 - abar) x0`` (Salimans & Ho 2022, eq. 9).
The noise level of a timestep is the scheduler's own: its ``sigmas`` (VE, ``sigma^2 = (1 - abar) / abar``) where
it keeps them (Euler, Heun, DPM-Solver), else ``alphas_cumprod`` at that timestep.
``FlowMatchEulerDiscreteScheduler``: ``x = (1 - s) x0 + s eps`` with ``s = timestep / num_train_timesteps``;
the network returns the velocity ``eps - x0``.

A trained network knows a range of noise levels; wrapped as a boneless denoiser it is evaluated at the nearest
level it knows (``sigma / alpha`` clamped to that range, the input rescaled to match), so ``alpha = 0`` (pure
noise, where boneless samplers start on the rectified-flow path) asks it at its largest noise level.

k-diffusion itself is not needed: its protocol is a calling convention. diffusers is imported when a diffusers
scheduler is given (``pip install 'boneless-flow[adapters]'``).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from .denoisers import Denoiser, per_sample


def _diffusers():
    try:
        import diffusers
    except ImportError:
        raise ValueError("diffusers is not installed: pip install 'boneless-flow[adapters]'") from None
    return diffusers


def _expand(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-sample coefficient [B] shaped to broadcast against ``x`` [B, ...], in ``x``'s type."""
    return c.to(x.device, x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


def _coefficients(x: torch.Tensor, alpha, sigma) -> tuple[torch.Tensor, torch.Tensor]:
    a, s = per_sample(alpha, len(x), "alpha"), per_sample(sigma, len(x), "sigma")
    if bool(((a == 0) & (s == 0)).any()):
        raise ValueError("alpha and sigma cannot both be 0")
    return a, s


def _ve_view(x: torch.Tensor, alpha, sigma, lam_min: float, lam_max: float):
    """The query as a VE point at noise ``lam = sigma / alpha`` clamped to [lam_min, lam_max]: returns ``x_ve``
    (``x / alpha`` where ``lam`` is in range) and ``lam`` [B] float64. Out of range the VP-normalised point
    ``x / sqrt(alpha^2 + sigma^2)`` keeps its value and is read at the clamped level."""
    a, s = _coefficients(x, alpha, sigma)
    lam = torch.where(a > 0, s / a.clamp(min=1e-300), torch.full_like(s, math.inf)).clamp(lam_min, lam_max)
    scale = torch.sqrt(1 + lam * lam) / torch.hypot(a, s)  # = 1 / alpha when lam was not clamped
    return x * _expand(scale, x), lam


def _model_place(model, x: torch.Tensor) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters(), None) if isinstance(model, torch.nn.Module) else None
    return (x.device, x.dtype) if p is None else (p.device, p.dtype)


# ---- k-diffusion -------------------------------------------------------------------------------------------


def to_k_diffusion(den: Denoiser) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``model(x, sigma) -> denoised`` in k-diffusion's VE convention (``alpha = 1``), for its samplers:
    ``k_diffusion.sampling.sample_heun(to_k_diffusion(den), x, sigmas)``."""
    def model(x: torch.Tensor, sigma) -> torch.Tensor:
        return den(x, 1.0, sigma)
    return model


def from_k_diffusion(model, *, sigma_max: float = 80.0) -> Denoiser:
    """A boneless denoiser from a k-diffusion ``model(x, sigma) -> denoised`` (e.g. a ``k_diffusion.layers
    .Denoiser``): ``x0_hat = model(x / alpha, sigma / alpha)``, with ``sigma / alpha`` at most ``sigma_max``
    (the largest noise level the model was trained at; EDM's 80 by default)."""
    if not (isinstance(sigma_max, (int, float)) and math.isfinite(sigma_max) and sigma_max > 0):
        raise ValueError(f"sigma_max must be a positive number, got {sigma_max!r}")

    def den(x: torch.Tensor, alpha, sigma) -> torch.Tensor:
        x_ve, lam = _ve_view(x, alpha, sigma, 0.0, float(sigma_max))
        device, dtype = _model_place(model, x)
        with torch.no_grad():
            out = model(x_ve.to(device, dtype), lam.to(device, dtype))
        return out.to(x.device, x.dtype)
    return den


# ---- diffusers ---------------------------------------------------------------------------------------------


def _timesteps(timestep, batch: int) -> torch.Tensor:
    t = torch.as_tensor(timestep).detach().cpu().to(torch.float64).flatten()
    if t.numel() == 1:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"timestep must be a number or have shape [{batch}], got {list(t.shape)}")
    return t


def _lam_table(scheduler) -> torch.Tensor:
    """``sqrt((1 - abar_k) / abar_k)`` for k = 0 .. T-1 (increasing), float64."""
    abar = torch.as_tensor(scheduler.alphas_cumprod).detach().cpu().to(torch.float64)
    return torch.sqrt((1 - abar) / abar)


def _lam_of_timestep(scheduler, t: torch.Tensor) -> torch.Tensor:
    """The VE noise level ``sigma / alpha`` the scheduler assigns to each timestep in ``t`` [B]."""
    sigmas = getattr(scheduler, "sigmas", None)  # schedulers that keep their own noise levels (Euler, Heun, ...)
    if sigmas is not None and getattr(scheduler, "timesteps", None) is not None:
        grid = torch.as_tensor(scheduler.timesteps).detach().cpu().to(torch.float64)
        lam = []
        for v in t.tolist():
            hits = (grid == v).nonzero()
            if len(hits) == 0:
                break
            lam.append(float(sigmas[int(hits[0])]))
        else:
            return torch.tensor(lam, dtype=torch.float64)
    table = _lam_table(scheduler)  # elsewhere: abar at the timestep, linear in between
    return torch.from_numpy(np.interp(t.numpy(), np.arange(len(table)), table.numpy()))


def _is_flow_matching(scheduler) -> bool:
    return isinstance(scheduler, _diffusers().FlowMatchEulerDiscreteScheduler)


def _prediction_type(scheduler) -> str:
    kind = scheduler.config.prediction_type
    if kind not in ("epsilon", "sample", "v_prediction"):
        raise ValueError(f"prediction_type {kind!r} is not supported: epsilon, sample or v_prediction")
    return kind


def to_diffusers(den: Denoiser, scheduler) -> Callable[[torch.Tensor, object], torch.Tensor]:
    """``f(sample, timestep) -> model_output`` for ``scheduler``'s standard loop: called where a UNet is called
    (after ``scale_model_input``), it returns what the scheduler's ``step`` expects: the ``prediction_type``
    (``epsilon``, ``sample``, ``v_prediction``) for schedulers with ``alphas_cumprod`` (DDPM, DDIM, Euler, ...),
    the velocity ``eps - x0`` for ``FlowMatchEulerDiscreteScheduler``."""
    if _is_flow_matching(scheduler):
        n_train = float(scheduler.config.num_train_timesteps)

        def flow(sample: torch.Tensor, timestep) -> torch.Tensor:
            s = _timesteps(timestep, len(sample)) / n_train
            x0_hat = den(sample, 1 - s, s)
            return (sample - x0_hat) / _expand(s, sample)  # eps - x0 = (x - x0) / s on x = (1 - s) x0 + s eps
        return flow

    kind = _prediction_type(scheduler)

    def f(sample: torch.Tensor, timestep) -> torch.Tensor:
        lam = _lam_of_timestep(scheduler, _timesteps(timestep, len(sample)))
        a = 1 / torch.sqrt(1 + lam * lam)
        s = lam * a
        x0_hat = den(sample, a, s)
        if kind == "sample":
            return x0_hat
        eps = (sample - _expand(a, sample) * x0_hat) / _expand(s, sample)
        return eps if kind == "epsilon" else _expand(a, sample) * eps - _expand(s, sample) * x0_hat
    return f


def from_diffusers(unet, scheduler) -> Denoiser:
    """A boneless denoiser from a diffusers network ``unet(sample, timestep)`` (a ``UNet2DModel`` or any callable
    returning a tensor or an output with ``.sample``) trained with ``scheduler``'s noise and ``prediction_type``.
    The query ``(x, alpha, sigma)`` is given to the network as the VP sample at the timestep of the same
    ``sigma / alpha`` (interpolated in log ``sigma / alpha`` between the trained timesteps, clamped to them)."""
    if _is_flow_matching(scheduler):
        n_train = float(scheduler.config.num_train_timesteps)

        def flow(x: torch.Tensor, alpha, sigma) -> torch.Tensor:
            a, s = _coefficients(x, alpha, sigma)
            s_flow = s / (a + s)  # x / (alpha + sigma) = (1 - s) x0 + s eps
            x_in = x / _expand(a + s, x)
            v = _call(unet, x_in, s_flow * n_train)
            return x_in - _expand(s_flow, x) * v  # x_s = x0 + s (eps - x0), so x0 = x_s - s v
        return flow

    kind = _prediction_type(scheduler)
    lam_table = _lam_table(scheduler)
    log_table = torch.log(lam_table).numpy()

    def den(x: torch.Tensor, alpha, sigma) -> torch.Tensor:
        x_ve, lam = _ve_view(x, alpha, sigma, float(lam_table[0]), float(lam_table[-1]))
        a = 1 / torch.sqrt(1 + lam * lam)
        s = lam * a
        x_in = x_ve * _expand(a, x)
        timestep = torch.from_numpy(np.interp(torch.log(lam).numpy(), log_table, np.arange(len(log_table))))
        out = _call(unet, x_in, timestep)
        if kind == "sample":
            return out
        if kind == "epsilon":
            return (x_in - _expand(s, x) * out) / _expand(a, x)
        return _expand(a, x) * x_in - _expand(s, x) * out  # x0 = alpha x - sigma v
    return den


def _call(unet, x_in: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
    device, dtype = _model_place(unet, x_in)
    with torch.no_grad():
        out = unet(x_in.to(device, dtype), timestep.to(device, dtype))
    out = out.sample if hasattr(out, "sample") else out
    return out.to(x_in.device, x_in.dtype)
