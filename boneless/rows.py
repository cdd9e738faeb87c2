"""Rows: where the data live and how they are read as float32, chunk by chunk.

- :func:`array_rule` and :func:`convert`: how a stored array (any layout and dtype) maps to float32 rows (8-bit
  images and float images in [0, 1] to [-1, 1]; everything else as it is): the one rule of
  :func:`boneless.load_dataset` and of memory-mapped files.
- :func:`repeated_rows`: groups of equal rows (held once by the exact denoiser, with their count).
- :class:`StoredRows`: rows held once in float16, bfloat16 or uint8, dequantised exactly as they are read.
- :class:`MappedRows`: a ``.npy`` file on disk, read a few rows at a time; :class:`FlatRows`: its ``[N, D]``
  view for the bank.

The bank (:class:`boneless.bank.Bank`) reads any of them by ``len()``, ``X[i:j]`` and ``X[indices]``.
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Literal

import numpy as np
import torch

Storage = Literal["float32", "float16", "bfloat16", "uint8"]
STORAGES = ("float32", "float16", "bfloat16", "uint8")


# ---------------------------------------------------------------- arrays -> float32 rows

def _value_range(a: np.ndarray | torch.Tensor) -> tuple[float, float, int]:
    """(min, max, count of non-finite entries) of the whole array, read in row chunks (memmap-friendly)."""
    lo, hi, bad = math.inf, -math.inf, 0
    step = max(1, (1 << 22) // max(1, math.prod(a.shape[1:])))
    for i in range(0, a.shape[0], step):
        c = a[i:i + step]
        c = torch.from_numpy(np.array(c, dtype=np.float32)) if isinstance(c, np.ndarray) else c.float()
        finite = torch.isfinite(c)
        bad += int((~finite).sum())
        c = c[finite]
        if c.numel():
            lo, hi = min(lo, float(c.min())), max(hi, float(c.max()))
    return lo, hi, bad


def _channels_last(shape) -> bool:
    """``[N, H, W, C]`` with C in {1, 3} (and not ``[N, C, H, W]``): moved to channels first when read."""
    return len(shape) == 4 and shape[1] not in (1, 3) and shape[-1] in (1, 3)


def _is_pixel_layout(shape) -> bool:
    """``[N, H, W]``, or four dimensions with 1 or 3 channels (first or last): the layout of images."""
    return len(shape) == 3 or (len(shape) == 4 and (shape[1] in (1, 3) or shape[-1] in (1, 3)))


def array_rule(a, shape, dtype, *, name: str) -> str | None:
    """Check an array's layout and values, and decide how it maps to float32 (for :func:`convert`):
    ``"uint8"`` (8-bit images, ``/127.5 - 1``), ``"unit"`` (float images in [0, 1] in an image layout,
    ``*2 - 1``, decided on the whole array so that the mapping does not depend on ``limit``) or ``None``
    (kept as it is: latents, features and points of any finite range). ``a`` is read chunk by chunk."""
    shape = list(shape)
    if len(shape) < 2 or len(shape) > 4:
        raise ValueError(f"{name}: expected an array [N, D], [N, H, W], [N, C, H, W] or [N, H, W, C], "
                         f"got shape {shape}")
    if 0 in shape:
        raise ValueError(f"{name}: array is empty (shape {shape})")
    if isinstance(dtype, torch.dtype):
        is_uint8, is_numeric = dtype == torch.uint8, not (dtype.is_complex or dtype == torch.bool)
    else:
        is_uint8, is_numeric = dtype == np.uint8, np.dtype(dtype).kind in "iuf"
    if not is_numeric:
        raise ValueError(f"{name}: unsupported dtype {dtype}; expected uint8, integer or floating-point data")
    if is_uint8:
        return "uint8"
    lo, hi, bad = _value_range(a)
    if bad:
        raise ValueError(f"{name}: data contains NaN or inf values ({bad} entries)")
    return "unit" if _is_pixel_layout(shape) and lo >= 0 and hi <= 1 else None


def convert(a: np.ndarray | torch.Tensor, *, rule: str | None) -> torch.Tensor:
    """Rows of a checked array -> float32 ``[n, D]`` or ``[n, C, H, W]`` by the ``rule`` of :func:`array_rule`
    (also applied chunk by chunk to memory-mapped arrays, :class:`boneless.rows.MappedRows`)."""
    if isinstance(a, np.ndarray):
        a = torch.from_numpy(np.array(a, dtype=np.uint8 if rule == "uint8" else np.float32))
    X = a.to(torch.float32)
    if rule == "uint8":
        X = X.div_(127.5).sub_(1)  # X is a new tensor
    elif rule == "unit":
        X = X * 2 - 1
    if X.ndim == 3:
        X = X[:, None]
    elif _channels_last(X.shape):
        X = X.permute(0, 3, 1, 2)  # channels-last [N, H, W, C] -> [N, C, H, W]
    return X.contiguous()



# ---------------------------------------------------------------- rows held in a smaller type

def _block_rows(dim: int, nbytes: int = 1 << 27) -> int:
    """Rows per block so that a float64 block of ``dim`` columns stays within ``nbytes`` (128 MB)."""
    return max(1, nbytes // (8 * max(dim, 1)))


def repeated_rows(X: torch.Tensor, key: torch.Tensor | None = None, *, columns: int = 64,
                  rounds: int = 4) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Groups of equal rows of ``X`` [N, D] (and equal ``key`` [N], e.g. log weights): ``(first, owner)``, the
    first row of each group [U] (ascending) and each row's group [N] (an index into ``first``), or None when
    every row is distinct.

    Rows whose ``columns`` random columns (bit patterns, mixed into one integer) agree are candidates; each
    candidate is then compared in full with the first remaining row of its candidates, for up to ``rounds``
    rounds (rows left over stay on their own). So equal rows are grouped only when they are equal, and a pass
    over the candidates (not a sort of whole rows) is the cost: cheap when rows are distinct, one read of the
    repeats otherwise. Rows left apart (more than ``rounds`` distinct rows sharing the sampled columns, or
    ``-0.0`` against ``0.0``) only cost speed: merging is never needed for the result."""
    n, d = X.shape
    if n < 2 or d == 0:
        return None
    g = torch.Generator().manual_seed(0)
    cols = torch.randperm(d, generator=g)[:columns].sort().values.to(X.device)
    bits = X[:, cols].contiguous().view(torch.int32)
    if key is not None:
        bits = torch.cat([bits, key.to(X.device, torch.float64).reshape(n, 1).view(torch.int32)], 1)
    mix = torch.randint(1, 1 << 31, (bits.shape[1],), generator=g).to(X.device)  # one int64 per row (wrapping)
    _, group, counts = torch.unique((bits.long() * mix).sum(1), return_inverse=True, return_counts=True)
    owner = torch.arange(n, device=X.device)
    pending = (counts[group] > 1).nonzero().squeeze(1)
    step = max(1, _block_rows(d, 1 << 25))
    for _ in range(rounds):
        if len(pending) < 2:
            break
        first = torch.full((len(counts),), n, dtype=torch.long, device=X.device)
        first.scatter_reduce_(0, group[pending], pending, reduce="amin")
        rep = first[group[pending]]
        same = torch.empty(len(pending), dtype=torch.bool, device=X.device)
        for s in range(0, len(pending), step):
            same[s:s + step] = (X[pending[s:s + step]] == X[rep[s:s + step]]).all(1)
        owner[pending[same]] = rep[same]
        pending = pending[~same]
    first, owner = torch.unique(owner, return_inverse=True)
    return None if len(first) == n else (first, owner)


class StoredRows:
    """Rows [N, D] held once in ``float16``, ``bfloat16`` or ``uint8``; ``rows[i:j]`` and ``rows[indices]`` are
    float32 [n, D], dequantised exactly (the same float32 values every time) as they are read.

    uint8 holds 8-bit images: ``q = round((x - lo) * a)``, read back as ``q / a + lo`` in float32. For data
    within [-1, 1], ``a = 127.5`` and ``lo = -1`` (the rule of :func:`boneless.load_dataset`), so 8-bit images
    round-trip exactly; data of any other range are spread over the 256 levels between their own minimum and
    maximum. Either way the data are rounded to 8 bits, and the exact reference is the dequantised data.
    """

    def __init__(self, X, storage: Storage, *, device: torch.device | str | None = None):
        if isinstance(X, torch.Tensor):
            X = X.reshape(X.shape[0], -1)
            device = torch.device(device) if device is not None else X.device
        else:  # a row source read block by block (boneless.rows.FlatRows of a memory-mapped file)
            device = torch.device(device) if device is not None else torch.device("cpu")
        if storage not in ("float16", "bfloat16", "uint8"):
            raise ValueError(f"StoredRows holds float16, bfloat16 or uint8, got {storage!r}")
        dtype = torch.uint8 if storage == "uint8" else getattr(torch, storage)
        self.data = torch.empty(X.shape, dtype=dtype, device=device)
        self.lo, self.a = -1.0, 127.5  # uint8: x = q / a + lo
        step = _block_rows(X.shape[1])
        ranges = [torch.aminmax(X[i:i + step]) for i in range(0, len(X), step)]  # one pass for both ends
        lo, hi = (min(float(r.min) for r in ranges), max(float(r.max) for r in ranges)) if ranges else (0.0, 0.0)
        if storage == "uint8" and (lo < -1 or hi > 1):
            self.lo, self.a = lo, 255.0 / (hi - lo) if hi > lo else 1.0
        elif storage != "uint8" and max(-lo, hi) > torch.finfo(dtype).max:
            raise ValueError(f"storage {storage} holds values up to {torch.finfo(dtype).max:.4g}; the data reach "
                             f"{max(-lo, hi):.4g} (use float32 or bfloat16)")
        for i in range(0, len(X), step):  # in blocks: no full-size float32 temporary
            block = X[i:i + step].to(device, torch.float32)
            self.data[i:i + len(block)] = \
                ((block - self.lo) * self.a).round_().clamp_(0, 255) if storage == "uint8" else block
        self.storage, self.device, self.shape = storage, device, self.data.shape

    def __len__(self) -> int:
        return self.shape[0]

    def _dequantise(self, raw: torch.Tensor) -> torch.Tensor:
        if self.storage == "uint8":
            return raw.to(torch.float32).div_(self.a).add_(self.lo)
        return raw.to(torch.float32)

    def __getitem__(self, key) -> torch.Tensor:
        return self._dequantise(self.data[key])

    def read(self, start: int, stop: int, *, out: torch.Tensor) -> torch.Tensor:
        """Rows ``start:stop`` dequantised into ``out`` [stop - start, D] float32 (a reused buffer)."""
        out.copy_(self.data[start:stop])
        if self.storage == "uint8":
            out.div_(self.a).add_(self.lo)
        return out

    def flat(self, device: torch.device | str | None = None) -> "StoredRows":
        """These rows on ``device`` (for :class:`Bank`)."""
        if device is None or torch.device(device) == self.device:
            return self
        out = object.__new__(StoredRows)
        out.storage, out.device, out.data = self.storage, torch.device(device), self.data.to(device)
        out.lo, out.a = self.lo, self.a
        out.shape = out.data.shape
        return out

    def dequantised(self) -> torch.Tensor:
        """All rows as float32 [N, D] (a new tensor: for references and tests, not the hot loop)."""
        return self._dequantise(self.data)



# ---------------------------------------------------------------- rows memory-mapped from a .npy file

def _read_header(path: Path, name: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) of a .npy file, reading only its header."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran_order, dtype = reader(f)
            offset = f.tell()
    except (OSError, ValueError) as e:
        raise ValueError(f"{name}: cannot read file: {' '.join(str(e).split())}") from e
    if fortran_order and len(shape) > 1:
        raise ValueError(f"{name}: Fortran-ordered .npy cannot be streamed by rows; save it in C order")
    if dtype.hasobject:
        raise ValueError(f"{name}: object arrays are not supported")
    need = offset + math.prod(shape) * dtype.itemsize
    if path.stat().st_size < need:
        raise ValueError(f"{name}: file is truncated ({path.stat().st_size} bytes, header says {need})")
    return tuple(int(d) for d in shape), dtype, offset


class _Raw:
    """The stored array as rows, for :func:`boneless.data.array_rule` (read chunk by chunk)."""

    def __init__(self, rows: "MappedRows"):
        self.rows, self.shape = rows, (rows._n_all, *rows.raw_shape[1:])

    def __getitem__(self, key: slice) -> np.ndarray:
        start, stop, _ = key.indices(self.shape[0])
        return self.rows._read(start - self.rows.start, stop - self.rows.start)


class MappedRows:
    """A ``.npy`` dataset on disk, read ``rows(start, stop)`` at a time as float32.

    Array-like where the library reads data: ``len(X)``, ``X.shape`` (``[N, C, H, W]`` or ``[N, D]``, after the
    same layout rules as :func:`boneless.load_dataset`), ``X.ndim``, ``X[i:j]`` and ``X[indices]`` (float32
    tensors), ``X.narrow(0, start, length)``. Values map exactly as for in-memory arrays
    (:func:`boneless.data.array_rule`, decided on the whole file).

    Each read maps only the requested rows (``np.memmap`` with an offset) and converts them, so memory and
    address space stay O(chunk): it works under ``ulimit -v`` smaller than the file. Repeated passes are served
    by the operating system's page cache. The last chunk read is kept for index look-ups within it.
    """

    def __init__(self, path: str | os.PathLike, *, name: str | None = None):
        self.path = Path(path)
        self.name = name or str(path)
        shape, self.dtype, self.offset = _read_header(self.path, self.name)
        self.raw_shape, self._n_all, self.start, self.stop = shape, shape[0], 0, shape[0]
        self.row_bytes = math.prod(shape[1:]) * self.dtype.itemsize
        self.rule = array_rule(_Raw(self), shape, self.dtype, name=self.name)  # boneless.load_dataset's rule
        self.item_shape = tuple(self.convert(self._read(0, 1)).shape[1:])
        self._cache: tuple[int, int, torch.Tensor] | None = None

    @staticmethod
    def peek_shape(path: str | os.PathLike, *, name: str | None = None) -> tuple[int, ...]:
        """The stored shape of a .npy file (header only)."""
        return _read_header(Path(path), name or str(path))[0]

    # ------------------------------------------------------------ array-like
    def __len__(self) -> int:
        return self.stop - self.start

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), *self.item_shape))

    @property
    def ndim(self) -> int:
        return 1 + len(self.item_shape)

    @property
    def dim(self) -> int:
        return math.prod(self.item_shape)

    def __repr__(self) -> str:
        return f"MappedRows({str(self.path)!r}, shape={list(self.shape)}, stored {self.dtype})"

    def narrow(self, dim: int, start: int, length: int) -> "MappedRows":
        """Rows ``start:start + length`` (``dim`` must be 0), sharing the file; indices become local."""
        if dim != 0 or not (0 <= start and length >= 0 and start + length <= len(self)):
            raise ValueError(f"{self.name}: cannot narrow rows {start}:{start + length} of {len(self)}")
        out = copy.copy(self)
        out.start, out.stop, out._cache = self.start + start, self.start + start + length, None
        return out

    def __getitem__(self, key):
        if isinstance(key, tuple):
            return self[key[0]][(slice(None), *key[1:]) if not isinstance(key[0], int) else key[1:]]
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                return self[torch.arange(start, stop, step)]
            return self.chunk(start, max(start, stop))
        if isinstance(key, (int, np.integer)):
            i = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= i < len(self):
                raise IndexError(f"row {key} out of range for {len(self)} rows")
            return self.chunk(i, i + 1)[0]
        idx = torch.as_tensor(key).long().reshape(-1)
        return self.take(idx).reshape(len(idx), *self.item_shape)

    # ------------------------------------------------------------ reading
    def _read(self, i: int, j: int) -> np.ndarray:
        """Stored rows ``i:j`` (local indices) as a read-only memory map of just those rows."""
        n = max(0, j - i)
        if n == 0:
            return np.empty((0, *self.raw_shape[1:]), dtype=self.dtype)
        return np.memmap(self.path, dtype=self.dtype, mode="r", offset=self.offset + (self.start + i) * self.row_bytes,
                         shape=(n, *self.raw_shape[1:]))

    def convert(self, raw: np.ndarray) -> torch.Tensor:
        return convert(raw, rule=self.rule)

    def chunk(self, i: int, j: int) -> torch.Tensor:
        """Rows ``i:j`` as float32 ``[n, *shape]``."""
        return self.convert(self._read(i, j)).reshape(max(0, j - i), *self.item_shape)

    def rows(self, i: int, j: int) -> torch.Tensor:
        """Rows ``i:j`` as float32 ``[n, D]`` (kept for :meth:`take` look-ups within them)."""
        out = self.chunk(i, j).reshape(max(0, j - i), self.dim)
        self._cache = (i, j, out)
        return out

    def take(self, idx: torch.Tensor) -> torch.Tensor:
        """Rows at local indices ``idx`` [m] as float32 ``[m, D]``; from the last chunk read when all fall in it."""
        idx = idx.cpu().long()
        if len(idx) and (bool((idx < 0).any()) or bool((idx >= len(self)).any())):
            raise IndexError(f"row index out of range for {len(self)} rows")
        if self._cache is not None and len(idx):
            i, j, block = self._cache
            if int(idx.min()) >= i and int(idx.max()) < j:
                return block[idx - i]
        uniq, inverse = torch.unique(idx, return_inverse=True)
        if not len(uniq):
            return torch.empty(0, self.dim)
        lo, hi = int(uniq[0]), int(uniq[-1]) + 1
        if hi - lo <= 4 * len(uniq):  # dense enough: one read of the span
            block = self.chunk(lo, hi).reshape(hi - lo, self.dim)[uniq - lo]
        else:
            block = torch.cat([self.chunk(int(r), int(r) + 1).reshape(1, self.dim) for r in uniq])
        return block[inverse]

    def flat(self, device: torch.device | str | None = None) -> "FlatRows":
        """This dataset as rows ``[N, D]`` on ``device``, for :class:`boneless.bank.Bank`."""
        return FlatRows(self, torch.device(device) if device is not None else torch.device("cpu"))


class FlatRows:
    """``X[i:j]`` and ``X[indices]`` of a :class:`MappedRows` as float32 ``[n, D]`` on ``device`` (the bank's view)."""

    def __init__(self, source: MappedRows, device: torch.device):
        self.source, self.device = source, device
        self.shape = torch.Size((len(source), source.dim))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step == 1:
                return self.source.rows(start, max(start, stop)).to(self.device)
            key = torch.arange(start, stop, step)
        return self.source.take(torch.as_tensor(key)).to(self.device)
