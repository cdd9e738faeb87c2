"""Metrics: nearest training examples, copy rate, and (issue 4) held-out denoising and sample quality."""

from __future__ import annotations

import torch

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
