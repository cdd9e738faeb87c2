"""Aggregation of denoisers weighted by Stein's unbiased risk estimate (SURE), per query and per region.

For ``x_t = alpha x0 + sigma eps`` write ``y = x_t / alpha = x0 + lam z`` (``lam = sigma / alpha``, ``z`` standard
normal). Stein's lemma gives, for any weakly differentiable estimate ``f(y)`` of ``x0`` in ``D`` dimensions,

``E |f(y) - x0|^2 = E [ |f(y) - y|^2 - D lam^2 + 2 lam^2 div_y f(y) ]``

(Stein 1981): the risk of an estimate can be estimated from the noisy query alone, without the clean image. The
divergence is estimated with one Monte-Carlo probe (Ramani, Blu & Unser 2008),
``div f(y) ~ b . (f(y + tau b) - f(y)) / tau`` with ``b`` standard normal, unbiased as ``tau -> 0`` since
``E[b b^T] = I``. Each query gets its own probe (one fixed probe for all would repeat the same error
``b^T J b - tr J`` in every query's weights), drawn from a seed that is a function of the query's sign pattern: the
denoiser stays a deterministic function of its input, a query's answer does not depend on the batch it comes in,
and the probe is unchanged when data and query are scaled together. For a convex combination
``f_w = sum_m w_m f_m`` of experts the estimate is quadratic in ``w``:

``SURE(w) = w^T A w + 2 lam^2 d^T w - D lam^2``, ``A_mn = (f_m - y) . (f_n - y)``, ``d_m = div f_m``,

and :class:`SUREExpertsDenoiser` minimises it over the simplex for every query (and, with ``region``, for every
``region x region`` block of pixels, whose partial SURE uses the same sums restricted to the block). The weights
depend on the noisy query only: no clean image is read, so nothing is fitted to held-out data, and a memorising
expert is judged on the query in front of it (SURE on the pool's own images would instead measure in-sample error,
which a memorising expert wins).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence

import numpy as np
import torch

from .checks import positive_int
from .closed_form import GaussianDenoiser, GMMDenoiser
from .data import check_data
from .denoisers import Coef, EmpiricalDenoiser, check_query, prior_mean_at_alpha_zero
from .memo import build
from .patches import LocalDenoiser, LocalGaussianDenoiser, PatchCompositeDenoiser

# the experts this module can build by name (the registry imports this module, so it cannot import the registry);
# "identity" is the noisy input y itself (divergence D exactly)
EXPERTS = {
    "empirical": EmpiricalDenoiser,
    "gaussian": GaussianDenoiser,
    "gmm": GMMDenoiser,
    "local": LocalDenoiser,
    "patch-composite": PatchCompositeDenoiser,
    "local-gaussian": LocalGaussianDenoiser,
}
# without "identity": in sampling, any weight on the noisy input at high noise stays in the sample as noise
DEFAULT_EXPERTS = ("patch-composite", "gmm", "gaussian")


def project_simplex(v: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row of ``v`` [..., M] onto the probability simplex (sort-based; Held, Wolfe
    & Crowder 1974)."""
    M = v.shape[-1]
    u = v.sort(-1, descending=True).values
    css = u.cumsum(-1) - 1
    k = torch.arange(1, M + 1, dtype=v.dtype, device=v.device)
    rho = ((u - css / k) > 0).sum(-1, keepdim=True)
    theta = css.gather(-1, rho - 1) / rho.to(v.dtype)
    return (v - theta).clamp(min=0)


def simplex_quadratic(A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``argmin_w w^T A w + 2 b^T w`` over the simplex, exactly, batched: ``A`` [..., M, M] symmetric positive
    semi-definite, ``b`` [..., M] (float64). The minimiser of a convex quadratic on the simplex is, on its support
    ``S``, the minimiser on the affine hull of ``S`` (Karush-Kuhn-Tucker): every non-empty ``S`` (``2^M - 1``
    of them; M is a handful of experts) is solved by its linear KKT system (least squares, so coinciding experts
    are fine), infeasible solutions (a negative weight) are dropped, and the best feasible one is kept (a vertex
    always is)."""
    M = A.shape[-1]
    lead = A.shape[:-2]
    best = torch.full(lead, math.inf, dtype=A.dtype, device=A.device)
    w_best = torch.zeros(*lead, M, dtype=A.dtype, device=A.device)
    for mask in range(1, 1 << M):
        S = [m for m in range(M) if mask >> m & 1]
        k = len(S)
        K = torch.zeros(*lead, k + 1, k + 1, dtype=A.dtype, device=A.device)
        K[..., :k, :k] = 2 * A[..., S, :][..., :, S]
        K[..., :k, k] = 1
        K[..., k, :k] = 1
        rhs = torch.cat([-2 * b[..., S], torch.ones(*lead, 1, dtype=A.dtype, device=A.device)], -1)
        sol = torch.linalg.lstsq(K.reshape(-1, k + 1, k + 1), rhs.reshape(-1, k + 1, 1),
                                 driver="gelsd").solution.reshape(*lead, k + 1)[..., :k]
        w = torch.zeros(*lead, M, dtype=A.dtype, device=A.device)
        w[..., S] = sol
        obj = (w[..., None, :] @ A @ w[..., :, None])[..., 0, 0] + 2 * (b * w).sum(-1)
        take = (sol.min(-1).values >= -1e-12) & (obj < best)
        best = torch.where(take, obj, best)
        w_best = torch.where(take[..., None], w, w_best)
    return project_simplex(w_best)  # clears the rounding-level negatives


class SUREExpertsDenoiser:
    """Convex combination of expert denoisers with weights that minimise SURE for each query (and region): this
    project's design.

    ``x0_hat = sum_m w_m(y) f_m(y)`` over the experts ``f_m`` (built on ``X``; ``"identity"`` is ``y``), with
    ``w(y)`` on the simplex minimising the quadratic SURE of the module docstring, computed from the query and one
    Monte-Carlo probe ``b`` per query (:meth:`probes`) at step ``tau = probe * lam``. Each expert is called
    twice per query (at ``y`` and ``y + tau b``). One expert gives weight 1 (the expert itself).

    Args:
        X: training images [N, C, H, W] (or data [N, D] with ``region=None``).
        experts: names in :data:`EXPERTS`, or ``"identity"``.
        region: side of the square pixel blocks that get their own weights (None: one set per query).
        probe: the probe step relative to the noise level, ``tau = probe * lam``.
        seed: seed of the probe.
        options: per-expert keyword options, e.g. ``{"gmm": {"components": 32}}``.
        device: where the experts compute.
    """

    def __init__(self, X: torch.Tensor, *, experts: Sequence[str] = DEFAULT_EXPERTS, region: int | None = None,
                 probe: float = 0.05, seed: int = 0, options: dict | None = None,
                 device: torch.device | str | None = None):
        X = check_data(X)
        names = tuple(experts)
        if not names or len(set(names)) != len(names):
            raise ValueError("experts must be a non-empty list of distinct names")
        unknown = [n for n in names if n != "identity" and n not in EXPERTS]
        if unknown:
            raise ValueError(f"unknown expert {unknown[0]!r}: choose from {', '.join((*EXPERTS, 'identity'))}")
        positive_int(region, "region", allow_none=True)
        if region is not None and X.ndim != 4:
            raise ValueError(f"region needs image data [N, C, H, W], got shape {list(X.shape)}")
        if not (isinstance(probe, (int, float)) and math.isfinite(probe) and probe > 0):
            raise ValueError(f"probe must be a positive number, got {probe!r}")
        options = dict(options or {})
        stray = [k for k in options if k not in names]
        if stray:
            raise ValueError(f"options for {stray[0]!r}, which is not among the experts")
        self.names, self.region, self.probe = names, region, float(probe)
        self.shape = tuple(X.shape[1:])
        self.mean = X.double().mean(0).float()
        kw = {} if device is None else {"device": device}
        self.experts = [None if n == "identity" else build(EXPERTS[n], X, **kw, **options.get(n, {})) for n in names]
        self.seed = int(seed)

    def probes(self, x: torch.Tensor) -> torch.Tensor:
        """The probe ``b`` [B, *shape] (float64) of each query: standard normal, seeded by ``seed`` and the query's
        sign pattern (deterministic, independent of the batch, invariant to positive scaling)."""
        signs = np.packbits((x.detach().reshape(len(x), -1) > 0).cpu().numpy(), axis=1)
        out = torch.empty(len(x), *self.shape, dtype=torch.float64)
        for i, row in enumerate(signs):
            g = torch.Generator().manual_seed((self.seed << 32) + zlib.crc32(row.tobytes()))
            out[i] = torch.randn(self.shape, generator=g, dtype=torch.float64)
        return out

    def estimates(self, x: torch.Tensor, alpha: Coef, sigma: Coef) -> tuple[torch.Tensor, torch.Tensor]:
        """The experts' estimates ``f_m`` [M, B, D] and probe divergences ``b * (f_m(y + tau b) - f_m(y)) / tau``
        per coordinate [M, B, D] (their sum over coordinates estimates ``div f_m``; exactly 1 per coordinate for
        ``identity``), float64, for queries with ``alpha > 0``."""
        a, s = check_query(x, self.shape, alpha, sigma)
        B = len(x)
        lam = (s / a).double()
        tau = (self.probe * lam).clamp(min=1e-300)  # lam = 0 (no noise): the divergence term vanishes anyway
        shape = (B,) + (1,) * len(self.shape)
        b = self.probes(x)
        x_probe = (x.double() + (a.double() * tau).reshape(shape).to(x.device) * b.to(x.device)).to(x.dtype)
        y = (x.double() / a.double().to(x.device).reshape(shape)).reshape(B, -1).cpu()
        b = b.reshape(B, -1)
        F, G = [], []
        for name, den in zip(self.names, self.experts):
            if den is None:  # identity: f(y) = y, whose divergence is D exactly (no probe needed)
                F.append(y)
                G.append(torch.ones_like(y))
                continue
            f0 = den(x, a, s).double().reshape(B, -1).cpu()
            f1 = den(x_probe, a, s).double().reshape(B, -1).cpu()
            F.append(f0)
            G.append(b * (f1 - f0) / tau[:, None].cpu())
        return torch.stack(F), torch.stack(G)

    def weights(self, x: torch.Tensor, alpha: Coef, sigma: Coef) -> torch.Tensor:
        """SURE-minimising weights [B, R, M] (R regions: 1, or the blocks of side ``region``)."""
        return self._combine(x, alpha, sigma)[1]

    def _combine(self, x, alpha, sigma):
        a, s = check_query(x, self.shape, alpha, sigma)
        F, G = self.estimates(x, a, s)  # [M, B, D]
        lam2 = ((s / a).double() ** 2)[:, None]  # [B, 1]
        y = (x.double() / a.double().to(x.device).reshape((-1,) + (1,) * len(self.shape))).reshape(len(x), -1).cpu()
        blocks = self._blocks()  # [R, D] 0/1
        Rm = (F - y[None]).permute(1, 0, 2)  # [B, M, D]
        A = torch.einsum("bmd,rd,bnd->brmn", Rm, blocks, Rm)
        bvec = lam2[:, :, None] * torch.einsum("mbd,rd->brm", G, blocks)
        w = simplex_quadratic(A, bvec)  # [B, R, M]
        per_pixel = torch.einsum("brm,rd->bmd", w, blocks)  # each pixel lies in exactly one block
        out = torch.einsum("bmd,mbd->bd", per_pixel, F)
        return out, w

    def _blocks(self) -> torch.Tensor:
        D = math.prod(self.shape)
        if self.region is None:
            return torch.ones(1, D, dtype=torch.float64)
        C, H, W = self.shape
        r = self.region
        rows = torch.arange(H) // r
        cols = torch.arange(W) // r
        ids = (rows[:, None] * ((W + r - 1) // r) + cols[None]).expand(C, H, W).reshape(-1)
        return torch.nn.functional.one_hot(ids).T.to(torch.float64)

    def __call__(self, x: torch.Tensor, alpha: Coef, sigma: Coef) -> torch.Tensor:
        a, s = check_query(x, self.shape, alpha, sigma)
        return prior_mean_at_alpha_zero(self.mean, x, a, s,
                                        lambda xk, ak, sk: self._combine(xk, ak, sk)[0].reshape(xk.shape))
