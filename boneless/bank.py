"""The bank: softmax-weighted averages over many stored vectors, exactly. This is the hot loop.

For a query ``x`` and stored rows ``x_i`` the logits are (SPEC §2.3, divided by a softmax temperature ``T``)

    l_i = (log w_i - |x - alpha x_i|^2 / (2 sigma^2)) / T,

and the bank returns the streaming statistics of ``softmax(l)``: the weighted sum of rows, the normaliser, the
entropy and effective-size sums, and the top-k logits. Everything runs chunk by chunk over the rows, so memory
is O(B x chunk), and partial statistics from chunks, devices or distributed ranks combine with :func:`merge`.

Exactness. The fast form expands ``|x - alpha x_i|^2`` into matrix products, and ``|x|^2`` (the same for every
row) is dropped, leaving ``c (2 alpha x.x_i - alpha^2 |x_i|^2)`` with ``c = 1 / (2 sigma^2 T)``. In float32
each such logit carries an absolute error of at most

    delta = (D + 4) u c (2 alpha |x| r + alpha^2 r^2),    u = 2^-24, r = max_i |x_i|

(the standard dot-product bound, Higham, Accuracy and Stability, eq. 3.5). Where ``delta`` is negligible the
float32 logits are used as they are. Elsewhere the float32 logits only *screen*: every row whose screened logit
is within ``margin + 2 delta`` of the running screened maximum is a candidate and gets its logit recomputed in
float64 in difference form; the other rows provably carry less than ``exp(-margin)`` of the top weight each,
and keep their screened logits. Sharp posteriors, where float32 fails, have few candidates, so the exact
result costs little more than the two matrix products.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

U32 = 2.0 ** -24  # unit roundoff of float32
MARGIN = 32.0  # rows more than this many nats below the top carry < exp(-32) = 1.3e-14 of its weight each
FAST_DELTA = 1e-5  # below this logit error bound the float32 logits are used as they are
DENSE_FRACTION = 0.05  # more candidates than this fraction of a chunk: one float64 product for the chunk
EXP_FLOOR = -80.0  # exp of float32 below ~-87 hits a slow path; clamp shifted logits (weights >= 1.8e-35)
C_MAX = 1e30  # sigma -> 0 cap on c (keeps float32 logits finite; the limit is the nearest row)


class Stats(NamedTuple):
    """Streaming softmax statistics for ``B`` queries, relative to the running maximum logit ``m``.

    ``s = sum_i e^(l_i - m)``, ``acc = sum_i e^(l_i - m) x_i``, ``u = sum_i e^(l_i - m) (l_i - m)``,
    ``q = sum_i e^(2 (l_i - m))``; ``top_l``/``top_i`` are the ``k`` largest logits and their row indices.
    """

    m: torch.Tensor  # [B] float64
    s: torch.Tensor  # [B] float64
    acc: torch.Tensor  # [B, D] float32
    u: torch.Tensor  # [B] float64
    q: torch.Tensor  # [B] float64
    top_l: torch.Tensor  # [B, k] float64
    top_i: torch.Tensor  # [B, k] int64


def rescale(st: Stats, m: torch.Tensor) -> Stats:
    """The same statistics relative to a new maximum ``m >= st.m``."""
    shift = st.m - m  # <= 0
    f = torch.exp(shift)
    f = torch.where(torch.isfinite(shift), f, torch.zeros_like(f))  # empty statistics (m = -inf)
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    return Stats(m, st.s * f, st.acc * f.to(st.acc.dtype)[:, None], f * (st.u + shift * st.s), st.q * f * f,
                 st.top_l, st.top_i)


def merge(a: Stats, b: Stats) -> Stats:
    """Combine the statistics of two disjoint sets of rows (chunks, devices or ranks)."""
    m = torch.maximum(a.m, b.m)
    a, b = rescale(a, m), rescale(b, m)
    k = a.top_l.shape[1]
    top_l, top_i = a.top_l, a.top_i
    if k:
        top_l, pos = torch.cat([a.top_l, b.top_l], 1).topk(k, dim=1)
        top_i = torch.cat([a.top_i, b.top_i], 1).gather(1, pos)
    return Stats(m, a.s + b.s, a.acc + b.acc, a.u + b.u, a.q + b.q, top_l, top_i)


def empty_stats(batch: int, dim: int, k: int, device) -> Stats:
    f64 = dict(dtype=torch.float64, device=device)
    return Stats(torch.full((batch,), -math.inf, **f64), torch.zeros(batch, **f64),
                 torch.zeros(batch, dim, device=device), torch.zeros(batch, **f64), torch.zeros(batch, **f64),
                 torch.full((batch, k), -math.inf, **f64), torch.full((batch, k), -1, dtype=torch.long, device=device))


class Bank:
    """Rows ``X`` [N, D] held once, with their squared norms and optional log weights.

    Args:
        X: [N, *shape] float tensor; flattened to [N, D] (a view where possible, never copied per step).
        log_weights: optional [N] log prior weights ``log w_i`` (unnormalised).
        chunk_size: rows per step of the streaming loop.
        device: where the rows live and the loop runs.
    """

    def __init__(self, X: torch.Tensor, *, log_weights: torch.Tensor | None = None, chunk_size: int = 2048,
                 device: torch.device | str | None = None):
        X = X.reshape(X.shape[0], -1)
        self.device = torch.device(device) if device is not None else X.device
        self.X = X.to(self.device, torch.float32).contiguous()
        x64 = self.X.double()
        self.sq_norms = (x64 * x64).sum(1).to(torch.float32)  # |x_i|^2, rounded once
        self.r = float(self.sq_norms.max().sqrt()) if len(self.X) else 0.0
        self.log_w = None if log_weights is None else log_weights.to(self.device, torch.float64)
        self.log_w_max = 0.0 if log_weights is None else float(self.log_w.abs().max())
        self.chunk_size = int(chunk_size)

    def __len__(self) -> int:
        return self.X.shape[0]

    @property
    def dim(self) -> int:
        return self.X.shape[1]

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` as float32 [n, D] (the one place where stored rows are read)."""
        return self.X[start:stop]

    def reduce(self, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, *, temperature: float = 1.0,
               k: int = 0, start: int = 0, stop: int | None = None) -> Stats:
        """Softmax statistics of rows ``start:stop`` for queries ``x`` [B, D] at per-query ``alpha``,
        ``sigma`` [B] (float64). Row indices in ``top_i`` are global (offset by ``start``)."""
        stop = len(self) if stop is None else stop
        q = _Queries(self, x, alpha, sigma, temperature)
        st = empty_stats(len(q.x), self.dim, k, self.device)
        m_screen = torch.full_like(q.delta, -math.inf)
        for j0 in range(start, stop, self.chunk_size):
            j1 = min(j0 + self.chunk_size, stop)
            rows = self.rows(j0, j1)
            # screened logits, float32: c (2 alpha x.x_i - alpha^2 |x_i|^2) + log w_i / T
            l32 = torch.addmm(-q.aac * self.sq_norms[j0:j1], q.x_scaled, rows.T)
            if self.log_w is not None:
                l32 += (self.log_w[j0:j1] / temperature).float()
            m_screen = torch.maximum(m_screen, l32.max(1).values.double())
            z, m = self._shifted_logits(q, l32, m_screen, st.m, rows, j0)
            z.clamp_(min=EXP_FLOOR)
            p = torch.exp(z)
            chunk = Stats(m, p.sum(1, dtype=torch.float64), p @ rows, (p * z).sum(1, dtype=torch.float64),
                          (p * p).sum(1, dtype=torch.float64), *self._top(z, m, k, j0))
            st = merge(st, chunk)
        return st

    def _shifted_logits(self, q: "_Queries", l32, m_screen, m_old, rows, j0):
        """Logits of one chunk minus the new running maximum ``m`` (float32 [B, n]) and ``m`` (float64 [B]).

        Three tiers: float32 logits where their error bound is negligible; float64 difference form for the
        few candidate rows of sharp posteriors; one float64 matrix product for the whole chunk where the
        candidates are many (broad posteriors whose float32 logits are not accurate enough)."""
        if not bool(q.slow.any()):
            m = torch.maximum(m_old, l32.max(1).values.double())
            return l32 - m.float()[:, None], m
        cand = (l32 >= (m_screen - q.window).float()[:, None]).nonzero()
        if len(cand) > DENSE_FRACTION * l32.numel():
            l64 = torch.addmm(-(q.aac.double() * self.sq_norms[j0:j0 + len(rows)].double()), q.x64 * (2 * q.alpha * q.c)[:, None], rows.T.double())
            if self.log_w is not None:
                l64 += self.log_w[j0:j0 + len(rows)] / q.temperature
            m = torch.maximum(m_old, l64.max(1).values)
            return (l64 - m[:, None]).float(), m
        m = torch.where(q.slow, m_old, torch.maximum(m_old, l32.max(1).values.double()))
        b, j = cand[:, 0], cand[:, 1]
        l64 = self._exact_logits(q, b, j + j0)
        m = m.scatter_reduce(0, b, l64, reduce="amax")
        z = l32 - m.float()[:, None]
        z = torch.where(q.slow[:, None], z.clamp(max=-MARGIN), z)  # screened-out rows: provably < -MARGIN
        z[b, j] = (l64 - m[b]).float()
        return z, m

    def _exact_logits(self, q: "_Queries", b: torch.Tensor, rows_idx: torch.Tensor, block: int = 1 << 22):
        """Float64 logits ``c (|x|^2 - |x - alpha x_i|^2) + log w_i / T`` for the pairs (query ``b``, row), in blocks."""
        out = torch.empty(len(rows_idx), dtype=torch.float64, device=self.device)
        step = max(1, block // max(self.dim, 1))
        for s in range(0, len(rows_idx), step):
            bb, ii = b[s:s + step], rows_idx[s:s + step]
            diff = q.x64[bb] - q.alpha[bb, None] * self.X[ii].double()
            out[s:s + step] = q.c[bb] * (q.x_sq[bb] - (diff * diff).sum(1))
        if self.log_w is not None:
            out += self.log_w[rows_idx] / q.temperature
        return out

    @staticmethod
    def _top(z: torch.Tensor, m: torch.Tensor, k: int, offset: int):
        if not k:
            return z.new_zeros(z.shape[0], 0, dtype=torch.float64), z.new_zeros(z.shape[0], 0, dtype=torch.long)
        kk = min(k, z.shape[1])
        val, idx = z.topk(kk, dim=1)
        top_l, top_i = val.double() + m[:, None], idx + offset
        if kk < k:  # pad a short chunk
            pad = k - kk
            top_l = torch.cat([top_l, top_l.new_full((z.shape[0], pad), -math.inf)], 1)
            top_i = torch.cat([top_i, top_i.new_full((z.shape[0], pad), -1)], 1)
        return top_l, top_i


class _Queries:
    """Per-query constants of one :meth:`Bank.reduce` call, with the logit error bound ``delta`` [B]."""

    def __init__(self, bank: Bank, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, temperature: float):
        self.temperature = temperature
        self.x = x.to(bank.device, torch.float32)
        self.alpha = alpha.to(bank.device, torch.float64)
        self.x64 = self.x.double()
        self.x_sq = (self.x64 * self.x64).sum(1)
        spread = 2 * self.alpha * self.x_sq.sqrt() * bank.r + self.alpha ** 2 * bank.r ** 2
        c = 0.5 / (sigma.to(bank.device, torch.float64) ** 2 * temperature)
        self.c = torch.minimum(c, C_MAX / (1.0 + spread))  # sigma = 0: the nearest row(s), without overflow
        kappa = 2 * math.sqrt(bank.dim) + 8  # probabilistic dot-product bound (Higham & Mary 2019)
        self.delta = kappa * U32 * (self.c * spread + bank.log_w_max / temperature)
        self.slow = self.delta > FAST_DELTA
        self.window = torch.where(self.slow, MARGIN + 2 * self.delta, torch.full_like(self.delta, math.inf))
        self.x_scaled = self.x * (2 * self.alpha * self.c).float()[:, None]
        self.aac = (self.alpha ** 2 * self.c).float()[:, None]
