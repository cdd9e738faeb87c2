"""Sharding the exact denoiser over torch.distributed ranks (gloo on CPU, NCCL on GPUs, several nodes).

The exact denoiser is a reduction over the dataset, so it shards perfectly: rank ``r`` of ``K`` holds the rows
``[N r / K, N (r + 1) / K)`` and computes the streaming statistics :class:`~boneless.bank.Stats` of its slice;
:func:`all_reduce_stats` then combines them across ranks with the maths of :func:`boneless.bank.merge`:

    m = max_r m_r                        (all-reduce MAX)
    s, acc, u, q = sum_r rescale(., m)   (all-reduce SUM, after :func:`boneless.bank.rescale`)
    top-k = topk(cat_r top-k_r)          (all-gather, then topk; row indices are global)

Every rank must run the same queries in the same order (the same seed, hence the same noise): all ranks hold
identical iterates, and every collective below is called by all of them.

A rank that stops (an error, a crash) or stalls is reported, not waited for forever: collectives carry the
process group's timeout (``init_distributed(timeout_s=...)``) and a failed collective raises
:class:`DistributedError` naming this rank and what it was doing.
"""

from __future__ import annotations

import datetime
import os

import torch

from .bank import Stats, rescale
from .checks import one_line

DEFAULT_TIMEOUT_S = 300.0  # a collective waiting longer than this for another rank fails (set by --dist-timeout)


class DistributedError(RuntimeError):
    """A collective failed: another rank stopped (error, crash) or stalled past the timeout."""


def _dist():
    import torch.distributed as dist
    return dist


def is_initialized() -> bool:
    """True when a default process group exists (e.g. set up by :func:`init_distributed` under torchrun)."""
    dist = _dist()
    return dist.is_available() and dist.is_initialized()


def rank_and_size(group=None) -> tuple[int, int]:
    """``(rank, world_size)`` in ``group`` (default group), ``(0, 1)`` without a process group."""
    if not is_initialized():
        return 0, 1
    dist = _dist()
    return dist.get_rank(group), dist.get_world_size(group)


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of rank ``rank``: contiguous slices whose sizes differ by at most one."""
    return n * rank // world_size, n * (rank + 1) // world_size


def init_distributed(*, device: torch.device | str = "cpu", timeout_s: float = DEFAULT_TIMEOUT_S,
                     backend: str | None = None) -> tuple[int, int, torch.device]:
    """Join the process group described by torchrun's environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
    ``MASTER_PORT``, ``LOCAL_RANK``), when there is one.

    Returns ``(rank, world_size, device)``: ``(0, 1, device)`` outside torchrun (or with one process); under
    torchrun with a CUDA device without an index, ``device`` becomes ``cuda:LOCAL_RANK``. The backend is
    NCCL for CUDA devices and gloo otherwise, unless given. Already initialised: the existing group is used.
    """
    device = torch.device(device)
    if is_initialized():
        rank, world = rank_and_size()
        return rank, world, _rank_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1 or "RANK" not in os.environ:
        return 0, 1, device
    if not _dist().is_available():
        raise ValueError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if not (timeout_s > 0):
        raise ValueError(f"the distributed timeout must be positive, got {timeout_s}")
    device = _rank_device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    rank = int(os.environ["RANK"])
    try:
        _dist().init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    except (RuntimeError, ValueError) as e:
        raise DistributedError(f"rank {rank} of {world}: cannot join the process group ({backend}): "
                               f"{one_line(e, 400)}") from e
    return _dist().get_rank(), _dist().get_world_size(), device


def _rank_device(device: torch.device) -> torch.device:
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0") or 0))
    return device


def close() -> None:
    """Leave the default process group (no-op without one)."""
    if is_initialized():
        _dist().destroy_process_group()


def _collective(what: str, group, fn):
    """Run one collective; turn a backend failure (peer gone, timeout) into a :class:`DistributedError`."""
    try:
        return fn()
    except RuntimeError as e:  # gloo/NCCL raise RuntimeError or its subclass DistBackendError
        rank, world = rank_and_size(group)
        raise DistributedError(f"rank {rank} of {world}: {what} failed; another rank stopped or stalled past the "
                               f"timeout (see its own error above): {one_line(e, 400)}") from e


def all_reduce_stats(st: Stats, group=None) -> Stats:
    """Combine each rank's :class:`Stats` (of its own rows, with global row indices) into the statistics of all
    rows, identical on every rank. Same maths as :func:`boneless.bank.merge`, with all-reduce for its pairwise
    steps: MAX of ``m``; :func:`~boneless.bank.rescale` to it; SUM of ``s``, ``u``, ``q`` (float64, one call) and
    of ``acc``; all-gather of the top-k logits and indices, then topk."""
    dist = _dist()
    m = st.m.clone()
    _collective("all-reduce (max logit)", group, lambda: dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group))
    st = rescale(st, m)
    suq = torch.stack([st.s, st.u, st.q])  # [3, B] float64
    acc = st.acc.clone()
    _collective("all-reduce (sums)", group, lambda: dist.all_reduce(suq, op=dist.ReduceOp.SUM, group=group))
    _collective("all-reduce (weighted rows)", group, lambda: dist.all_reduce(acc, op=dist.ReduceOp.SUM, group=group))
    top_l, top_i = st.top_l, st.top_i
    k = top_l.shape[1]
    if k:
        world = dist.get_world_size(group)
        both = torch.cat([top_l, top_i.double()], 1)  # indices < 2^53 are exact in float64: one all-gather
        parts = [torch.empty_like(both) for _ in range(world)]
        _collective("all-gather (top-k)", group, lambda: dist.all_gather(parts, both, group=group))
        cand_l = torch.cat([p[:, :k] for p in parts], 1)
        cand_i = torch.cat([p[:, k:] for p in parts], 1).long()
        top_l, pos = cand_l.topk(k, dim=1)
        top_i = cand_i.gather(1, pos)
    return Stats(m, suq[0], acc, suq[1], suq[2], top_l, top_i)


def all_reduce_sum(t: torch.Tensor, group=None, *, what: str = "all-reduce (sum)", op: str = "SUM") -> torch.Tensor:
    """The sum (``op="MAX"``: the maximum) over ranks of ``t`` (a new tensor, identical on every rank)."""
    dist = _dist()
    out = t.clone()
    _collective(what, group, lambda: dist.all_reduce(out, op=getattr(dist.ReduceOp, op), group=group))
    return out


def check_same(values, what: str, group=None, *, device: torch.device | str = "cpu") -> None:
    """Raise ``ValueError`` naming the ranks whose ``values`` (a few numbers) differ from rank 0's.

    Used to catch ranks that loaded different data or drifted apart (different noise, different results)."""
    dist = _dist()
    v = torch.as_tensor(values, dtype=torch.float64, device=device).flatten()
    world = dist.get_world_size(group)
    parts = [torch.empty_like(v) for _ in range(world)]
    _collective(f"all-gather ({what})", group, lambda: dist.all_gather(parts, v, group=group))
    bad = [r for r, p in enumerate(parts) if not torch.equal(p, parts[0])]
    if bad:
        rank, _ = rank_and_size(group)
        raise ValueError(f"rank {rank} of {world}: {what} differ between ranks: rank 0 has "
                         f"{parts[0].tolist()}, rank {bad[0]} has {parts[bad[0]].tolist()}")


def fingerprint(x: torch.Tensor) -> list[float]:
    """A few numbers that change when any value of ``x`` changes (for :func:`check_same`)."""
    x64 = x.detach().double().flatten()
    w = torch.arange(1, len(x64) + 1, dtype=torch.float64, device=x64.device).remainder_(977)
    return [float(x64.sum()), float((x64 * w).sum()), float(x64.abs().max()) if len(x64) else 0.0]
