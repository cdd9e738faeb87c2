"""Metrics: memorisation, held-out denoising error and sample quality, for any denoiser.

- :func:`denoising_error`: held-out (or in-sample) MSE / PSNR per noise level, one noise draw for every
  denoiser; :data:`WienerFilter` (the Gaussian denoiser, full rank) is the reference of the "ratio to Wiener".
- :func:`nearest`, :func:`copy_rate`, :func:`nearest_distance_stats`: do samples copy training examples, and
  are they as far from the training set as real unseen images?
- :func:`effective_examples`: the posterior effective number of training examples over a sampling run.
- :func:`split_consistency`: two disjoint pools, same seeds: do they generate the same images?
- :func:`frechet_distance` (closed form, stable square roots) in :class:`PCAFeatures` space (no training) or in
  the feature space of a small Fashion-MNIST classifier (:mod:`boneless.classifier`, trained once and cached).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .closed_form import GaussianDenoiser

COPY_RATIO = 1 / 3  # a sample is a copy when its nearest / second-nearest training distance ratio is below this


def nearest(samples: torch.Tensor, X: torch.Tensor, *, k: int = 2, chunk_size: int = 4096):
    """Euclidean distances [n, k] and indices [n, k] of the ``k`` nearest rows of ``X`` to each sample,
    computed in float64, chunk by chunk over ``X``."""
    q = samples.reshape(len(samples), -1).double()
    k = min(k, len(X))
    best_d = torch.full((len(q), 0), float("inf"), dtype=torch.float64)
    best_i = torch.zeros((len(q), 0), dtype=torch.long)
    for j0 in range(0, len(X), chunk_size):
        rows = X[j0:j0 + chunk_size].reshape(-1, q.shape[1]).double()
        d = torch.cdist(q, rows)
        d, i = torch.cat([best_d, d], 1), torch.cat([best_i, torch.arange(j0, j0 + len(rows)).expand(len(q), -1)], 1)
        best_d, pos = d.topk(k, dim=1, largest=False)
        best_i = i.gather(1, pos)
    return best_d, best_i


def copy_rate(samples: torch.Tensor, X: torch.Tensor, *, ratio: float = COPY_RATIO) -> float:
    """Fraction of samples whose nearest / second-nearest training distance ratio is below ``ratio``."""
    if len(X) < 2:
        raise ValueError("copy rate needs at least two training examples")
    d, _ = nearest(samples, X, k=2)
    return float((d[:, 0] < ratio * d[:, 1]).double().mean())


# ---------------------------------------------------------------- held-out denoising error

PEAK = 2.0  # peak-to-peak range of data in [-1, 1], for PSNR


WienerFilter = GaussianDenoiser  # the Wiener filter of the data (full rank): the reference of "ratio to Wiener"


class DenoisingError(NamedTuple):
    """Denoising error of one denoiser on one set of clean images, per noise level.

    ``sigmas`` [S]; ``mse`` [S] per-pixel mean squared error of ``x0_hat`` against the clean image;
    ``psnr`` [S] in dB, ``10 log10(peak^2 / mse)`` (peak 2 for images in [-1, 1]); ``per_image`` [S, n]."""

    sigmas: torch.Tensor
    mse: torch.Tensor
    psnr: torch.Tensor
    per_image: torch.Tensor


def noise_draw(shape: tuple[int, ...], *, seed: int) -> torch.Tensor:
    """The noise ``z`` [n, *shape] of :func:`denoising_error` for ``seed`` (the same for every denoiser)."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(int(seed)))


def denoising_error(den, X: torch.Tensor, sigmas, *, seed: int, alpha: float = 1.0, batch_size: int = 250,
                    peak: float = PEAK, callback=None) -> DenoisingError:
    """Error of ``den`` denoising ``y = alpha x + sigma z`` for the clean images ``X`` [n, *shape].

    ``z = noise_draw(X.shape, seed=seed)`` is drawn once and used at every sigma, so every denoiser (and every
    sigma) sees the same noise: differences between denoisers are not noise-draw luck. Pass held-out images
    for the held-out error, training images for the in-sample error.

    Args:
        den: any denoiser ``den(x, alpha, sigma) -> x0_hat`` (called with float ``alpha``, ``sigma``).
        X: clean images [n, *shape].
        sigmas: noise levels (positive), a sequence of S floats.
        seed: seed of the noise draw.
        alpha: signal scale (1: the variance-exploding form ``y = x + sigma z``).
        batch_size: images per denoiser call.
        peak: peak-to-peak range of the data, for the PSNR (2 for images in [-1, 1]).
        callback: optional ``callback(i_sigma)`` after each noise level (progress).

    Returns:
        :class:`DenoisingError`.
    """
    sig = [float(s) for s in sigmas]
    if not sig or not all(math.isfinite(s) and s > 0 for s in sig):
        raise ValueError(f"sigmas must be positive finite numbers, got {list(sigmas)}")
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a positive number, got {alpha}")
    if len(X) == 0:
        raise ValueError("denoising error needs at least one image")
    if not (isinstance(batch_size, int) and batch_size > 0):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    X = X.float()
    z = noise_draw(tuple(X.shape), seed=seed)
    per_image = torch.empty(len(sig), len(X), dtype=torch.float64)
    for si, s in enumerate(sig):
        for b0 in range(0, len(X), batch_size):
            x, zz = X[b0:b0 + batch_size], z[b0:b0 + batch_size]
            x0_hat = den(alpha * x + s * zz, alpha, s)
            if tuple(x0_hat.shape) != tuple(x.shape):
                raise ValueError(f"denoiser returned shape {list(x0_hat.shape)} for input {list(x.shape)}")
            err = (x0_hat.detach().cpu().double() - x.double()).reshape(len(x), -1)
            per_image[si, b0:b0 + len(x)] = (err * err).mean(1)
        if callback is not None:
            callback(si)
    mse = per_image.mean(1)
    return DenoisingError(torch.tensor(sig, dtype=torch.float64), mse, 10 * torch.log10(peak ** 2 / mse),
                          per_image)


# ---------------------------------------------------------------- memorisation

def nearest_distance_stats(samples: torch.Tensor, X: torch.Tensor, *, heldout: torch.Tensor | None = None,
                           ratio: float = COPY_RATIO) -> dict:
    """Nearest-training-example statistics of ``samples`` [n, *shape] against ``X`` [N, *shape].

    Returns a dict: ``copy_rate`` (nearest / second-nearest distance ratio below ``ratio``), ``nearest_median``,
    ``nearest_mean`` (Euclidean distances), and with ``heldout`` [m, *shape] (real images not in ``X``) the same
    for them (``heldout_*``), ``median_ratio`` = samples' median / held-out median (1: as far from the training
    set as real unseen images; near 0: copies), and ``ks`` the two-sample Kolmogorov-Smirnov distance between
    the two distributions of nearest distances (0: identical)."""
    if len(X) < 2:
        raise ValueError("nearest-distance statistics need at least two training examples")
    d, _ = nearest(samples, X, k=2)
    out = {"copy_rate": float((d[:, 0] < ratio * d[:, 1]).double().mean()),
           "nearest_median": float(d[:, 0].median()), "nearest_mean": float(d[:, 0].mean())}
    if heldout is not None:
        h, _ = nearest(heldout, X, k=2)
        out.update({"heldout_copy_rate": float((h[:, 0] < ratio * h[:, 1]).double().mean()),
                    "heldout_nearest_median": float(h[:, 0].median()),
                    "heldout_nearest_mean": float(h[:, 0].mean()),
                    "median_ratio": float(d[:, 0].median() / h[:, 0].median().clamp(min=1e-30)),
                    "ks": ks_distance(d[:, 0], h[:, 0])})
    return out


def ks_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Two-sample Kolmogorov-Smirnov statistic ``sup_t |F_a(t) - F_b(t)|`` of two 1-D samples."""
    a, b = a.flatten().double().sort().values, b.flatten().double().sort().values
    if not len(a) or not len(b):
        raise ValueError("the KS distance needs two non-empty samples")
    t = torch.cat([a, b])
    fa = torch.searchsorted(a, t, right=True).double() / len(a)
    fb = torch.searchsorted(b, t, right=True).double() / len(b)
    return float((fa - fb).abs().max())


class EffectiveExamples(NamedTuple):
    """Posterior effective number of examples ``1 / sum_i p_i^2`` over a sampling run.

    ``times`` [S] (t = 1 noise -> 0 data), ``n_eff`` [S, n] per sample, ``median`` [S] over samples, and
    ``collapse_t`` the first time at which the median falls below 1.5 examples (None if it never does)."""

    times: torch.Tensor
    n_eff: torch.Tensor
    median: torch.Tensor
    collapse_t: float | None


def effective_examples(trajectory) -> EffectiveExamples | None:
    """:class:`EffectiveExamples` from a :class:`~boneless.samplers.Trajectory` (``sample(...).trajectory``),
    or None when the denoiser had no posterior over training examples (nothing was recorded)."""
    if not trajectory.n_eff:
        return None
    times = torch.tensor(trajectory.times, dtype=torch.float64)
    n_eff = torch.stack(trajectory.n_eff).double()
    median = n_eff.median(1).values
    below = (median < 1.5).nonzero()
    return EffectiveExamples(times, n_eff, median, float(times[below[0, 0]]) if len(below) else None)


# ---------------------------------------------------------------- split consistency

def paired_similarity(a: torch.Tensor, b: torch.Tensor, *, center: torch.Tensor | None = None) -> torch.Tensor:
    """Cosine similarity [n] of paired samples ``a[i]``, ``b[i]`` [n, *shape] after subtracting ``center``
    (e.g. the data mean, so that a shared background does not count as similarity)."""
    if a.shape != b.shape:
        raise ValueError(f"paired samples must have the same shape, got {list(a.shape)} and {list(b.shape)}")
    a, b = a.reshape(len(a), -1).double(), b.reshape(len(b), -1).double()
    if center is not None:
        c = center.reshape(1, -1).double()
        a, b = a - c, b - c
    return torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-12)


class SplitConsistency(NamedTuple):
    """Samples of two denoisers built on disjoint training pools, from the same seeds.

    ``similarity`` [n] of each pair (cosine, centred); ``mean`` its mean; ``baseline`` the mean similarity of
    unpaired samples (``a[i]`` with ``b[j]``, i != j; NaN for n = 1). Identical pools give 1; the closer
    ``mean`` is to 1, the less the map from noise to images depends on which examples are in the pool (a
    generalising model; a memoriser lands on each pool's own examples). ``samples_a``, ``samples_b`` [n, *shape]."""

    similarity: torch.Tensor
    mean: float
    baseline: float
    samples_a: torch.Tensor
    samples_b: torch.Tensor


def split_consistency(den_a, den_b, *, center: torch.Tensor | None = None, n: int = 16, steps: int = 50,
                      seed: int = 0, shape: tuple[int, ...] | None = None, samples_a: torch.Tensor | None = None,
                      **sample_options) -> SplitConsistency:
    """Sample ``n`` images from each of ``den_a`` and ``den_b`` (the same denoiser built on two disjoint pools)
    with the same ``seed``, so pair ``i`` starts from the same noise, and compare the pairs (Kadkhodaie et al.,
    arXiv 2310.02557). ``center`` [*shape]: subtracted before the cosine (e.g. the mean of both pools).
    ``sample_options`` (``schedule``, ``sampler``, ``noise``, ...) go to :func:`boneless.sample`.
    ``samples_a``: ``den_a``'s ``n`` samples, already made from the same start by a deterministic sampler (as
    ``boneless eval``'s sampling stage has them), so that only ``den_b`` is sampled."""
    from .samplers import sample
    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if samples_a is not None and len(samples_a) != n:
        raise ValueError(f"samples_a holds {len(samples_a)} samples, not n = {n}")
    sa = samples_a if samples_a is not None else sample(den_a, n=n, steps=steps, seed=seed, shape=shape, top_k=0,
                                                        **sample_options).samples
    sb = sample(den_b, n=n, steps=steps, seed=seed, shape=shape, top_k=0, **sample_options).samples
    sim = paired_similarity(sa, sb, center=center)
    baseline = float("nan")
    if n > 1:
        c = 0 if center is None else center.reshape(1, -1).double()
        A = torch.nn.functional.normalize(sa.reshape(n, -1).double() - c, dim=1, eps=1e-12)
        B = torch.nn.functional.normalize(sb.reshape(n, -1).double() - c, dim=1, eps=1e-12)
        S = A @ B.T
        baseline = float((S.sum() - S.diagonal().sum()) / (n * n - n))
    return SplitConsistency(sim, float(sim.mean()), baseline, sa, sb)


# ---------------------------------------------------------------- sample quality: Frechet distances

def gaussian_frechet(mu1: torch.Tensor, C1: torch.Tensor, mu2: torch.Tensor, C2: torch.Tensor) -> float:
    """Frechet (2-Wasserstein squared) distance between ``N(mu1, C1)`` and ``N(mu2, C2)``:

        ``|mu1 - mu2|^2 + tr C1 + tr C2 - 2 tr (C1^(1/2) C2 C1^(1/2))^(1/2)``

    in float64, with both square roots taken by eigendecomposition of symmetric matrices (negative
    eigenvalues from rounding clamped to 0), so it is stable for singular covariances."""
    mu1, mu2 = mu1.double().flatten(), mu2.double().flatten()
    C1, C2 = C1.double(), C2.double()
    if mu1.shape != mu2.shape or C1.shape != (len(mu1), len(mu1)) or C2.shape != C1.shape:
        raise ValueError(f"Frechet distance: inconsistent shapes {list(mu1.shape)}, {list(C1.shape)}, "
                         f"{list(mu2.shape)}, {list(C2.shape)}")
    lam, U = torch.linalg.eigh((C1 + C1.T) / 2)
    r1 = (U * lam.clamp(min=0).sqrt()) @ U.T  # C1^(1/2)
    M = r1 @ C2 @ r1
    tr_sqrt = torch.linalg.eigvalsh((M + M.T) / 2).clamp(min=0).sqrt().sum()
    d = ((mu1 - mu2) ** 2).sum() + torch.trace(C1) + torch.trace(C2) - 2 * tr_sqrt
    return float(d.clamp(min=0))


def mean_cov(F: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean [d] and unbiased covariance [d, d] (float64) of features ``F`` [n, d], n >= 2."""
    if F.ndim != 2 or len(F) < 2:
        raise ValueError(f"need features [n >= 2, d], got shape {list(F.shape)}")
    F = F.double()
    mu = F.mean(0)
    Fc = F - mu
    return mu, Fc.T @ Fc / (len(F) - 1)


def frechet_distance(A: torch.Tensor, B: torch.Tensor) -> float:
    """Frechet distance between the Gaussian fits of two feature sets ``A`` [n, d] and ``B`` [m, d]."""
    return gaussian_frechet(*mean_cov(A), *mean_cov(B))


class PCAFeatures:
    """Projection onto the top ``dim`` principal components of training data ``X`` [N, *shape]
    (a feature space for Frechet distances that needs no training). Fitted in float64 on at most ``max_rows``
    evenly spaced rows, through whichever of the covariance [D, D] or Gram matrix [n, n] is smaller.

    Call it on images [n, *shape] to get features [n, dim]."""

    def __init__(self, X: torch.Tensor, *, dim: int = 32, max_rows: int = 5000):
        if not (isinstance(dim, int) and dim >= 1):
            raise ValueError(f"PCA dim must be a positive integer, got {dim!r}")
        X = X.reshape(len(X), -1)
        if len(X) < 2:
            raise ValueError("PCA needs at least two training examples")
        if len(X) > max_rows:
            X = X[torch.linspace(0, len(X) - 1, max_rows).round().long()]
        X = X.double()
        self.mean = X.mean(0)
        Xc = X - self.mean
        dim = min(dim, X.shape[1], len(X) - 1)
        if X.shape[1] <= len(X):
            _, U = torch.linalg.eigh(Xc.T @ Xc)
            self.components = U[:, -dim:].flip(1).T.contiguous()  # [dim, D]
        else:
            lam, V = torch.linalg.eigh(Xc @ Xc.T)
            V, lam = V[:, -dim:].flip(1), lam[-dim:].flip(0)
            self.components = (Xc.T @ V / lam.clamp(min=1e-300).sqrt()).T.contiguous()
        self.shape = tuple(X.shape[1:])
        self.dim = dim

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.reshape(len(images), -1).double()
        if x.shape[1] != self.components.shape[1]:
            raise ValueError(f"PCA features: images have {x.shape[1]} values, the PCA was fitted on "
                             f"{self.components.shape[1]}")
        return (x - self.mean) @ self.components.T
