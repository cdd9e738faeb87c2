"""The bank: softmax-weighted averages over many stored vectors, exactly. This is the hot loop.

For a query ``x`` and stored rows ``x_i`` the logits are (the Gaussian log-likelihood of ``x`` under
example ``i`` plus its log prior weight, divided by a softmax temperature ``T``)

    l_i = (log w_i - |x - alpha x_i|^2 / (2 sigma^2)) / T,

and the bank returns the streaming statistics of ``softmax(l)``: the weighted sum of rows, the normaliser, the
entropy and effective-size sums, and the top-k logits. Everything runs chunk by chunk over the rows, so memory
is O(B x chunk), and partial statistics from chunks, devices or distributed ranks combine with :func:`merge`.

Exactness. The fast form expands ``|x - alpha x_i|^2`` into matrix products, and ``|x|^2`` (the same for every
row) is dropped, leaving ``c (2 alpha x.x_i - alpha^2 |x_i|^2)`` with ``c = 1 / (2 sigma^2 T)``. In float32
each such logit carries an absolute error of at most

    delta = kappa u c (2 alpha |x| r + alpha^2 r^2),    u = 2^-24, r = max_i |x_i|, kappa = 2 sqrt(D) + 8

(the probabilistic dot-product bound of Higham & Mary, SIAM J. Sci. Comput. 2019, in place of the worst-case
``D u`` of Higham, Accuracy and Stability, eq. 3.5). A lower-precision screen (``screen="tf32"`` or
``"bfloat16"``, for GPUs) adds the rounding of its inputs (and bf16 output) to ``delta``: ``2 u_f`` (``3 u_f``)
times ``c 2 alpha |x| r``, with ``u_f = 2^-11`` (TF32) or ``2^-8`` (bf16). Three tiers, per query and chunk:

1. ``delta <= FAST_DELTA``: the screened logits are used as they are.
2. Otherwise the screened logits only *screen*: a row whose screened logit lies within ``margin + 2 delta`` of
   the running screened maximum is a candidate and gets its logit recomputed in float64 in difference form.
   Every other row carries, exactly and as screened (its logit is capped at ``-margin``), at most
   ``exp(-margin)`` of the top weight, changed by at most ``min(1, e^delta - 1)`` of that; with ``n`` rows
   these move ``x0_hat`` by at most ``4 n e^-margin min(1, e^delta - 1) r``, and ``margin`` is chosen to make
   that ``TOL r``. Sharp posteriors, where float32 fails, have few candidates: the exact result costs little
   more than the two matrix products.
3. A query with more than ``DENSE_FRACTION`` of the rows as candidates (and ``delta <= UNION_DELTA``) keeps
   only the candidates that the screened mass below them requires (:meth:`Bank._by_mass`: the rows below
   carry at most ``e^(2 delta) S`` of the top weight, each off by a factor ``e^(+-delta)``; ``S`` is measured,
   not bounded by ``n e^-margin``), and if still many, gets them in float64 from float64 matrix products over
   the union of such queries' candidate rows (expanded form, error ~ ``delta * 2^-29``).
4. Broad posteriors, where most rows carry weight: float64 logits from float64 matrix products over all rows
   (squared norms in float64). A pilot screen of the first chunk sends queries with more than
   ``PILOT_FRACTION`` of it as candidates there without the screen of the other chunks, when they are most of
   the batch (otherwise their share of the screen costs less than it saves); a query found broad in one span
   goes there from the next span on. Float64 products run at about 0.46 of float32's speed on an AVX-512 CPU
   (D = 49152), so this tier bounds how close broad posteriors come to the two-product limit.

The loop makes two passes over each span of rows (all rows, unless the float32 logits of the span would exceed
``SPAN_BYTES``): the first screens the chunks (float64 products for queries already known to be broad) and
keeps the logits, so that each query's tier and candidates are decided against the span's true maximum; the
second reads the chunks again for the weighted sums, one product per chunk for all queries (as the two plain
matrix products do).

Repeated rows. ``log_counts`` gives row ``i`` the multiplicity ``c_i``: it stands for ``c_i`` equal rows (of
equal weight), so ``log c_i`` is added to its logit outside the temperature, and the statistics that tell the
copies apart are those of the ``sum c_i`` rows it stands for: ``top_l`` holds the logit of one copy
(``l_i - log c_i``, which ranks the top ``k``), ``u`` and ``q`` sum over copies. ``EmpiricalDenoiser`` merges
repeated rows this way (:func:`boneless.rows.repeated_rows`), so a dataset with many repeats costs what its
distinct rows cost, and exact ties between copies never reach the float64 tiers.

Storage. Rows may be held as ``float16``, ``bfloat16`` or ``uint8`` (8-bit images, ``q / 127.5 - 1``, or any data
spread over 256 levels):
:class:`StoredRows` dequantises each chunk exactly into float32 as it is read; the exact reference is then the
dequantised data (:attr:`Bank.X`'s rows), or, with :meth:`Bank.rescore`, the original rows at each query's top
rows (read from memory or disk at those rows only).
"""

from __future__ import annotations

import contextlib
import math
from typing import Literal, NamedTuple

import torch

from .rows import STORAGES, Storage, StoredRows, _block_rows

U32 = 2.0 ** -24  # unit roundoff of float32
TOL = 1e-6  # screened-out rows move x0_hat by at most TOL * r (r = max_i |x_i|) in all
FAST_DELTA = 1e-5  # below this logit error bound the float32 logits are used as they are
DENSE_FRACTION = 0.02  # more candidates than this fraction of a chunk: float64 products for that query from then on
EXP_FLOOR = -80.0  # exp of float32 below ~-87 hits a slow path; clamp shifted logits (weights >= 1.8e-35)
PILOT_FRACTION = 0.2  # more than this share of the first chunk near its maximum: a broad posterior (float64)
SPAN_BYTES = 1 << 27  # screened float32 logits kept between the two passes over a span of rows (128 MB)
STORED_CHUNK_BYTES = 1 << 21  # dequantised rows per chunk of StoredRows (2 MB of float32)
DENSE_BLOCK = 1 << 21  # elements of the reused float64 buffer of the dense tier (16 MB)
DENSE_MIN_ROWS = 192  # but at least this many rows per block (at D = 49152: 0.46 of float32's speed against 0.29 at 42)
DENSE_WIDE = 16  # from this many queries the float64 products are compute-bound (DENSE_MIN_ROWS); below, memory-bound
REST_FLOOR = 1e-6  # rescoring: a remainder of the sums below this share of the total is their rounding
UNION_DELTA = 0.5  # float64 products for many candidates only where their expanded-form error delta 2^-29 <= 1e-9
C_MAX = 1e30  # sigma -> 0 cap on c (keeps float32 logits finite; the limit is the nearest row)
CANCEL = 0.05  # |sum_i p_i x_i| below this share of r sqrt(sum_i p_i^2): a mean that cancels (float64 fallback)
Screen = Literal["float32", "tf32", "bfloat16"]
SCREENS = ("float32", "tf32", "bfloat16")
# extra error of a screened dot product, in units of sum_j |x_j x_ij|: inputs rounded to the format (2 u_f),
# and for bf16 its rounded output (u_f)
SCREEN_DOT = {"float32": 0.0, "tf32": 2 * 2.0 ** -11, "bfloat16": 3 * 2.0 ** -8}


class Stats(NamedTuple):
    """Streaming softmax statistics for ``B`` queries, relative to the running maximum logit ``m``.

    ``s = sum_i e^(l_i - m)``, ``acc = sum_i e^(l_i - m) x_i``, ``u = sum_i e^(l_i - m) (l_i - m)``,
    ``q = sum_i e^(2 (l_i - m))``; ``top_l``/``top_i`` are the ``k`` largest logits and their row indices.
    With row multiplicities (``Bank(log_counts=...)``) the sums run over the copies and ``top_l`` holds one
    copy's logit.
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


def _squared_norms64(blocks, n: int, dim: int, device) -> torch.Tensor:
    """``|x_i|^2`` [n] in float64 of the rows in ``blocks`` (float32 [m, D] each), through one reused 4 MB float64
    buffer: fresh float64 copies of whole chunks cost more in page faults than the sums (20x at N = 20000,
    D = 3072)."""
    out = torch.empty(n, dtype=torch.float64, device=device)
    step = _block_rows(dim, 1 << 22)
    buf = torch.empty(max(1, min(step, n)), dim, dtype=torch.float64, device=device)
    j = 0
    for rows in blocks:
        for s in range(0, len(rows), step):
            b = buf[:min(step, len(rows) - s)].copy_(rows[s:s + step])
            torch.sum(b.mul_(b), 1, out=out[j:j + len(b)])
            j += len(b)
    return out


class Bank:
    """Rows ``X`` [N, D] held once, with their squared norms and optional log weights.

    Args:
        X: [N, *shape] float tensor; flattened to [N, D] (a view where possible, never copied per step). Or a
            row source with ``len()`` and ``flat(device)`` (:class:`boneless.rows.MappedRows`), read per chunk.
        log_weights: optional [N] log prior weights ``log w_i`` (unnormalised).
        log_counts: optional [N] log multiplicities ``log c_i >= 0``: row ``i`` stands for ``c_i`` equal rows
            (module docstring, "Repeated rows").
        chunk_size: rows per step of the streaming loop.
        device: where the rows live and the loop runs.
        storage: the type the rows are held in (a tensor ``X`` only); other than float32 they are held by a
            :class:`StoredRows` and dequantised exactly chunk by chunk (uint8: ``q / 127.5 - 1``).
        screen: format of the screening matrix product: ``float32``; ``tf32`` or ``bfloat16`` (GPUs; their
            rounding is added to the error bound, so the result stays exact; on CPU ``tf32`` runs in float32).
        fast_delta: tier-1 threshold on the logit error bound ``delta`` (default ``FAST_DELTA``, the exact
            contract). A larger value trades exactness for speed: logits with ``delta`` up to it are used as
            screened (weights within a factor ``e^(2 delta)``); the patch denoisers use this.
    """

    def __init__(self, X: torch.Tensor, *, log_weights: torch.Tensor | None = None,
                 log_counts: torch.Tensor | None = None, chunk_size: int = 2048,
                 device: torch.device | str | None = None, storage: Storage = "float32", screen: Screen = "float32",
                 fast_delta: float = FAST_DELTA):
        if storage not in STORAGES:
            raise ValueError(f"storage must be one of {', '.join(STORAGES)}, got {storage!r}")
        if screen not in SCREENS:
            raise ValueError(f"screen must be one of {', '.join(SCREENS)}, got {screen!r}")
        self.storage, self.screen = storage, screen
        if not (isinstance(fast_delta, (int, float)) and fast_delta > 0):
            raise ValueError(f"fast_delta must be a positive number, got {fast_delta!r}")
        self.fast_delta = float(fast_delta)
        if isinstance(X, torch.Tensor) and storage != "float32":
            device = torch.device(device) if device is not None else X.device
            X = StoredRows(X.reshape(X.shape[0], -1), storage, device=device)
        elif not isinstance(X, torch.Tensor) and storage != "float32":  # a row source (on disk) held in memory
            device = torch.device(device) if device is not None else torch.device("cpu")
            X = StoredRows(X.flat(device) if hasattr(X, "flat") else X, storage, device=device)
        if not isinstance(X, torch.Tensor):  # a row source (boneless.rows.MappedRows): rows stay on disk
            if isinstance(X, StoredRows):  # dequantised chunks small enough to stay in cache for their products
                chunk_size = min(int(chunk_size), max(32, STORED_CHUNK_BYTES // (4 * max(X.shape[1], 1))))
            self._init_source(X, chunk_size=chunk_size, device=device)
            self._set_prior(log_weights, log_counts)
            return
        X = X.reshape(X.shape[0], -1)
        self.device = torch.device(device) if device is not None else X.device
        self.X = X.to(self.device, torch.float32).contiguous()
        self.sq_norms64 = _squared_norms64(self.X.split(max(1, int(chunk_size))), len(self.X), self.X.shape[1],
                                           self.device)  # |x_i|^2 in float64 (float64 tiers)
        self.sq_norms = self.sq_norms64.to(torch.float32)  # and rounded once (float32 screen)
        self.r = float(self.sq_norms64.max().sqrt()) if len(self.X) else 0.0
        self.chunk_size = int(chunk_size)
        self._set_prior(log_weights, log_counts)

    def _set_prior(self, log_weights, log_counts):
        self.log_w = None if log_weights is None else log_weights.to(self.device, torch.float64)
        self.log_w_max = 0.0 if log_weights is None else float(self.log_w.abs().max())
        self.log_c = None if log_counts is None else log_counts.to(self.device, torch.float64)
        if self.log_c is not None and (self.log_c.shape != (len(self),) or not bool((self.log_c >= 0).all())):
            raise ValueError(f"log_counts must be [{len(self)}] and >= 0")
        self.log_c_max = 0.0 if log_counts is None else float(self.log_c.max())

    def _log_prior(self, idx, temperature: float) -> torch.Tensor | None:
        """``log w_i / T + log c_i`` (float64) of the rows ``idx`` (a slice or indices), or None (neither)."""
        out = None if self.log_w is None else self.log_w[idx] / temperature
        if self.log_c is not None:
            out = self.log_c[idx] if out is None else out + self.log_c[idx]
        return out

    def _rank(self, z: torch.Tensor, s0: int, k: int) -> torch.Tensor:
        """The top ``k`` rows [b, min(k, n)] of span logits ``z`` [b, n] (rows ``s0:s0 + n``), ranked by one
        copy's logit (``z - log c_i``: a row of many copies is not one large example)."""
        key = z if self.log_c is None else z - self.log_c[s0:s0 + z.shape[1]].float()
        return key.topk(min(k, z.shape[1]), dim=1).indices

    def _init_source(self, source, *, chunk_size, device):
        """Rows read chunk by chunk: ``self.X = source.flat(device)`` gives ``X[i:j]`` and ``X[indices]`` as
        float32 [n, D] on the device (no other use of ``self.X`` touches all rows); norms in one streaming pass."""
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.X = source.flat(self.device)
        n, self.chunk_size = len(self.X), int(chunk_size)
        self.sq_norms64 = _squared_norms64((self.X[j:j + self.chunk_size] for j in range(0, n, self.chunk_size)), n,
                                           self.X.shape[1], self.device)
        self.sq_norms = self.sq_norms64.to(torch.float32)
        self.r = float(self.sq_norms64.max().sqrt()) if n else 0.0

    def __len__(self) -> int:
        return self.X.shape[0]

    @property
    def dim(self) -> int:
        return self.X.shape[1]

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` as float32 [n, D] (the one place where stored rows are read)."""
        return self.X[start:stop]

    def reduce(self, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, *, temperature: float = 1.0,
               k: int = 0, start: int = 0, stop: int | None = None, entropy: bool = True) -> Stats:
        """Softmax statistics of rows ``start:stop`` for queries ``x`` [B, D] at per-query ``alpha``,
        ``sigma`` [B] (float64). Row indices in ``top_i`` are global (offset by ``start``). ``entropy=False``
        skips the entropy and effective-size sums ``u`` and ``q`` (returned as zeros), which cost as much as the
        products when rows are short (patches).

        Per span of rows (all rows unless ``B x rows`` float32 logits would exceed ``SPAN_BYTES``), pass 1
        screens every chunk (float64 products instead for queries already known to be broad), keeping the
        logits; with the span's maximum known, each query gets its tier (module docstring): float32 logits as
        they are (``delta`` below ``FAST_DELTA``), float64 recomputation of its candidates, or, with more than
        ``DENSE_FRACTION`` of the span as candidates, float64 products for every row (one more pass for those
        queries). Pass 2 reads the chunks again for the weighted sums: one product per chunk."""
        stop = len(self) if stop is None else stop
        q = _Queries(self, x, alpha, sigma, temperature, n_rows=max(stop - start, 1))
        B = len(q.x)
        st = empty_stats(B, self.dim, k, self.device)
        if B == 0:
            return st
        dense = torch.zeros(B, dtype=torch.bool, device=self.device)
        every = torch.arange(B, device=self.device)
        span = max(self.chunk_size, SPAN_BYTES // (4 * max(B, 1)) // self.chunk_size * self.chunk_size)
        buf = [None]  # dequantised chunk of StoredRows, reused

        def read(j0, j1):
            if not isinstance(self.X, StoredRows):
                return self.rows(j0, j1)
            if buf[0] is None:
                buf[0] = torch.empty(min(self.chunk_size, stop - start), self.dim, device=self.device)
            return self.X.read(j0, j1, out=buf[0][:j1 - j0])

        for s0 in range(start, stop, span):
            s1, n = min(s0 + span, stop), min(s0 + span, stop) - s0
            pilot = None
            if s0 == start and n > self.chunk_size and bool(q.slow.any()):
                # the first chunk as a pilot: queries with a large share of it near its maximum are broad
                # posteriors; they skip the screen (their float64 products are needed anyway)
                j1 = s0 + self.chunk_size
                pilot = self._screen(q, None, read(s0, j1), s0, j1)
                p_max = pilot.max(1).values.double()
                near = pilot >= (p_max - q.window).float()[:, None]
                massed = q.slow & (q.delta <= UNION_DELTA)
                if bool(massed.any()):  # the candidates the screened mass requires (fewer than the window's)
                    near[massed] = self._by_mass(q, massed.nonzero().squeeze(1), pilot[massed], p_max[massed])
                broad = q.slow & (near.sum(1) > PILOT_FRACTION * self.chunk_size)
                if 2 * int(broad.sum()) >= B:  # most of the batch: their screen would cost more than it saves
                    dense |= broad
            sel = every if not bool(dense.any()) else (~dense).nonzero().squeeze(1)
            d = dense.nonzero().squeeze(1)
            xs_d = q.x64_scaled[d]
            ss = None if len(sel) == B else sel
            l32 = torch.empty(len(sel), n, device=self.device)
            l64 = torch.empty(len(d), n, dtype=torch.float64, device=self.device)
            done = 0
            if pilot is not None and len(sel):
                done = pilot.shape[1]
                l32[:, :done] = pilot if ss is None else pilot[sel]
            for j0 in range(s0, s1, self.chunk_size):  # pass 1: screen (or float64 products) of the span
                j1 = min(j0 + self.chunk_size, s1)
                if j0 - s0 < done and not len(d):
                    continue
                rows = read(j0, j1)
                if len(sel) and j0 - s0 >= done:
                    self._screen(q, ss, rows, j0, j1, out=l32[:, j0 - s0:j1 - s0])
                if len(d):
                    self._dense_logits(q, d, rows, slice(j0, j1), out=l64[:, j0 - s0:j1 - s0], xs=xs_d)
            if len(sel) and done < n:
                self._screen_bias(q, ss, l32[:, done:], s0 + done, s1)
            z_sel, m_sel = None, None
            if len(sel):
                z_sel, m_sel, broad, order_sel = self._tiers(q, sel, l32, s0, k)
                dense[sel[broad]] = True  # broad posteriors: float64 products from the start in later spans
            if len(d):
                m_d = l64.max(1).values
                z_d = l64.sub_(m_d[:, None]).float()
                del l64
            ranked = None  # the top-k rows, ranked by logits before the caps and floors below
            if k:
                ranked = torch.empty(B, min(k, n), dtype=torch.long, device=self.device)
                if len(sel):
                    ranked[sel] = order_sel
                if len(d):
                    ranked[d] = self._rank(z_d, s0, k)
            if not len(d):
                z, m = z_sel, m_sel
            elif not len(sel):
                order = torch.argsort(d)
                z, m = z_d[order], m_d[order]
            else:
                z = torch.empty(B, n, device=self.device)
                m = torch.empty(B, dtype=torch.float64, device=self.device)
                z[sel], m[sel], z[d], m[d] = z_sel, m_sel, z_d, m_d
            z.clamp_(min=EXP_FLOOR)
            p = torch.exp(z)
            acc = torch.zeros(B, self.dim, device=self.device)
            for j0 in range(s0, s1, self.chunk_size):  # pass 2: weighted sums
                j1 = min(j0 + self.chunk_size, s1)
                acc.addmm_(p[:, j0 - s0:j1 - s0], read(j0, j1))
            u, q2 = self._copy_sums(p, z, s0) if entropy else (torch.zeros_like(m), torch.zeros_like(m))
            st = merge(st, Stats(m, p.sum(1, dtype=torch.float64), acc, u, q2, *self._top(z, m, k, s0, ranked)))
        return st

    def cancelling(self, st: Stats, r: float | None = None) -> torch.Tensor:
        """Queries [B] (bool) whose weighted sum ``acc`` nearly cancels: ``|acc| < CANCEL r sqrt(q)``. The float32
        sums and weights carry rounding of about ``u |p_i x_i|`` per term, which adds up like a random walk to
        about ``u r sqrt(q)`` (``q = sum p_i^2``); when the rows' contributions also add up like a random walk
        (broad posteriors of centred data), ``|acc|`` is of the order of ``r sqrt(q)`` and the relative error of
        order ``u``. A sum far smaller than that (opposite rows of a tie, symmetric data) is a cancellation, where
        the same rounding is a large *relative* error of ``x0_hat``: :meth:`float64_sums` recomputes those.
        ``r``: the largest row norm (default this bank's; the largest over all ranks when sharded)."""
        return st.acc.double().norm(dim=1) < CANCEL * (self.r if r is None else r) * st.q.clamp(min=0).sqrt()

    def float64_sums(self, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, *, temperature: float = 1.0,
                     rows=None, block_bytes: int = 1 << 24) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(m, s, acc)`` of the queries ``x`` [b, D] in float64 throughout: logits in difference form and the
        weighted sums of float64 rows, streamed over blocks of rows (``acc`` float64 [b, D]). Exact to float64
        rounding, at the cost of a float64 pass per query: for the few means that cancel (:meth:`cancelling`).
        ``rows``: other rows to read in place of the bank's (the original rows of a stored bank, sliceable)."""
        q = _Queries(self, x, alpha, sigma, temperature, n_rows=max(len(self), 1))
        b = len(q.x)
        m = torch.full((b,), -math.inf, dtype=torch.float64, device=self.device)
        s = torch.zeros(b, dtype=torch.float64, device=self.device)
        acc = torch.zeros(b, self.dim, dtype=torch.float64, device=self.device)
        step = _block_rows(self.dim, block_bytes)
        for j0 in range(0, len(self), step):
            j1 = min(j0 + step, len(self))
            block = (self.rows(j0, j1) if rows is None else rows[j0:j1]).to(self.device, torch.float64)
            prior = self._log_prior(slice(j0, j1), temperature)
            for i in range(b):
                diff = q.x64[i] - q.alpha[i] * block
                logits = q.c[i] * (q.x_sq[i] - (diff * diff).sum(1))
                if prior is not None:
                    logits = logits + prior
                m_new = torch.maximum(m[i], logits.max())
                w = torch.exp(logits - m_new)
                shrink = torch.exp(m[i] - m_new)
                s[i] = s[i] * shrink + w.sum()
                acc[i] = acc[i] * shrink + w @ block
                m[i] = m_new
        return m, s, acc

    def rescore(self, st: Stats, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, exact, *,
                temperature: float = 1.0) -> Stats:
        """The statistics ``st`` of a stored bank (rows held in float16/bfloat16/uint8) with its top rows
        (``st.top_i``, from :meth:`reduce` with ``k`` > 0) rescored against the ``exact`` rows (float32
        [N, D], a tensor or a row source such as a memory-mapped file): their logits recomputed in float64 in
        difference form from the exact rows, their stored weights and rows in the sums replaced by these. The
        other rows keep their stored values: the result is exact where the top rows carry the posterior (sharp
        posteriors), and off by at most the storage's rounding times the mass outside them elsewhere."""
        if self.log_c is not None:
            raise ValueError("rescoring needs one stored row per original row (no log_counts)")
        valid = st.top_i >= 0
        B, k = st.top_i.shape
        if not k:
            return st
        idx = st.top_i.clamp(min=0)
        q = _Queries(self, x, alpha, sigma, temperature, n_rows=max(len(self), 1))
        rows_new = exact[idx.reshape(-1).to(exact.device if isinstance(exact, torch.Tensor) else "cpu")]
        rows_new = rows_new.to(self.device, torch.float64).reshape(B, k, -1)
        rows_old = self.X[idx.reshape(-1)].to(torch.float64).reshape(B, k, -1)
        diff = q.x64[:, None] - q.alpha[:, None, None] * rows_new
        l_new = q.c[:, None] * (q.x_sq[:, None] - (diff * diff).sum(2))
        prior = self._log_prior(idx, temperature)
        if prior is not None:
            l_new = l_new + prior
        l_new = l_new.masked_fill(~valid, -math.inf)
        z_old = (st.top_l - st.m[:, None]).masked_fill(~valid, -math.inf)
        w_old = torch.exp(z_old)
        # the other rows: the sums less the top rows' stored terms; a remainder below the rounding of the float32
        # sums (REST_FLOOR of the total) is that rounding, not rows, and is dropped
        s_rest = st.s - w_old.sum(1)
        rest = s_rest > REST_FLOOR * st.s
        keep = rest.to(torch.float64)
        st = rescale(Stats(torch.where(rest, st.m, torch.full_like(st.m, -math.inf)), s_rest * keep,
                           (st.acc.double() - torch.einsum("bk,bkd->bd", w_old, rows_old)) * keep[:, None],
                           (st.u - (w_old * z_old.nan_to_num(neginf=0.0)).sum(1)) * keep,
                           (st.q - (w_old * w_old).sum(1)) * keep, st.top_l, st.top_i),
                     torch.maximum(torch.where(rest, st.m, torch.full_like(st.m, -math.inf)), l_new.max(1).values))
        m = st.m
        w_new = torch.exp(l_new - m[:, None])
        z_new = (l_new - m[:, None]).nan_to_num(neginf=0.0)
        top_l, order = l_new.sort(1, descending=True)
        return Stats(m, st.s + w_new.sum(1), (st.acc + torch.einsum("bk,bkd->bd", w_new, rows_new)).float(),
                     st.u + (w_new * z_new).sum(1), st.q + (w_new * w_new).sum(1), top_l, st.top_i.gather(1, order))

    def _tiers(self, q: "_Queries", sel: torch.Tensor, l32: torch.Tensor, s0: int, k: int = 0):
        """Given the screened logits ``l32`` [b, n] of the queries ``sel`` on the span starting at ``s0``: their
        shifted logits ``z`` (float32 [b, n], candidates recomputed in float64), the shift ``m`` (float64 [b]),
        which of them are broad (more than ``PILOT_FRACTION`` of the span as candidates), and their top ``k``
        rows (indices [b, min(k, n)], ranked before screened-out rows are capped at ``-margin``).

        Candidates are recomputed in float64 in difference form, pair by pair, or, for a query with more than
        ``DENSE_FRACTION`` of the span as candidates (and ``delta <= UNION_DELTA``, where the expanded float64
        form is accurate to ``delta * 2^-29``), by float64 matrix products over the union of those queries'
        candidate rows."""
        m32 = l32.max(1).values.double()
        slow = q.slow[sel]
        top = (lambda z: self._rank(z, s0, k) if k else None)
        if not bool(slow.any()):
            z = l32.sub_(m32.float()[:, None])
            return z, m32, torch.zeros_like(slow), top(z)
        n = l32.shape[1]
        cand = (l32 >= (m32 - q.window[sel]).float()[:, None]) & slow[:, None]
        massed = (cand.sum(1) > DENSE_FRACTION * n) & (q.delta[sel] <= UNION_DELTA)
        if bool(massed.any()):  # many candidates: keep only those the screened mass below them requires
            cand[massed] = self._by_mass(q, sel[massed], l32[massed], m32[massed])
        count = cand.sum(1)
        wide = massed & (count > DENSE_FRACTION * n)
        bb, jj = cand.nonzero(as_tuple=True)  # the span's maximum row is a candidate: m is the exact maximum
        few = ~wide[bb]
        l64 = torch.empty(len(bb), dtype=torch.float64, device=self.device)
        if bool(few.any()):
            l64[few] = self._exact_logits(q, sel[bb[few]], jj[few] + s0)
        if bool(wide.any()):
            w = wide.nonzero().squeeze(1)
            union = cand[w].any(0).nonzero().squeeze(1)
            lu = self._union_logits(q, sel[w], union + s0)
            local = torch.full((len(sel),), -1, dtype=torch.long, device=self.device)
            local[w] = torch.arange(len(w), device=self.device)
            pos = torch.full((n,), -1, dtype=torch.long, device=self.device)
            pos[union] = torch.arange(len(union), device=self.device)
            l64[~few] = lu[local[bb[~few]], pos[jj[~few]]]
        m = torch.where(slow, torch.full_like(m32, -math.inf), m32).scatter_reduce(0, bb, l64, reduce="amax")
        z = l32.sub_(m.float()[:, None])
        z[bb, jj] = (l64 - m[bb]).float()
        order = top(z)
        # screened-out rows of slow queries: provably more than `margin` below the top (module docstring); those
        # chosen by mass keep their screened logits (off by at most delta <= UNION_DELTA)
        capped = (slow & ~massed)[:, None] & ~cand
        z = torch.where(capped, torch.minimum(z, -q.margin[sel, None].float()), z)
        return z, m, count > PILOT_FRACTION * n, order

    @staticmethod
    def _by_mass(q: "_Queries", sel: torch.Tensor, l32: torch.Tensor, m32: torch.Tensor) -> torch.Tensor:
        """The candidates [b, n] of queries ``sel`` chosen by the screened mass below them: rows with
        ``l32 > m32 - k`` for the smallest integer ``k`` whose screened mass below ``m32 - k``, ``S = sum
        e^(l32_i - m32)``, satisfies ``2 (e^delta - 1) e^(2 delta) S <= TOL``. The rows below carry, exactly,
        at most ``e^(2 delta) S`` of the top weight, each changed by a factor within ``e^(+-delta)``, which moves
        ``x0_hat`` by at most ``2 (e^delta - 1) e^(2 delta) S r``. Where no such ``k`` lies inside the window,
        the window's candidates (the margin rule)."""
        z = (l32 - m32.float()[:, None]).clamp_(min=EXP_FLOOR)  # clamping only raises the mass: conservative
        window = q.window[sel]
        levels = int(math.ceil(float(window.max()))) + 1
        bins = (-z).floor_().long().clamp_(max=levels - 1)
        mass = torch.zeros(len(sel), levels, dtype=torch.float64, device=z.device)
        mass.scatter_add_(1, bins, torch.exp(z).double())
        below = mass.flip(1).cumsum(1).flip(1)  # below[:, k]: the mass of rows with l32 <= m32 - k
        delta = q.delta[sel]
        allowed = TOL / (2 * torch.expm1(delta) * torch.exp(2 * delta) * 1.01)  # 1 %: the float sums' rounding
        level = torch.arange(levels, device=z.device)[None]
        ok = (below <= allowed[:, None]) & (level >= 1) & (level <= window[:, None])  # k >= 1: the top row stays
        k = torch.where(ok.any(1), ok.float().argmax(1), torch.full_like(bins[:, 0], -1))
        by_window = z >= -window.float()[:, None]
        return torch.where((k >= 0)[:, None], bins < k[:, None], by_window)

    def _screen(self, q: "_Queries", sel: torch.Tensor | None, rows: torch.Tensor, j0: int, j1: int,
                out: torch.Tensor | None = None) -> torch.Tensor:
        """Screened logits ``c (2 alpha x.x_i - alpha^2 |x_i|^2) + log w_i / T`` [b, n] in float32 for the queries
        ``sel`` (None: all), with the matrix product in the bank's ``screen`` format; written into ``out`` when
        given (then the product only: :meth:`_screen_bias` adds the rest once per span)."""
        xs = q.x_scaled if sel is None else q.x_scaled[sel]
        if self.screen == "bfloat16":
            l32 = (xs.bfloat16() @ rows.bfloat16().T).float()
            if out is not None:
                return out.copy_(l32)
        else:
            with _tf32(self.screen == "tf32" and rows.is_cuda):
                if out is not None:
                    return out.addmm_(xs, rows.T, beta=0)
                l32 = xs @ rows.T
        return self._screen_bias(q, sel, l32, j0, j1)

    def _screen_bias(self, q: "_Queries", sel: torch.Tensor | None, l32: torch.Tensor, j0: int, j1: int):
        """``l32 - alpha^2 c |x_i|^2 + log w_i / T`` for rows ``j0:j1``, in place."""
        l32.addcmul_(q.aac if sel is None else q.aac[sel], self.sq_norms[j0:j1][None], value=-1.0)
        prior = self._log_prior(slice(j0, j1), q.temperature)
        if prior is not None:
            l32 += prior.float()
        return l32

    def _dense_logits(self, q: "_Queries", sel: torch.Tensor, rows: torch.Tensor, idx, *,
                      out: torch.Tensor, xs: torch.Tensor | None = None) -> torch.Tensor:
        """Float64 logits of the queries ``sel`` for ``rows`` (float32 [n, D], the bank's rows ``idx``: a slice
        or an index tensor), written into ``out`` [b, n], by float64 matrix products (error ~ delta * 2^-29) over
        blocks of rows converted into one reused float64 buffer (a fresh chunk-sized float64 tensor per chunk
        costs more in page faults than the product itself). ``xs``: ``q.x64_scaled[sel]``, when the caller has it."""
        xs = q.x64_scaled[sel] if xs is None else xs
        step = self._dense_step(len(xs))
        step = -(-len(rows) // -(-len(rows) // step))  # equal blocks: no sliver of a few rows at the end
        if q.buf64 is None or len(q.buf64) < step:  # chunks differ in length, and so do their equal blocks
            q.buf64 = torch.empty(step, self.dim, dtype=torch.float64, device=self.device)
        for s in range(0, len(rows), step):
            block = q.buf64[:min(step, len(rows) - s)]
            block.copy_(rows[s:s + len(block)])
            out[:, s:s + len(block)].addmm_(xs, block.T, beta=0)
        out.addcmul_(q.aac64[sel], self.sq_norms64[idx][None], value=-1.0)
        prior = self._log_prior(idx, q.temperature)
        if prior is not None:
            out += prior
        return out

    def _dense_step(self, batch: int) -> int:
        """Rows per block of the float64 products for ``batch`` queries. From ``DENSE_WIDE`` queries on, the
        products are compute-bound: ``DENSE_BLOCK`` elements, at least ``DENSE_MIN_ROWS`` rows (thin products of
        a few long rows run at a fraction of the speed of wider ones). With fewer queries they are memory-bound:
        ``DENSE_BLOCK / 2`` elements (8 MB), so that the block stays in the last-level cache between its
        conversion and its product (at D = 49152, N = 4000, one thread, sigma / alpha = 19: 0.52 of the limit at
        B = 1 with 21-32 rows against 0.31 with 192)."""
        if batch >= DENSE_WIDE:
            return max(DENSE_MIN_ROWS, DENSE_BLOCK // max(self.dim, 1))
        return max(1, DENSE_BLOCK // 2 // max(self.dim, 1))

    def _union_logits(self, q: "_Queries", sel: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Float64 logits [len(sel), len(idx)] of the queries ``sel`` for the rows ``idx`` (global indices), by
        float64 matrix products over the gathered rows, block by block."""
        out = torch.empty(len(sel), len(idx), dtype=torch.float64, device=self.device)
        xs, step = q.x64_scaled[sel], self._dense_step(len(sel))
        for s in range(0, len(idx), step):
            ii = idx[s:s + step]
            self._dense_logits(q, sel, self.X[ii], ii, out=out[:, s:s + len(ii)], xs=xs)
        return out

    def _exact_logits(self, q: "_Queries", b: torch.Tensor, rows_idx: torch.Tensor, block: int = 1 << 22):
        """Float64 logits ``c (|x|^2 - |x - alpha x_i|^2) + log w_i / T + log c_i`` for the pairs (query ``b``,
        row), in blocks."""
        out = torch.empty(len(rows_idx), dtype=torch.float64, device=self.device)
        step = max(1, block // max(self.dim, 1))
        for s in range(0, len(rows_idx), step):
            bb, ii = b[s:s + step], rows_idx[s:s + step]
            diff = q.x64[bb] - q.alpha[bb, None] * self.X[ii].double()
            out[s:s + step] = q.c[bb] * (q.x_sq[bb] - (diff * diff).sum(1))
        prior = self._log_prior(rows_idx, q.temperature)
        if prior is not None:
            out += prior
        return out

    def _copy_sums(self, p: torch.Tensor, z: torch.Tensor, s0: int):
        """The entropy and effective-size sums ``u``, ``q`` [b] (float64) of a span's weights ``p = e^z``, over the
        copies of its rows: ``c`` copies of logit ``z - log c`` each give ``p (z - log c)`` and ``p^2 / c``."""
        if self.log_c is None:
            return (p * z).sum(1, dtype=torch.float64), (p * p).sum(1, dtype=torch.float64)
        lc = self.log_c[s0:s0 + z.shape[1]].float()
        return (p * (z - lc)).sum(1, dtype=torch.float64), (p * p * torch.exp(-lc)).sum(1, dtype=torch.float64)

    def _top(self, z: torch.Tensor, m: torch.Tensor, k: int, offset: int, order: torch.Tensor | None):
        """The logits ``z + m`` (of one copy: less ``log c_i``) of the rows ``order`` [B, min(k, n)] (the top
        ``k``, ranked before ``z`` was capped; their logits are read from ``z``, as the sums used them) and their
        global indices, padded to ``k``."""
        if not k:
            return z.new_zeros(z.shape[0], 0, dtype=torch.float64), z.new_zeros(z.shape[0], 0, dtype=torch.long)
        top_l = z.gather(1, order).double() + m[:, None]
        if self.log_c is not None:
            top_l = top_l - self.log_c[order + offset]
        return _pad_top(top_l, order + offset, k)


def _pad_top(top_l: torch.Tensor, top_i: torch.Tensor, k: int):
    """Top logits [B, kk] and row indices padded to ``k`` columns with ``-inf`` and ``-1`` (fewer rows than ``k``)."""
    pad = k - top_l.shape[1]
    if pad <= 0:
        return top_l, top_i
    return (torch.cat([top_l, top_l.new_full((len(top_l), pad), -math.inf)], 1),
            torch.cat([top_i, top_i.new_full((len(top_i), pad), -1)], 1))


@contextlib.contextmanager
def _tf32(enabled: bool):
    """TF32 matrix products on CUDA inside the block only (the screen); IEEE float32 everywhere else."""
    if not enabled:
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


class _Queries:
    """Per-query constants of one :meth:`Bank.reduce` call: the screened-logit error bound ``delta`` [B], the
    screening ``margin`` [B] and ``window = margin + 2 delta`` (module docstring)."""

    def __init__(self, bank: Bank, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, temperature: float,
                 *, n_rows: int):
        if bank.device.type == "cuda" and bank.screen == "float32" and torch.backends.cuda.matmul.allow_tf32:
            raise ValueError("torch.backends.cuda.matmul.allow_tf32 is on: the exact bank needs IEEE float32 "
                             "products (use screen='tf32' for TF32 screening)")
        self.temperature = temperature
        self.x = x.to(bank.device, torch.float32)
        self.alpha = alpha.to(bank.device, torch.float64)
        self.x64 = self.x.double()
        self.x_sq = (self.x64 * self.x64).sum(1)
        cross = 2 * self.alpha * self.x_sq.sqrt() * bank.r  # >= |2 alpha x.x_i|, by Cauchy-Schwarz
        spread = cross + self.alpha ** 2 * bank.r ** 2
        c = 0.5 / (sigma.to(bank.device, torch.float64) ** 2 * temperature)
        self.c = torch.minimum(c, C_MAX / (1.0 + spread))  # sigma = 0: the nearest row(s), without overflow
        kappa = 2 * math.sqrt(bank.dim) + 8  # probabilistic dot-product bound (Higham & Mary 2019)
        # the log weights are rounded once and added once: 3 u |log w / T| (no dot-product growth)
        self.delta = kappa * U32 * self.c * spread + 3 * U32 * (bank.log_w_max / temperature + bank.log_c_max) + \
            SCREEN_DOT[bank.screen] * self.c * cross
        self.slow = self.delta > getattr(bank, "fast_delta", FAST_DELTA)
        # n screened-out rows, each changed by at most e^-margin min(1, e^delta - 1) of the top weight, move
        # x0_hat by at most 4 n e^-margin min(1, e^delta - 1) r: margin makes that TOL r
        err = torch.expm1(self.delta.clamp(max=1.0))
        self.margin = torch.log((4 * n_rows * err / TOL).clamp(min=1.0))
        self.window = torch.where(self.slow, self.margin + 2 * self.delta, torch.full_like(self.delta, math.inf))
        self.x_scaled = self.x * (2 * self.alpha * self.c).float()[:, None]
        self.aac = (self.alpha ** 2 * self.c).float()[:, None]
        self.x64_scaled = self.x64 * (2 * self.alpha * self.c)[:, None]
        self.aac64 = (self.alpha ** 2 * self.c)[:, None]
        self.buf64 = None  # the dense tier's float64 row buffer, allocated on first use


# ---------------------------------------------------------------- approximate back-end for large N (FAISS)

TOLERANCE = 0.01  # FaissBank: a query whose certified relative error of x0_hat exceeds this goes to the exact bank
GATHER_BYTES = 1 << 28  # FaissBank: float64 rows gathered for one block of queries (256 MB)


def _faiss():
    try:
        import faiss
    except ImportError:
        raise ValueError("bank='faiss' needs FAISS: pip install 'boneless-flow[faiss]' (faiss-cpu)") from None
    return faiss


class Approximation(NamedTuple):
    """What :meth:`FaissBank.estimate` knows about its own error, per query [B].

    ``tail_mass``: the importance-sampled estimate of the posterior mass outside the ``k`` neighbours (0 without
    a tail sample); ``tail_bound``: an upper bound on the tail's mass relative to the neighbours',
    ``(N - k) e^(l_k - m) / s_k`` (``l_k`` the smallest neighbour logit), valid when the neighbours are the true
    top k (``index="flat"``; for ``"ivf"`` when its probes found them); ``x0_bound``: the bound on the relative
    error ``|x0_k - E[x0 | x]| / |E[x0 | x]|`` of the neighbours' average ``x0_k`` that follows,
    ``2 tail_bound (r + |x0_k|) / |x0_k|`` (``r = max_i |x_i|``; the 2 covers the change of denominator while
    the bound is below 1/2)."""

    tail_mass: torch.Tensor
    tail_bound: torch.Tensor
    x0_bound: torch.Tensor


class _Parts(NamedTuple):
    """A block of queries' neighbours ``idx`` [b, k] (a missing one: row 0 with logit -inf), their float64 rows
    [b, k, D] and exact float64 logits [b, k], and the same for the uniform tail sample (rows among the
    neighbours masked with -inf; [b, 0] without a sample)."""

    idx: torch.Tensor
    rows_top: torch.Tensor
    l_top: torch.Tensor
    rows_tail: torch.Tensor
    l_tail: torch.Tensor


class FaissBank:
    """An approximate bank for large N: the ``k`` nearest rows of each query from a FAISS index, with their
    logits recomputed exactly (float64). Costs O(k) rows per query after the index search instead of all N.

    The logits are ``-|x - alpha x_i|^2 / (2 sigma^2 T)``, so the top-k rows are the nearest neighbours of
    ``x / alpha``. Every row outside them has a logit of at most the smallest neighbour's, ``l_k``, so their
    mass relative to the neighbours' is at most ``(N - k) e^(l_k - m) / s_k``, which bounds the error of the
    neighbours' weighted average (:class:`Approximation`). Per query: where that bound on the relative error
    of ``x0_hat`` is at most ``tolerance``, the neighbours alone give the result; elsewhere (broad posteriors,
    where the neighbours cannot carry the mass) the exact bank computes it. So the error is at most
    ``tolerance`` for every query when the neighbours are the true top k (``index="flat"``); the inverted-file
    index (``"ivf"``) can miss some, and the benchmark (``boneless bench --faiss``) measures what that costs.
    Queries with ``alpha = 0`` (the prior) always go to the exact bank. Prior weights are not supported (they
    break the equivalence with nearest neighbours).

    ``tolerance=None`` turns the rule off: every query then gets its neighbours plus an unbiased estimate of the
    rest of the softmax sums from ``tail`` rows drawn uniformly (the nearest-neighbour score estimator of
    Niedoba et al., arXiv 2402.08018, with the exact sum of the other rows as a control variate). No bound holds
    then: at intermediate noise, where most of the mass lies outside the neighbours, its error can reach tens
    of percent.

    Args:
        bank: the exact :class:`Bank` whose rows are indexed (the fallback, and for :meth:`check`).
        k: neighbours per query.
        tail: rows sampled uniformly per query for the tail estimate (``tolerance=None`` only; 0: no estimate).
        index: ``"ivf"`` (inverted lists, approximate, fast) or ``"flat"`` (exact search, no speed-up in the search).
        nlist, nprobe: inverted lists and lists probed per query (``ivf``; default ``2 sqrt(N)`` and 32).
        tolerance: the largest certified relative error of ``x0_hat`` served from the neighbours (default
            ``TOLERANCE``, 1 %); ``None``: no switch to the exact bank (and no bound).
        seed: seed of the tail sampler and of the index training sample.
    """

    def __init__(self, bank: Bank, *, k: int = 256, tail: int = 256, index: Literal["ivf", "flat"] = "ivf",
                 nlist: int | None = None, nprobe: int = 32, tolerance: float | None = TOLERANCE, seed: int = 0):
        faiss = _faiss()
        if bank.log_w is not None or bank.log_c is not None:
            raise ValueError("bank='faiss' does not support prior weights (the top-k would not be nearest neighbours)")
        for name, v, lo in (("k", k, 1), ("tail", tail, 0), ("nprobe", nprobe, 1)):
            if not (isinstance(v, int) and v >= lo):
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        if index not in ("ivf", "flat"):
            raise ValueError(f"index must be 'ivf' or 'flat', got {index!r}")
        if tolerance is not None and not (isinstance(tolerance, (int, float)) and 0 < tolerance < math.inf):
            raise ValueError(f"tolerance must be a positive number or None, got {tolerance!r}")
        self.exact, self.k, self.tail, self.index_kind = bank, min(k, len(bank)), tail, index
        self.tolerance = tolerance
        self.generator = torch.Generator().manual_seed(seed)
        n, d = len(bank), bank.dim
        if index == "flat":
            self.index = faiss.IndexFlatL2(d)
        else:
            nlist = nlist or max(1, min(int(2 * math.sqrt(n)), n // 39))
            self.index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, nlist)
            train = torch.randperm(n, generator=self.generator)[:min(n, 50 * nlist)].sort().values
            self.index.train(bank.X[train].cpu().numpy())
            self.index.nprobe = min(nprobe, nlist)
        self.sum_all = torch.zeros(d, dtype=torch.float64, device=bank.device)  # sum_i x_i (the tail's control variate)
        for j0 in range(0, n, bank.chunk_size):
            rows = bank.rows(j0, min(j0 + bank.chunk_size, n))
            self.index.add(rows.cpu().contiguous().numpy())
            for block in rows.split(_block_rows(d, 1 << 20)):  # small float64 blocks: no page faults
                self.sum_all += block.double().sum(0)

    def __getattr__(self, name):  # everything else (rows, X, chunk_size, device, ...) is the exact bank's
        return getattr(self.exact, name)

    def __len__(self) -> int:
        return len(self.exact)

    def _blocks(self, n: int, tail: int):
        """Slices of ``n`` queries whose gathered float64 rows fit in ``GATHER_BYTES``."""
        step = max(1, GATHER_BYTES // (8 * (self.k + tail) * max(self.dim, 1)))
        return (slice(b0, min(b0 + step, n)) for b0 in range(0, n, step))

    def _parts(self, x, alpha, sigma, temperature, tail: int) -> _Parts:
        """Neighbours and (``tail`` > 0) the tail sample of a block of queries, with exact float64 logits
        ``c (2 alpha x.x_i - alpha^2 |x_i|^2)``."""
        dev = self.exact.device
        x64 = x.to(dev, torch.float64)
        alpha, sigma = alpha.to(dev, torch.float64), sigma.to(dev, torch.float64)
        c = 0.5 / (sigma ** 2 * temperature)

        def gather(ix):
            rows = self.exact.X[ix.reshape(-1)].reshape(*ix.shape, -1).double()
            dots = torch.einsum("bd,bmd->bm", x64, rows)
            return rows, c[:, None] * (2 * alpha[:, None] * dots - alpha[:, None] ** 2 * self.exact.sq_norms64[ix])

        _, idx = self.index.search((x64 / alpha[:, None]).float().cpu().numpy(), self.k)
        idx = torch.from_numpy(idx).to(dev)
        missing = idx < 0  # fewer than k found (ivf): row 0 in their place, with weight 0
        rows_top, l_top = gather(idx.clamp(min=0))
        l_top = l_top.masked_fill(missing, -math.inf)
        n = len(self.exact)
        if tail and n > self.k:
            samp = torch.randint(0, n, (len(x), tail), generator=self.generator).to(dev)
            in_top = (samp[:, :, None] == idx[:, None, :]).any(-1)
            rows_tail, l_tail = gather(samp)
            l_tail = l_tail.masked_fill(in_top, -math.inf)
        else:
            rows_tail, l_tail = rows_top[:, :0], l_top[:, :0]
        return _Parts(idx.clamp(min=0), rows_top, l_top, rows_tail, l_tail)

    def _certified(self, p: _Parts):
        """From the neighbours alone [b]: their maximum logit ``m``, sum ``s_k = sum e^(l - m)``, the bound on
        the tail's relative mass and the bound on the relative error of their average (:class:`Approximation`)."""
        m = p.l_top.max(1).values
        w = torch.exp(p.l_top - m[:, None])
        s_top = w.sum(1)
        found = torch.isfinite(p.l_top)
        l_k = p.l_top.masked_fill(~found, math.inf).min(1).values
        tail_bound = ((len(self.exact) - found.sum(1)) * torch.exp(l_k - m) / s_top).clamp(max=1.0)
        x0_norm = torch.einsum("bm,bmd->bd", w / s_top[:, None], p.rows_top).norm(dim=1)
        x0_bound = 2 * tail_bound * (self.exact.r + x0_norm) / x0_norm.clamp(min=1e-30)
        return m, s_top, tail_bound, x0_bound

    def reduce(self, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, *, temperature: float = 1.0,
               k: int = 0, start: int = 0, stop: int | None = None, entropy: bool = True) -> Stats:
        """:meth:`Bank.reduce`'s statistics (all rows only): from each query's neighbours where their certified
        error is within ``tolerance`` (with ``tolerance=None``: neighbours plus the tail estimate for every
        query), from the exact bank for the others and for ``alpha = 0``."""
        if start != 0 or (stop is not None and stop != len(self)):
            raise ValueError("the FAISS bank reduces over all its rows")
        tail = self.tail if self.tolerance is None else 0
        approx = (alpha != 0).nonzero().squeeze(1)
        pieces = []  # (query indices, their Stats)
        for blk in self._blocks(len(approx), tail):
            b = approx[blk]
            p = self._parts(x[b], alpha[b], sigma[b], temperature, tail)
            if self.tolerance is not None:
                ok = self._certified(p)[3] <= self.tolerance
                b, p = b[ok], _Parts(*(t[ok] for t in p))
            if len(b):
                pieces.append((b, self._stats(p, k)))
        served = torch.cat([b for b, _ in pieces]) if pieces else approx[:0]
        rest = torch.ones(len(x), dtype=torch.bool, device=alpha.device)
        rest[served] = False
        if bool(rest.any()):
            rest = rest.nonzero().squeeze(1)
            pieces.append((rest, self.exact.reduce(x[rest], alpha[rest], sigma[rest], temperature=temperature, k=k,
                                                   entropy=entropy)))
        if len(pieces) == 1:  # every query from one source (indices in order)
            return pieces[0][1]
        out = [torch.empty((len(x),) + t.shape[1:], dtype=t.dtype, device=t.device) for t in pieces[0][1]]
        for b, st in pieces:
            for o, t in zip(out, st):
                o[b.to(o.device)] = t
        return Stats(*out)

    def _stats(self, p: _Parts, k: int) -> Stats:
        """The statistics of the neighbours (plus the tail estimate, when there is a sample)."""
        m = torch.cat([p.l_top, p.l_tail], 1).max(1).values
        w_top = torch.exp(p.l_top - m[:, None])
        acc = torch.einsum("bm,bmd->bd", w_top, p.rows_top)
        z_top = (p.l_top - m[:, None]).nan_to_num(neginf=0.0)
        s, u, q = w_top.sum(1), (w_top * z_top).sum(1), (w_top ** 2).sum(1)
        if p.l_tail.shape[1]:
            tail = self._tail(m, p)
            acc, s, u, q = acc + tail[0], s + tail[1], u + tail[2], q + tail[3]
        acc = acc.float()
        top_l, pos = p.l_top.topk(min(k, self.k), dim=1)
        return Stats(m, s, acc, u, q, *_pad_top(top_l, p.idx.gather(1, pos), k))

    def _tail(self, m, p: _Parts):
        """The rows outside the neighbours T, from the uniform sample S (rows of T in S masked): with
        ``w_j = e^(l_j - m)`` and ``w_bar`` the mean of ``w`` over the valid samples, the control-variate estimate
        ``sum_{j not in T} w_j x_j ~ w_bar sum_{j not in T} x_j + (N / |S|) sum_{j in S} (w_j - w_bar) x_j``
        (the plain importance-sampling sum is its ``w_bar = 0`` case; the exact ``sum_{j not in T} x_j`` removes
        most of its variance when the posterior is broad), ``sum_{j not in T} w_j ~ w_bar (N - |T|)``.
        Returns the tail's (acc, s, u, q) contributions."""
        n, scale = len(self.exact), len(self.exact) / p.l_tail.shape[1]
        valid = torch.isfinite(p.l_tail)
        w = torch.exp(p.l_tail - m[:, None]).masked_fill(~valid, 0.0)
        w_bar = w.sum(1) / valid.sum(1).clamp(min=1)
        found = torch.isfinite(p.l_top)
        rest_sum = self.sum_all[None] - torch.einsum("bm,bmd->bd", found.double(), p.rows_top)
        dev = (w - w_bar[:, None]).masked_fill(~valid, 0.0)
        acc = w_bar[:, None] * rest_sum + scale * torch.einsum("bm,bmd->bd", dev, p.rows_tail)
        s = w_bar * (n - found.sum(1))
        z = (p.l_tail - m[:, None]).masked_fill(~valid, 0.0)
        return acc, s, scale * (w * z).sum(1), scale * (w * w).sum(1)

    def estimate(self, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, *,
                 temperature: float = 1.0) -> Approximation:
        """The tail mass (estimated from the tail sample, and bounded) and the bound on the relative error of
        the neighbours' ``x0_hat`` [B] (the quantity that :meth:`reduce` compares with ``tolerance``)."""
        if bool((alpha == 0).any()):
            raise ValueError("the tail bound needs alpha > 0 (alpha = 0 is computed exactly)")
        out = []
        for blk in self._blocks(len(x), self.tail):
            p = self._parts(x[blk], alpha[blk], sigma[blk], temperature, self.tail)
            m, s_top, tail_bound, x0_bound = self._certified(p)
            s_tail = self._tail(m, p)[1] if p.l_tail.shape[1] else torch.zeros_like(s_top)
            out.append(Approximation(s_tail / (s_top + s_tail), tail_bound, x0_bound))
        return Approximation(*(torch.cat(t) for t in zip(*out))) if out else \
            Approximation(*(torch.zeros(0, dtype=torch.float64) for _ in range(3)))

    def check(self, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, *,
              temperature: float = 1.0) -> torch.Tensor:
        """Relative L2 error [B] of this bank's ``x0_hat`` against the exact bank's (a full exact pass)."""
        a = self.reduce(x, alpha, sigma, temperature=temperature)
        e = self.exact.reduce(x, alpha, sigma, temperature=temperature)
        xa, xe = a.acc.double() / a.s[:, None], e.acc.double() / e.s[:, None]
        return (xa - xe).norm(dim=1) / xe.norm(dim=1).clamp(min=1e-30)
