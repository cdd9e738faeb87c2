"""Composites: denoisers built from other denoisers.

- :class:`BlendDenoiser` (``blend``; this project's): a noise-level-dependent least-squares blend of
  generalising members (local Gaussian, patch composite, local score, Gaussian mixture, Gaussian, identity),
  fitted on validation images.
- :class:`CoarseToFineDenoiser` (``coarse-to-fine``; this project's): the exact whole-image posterior mean at
  high noise, the blend below a switch.
- :class:`ParzenLocalDenoiser` (``parzen-local``; this project's): manifold Parzen windows at high noise, the local
  Gaussian of patches below a switch, the local score machine of small patches at the lowest noise levels.

Members are called through their public methods and return what they compute; no composite reads state that a
member kept from an earlier call.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from .checks import positive_int
from .closed_form import GaussianDenoiser, GMMDenoiser, ParzenDenoiser
from .data import REFERENCE_SPREAD, check_data, spread
from .denoisers import Coef, EmpiricalDenoiser, check_query, prior_mean_at_alpha_zero
from .memo import build
from .patches import LocalDenoiser, LocalGaussianDenoiser, PatchCompositeDenoiser, WienerLocalDenoiser


BLEND_SIGMAS = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
BLEND_MEMBERS = ("local-gaussian", "composite", "local-wiener", "gmm", "gaussian", "identity")
FIT_RCOND = 1e-4  # relative singular-value cutoff of the blend's least-squares fit


def fit_weights(E_all: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """Least-squares weights [levels, M] of member estimates ``E_all`` [M, levels n, *shape] (level by level, ``n``
    queries each) on the clean images ``V`` [n, *shape]. Members that agree up to float32 rounding (two whole-image
    posteriors at high noise) would get huge opposite weights from that rounding: directions below FIT_RCOND of the
    largest are dropped (minimum-norm solution: equal members share their weight)."""
    n, M = len(V), len(E_all)
    target = V.double().reshape(-1, 1)
    return torch.stack([torch.linalg.lstsq(E_all[:, i:i + n].reshape(M, -1).T, target, rcond=FIT_RCOND,
                                           driver="gelsd").solution[:, 0] for i in range(0, E_all.shape[1], n)])


class BlendDenoiser:
    """Noise-level-dependent blend of closed-form estimates, fitted on a validation split: this project's design.

    ``x0_hat = sum_m w_m(lam) e_m(x)`` with the members ``e_m``: the :class:`LocalGaussianDenoiser` estimate
    (``local-gaussian``), the patch composite (``composite``, :class:`PatchCompositeDenoiser`), the local score
    machine with the Wiener filter's footprints (``local-wiener``, :class:`WienerLocalDenoiser`; until 2026-12-03
    the square-patch ``local``), the Gaussian mixture (``gmm``), the Wiener filter (``gaussian``) and the noisy
    input itself (``identity``, ``x / alpha``), each the registry's denoiser of that name with its defaults
    (unless ``local_gaussian`` or ``local`` say otherwise).
    The weights are fitted, per calibration level ``sigma`` in ``sigmas``, by least squares of the blended
    estimate against clean validation images noised as ``x + sigma z`` (training-free, like a patch-size
    calibration: six numbers per level), and interpolated linearly in ``log(sigma / alpha)`` in between
    (the end levels' weights beyond). Different members fail differently (Dirac mixtures of patches are sharp
    but mosaic-like, Gaussians are smooth but blurred), so the blend beats each member at most levels.

    With ``refit`` (the default), once the weights are fitted on the validation images held out of ``X``, the
    members are built again on all of ``X`` (stacking's refit: the weights of members that saw the ``N -
    holdout`` images serve for the same members on ``N``). The members are then the very denoisers of their own
    registry names on ``X``, so within one ``boneless eval`` run (:mod:`boneless.memo`) the blend's held-out and
    in-sample answers cost nothing beyond its members' rows.

    Args:
        X: training images [N, C, H, W].
        validation: clean validation images for the weights (never test images). Default: the last
            ``holdout`` images of ``X``, which the members then do not see.
        sigmas: calibration noise levels, for data of the reference spread (scaled with the data's spread).
        holdout: validation images taken from ``X`` when ``validation`` is None.
        components: Gaussian mixture components.
        seed: seed of the validation noise and of the mixture's k-means.
        weights: skip the fit and use these ``[len(sigmas), len(BLEND_MEMBERS)]`` weights.
        refit: after the fit, build the members again on all of ``X`` (only when the validation images were
            taken out of ``X``).
        local_gaussian: options of the local Gaussian member (e.g. ``schedule``, ``neighbours``, ``shift``).
        local: options of the local score member, ``local-wiener`` (e.g. ``schedule``).
        device: where the members compute.
    """

    def __init__(self, X: torch.Tensor, *, validation: torch.Tensor | None = None,
                 sigmas: Sequence[float] = BLEND_SIGMAS, holdout: int = 32, components: int = 16, seed: int = 0,
                 weights: torch.Tensor | None = None, refit: bool = True, local_gaussian: dict | None = None,
                 local: dict | None = None, device: torch.device | str | None = None):
        X = check_data(X)
        if X.ndim != 4:
            raise ValueError(f"BlendDenoiser needs image data [N, C, H, W], got shape {list(X.shape)}")
        positive_int(holdout, "holdout")
        sigmas = tuple(sorted(float(v) for v in sigmas))
        if not sigmas or any(not (math.isfinite(v) and v > 0) for v in sigmas):
            raise ValueError("sigmas must be a non-empty list of positive numbers")
        unit = spread(X) / REFERENCE_SPREAD  # the levels at this data's scale (spread computed once, not per level)
        self.sigmas = tuple(v * unit for v in sigmas)
        full = X
        if validation is None and weights is None:
            n_val = min(holdout, max(1, len(X) // 4))
            X, validation = (X[:-n_val], X[-n_val:]) if len(X) > n_val else (X, X)
        self.shape = tuple(X.shape[1:])
        self.options = dict(components=components, seed=seed, local_gaussian=local_gaussian, local=local,
                            device=device)
        self._build_members(X)
        if weights is not None:
            w = torch.as_tensor(weights, dtype=torch.float64)
            if w.shape != (len(self.sigmas), len(BLEND_MEMBERS)) or not bool(torch.isfinite(w).all()):
                raise ValueError(f"weights must be finite with shape [{len(self.sigmas)}, {len(BLEND_MEMBERS)}]")
            self.weights = w
        else:
            self.weights = self.fit(check_data(validation, name="validation"), seed=seed)
        if refit and len(X) < len(full):
            self._build_members(full)

    def _build_members(self, X: torch.Tensor) -> None:
        """The members on ``X``, through :func:`boneless.memo.build`: inside a sharing block (one eval run)
        equal members are one object, and answer a query they have answered before from memory."""
        o = self.options
        self.mean = X.double().mean(0).float()
        self.local_gaussian = build(LocalGaussianDenoiser, X, device=o["device"], **(o["local_gaussian"] or {}))
        self.composite = build(PatchCompositeDenoiser, X, device=o["device"])
        self.local = build(WienerLocalDenoiser, X, device=o["device"], **(o["local"] or {}))
        self.gmm = build(GMMDenoiser, X, components=min(o["components"], len(X)), seed=o["seed"], device=o["device"])
        self.gauss = build(GaussianDenoiser, X, device=o["device"])

    def members(self, x: torch.Tensor, alpha: Coef, sigma: Coef, active: Sequence[bool] | None = None
                ) -> torch.Tensor:
        """The member estimates [M, B, *shape] (float64), in the order of ``BLEND_MEMBERS``; a member that
        ``active`` marks False is not computed and its rows are zeros."""
        a, s = check_query(x, self.shape, alpha, sigma)
        calls = [lambda: self.local_gaussian(x, a, s), lambda: self.composite(x, a, s), lambda: self.local(x, a, s),
                 lambda: self.gmm(x, a, s), lambda: self.gauss(x, a, s),
                 lambda: x.double() / a.clamp(min=1e-300).to(x.device)[:, None, None, None]]
        active = [True] * len(calls) if active is None else active
        return torch.stack([call().double().cpu() if on else torch.zeros(x.shape, dtype=torch.float64)
                            for call, on in zip(calls, active)])

    def fit(self, V: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
        """Least-squares weights [len(sigmas), M] of the members on the clean images ``V`` noised at each level."""
        if tuple(V.shape[1:]) != self.shape:
            raise ValueError(f"validation images must have shape [n, {', '.join(map(str, self.shape))}]")
        z = torch.randn(V.shape, generator=torch.Generator().manual_seed(int(seed) + 1))
        n = len(V)
        # every level in one batch (per-query sigma): the members group queries by patch size, so levels that
        # share a size share one pass over the patch locations
        sig = torch.tensor(self.sigmas, dtype=torch.float64).repeat_interleave(n)
        return fit_weights(self.members(torch.cat([V + s * z for s in self.sigmas]), 1.0, sig), V)

    def weights_at(self, lam: torch.Tensor) -> torch.Tensor:
        """Blend weights [B, M] at noise levels ``lam`` [B] (linear in log lam between calibration levels)."""
        if len(self.sigmas) == 1:
            return self.weights[0].expand(len(lam), -1)
        logs = torch.log(torch.tensor(self.sigmas, dtype=torch.float64))
        t = torch.log(lam.clamp(min=1e-300)).clamp(float(logs[0]), float(logs[-1]))
        hi = torch.searchsorted(logs, t).clamp(1, len(logs) - 1)
        lo = hi - 1
        f = ((t - logs[lo]) / (logs[hi] - logs[lo])).clamp(0, 1)[:, None]
        return (1 - f) * self.weights[lo] + f * self.weights[hi]

    def __call__(self, x: torch.Tensor, alpha: Coef, sigma: Coef) -> torch.Tensor:
        a, s = check_query(x, self.shape, alpha, sigma)

        def blended(xk, ak, sk):  # a member with weight 0 at every queried level is not computed
            w = self.weights_at(sk / ak)
            return torch.einsum("bm,mb...->b...", w, self.members(xk, ak, sk, active=(w != 0).any(0).tolist()))
        return prior_mean_at_alpha_zero(self.mean, x, a, s, blended)


# the switch of CoarseToFineDenoiser: sigma / alpha = t / (1 - t) at t = 0.7 of the rectified flow, chosen on
# validation samples (training images 10000-10499, never test images; see docs/DENOISERS.md)
COARSE_TO_FINE_SWITCH = 0.7 / 0.3


class CoarseToFineDenoiser:
    """Global structure from the whole-image posterior at high noise, detail from patches at low noise: this
    project's design for generation.

    ``x0_hat = E[x0 | x]`` under the empirical distribution of ``X`` (:class:`EmpiricalDenoiser`, exact) while
    ``sigma / alpha > switch``, and the :class:`BlendDenoiser` estimate below it. At high noise the exact posterior
    is spread over many training images (its effective size is still in the tens to thousands), so it sets a
    coherent global layout without choosing one image; the patch-based blend then takes over before the posterior
    would collapse onto a single training image (copying), and adds detail that no training image has to supply.
    On held-out denoising it equals ``blend`` at every noise level below the switch.

    Args:
        X: training images [N, C, H, W].
        switch: the ``sigma / alpha`` above which the exact posterior mean is used (``inf``: always ``blend``;
            0: always exact), for data of the reference spread (scaled with the data's spread).
        blend: options of the :class:`BlendDenoiser` (e.g. ``holdout``, ``validation``, ``weights``).
        device: where the members compute.
    """

    def __init__(self, X: torch.Tensor, *, switch: float = COARSE_TO_FINE_SWITCH, blend: dict | None = None,
                 device: torch.device | str | None = None):
        X = check_data(X)
        self.switch = check_switch(switch) * spread(X) / REFERENCE_SPREAD  # at this data's scale
        self.shape = tuple(X.shape[1:])
        self.exact = build(EmpiricalDenoiser, X, device=device)
        self.blend = build(BlendDenoiser, X, device=device, **(blend or {}))  # in one eval run: the blend row's

    def __call__(self, x: torch.Tensor, alpha: Coef, sigma: Coef) -> torch.Tensor:
        return switched(x, alpha, sigma, self.shape, self.switch, self.exact, self.blend)


def switched(x: torch.Tensor, alpha: Coef, sigma: Coef, shape: tuple[int, ...], switch: float, coarse, fine
             ) -> torch.Tensor:
    """``coarse(x)`` for the queries with ``sigma / alpha >= switch`` (alpha = 0 is infinite noise; ``switch =
    inf``: never), ``fine(x)`` for the others."""
    a, s = check_query(x, shape, alpha, sigma)
    high = s >= switch * a
    out = torch.empty_like(x)
    for mask, member in ((high, coarse), (~high, fine)):
        if bool(mask.any()):
            idx = torch.nonzero(mask)[:, 0]
            out[idx.to(x.device)] = member(x[idx.to(x.device)], a[idx], s[idx]).to(x.dtype)
    return out


def check_switch(switch, name: str = "switch") -> float:
    """``switch`` as a float >= 0 (``inf`` allowed), or a one-line ``ValueError`` that calls it ``name``."""
    if not (isinstance(switch, (int, float)) and not math.isnan(switch) and switch >= 0):
        raise ValueError(f"{name} must be a number >= 0, got {switch!r}")
    return float(switch)


# the switches of ParzenLocalDenoiser: t = 0.3 of the rectified flow, chosen with parzen's scale 1.5 and 32 neighbours;
# sigma / alpha = 0.1 and squares of side 3 for the local score machine below; each chosen on validation samples
# (training images 10000-10499, never test images; docs/EVAL.md, "Eighth push" and "Tenth push")
PARZEN_LOCAL_SWITCH = 0.3 / 0.7
PARZEN_LOCAL_LOW_SWITCH = 0.1
PARZEN_LOCAL_LOW_SIDE = 3
# the members that parzen-local's ``middle`` may name, between the two switches
PARZEN_LOCAL_MIDDLE = {"local-gaussian": LocalGaussianDenoiser, "patch-composite": PatchCompositeDenoiser,
                       "blend": BlendDenoiser}


class ParzenLocalDenoiser:
    """Manifold Parzen windows at high noise, local Gaussians of patches in the middle, the patch posterior of
    small squares at the lowest noise levels: this project's design for generation.

    ``x0_hat`` is the :class:`~boneless.closed_form.ParzenDenoiser` estimate (``parzen``: one low-rank Gaussian
    around each training image) while ``sigma / alpha >= switch``, the :class:`~boneless.patches.
    LocalGaussianDenoiser` estimate (``local-gaussian``; or the patch composite, ``middle="patch-composite"``, or
    the :class:`BlendDenoiser`, ``middle="blend"``) below it down to ``low_switch``, and the :class:`~boneless.
    patches.LocalDenoiser` estimate (``local``, Kamb & Ganguli's local score machine, squares of side 3 by default)
    below ``low_switch``. Above the switch the Parzen
    posterior weighs the training images nearly as the exact one does, so the flow picks classes in the data's
    proportions (the local Gaussian alone under-samples the rarer shapes there); unlike the exact posterior its
    components have width, so the state it hands on lies near, not on, a training image, and the patches below add
    the detail. A Gaussian prior of a square cannot hold a pixel that is either exactly background or part of the
    garment, so the local Gaussians leave a faint haze around the shapes; at the lowest noise levels the posterior
    over the training squares themselves (a mixture of points) takes it away.

    Args:
        X: training images [N, C, H, W].
        switch: the ``sigma / alpha`` at and above which the Parzen estimate is used (``inf``: never; 0: always),
            for data of the reference spread (scaled with the data's spread).
        low_switch: the ``sigma / alpha`` below which the local score machine answers (0: never), likewise scaled;
            at most ``switch``.
        parzen: options of the Parzen member (``neighbours``, ``scale``, ``ridge``).
        middle: the member between the switches, a name of :data:`PARZEN_LOCAL_MIDDLE` (default
            ``local-gaussian``).
        local_gaussian: options of the middle member (e.g. ``schedule``, ``neighbours``; the name is that of the
            default member).
        local: options of the local score member (default ``schedule=3``: squares of side 3 at every level).
        device: where the members compute.
    """

    def __init__(self, X: torch.Tensor, *, switch: float = PARZEN_LOCAL_SWITCH,
                 low_switch: float = PARZEN_LOCAL_LOW_SWITCH, parzen: dict | None = None,
                 middle: str = "local-gaussian", local_gaussian: dict | None = None, local: dict | None = None,
                 device: torch.device | str | None = None):
        X = check_data(X)
        switch, low_switch = check_switch(switch), check_switch(low_switch, "low_switch")
        if low_switch > switch:
            raise ValueError(f"low_switch must be at most switch ({switch}), got {low_switch}")
        if middle not in PARZEN_LOCAL_MIDDLE:
            raise ValueError(f"middle must be one of {', '.join(PARZEN_LOCAL_MIDDLE)}, got {middle!r}")
        s = spread(X)  # both switches at this data's scale
        self.switch, self.low_switch = switch * s / REFERENCE_SPREAD, low_switch * s / REFERENCE_SPREAD
        self.shape = tuple(X.shape[1:])
        self.parzen = build(ParzenDenoiser, X, device=device, **(parzen or {}))
        self.middle = build(PARZEN_LOCAL_MIDDLE[middle], X, device=device, **(local_gaussian or {}))
        self.local = build(LocalDenoiser, X, device=device, **{"schedule": PARZEN_LOCAL_LOW_SIDE, **(local or {})})

    def __call__(self, x: torch.Tensor, alpha: Coef, sigma: Coef) -> torch.Tensor:
        return switched(x, alpha, sigma, self.shape, self.switch, self.parzen, self._below)

    def _below(self, x: torch.Tensor, alpha: Coef, sigma: Coef) -> torch.Tensor:
        return switched(x, alpha, sigma, self.shape, self.low_switch, self.middle, self.local)
