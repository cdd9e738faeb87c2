"""Denoisers: the one protocol ``denoiser(x, alpha, sigma) -> x0_hat`` and the exact empirical denoiser.

``x`` is ``[B, *shape]``; ``alpha`` and ``sigma`` are Python floats or tensors of shape ``[B]``; the result
estimates ``E[x0 | x_t = x]`` for ``x_t = alpha x0 + sigma eps``. Everything else is a formula of ``x0_hat``
(Tweedie's formula): see :func:`eps_from_x0`, :func:`score_from_x0`, :func:`velocity_from_x0`.

:mod:`boneless.registry` names every denoiser (``DENOISERS``); every sampler, metric and command works with
any of them.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple, Protocol, runtime_checkable

import torch

from . import distributed
from .bank import TOLERANCE, Bank, FaissBank, Stats
from .data import check_data
from .rows import StoredRows, _block_rows, repeated_rows

Coef = float | torch.Tensor


def per_sample(value: Coef, batch: int, name: str, *, signed: bool = False) -> torch.Tensor:
    """``alpha`` or ``sigma`` as a float64 tensor [B], checked finite (and non-negative unless ``signed``)."""
    v = torch.as_tensor(value, dtype=torch.float64).detach().cpu()
    if v.ndim == 0:
        v = v.expand(batch)
    if v.shape != (batch,):
        raise ValueError(f"{name} must be a float or a tensor of shape [{batch}], got shape {list(v.shape)}")
    if not bool(torch.isfinite(v).all()) or (not signed and bool((v < 0).any())):
        raise ValueError(f"{name} must be finite" + ("" if signed else " and >= 0"))
    return v.clone()


def check_query(x: torch.Tensor, shape: tuple[int, ...], alpha: Coef, sigma: Coef):
    """Validate a query batch ``x`` [B, *shape] and return ``alpha``, ``sigma`` as float64 [B] (CPU).

    Raises a one-line ``ValueError`` for a wrong shape, NaN/inf values, negative coefficients, or
    ``alpha = sigma = 0`` (the same rules as :class:`~boneless.denoisers.EmpiricalDenoiser`)."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != len(shape) + 1 or tuple(x.shape[1:]) != tuple(shape):
        raise ValueError(f"x must have shape [B, {', '.join(map(str, shape))}], got {list(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or inf values")
    a, s = per_sample(alpha, len(x), "alpha"), per_sample(sigma, len(x), "sigma")
    if bool(((a == 0) & (s == 0)).any()):
        raise ValueError("alpha and sigma cannot both be 0")
    return a, s


def prior_mean_at_alpha_zero(mean: torch.Tensor, x: torch.Tensor, a: torch.Tensor, s: torch.Tensor,
                             estimate) -> torch.Tensor:
    """``estimate(x[keep], a[keep], s[keep])`` for the queries with ``alpha > 0`` and ``mean`` for the others
    (alpha = 0 is pure noise: the posterior is the prior, its mean the data mean). ``a``, ``s`` as returned by
    :func:`check_query`; ``estimate`` returns [b, *shape]."""
    out = mean.to(x.device, x.dtype).expand_as(x).clone()
    keep = a > 0
    if bool(keep.any()):
        idx = torch.nonzero(keep)[:, 0]
        out[idx.to(x.device)] = estimate(x[idx.to(x.device)], a[idx], s[idx]).to(x.device, x.dtype)
    return out


def _expand(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return c.to(x.device, x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


def eps_from_x0(x: torch.Tensor, x0_hat: torch.Tensor, alpha: Coef, sigma: Coef) -> torch.Tensor:
    """Noise prediction ``eps = (x - alpha x0_hat) / sigma``."""
    a, s = per_sample(alpha, len(x), "alpha"), per_sample(sigma, len(x), "sigma")
    return (x - _expand(a, x) * x0_hat) / _expand(s, x)


def score_from_x0(x: torch.Tensor, x0_hat: torch.Tensor, alpha: Coef, sigma: Coef) -> torch.Tensor:
    """Score ``grad log p_t(x) = (alpha x0_hat - x) / sigma^2`` (Tweedie's formula)."""
    a, s = per_sample(alpha, len(x), "alpha"), per_sample(sigma, len(x), "sigma")
    return (_expand(a, x) * x0_hat - x) / _expand(s * s, x)


def velocity_from_x0(x: torch.Tensor, x0_hat: torch.Tensor, alpha: Coef, sigma: Coef, d_alpha: Coef,
                     d_sigma: Coef) -> torch.Tensor:
    """Flow velocity ``dx/dt = d_alpha x0_hat + d_sigma eps``."""
    da = per_sample(d_alpha, len(x), "d_alpha", signed=True)
    ds = per_sample(d_sigma, len(x), "d_sigma", signed=True)
    return _expand(da, x) * x0_hat + _expand(ds, x) * eps_from_x0(x, x0_hat, alpha, sigma)


class Posterior(NamedTuple):
    """The posterior over training examples for ``B`` queries.

    ``x0_hat`` [B, *shape] its mean; ``indices`` [B, k] and ``weights`` [B, k] the top-k examples;
    ``entropy`` [B] in nats; ``n_eff`` [B] the effective number of examples ``1 / sum_i p_i^2``.
    """

    x0_hat: torch.Tensor
    indices: torch.Tensor
    weights: torch.Tensor
    entropy: torch.Tensor
    n_eff: torch.Tensor


@runtime_checkable
class Denoiser(Protocol):
    """The one protocol: ``x`` [B, *shape], ``alpha`` and ``sigma`` floats or [B] -> ``x0_hat`` [B, *shape]."""

    def __call__(self, x: torch.Tensor, alpha: Coef, sigma: Coef) -> torch.Tensor: ...


@runtime_checkable
class PosteriorDenoiser(Protocol):
    """A denoiser whose estimate is a posterior over training examples, and which reports it (top-k
    examples, weights, entropy, effective size): samplers record it, plots show it."""

    def __call__(self, x: torch.Tensor, alpha: Coef, sigma: Coef) -> torch.Tensor: ...

    def posterior(self, x: torch.Tensor, alpha: Coef, sigma: Coef, k: int = 5) -> "Posterior": ...


class EmpiricalDenoiser:
    """The exact MMSE denoiser of the (weighted) empirical distribution of ``X``:

    ``x0_hat = sum_i softmax_i((log w_i - |x - alpha x_i|^2 / (2 sigma^2)) / T) x_i``   (Bayes' rule)

    exact to float64 precision where it matters (see :mod:`boneless.bank`), streamed over ``X`` in chunks.

    Args:
        X: training examples [N, *shape], finite, of any range.
        weights: optional non-negative prior weights [N] (normalised internally).
        temperature: softmax temperature ``T`` on the posterior logits (1 is the exact posterior).
        chunk_size: rows per step of the streaming loop.
        device: where the data live and the computation runs (default: where ``X`` is).
        shard: hold only this rank's slice of ``X`` and merge the statistics across ranks
            (:mod:`boneless.distributed`); ``None`` (default): when a process group is initialised and has more
            than one rank. Every rank must then make the same calls with the same queries.
        process_group: the torch.distributed group to shard over (default: the default group).
        storage: the type ``X`` is held in: ``float32``, ``float16``, ``bfloat16`` or ``uint8`` (8-bit images);
            dequantised exactly chunk by chunk, and the denoiser is then exact for the dequantised data
            (:attr:`data`). See :mod:`boneless.bank`.
        rescore: with a smaller ``storage``: the top ``rescore`` rows of each query are rescored against ``X``
            itself (:meth:`boneless.bank.Bank.rescore`), so the reference is ``X`` (:attr:`data`), exact where
            those rows carry the posterior; ``X`` is read only at those rows, so a memory-mapped ``X`` (a
            :class:`boneless.rows.MappedRows`, or a tensor over ``np.load(..., mmap_mode="r")``) stays on disk
            while the bank holds the rows in half (or a quarter) of float32's memory. 0 (default): no rescoring.
        screen: format of the screening product (``float32``; ``tf32``/``bfloat16`` for GPUs, still exact).
        bank: ``"exact"`` (default), or ``"faiss"`` / ``"faiss-flat"``: the approximate nearest-neighbour
            back-end :class:`boneless.bank.FaissBank` (inverted-file or exact search; ``neighbours`` rows per
            query). A query whose certified relative error exceeds ``tolerance`` (default 1 %) is computed by
            the exact bank; ``tolerance=None``: none is, and the rest of the posterior is estimated from
            ``tail_samples`` uniformly drawn rows (drawn from ``seed``), without a bound.
        dedupe: hold repeated rows (equal values and weights) once, with their count
            (:func:`boneless.rows.repeated_rows`; the bank's "Repeated rows"), when at least ``1 / 8`` of the rows
            are repeats: the same posterior (indices, weights, entropy and effective size are those of the rows
            given), at the cost of the distinct rows. Applies to a tensor ``X`` with the exact bank and no
            rescoring.

    ``X`` may also be a :class:`boneless.rows.MappedRows` (a memory-mapped .npy): rows are then read chunk by
    chunk from disk and never held in memory together.
    """

    def __init__(self, X: torch.Tensor, *, weights: torch.Tensor | None = None, temperature: float = 1.0,
                 chunk_size: int = 2048, device: torch.device | str | None = None, shard: bool | None = None,
                 process_group=None, storage: Literal["float32", "float16", "bfloat16", "uint8"] = "float32",
                 screen: Literal["float32", "tf32", "bfloat16"] = "float32",
                 bank: Literal["exact", "faiss", "faiss-flat"] = "exact", neighbours: int = 256,
                 tail_samples: int = 256, tolerance: float | None = TOLERANCE, seed: int = 0, rescore: int = 0,
                 dedupe: bool = True):
        X = X if hasattr(X, "flat") else check_data(X)  # a MappedRows was checked when opened
        if not (isinstance(rescore, int) and rescore >= 0):
            raise ValueError(f"rescore must be a non-negative integer, got {rescore!r}")
        if rescore and storage == "float32":
            raise ValueError("rescore applies to a bank held in a smaller storage (float16, bfloat16 or uint8)")
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a positive number, got {temperature!r}")
        if not (isinstance(chunk_size, int) and chunk_size > 0):
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        log_w = None
        if weights is not None:
            w = torch.as_tensor(weights, dtype=torch.float64).flatten()
            if w.shape != (X.shape[0],):
                raise ValueError(f"weights must have shape [{X.shape[0]}], got {list(w.shape)}")
            if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or not bool((w > 0).any()):
                raise ValueError("weights must be finite, non-negative and not all zero")
            log_w = torch.log(w / w.sum())
        self.shape = tuple(X.shape[1:])
        self.temperature = float(temperature)
        self.n_total, self.group, self.world_size, self.offset = len(X), process_group, 1, 0
        p_w = None if log_w is None else torch.softmax(log_w / self.temperature, 0)  # for the mean, all N
        if shard or (shard is None and (process_group is not None or distributed.is_initialized())):
            if not distributed.is_initialized():
                raise ValueError("shard=True needs an initialised torch.distributed process group (run under torchrun)")
            rank, self.world_size = distributed.rank_and_size(process_group)
        if self.world_size > 1:
            if len(X) < self.world_size:
                raise ValueError(f"{len(X)} examples cannot be sharded over {self.world_size} ranks")
            start, stop = distributed.shard_bounds(len(X), rank, self.world_size)
            X = X.narrow(0, start, stop - start) if hasattr(X, "flat") else X[start:stop].clone()
            log_w = None if log_w is None else log_w[start:stop]
            p_w = None if p_w is None else p_w[start:stop]
            self.offset = start
        if bank not in ("exact", "faiss", "faiss-flat"):
            raise ValueError(f"bank must be 'exact', 'faiss' or 'faiss-flat', got {bank!r}")
        self.counts = self.members = self.starts = self.owner = None  # repeated rows held once (dedupe)
        log_c = None
        if dedupe and isinstance(X, torch.Tensor) and not rescore and bank == "exact":
            X, log_w, p_w, log_c = self._merge_repeats(X, log_w, p_w)
        self.bank = Bank(X, log_weights=log_w, log_counts=log_c, chunk_size=chunk_size, device=device,
                         storage=storage, screen=screen)
        self.rescore, self.exact_rows = min(rescore, len(X)), None
        if rescore:  # the original rows, read at the top rows of each query only
            self.exact_rows = X.flat(self.bank.device) if hasattr(X, "flat") else X.reshape(len(X), -1)
        if bank != "exact":
            if rescore:
                raise ValueError(f"rescore applies to the exact bank, not bank={bank!r}")
            if self.sharded:
                raise ValueError(f"bank={bank!r} cannot be sharded")
            self.bank = FaissBank(self.bank, k=neighbours, tail=tail_samples, tolerance=tolerance, seed=seed,
                                  index="flat" if bank == "faiss-flat" else "ivf")
        self.mean = self._stats_mean(p_w)
        self.r = self._exact_bank.r  # the largest row norm, over all ranks (the test for means that cancel)
        if self.sharded:
            self.r = float(distributed.all_reduce_sum(torch.tensor([self.r], dtype=torch.float64), self.group,
                                                      what="all-reduce (largest row norm)", op="MAX"))

    @property
    def sharded(self) -> bool:
        return self.world_size > 1

    @property
    def _exact_bank(self) -> Bank:
        return self.bank.exact if isinstance(self.bank, FaissBank) else self.bank

    def _merge_repeats(self, X, log_w, p_w):
        """Equal rows of equal weight held once (when at least 1/8 of the rows are repeats): the distinct rows, their
        log weights and mean weights, and their log counts; records which rows each stands for."""
        flat = X.reshape(len(X), -1).to(torch.float32)
        found = repeated_rows(flat, log_w)
        if found is None or 8 * (len(X) - len(found[0])) < len(X):
            return X, log_w, p_w, None
        first, owner = found[0], found[1].cpu()  # the bookkeeping of copies on the CPU, with the top-k's expansion
        counts = torch.bincount(owner, minlength=len(first))
        self.counts, self.owner = counts, owner
        self.members = torch.argsort(owner, stable=True)  # rows of each group, in order, group after group
        self.starts = counts.cumsum(0) - counts
        p_w = counts.double() / self.n_total if p_w is None else p_w[first.cpu()] * counts
        return (flat[first].reshape(-1, *self.shape), None if log_w is None else log_w[first.cpu()], p_w,
                counts.double().log())

    def _expand_top(self, top_l: torch.Tensor, top_i: torch.Tensor, k: int):
        """The top ``k`` of the rows given, from the top ``k`` of the distinct rows held (ranked by one copy's
        logit): each distinct row's copies in turn, in order of index."""
        dev = top_i.device
        B, kk = top_i.shape
        valid = (top_i >= 0).cpu()
        u = top_i.clamp(min=0).cpu()
        reps = torch.where(valid, self.counts[u].clamp(max=k), torch.ones_like(u)).flatten()
        ent = torch.repeat_interleave(torch.arange(B * kk), reps)
        t = torch.arange(len(ent)) - (reps.cumsum(0) - reps)[ent]  # copy number within its row
        per_query = reps.reshape(B, kk)
        pos = (per_query.cumsum(1) - per_query).flatten()[ent] + t
        keep = pos < k
        ent, t, pos = ent[keep], t[keep], pos[keep]
        rows = torch.where(valid.flatten()[ent], self.members[self.starts[u.flatten()[ent]] + t],
                           torch.full_like(t, -1))
        out_l = torch.full((B, k), -math.inf, dtype=top_l.dtype)
        out_i = torch.full((B, k), -1, dtype=torch.long)
        out_l[ent // kk, pos] = top_l.cpu().flatten()[ent]
        out_i[ent // kk, pos] = rows
        return out_l.to(dev), out_i.to(dev)

    def _stats_mean(self, p_w):
        """The (weighted) mean of all examples, streamed over the bank's rows (and summed over ranks);
        ``p_w`` [n] are this process's rows' normalised weights ``softmax(log w / T)`` (None: uniform)."""
        bank = self.bank
        total = torch.zeros(bank.dim, dtype=torch.float64, device=bank.device)
        # one reused 4 MB float64 buffer: a fresh float64 copy of each block costs page faults (10-20x the sum
        # for blocks of 128 MB at D = 49152)
        buf = torch.empty(max(1, min(_block_rows(bank.dim, 1 << 22), len(bank))), bank.dim, dtype=torch.float64,
                          device=bank.device)
        for j0 in range(0, len(bank), len(buf)):
            rows = buf[:min(len(buf), len(bank) - j0)].copy_(bank.rows(j0, min(j0 + len(buf), len(bank))))
            total += rows.sum(0) if p_w is None else p_w[j0:j0 + len(rows)].to(bank.device) @ rows
        if self.sharded:
            total = distributed.all_reduce_sum(total, self.group, what="all-reduce (mean)")
        return (total / self.n_total if p_w is None else total).float().reshape(self.shape)

    @property
    def data(self):
        """This process's training examples as [n, *shape] (a view of the bank; all N unless sharded; a
        :class:`~boneless.rows.MappedRows` when memory-mapped)."""
        if self.exact_rows is not None:  # rescored against the original rows: they are the reference
            rows = self.exact_rows
            return rows.source if hasattr(rows, "source") else rows.reshape(-1, *self.shape)
        if hasattr(self.bank.X, "source"):
            return self.bank.X.source
        rows = self.bank.X
        if isinstance(rows, StoredRows):  # held in a smaller type: the dequantised rows (a new tensor)
            rows = rows.dequantised()
        if self.owner is not None:  # repeated rows held once: the rows as given (a new tensor)
            rows = rows[self.owner.to(rows.device)]
        return rows.reshape(-1, *self.shape)

    def _stats(self, x: torch.Tensor, alpha: Coef, sigma: Coef, k: int) -> Stats:
        a, s = check_query(x, self.shape, alpha, sigma)
        flat = x.reshape(len(x), math.prod(self.shape))  # (-1 is ambiguous for an empty batch)
        st = self.bank.reduce(flat, a, s, temperature=self.temperature, k=max(k, self.rescore))
        if self.rescore:
            st = self.bank.rescore(st, flat, a, s, self.exact_rows, temperature=self.temperature)
            st = st._replace(top_l=st.top_l[:, :k], top_i=st.top_i[:, :k])
        if self.counts is not None and k:
            st = st._replace(**dict(zip(("top_l", "top_i"), self._expand_top(st.top_l, st.top_i, k))))
        if self.sharded:  # global row indices, then the merge across ranks (boneless.distributed)
            st = st._replace(top_i=torch.where(st.top_i >= 0, st.top_i + self.offset, st.top_i))
            st = distributed.all_reduce_stats(st, self.group)
        return self._cancellations_in_float64(st, flat, a, s)

    def _cancellations_in_float64(self, st: Stats, flat: torch.Tensor, a: torch.Tensor, s: torch.Tensor) -> Stats:
        """Posterior means that nearly cancel (:meth:`boneless.bank.Bank.cancelling`) recomputed in float64
        throughout (from the original rows when rescoring), so that their *relative* error stays within the
        contract. Sharded: the test reads the merged statistics and the largest row norm of all ranks, so every
        rank takes the same queries, and their float64 sums are merged like any statistics."""
        bank = self._exact_bank
        bad = bank.cancelling(st, self.r)
        if not bool(bad.any()):
            return st
        idx = bad.nonzero().squeeze(1)
        m, total, acc = bank.float64_sums(flat[idx.to(flat.device)], a[idx.cpu()], s[idx.cpu()],
                                          temperature=self.temperature, rows=self.exact_rows)
        if self.sharded:
            zero = torch.zeros_like(total)
            part = distributed.all_reduce_stats(Stats(m, total, acc, zero, zero, zero[:, None][:, :0],
                                                      zero[:, None][:, :0].long()), self.group)
            m, total, acc = part.m, part.s, part.acc
        shift = torch.exp(m - st.m[idx])  # onto the statistics' own maximum (u, q and the top-k stay)
        st.s[idx], st.acc[idx] = total * shift, (acc * shift[:, None]).to(st.acc.dtype)
        return st

    def __call__(self, x: torch.Tensor, alpha: Coef, sigma: Coef) -> torch.Tensor:
        st = self._stats(x, alpha, sigma, 0)
        return (st.acc / st.s.to(st.acc.dtype)[:, None]).to(x.device, x.dtype).reshape(x.shape)

    def posterior(self, x: torch.Tensor, alpha: Coef, sigma: Coef, k: int = 5) -> Posterior:
        """The posterior mean with the top-``k`` examples, their weights, the entropy and effective size."""
        if not (isinstance(k, int) and k >= 1):
            raise ValueError(f"k must be a positive integer, got {k!r}")
        k = min(k, self.n_total)
        st = self._stats(x, alpha, sigma, k)
        x0_hat = (st.acc / st.s.to(st.acc.dtype)[:, None]).to(x.device, x.dtype).reshape(x.shape)
        weights = torch.exp(st.top_l - st.m[:, None]) / st.s[:, None]
        entropy = torch.log(st.s) - st.u / st.s
        n_eff = st.s * st.s / st.q
        return Posterior(x0_hat, st.top_i.cpu(), weights.float().cpu(), entropy.float().clamp(min=0).cpu(),
                         n_eff.float().cpu())


def exact_reference(X: torch.Tensor, x: torch.Tensor, alpha: Coef, sigma: Coef, *, weights=None,
                    temperature: float = 1.0, block_bytes: int = 1 << 26) -> torch.Tensor:
    """The empirical denoiser in plain float64, difference form ``-|x - alpha x_i|^2 / (2 sigma^2)``, for tests,
    checks and benchmarks. Streamed over blocks of rows converted to float64 (``block_bytes`` each), so that it
    runs at any size (X at N = 20000, D = 49152 would be 7.8 GB in float64); memory is B x N logits."""
    from .rows import _block_rows
    Xf = X.reshape(len(X), -1)
    x64 = x.reshape(len(x), -1).double()
    a, s = per_sample(alpha, len(x), "alpha"), per_sample(sigma, len(x), "sigma")
    step = _block_rows(Xf.shape[1], block_bytes)
    logits = torch.empty(len(x64), len(Xf), dtype=torch.float64)
    for j in range(0, len(Xf), step):
        r = Xf[j:j + step].double()
        for b in range(len(x64)):
            logits[b, j:j + step] = -((x64[b] - a[b] * r) ** 2).sum(1) / (2 * s[b] ** 2)
    if weights is not None:
        logits += torch.log(torch.as_tensor(weights, dtype=torch.float64).flatten())
    p = torch.softmax(logits / temperature, dim=1)
    out = torch.zeros_like(x64)
    for j in range(0, len(Xf), step):
        out.addmm_(p[:, j:j + step], Xf[j:j + step].double())
    return out.reshape(x.shape)
