"""Whole-image closed-form denoisers that generalise: Gaussian (Wiener), smoothed CFDM, Gaussian mixture.

Each follows the one protocol ``den(x, alpha, sigma) -> x0_hat`` for ``x_t = alpha x0 + sigma eps``,
is constructible as ``cls(X)`` with good defaults, and exposes ``.shape`` (one example's shape).

- :class:`GaussianDenoiser` (``gaussian``): the posterior mean under ``N(mu, Sigma)`` fitted to the data, i.e. the
  linear MMSE (Wiener) denoiser, computed in the eigenbasis of ``Sigma`` (optionally of low rank).
- :class:`SmoothedDenoiser` (``smoothed``): the smoothed closed-form diffusion model of Scarvelis, Borde &
  Solomon (arXiv 2310.12395): the exact denoiser averaged over Gaussian perturbations of its input.
- :class:`GMMDenoiser` (``gmm``): the exact posterior mean under a Gaussian mixture fitted by k-means with
  covariances shrunk toward the global one.
- :class:`ParzenDenoiser` (``parzen``): the exact posterior mean under manifold Parzen windows (Vincent & Bengio
  2002), one low-rank Gaussian around each training example.
"""

from __future__ import annotations

import math

import torch

from .checks import non_negative, positive_int
from .data import REFERENCE_SPREAD, check_data, spread
from .denoisers import Coef, EmpiricalDenoiser, check_query, prior_mean_at_alpha_zero


VAR_FLOOR = 1e-12  # relative floor on predictive variances (only reached at sigma = 0)


def _device(X: torch.Tensor, device) -> torch.device:
    return torch.device(device) if device is not None else X.device


def wiener_gain(lam: torch.Tensor, a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Per-direction gain ``g = alpha lam / (alpha^2 lam + sigma^2)`` [B, r] for variances ``lam`` [r] and
    per-query ``alpha``, ``sigma`` [B] (float64). Where ``alpha^2 lam + sigma^2 = 0`` (a direction of zero
    variance observed without noise) the posterior mean keeps the prior mean: ``g = 0``."""
    den = a[:, None] ** 2 * lam[None] + s[:, None] ** 2
    return torch.where(den > 0, a[:, None] * lam[None] / den.clamp(min=1e-300), torch.zeros_like(den))


class GaussianDenoiser:
    """The posterior mean under a Gaussian fitted to the data, ``x0 ~ N(mu, Sigma)`` (the Wiener filter):

    ``x0_hat = mu + alpha Sigma (alpha^2 Sigma + sigma^2 I)^-1 (x - alpha mu)
             = mu + U diag(alpha lam / (alpha^2 lam + sigma^2)) U^T (x - alpha mu)``

    with ``Sigma = U diag(lam) U^T`` decomposed once (float64). With ``rank=r`` only the top ``r``
    eigenvectors are kept and the remaining variance is spread evenly over the discarded directions
    (probabilistic PCA: ``lam_res`` = mean of the discarded eigenvalues), so ``rank=D`` is the full model.
    With more dimensions than examples (``D > N``) the covariance comes from the ``N x N`` Gram matrix: rank at
    most ``N - 1``, zero variance (gain 0, the prior mean) off the data's span. This is the project's one Wiener
    filter, the reference of every held-out "ratio to Wiener" (:mod:`boneless.metrics`).

    Args:
        X: training examples [N, *shape].
        rank: number of principal directions kept (default: all).
        device: where the mean and eigenbasis live and the computation runs (default: where ``X`` is).
    """

    def __init__(self, X: torch.Tensor, *, rank: int | None = None, device: torch.device | str | None = None):
        X = check_data(X)
        positive_int(rank, "rank", allow_none=True)
        self.shape = tuple(X.shape[1:])
        self.device = _device(X, device)
        X64 = X.reshape(len(X), -1).to(self.device, torch.float64)
        N, D = X64.shape
        self.mu = X64.mean(0)
        Xc = X64 - self.mu
        if D <= N:
            lam, U = torch.linalg.eigh(Xc.T @ Xc / N)
        else:  # D > N: the rank <= N - 1 covariance from the N x N Gram matrix; zero variance off the data's span
            lam, V = torch.linalg.eigh(Xc @ Xc.T / N)
            keep = lam > lam.max() * 1e-12
            lam, U = lam[keep], Xc.T @ V[:, keep] / (lam[keep] * N).sqrt()
        lam, U = lam.flip(0).clamp(min=0), U.flip(1)  # decreasing variance
        r = len(lam) if rank is None else min(rank, len(lam))
        self.lam, self.U = lam[:r].contiguous(), U[:, :r].contiguous()
        self.lam_res = float(lam[r:].sum()) / (D - r) if r < D else 0.0  # the discarded variance, spread evenly
        self.rank = r

    @property
    def mean(self) -> torch.Tensor:
        """The data mean, [*shape] float32."""
        return self.mu.float().reshape(self.shape)

    @property
    def covariance(self) -> torch.Tensor:
        """The model covariance ``U diag(lam) U^T + lam_res (I - U U^T)`` [D, D] float64."""
        D = self.mu.numel()
        P = self.U @ self.U.T
        return (self.U * self.lam) @ self.U.T + self.lam_res * (torch.eye(D, dtype=P.dtype, device=P.device) - P)

    def __call__(self, x: torch.Tensor, alpha: Coef, sigma: Coef) -> torch.Tensor:
        a, s = check_query(x, self.shape, alpha, sigma)
        a, s = a.to(self.device), s.to(self.device)
        y = x.reshape(len(x), -1).to(self.device, torch.float64) - a[:, None] * self.mu
        z = y @ self.U  # [B, r] coordinates in the eigenbasis
        out = self.mu + (z * wiener_gain(self.lam, a, s)) @ self.U.T
        if self.rank < self.mu.numel():  # the discarded directions, isotropic variance lam_res
            g = wiener_gain(torch.tensor([self.lam_res], dtype=torch.float64, device=self.device), a, s)
            out += g * (y - z @ self.U.T)
        return out.to(x.device, x.dtype).reshape(x.shape)

    def expected_mse(self, alpha: float, sigma: float) -> float:
        """The model's own mean squared error per dimension, ``(1/D) sum_j lam_j sigma^2 / (alpha^2 lam_j + sigma^2)``
        (exact when the data are Gaussian with this mean and covariance)."""
        a, s = torch.tensor([float(alpha)], dtype=torch.float64), torch.tensor([float(sigma)], dtype=torch.float64)
        lam = self.lam.cpu()
        post = lam - a * lam * wiener_gain(lam, a, s)[0]  # posterior variance lam sigma^2 / (alpha^2 lam + sigma^2)
        total = float(post.sum())
        D = self.mu.numel()
        if self.rank < D:
            lr = torch.tensor([self.lam_res], dtype=torch.float64)
            total += (D - self.rank) * float(lr - a * lr * wiener_gain(lr, a, s)[0])
        return total / D


class SmoothedDenoiser:
    """Smoothed closed-form diffusion model (sigma-CFDM; Scarvelis, Borde & Solomon, arXiv 2310.12395).

    The paper smooths the closed-form score by averaging it over Gaussian perturbations of the logits'
    argument: ``s_tau(x, t) = E_eps[(alpha m(x + tau eps) - x) / sigma^2]``, with ``m`` the exact posterior mean
    (the softmax-weighted average of the training examples), ``eps ~ N(0, I)`` and smoothing scale ``tau``
    (their sigma). By Tweedie's formula the corresponding denoiser is

    ``x0_hat(x) = E_eps[ m(x + tau eps) ]``,

    estimated with ``draws`` perturbations drawn once from ``seed`` (so the denoiser is a deterministic,
    smooth function of ``x``). ``smoothing=0`` is exactly :class:`~boneless.denoisers.EmpiricalDenoiser`.
    The smoothing biases samples toward barycentres of nearby training examples instead of copies.

    Args:
        X: training examples [N, *shape].
        smoothing: the scale ``tau`` of the perturbation, in the units of ``x_t``, for data of the reference
            spread (:data:`boneless.data.REFERENCE_SPREAD`; scaled with the data's own spread).
        draws: number of perturbations ``M`` in the Monte-Carlo average.
        seed: seed of the perturbations' own generator.
        temperature, chunk_size, device: as for :class:`~boneless.denoisers.EmpiricalDenoiser`.
    """

    def __init__(self, X: torch.Tensor, *, smoothing: float = 0.3, draws: int = 8, seed: int = 0,
                 temperature: float = 1.0, chunk_size: int = 2048, device: torch.device | str | None = None):
        self.exact = EmpiricalDenoiser(X, temperature=temperature, chunk_size=chunk_size, device=device)
        self.shape = self.exact.shape
        self.smoothing = non_negative(smoothing, "smoothing") * spread(self.exact.data) / REFERENCE_SPREAD
        positive_int(draws, "draws")
        g = torch.Generator().manual_seed(int(seed))
        self.eps = torch.randn(draws, *self.shape, generator=g)  # [M, *shape]

    def __call__(self, x: torch.Tensor, alpha: Coef, sigma: Coef) -> torch.Tensor:
        a, s = check_query(x, self.shape, alpha, sigma)
        if self.smoothing == 0:
            return self.exact(x, a, s)
        M, B = len(self.eps), len(x)
        xs = x[None] + self.smoothing * self.eps.to(x.device, x.dtype)[:, None]  # [M, B, *shape]
        out = self.exact(xs.reshape(M * B, *self.shape), a.repeat(M), s.repeat(M))
        return out.reshape(M, B, *self.shape).mean(0)


def kmeans(X: torch.Tensor, k: int, *, iterations: int = 30, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means with k-means++ seeding. ``X`` [N, D]; returns centres [k, D] and labels [N] (int64).

    Randomness from ``seed`` only (own generator). Empty clusters are re-seeded at the worst-fitted point."""
    N = len(X)
    k = min(k, N)
    g = torch.Generator().manual_seed(int(seed))
    Xf = X.float()
    sq = (Xf * Xf).sum(1)
    centres = Xf[torch.randint(N, (1,), generator=g)]
    d2 = (sq - 2 * Xf @ centres[0] + (centres[0] ** 2).sum()).clamp(min=0)
    for _ in range(1, k):  # k-means++: next centre with probability proportional to d^2
        p = d2.double() / d2.double().sum() if float(d2.sum()) > 0 else torch.full((N,), 1.0 / N, dtype=torch.float64)
        c = Xf[torch.multinomial(p, 1, generator=g)]
        centres = torch.cat([centres, c])
        d2 = torch.minimum(d2, (sq - 2 * Xf @ c[0] + (c[0] ** 2).sum()).clamp(min=0))
    labels = torch.zeros(N, dtype=torch.long)
    for _ in range(iterations):
        dist = sq[:, None] - 2 * Xf @ centres.T + (centres * centres).sum(1)[None]
        new = dist.argmin(1)
        counts = torch.bincount(new, minlength=k)
        sums = torch.zeros_like(centres).index_add_(0, new, Xf)
        empty = counts == 0
        if bool(empty.any()):  # re-seed empty clusters at the points farthest from their centres
            far = dist.gather(1, new[:, None])[:, 0].topk(int(empty.sum())).indices
            sums[empty], counts[empty] = Xf[far], 1
            new[far] = torch.nonzero(empty)[:, 0]
        centres = sums / counts[:, None]
        if bool((new == labels).all()):
            break
        labels = new
    return centres, labels


class GMMDenoiser:
    """The exact posterior mean under a Gaussian mixture ``x0 ~ sum_k pi_k N(mu_k, Sigma_k)``:

    ``x0_hat = sum_k r_k(x) [mu_k + alpha Sigma_k (alpha^2 Sigma_k + sigma^2 I)^-1 (x - alpha mu_k)]``,
    ``r_k(x) = softmax_k(log pi_k + log N(x; alpha mu_k, alpha^2 Sigma_k + sigma^2 I))``,

    each component evaluated in its own eigenbasis (float64). The mixture is fitted by k-means (k-means++
    seeding from ``seed``): ``pi_k = n_k / N``, ``mu_k`` the cluster means, and covariances shrunk toward the
    global covariance ``Sigma`` with a pseudo-count ``shrinkage``:
    ``Sigma_k = (n_k S_k + shrinkage Sigma) / (n_k + shrinkage)``. One component is exactly ``gaussian``.

    Args:
        X: training examples [N, *shape].
        components: number of mixture components ``K``.
        shrinkage: pseudo-count of the global covariance in each component's covariance (>= 0).
        iterations: k-means iterations (at most).
        seed: seed of the k-means++ initialisation.
        device: where the parameters live and the computation runs.
    """

    def __init__(self, X: torch.Tensor, *, components: int = 16, shrinkage: float = 64.0, iterations: int = 30,
                 seed: int = 0, device: torch.device | str | None = None):
        X = check_data(X)
        positive_int(components, "components")
        positive_int(iterations, "iterations")
        shrinkage = non_negative(shrinkage, "shrinkage")
        self.shape = tuple(X.shape[1:])
        self.device = _device(X, device)
        X64 = X.reshape(len(X), -1).to(torch.float64)
        N, D = X64.shape
        if components == 1:
            labels = torch.zeros(N, dtype=torch.long)
        else:
            _, labels = kmeans(X64, components, iterations=iterations, seed=seed)
        mu_all = X64.mean(0)
        Xc = X64 - mu_all
        cov_all = Xc.T @ Xc / N
        mus, lams, Us, log_pi = [], [], [], []
        for k in range(int(labels.max()) + 1):
            Xk = X64[labels == k]
            if len(Xk) == 0:
                continue
            mu = Xk.mean(0)
            Xkc = Xk - mu
            cov = (Xkc.T @ Xkc + shrinkage * cov_all) / (len(Xk) + shrinkage)
            lam, U = torch.linalg.eigh(cov)
            mus.append(mu), lams.append(lam.clamp(min=0)), Us.append(U), log_pi.append(math.log(len(Xk) / N))
        self.mu = torch.stack(mus).to(self.device)  # [K, D]
        self.lam = torch.stack(lams).to(self.device)  # [K, D]
        self.U = torch.stack(Us).to(self.device)  # [K, D, D]
        self.log_pi = torch.tensor(log_pi, dtype=torch.float64, device=self.device)  # [K]
        self.components = len(mus)
        self.lam_max = float(self.lam.max())

    def responsibilities(self, x: torch.Tensor, alpha: Coef, sigma: Coef) -> torch.Tensor:
        """Posterior component probabilities ``r_k(x)`` [B, K] (float64)."""
        return self._posterior(x, alpha, sigma)[1]

    def _posterior(self, x, alpha, sigma):
        a, s = check_query(x, self.shape, alpha, sigma)
        a, s = a.to(self.device), s.to(self.device)
        x64 = x.reshape(len(x), -1).to(self.device, torch.float64)
        B = len(x64)
        logits = torch.empty(B, self.components, dtype=torch.float64, device=self.device)
        means = torch.empty(self.components, B, x64.shape[1], dtype=torch.float64, device=self.device)
        for k in range(self.components):
            y = x64 - a[:, None] * self.mu[k]
            z = y @ self.U[k]  # [B, D]
            v = a[:, None] ** 2 * self.lam[k][None] + s[:, None] ** 2  # predictive variances [B, D]
            # floor (matters only at sigma = 0, where a direction of zero variance would give 0 / 0)
            v = torch.maximum(v, VAR_FLOOR * (a ** 2 * self.lam_max + s ** 2)[:, None])
            # log N(x; alpha mu_k, alpha^2 Sigma_k + sigma^2 I) up to the constant -D/2 log(2 pi)
            logits[:, k] = self.log_pi[k] - 0.5 * ((z * z / v).sum(1) + v.log().sum(1))
            means[k] = self.mu[k] + (z * wiener_gain(self.lam[k], a, s)) @ self.U[k].T
        r = torch.softmax(logits, 1)
        return means, r

    def __call__(self, x: torch.Tensor, alpha: Coef, sigma: Coef) -> torch.Tensor:
        means, r = self._posterior(x, alpha, sigma)
        out = torch.einsum("bk,kbd->bd", r, means)
        return out.to(x.device, x.dtype).reshape(x.shape)


class ParzenDenoiser:
    """The exact posterior mean under manifold Parzen windows (Vincent & Bengio 2002): a mixture with one Gaussian
    per training example ``x_i``, of equal weight, mean ``x_i`` and covariance

    ``C_i = scale^2 / K sum_j (x_j - x_i)(x_j - x_i)^T + ridge I``  over the ``K`` nearest other examples ``x_j``,

    a Gaussian stretched along the directions in which the data continue around ``x_i``. In the noise-normalised
    frame ``y = x / alpha``, ``lam = sigma / alpha``:

    ``x0_hat = sum_i r_i(y) [x_i + C_i (C_i + lam^2 I)^-1 (y - x_i)]``,
    ``r_i(y) = softmax_i(log N(y; x_i, C_i + lam^2 I))``,

    each component evaluated exactly in the ``K``-dimensional span of its neighbours (its eigenbasis there, the
    isotropic rest in closed form), in float64. Unlike the empirical distribution, every component has full
    support, so the flow ends near, not on, the training examples; at high noise the components weigh the data
    nearly as the exact posterior does, and so do the classes the flow picks (docs/EVAL.md, "Eighth push").
    ``scale = 0`` is the exact denoiser of the data blurred by ``N(0, ridge I)``.

    Args:
        X: training examples [N, *shape].
        neighbours: ``K``, the neighbours that shape each component (at most ``N - 1``).
        scale: the factor on the neighbour deviations (>= 0).
        ridge: the isotropic variance of every component (> 0), for data of the reference spread (scaled with the
            data's variance).
        max_gb: refuse (one-line error) to build when the ``N K D`` float64 directions would take more gigabytes.
        device: where the parameters live and the computation runs. Memory: ``N K D`` float64 numbers.
    """

    def __init__(self, X: torch.Tensor, *, neighbours: int = 32, scale: float = 1.5, ridge: float = 1e-4,
                 max_gb: float = 8.0, device: torch.device | str | None = None):
        X = check_data(X)
        positive_int(neighbours, "neighbours")
        scale = non_negative(scale, "scale")
        if non_negative(ridge, "ridge") == 0:
            raise ValueError("ridge must be > 0: every component needs full support")
        N, D = len(X), X[0].numel()
        K = min(neighbours, N - 1)
        gb = N * K * D * 8 / 1e9
        if gb > non_negative(max_gb, "max_gb"):
            raise ValueError(f"parzen would hold {N} x {K} x {D} float64 directions ({gb:.1f} GB, more than "
                             f"max_gb={max_gb:g}): use fewer neighbours or a smaller pool, or raise max_gb")
        self.shape = tuple(X.shape[1:])
        self.device = _device(X, device)
        F = X.reshape(N, D).to(self.device, torch.float64)
        self.ridge = float(ridge) * (spread(X) / REFERENCE_SPREAD) ** 2
        self.mu = F.mean(0)
        F = F - self.mu  # centred: the expanded squared distances below lose nothing to an offset of the data
        self.X, self.xx = F, (F * F).sum(1)
        self.var = torch.zeros(N, K, dtype=torch.float64, device=self.device)
        self.V = torch.zeros(N, K, D, dtype=torch.float64, device=self.device)  # unit principal directions
        step = max(1, (1 << 24) // (N + K * D))
        for i in range(0, N, step):
            self.var[i:i + step], self.V[i:i + step] = _components(F, self.xx, i, step, K, scale)
        self.Vx = (self.V @ F[..., None])[..., 0]  # [N, K]

    def __call__(self, x: torch.Tensor, alpha: Coef, sigma: Coef) -> torch.Tensor:
        a, s = check_query(x, self.shape, alpha, sigma)
        return prior_mean_at_alpha_zero(self.mu.reshape(self.shape), x, a, s, self._estimate)  # the mixture's mean

    def _estimate(self, x, a, s):
        N, K = self.var.shape
        step = max(1, (1 << 24) // max(N * K, N))  # [step, N, K] float64 temporaries of at most 128 MB
        y = x.reshape(len(x), -1).to(self.device, torch.float64) / a.to(self.device)[:, None] - self.mu
        lam2 = (s / a).to(self.device) ** 2
        out = torch.cat([self._mean(y[i:i + step], lam2[i:i + step]) for i in range(0, len(y), step)]) + self.mu
        return out.to(x.device, x.dtype).reshape(x.shape)

    def _mean(self, y, lam2):
        (N, K), D = self.var.shape, y.shape[1]
        c = self.ridge + lam2  # [B] the isotropic variance of every component's predictive
        vv = (y * y).sum(1)[:, None] + self.xx[None] - 2 * y @ self.X.T  # |y - x_i|^2 [B, N]
        b = (y @ self.V.reshape(N * K, D).T).reshape(len(y), N, K) - self.Vx  # V_i (y - x_i)
        g = self.var + c[:, None, None]  # the predictive variances along the directions [B, N, K]
        shrink = self.var / g
        # log N(y; x_i, C_i + lam^2 I) up to a constant: Mahalanobis distance and log-determinant by Woodbury
        maha = (vv - (b * b * shrink).sum(2)) / c[:, None]
        logdet = (D - K) * c.log()[:, None] + g.log().sum(2)
        r = torch.softmax(-0.5 * (maha + logdet), 1)  # [B, N]
        # component means y - lam^2 (C_i + lam^2 I)^-1 (y - x_i), with (C_i + lam^2 I)^-1 v = (v - V^T shrink b) / c
        mix = r @ self.X + (r[..., None] * shrink * b).reshape(len(y), N * K) @ self.V.reshape(N * K, D)
        return y - (lam2 / c)[:, None] * (y - mix)


def _components(F: torch.Tensor, xx: torch.Tensor, start: int, step: int, K: int, scale: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The principal variances [n, K] and unit directions [n, K, D] of ``scale^2 / K sum_j (x_j - x_i)(x_j -
    x_i)^T`` for the rows ``x_i`` of ``F`` from ``start`` to ``start + step``, over the ``K`` nearest other rows
    ``x_j`` (squared distances in float64, ``xx`` the rows' squared norms); a direction of zero variance is a row
    of zeros."""
    rows = F[start:start + step]
    if K == 0:
        return F.new_zeros(len(rows), 0), F.new_zeros(len(rows), 0, F.shape[1])
    d2 = xx[start:start + step, None] + xx[None] - 2 * rows @ F.T
    d2[torch.arange(len(rows)), torch.arange(start, start + len(rows))] = float("inf")  # not itself
    dev = (F[d2.topk(K, largest=False).indices] - rows[:, None]) * (scale / math.sqrt(K))  # [n, K, D]
    var, Q = torch.linalg.eigh(dev @ dev.transpose(1, 2))  # the K x K Gram matrices: dev^T Q = V^T diag(sqrt var)
    keep = var > 1e-12 * var.amax(1, keepdim=True)
    V = Q.transpose(1, 2) @ dev / var.clamp(min=1e-300).sqrt()[..., None]
    return torch.where(keep, var, 0.0), torch.where(keep[..., None], V, 0.0)
