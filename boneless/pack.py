"""Pack an image folder into one .npy file, so that later runs start at once and can stream data larger than memory.

``boneless pack FOLDER --out data.npy`` reads every image once (resized and centre-cropped exactly as
``load_dataset(FOLDER, size=...)`` does), with a progress bar, and writes a uint8 (lossless for images) or
float16 ``[N, C, size, size]`` array atomically. ``load_dataset("data.npy", mmap=True)`` (automatic above
``MMAP_AUTO_BYTES``; ``boneless sample --mmap``) then returns a :class:`MappedRows`: the rows stay on disk and
the exact denoiser reads them chunk by chunk, converting each chunk to float32, never holding the whole set.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import struct
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from .data import _convert, _image_files, _is_gray_mode, _read_image, array_rule

PackDtype = Literal["uint8", "float16"]


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
        self.item_shape = tuple(self._convert(self._read(0, 1)).shape[1:])
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

    def _convert(self, raw: np.ndarray) -> torch.Tensor:
        return _convert(raw, rule=self.rule)

    def chunk(self, i: int, j: int) -> torch.Tensor:
        """Rows ``i:j`` as float32 ``[n, *shape]``."""
        return self._convert(self._read(i, j)).reshape(max(0, j - i), *self.item_shape)

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


# ---------------------------------------------------------------- packing

def _npy_header(dtype: np.dtype, shape: tuple[int, ...], length: int | None = None) -> bytes:
    """A .npy version 1.0 header for a C-ordered array, padded to ``length`` bytes (default: 64-aligned with room
    for a longer shape, so that the header can be rewritten in place with a smaller row count)."""
    text = "{'descr': %r, 'fortran_order': False, 'shape': %r, }" % (np.lib.format.dtype_to_descr(dtype), tuple(shape))
    if length is None:
        length = -(-(10 + len(text) + 1 + 16) // 64) * 64
    pad = length - 10 - len(text) - 1
    if pad < 0:
        raise ValueError("npy header does not fit")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", length - 10) + (text + " " * pad + "\n").encode("latin1")


def pack_folder(folder: str | os.PathLike, out: str | os.PathLike, *, size: int = 64, dtype: PackDtype = "uint8",
                limit: int | None = None, progress: bool = False) -> tuple[int, ...]:
    """Write the images of ``folder`` as one ``.npy`` array ``[N, C, size, size]`` to ``out``, atomically.

    Images are read one at a time (memory O(one image)), resized and centre-cropped exactly as
    ``load_dataset(folder, size=size)`` does; unreadable files are skipped with one warning naming them; C is
    1 when every image is greyscale, else 3 (greyscale images repeated). ``dtype="uint8"`` stores the pixels
    losslessly (``load_dataset`` of the result equals that of the folder); ``"float16"`` stores ``pixel / 255``.

    Returns:
        the shape written.
    """
    from PIL import Image
    from .outputs import atomic_path, check_output_file

    folder, out = Path(folder), Path(out)
    name = str(folder)
    if dtype not in ("uint8", "float16"):
        raise ValueError(f"dtype must be 'uint8' or 'float16', got {dtype!r}")
    if not (isinstance(size, int) and size > 0):
        raise ValueError(f"size must be a positive integer, got {size!r}")
    if limit is not None and not (isinstance(limit, int) and limit > 0):
        raise ValueError(f"limit must be a positive integer, got {limit!r}")
    if not folder.is_dir():
        raise ValueError(f"{name}: not a folder")
    if out.suffix.lower() != ".npy":
        raise ValueError(f"--out must name a .npy file, got {str(out)!r}")
    check_output_file(out)
    files, gray, skipped = [], [], []
    for p in _image_files(folder, name):  # pass 1: headers only (mode, readable)
        try:
            with Image.open(p) as img:
                gray.append(_is_gray_mode(img.mode))
            files.append(p)
        except Exception:  # Pillow raises many types for foreign files
            skipped.append(p.name)
    if not files:
        raise ValueError(f"{name}: no readable images ({len(skipped)} unreadable file(s))")
    n_alloc = min(len(files), limit or len(files))
    channels = 1 if all(gray[:n_alloc]) else 3
    np_dtype = np.dtype(np.uint8 if dtype == "uint8" else np.float16)
    shape = (n_alloc, channels, size, size)
    header = _npy_header(np_dtype, shape)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=n_alloc, desc=f"pack {folder.name}", unit="img")
    written = 0
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as f:
            f.write(header)
            for p in files:  # pass 2: decode, resize, write one image at a time
                if written == n_alloc:
                    break
                try:
                    a, is_gray = _read_image(p, size)
                except Exception:
                    skipped.append(p.name)
                    continue
                if channels == 1 and not is_gray:  # only after a greyscale file failed to decode
                    skipped.append(p.name)
                    continue
                a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)  # [C, size, size]
                if channels == 3 and len(a) == 1:
                    a = np.repeat(a, 3, axis=0)
                f.write(np.ascontiguousarray(a if dtype == "uint8" else (a / 255.0).astype(np_dtype)).tobytes())
                written += 1
                if bar is not None:
                    bar.update(1)
            if not written:
                raise ValueError(f"{name}: no readable images ({len(skipped)} unreadable file(s))")
            if written < n_alloc:  # some files failed to decode: same header length, fewer rows
                shape = (written, channels, size, size)
                f.seek(0)
                f.write(_npy_header(np_dtype, shape, len(header)))
                f.truncate(len(header) + written * math.prod(shape[1:]) * np_dtype.itemsize)
    if bar is not None:
        bar.close()
    if skipped:
        shown = ", ".join(skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        warnings.warn(f"skipped {len(skipped)} unreadable file(s): {shown}", stacklevel=2)
    return shape


# ---------------------------------------------------------------- command line

def add_arguments(p: argparse.ArgumentParser) -> None:
    from .cli import positive_int

    p.add_argument("folder", metavar="FOLDER", help="folder of images (png, jpg, ...)")
    p.add_argument("--out", required=True, help="the .npy file to write (atomically)")
    p.add_argument("--size", type=positive_int, default=64,
                   help="resize the short side to SIZE, then centre-crop SIZE x SIZE (default 64, as load_dataset)")
    p.add_argument("--dtype", choices=("uint8", "float16"), default="uint8",
                   help="uint8: lossless for images (default); float16: pixel / 255")
    p.add_argument("--limit", type=positive_int, help="pack only the first LIMIT readable images")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    shape = pack_folder(args.folder, args.out, size=args.size, dtype=args.dtype, limit=args.limit,
                        progress=not args.no_progress)
    nbytes = math.prod(shape) * (1 if args.dtype == "uint8" else 2)
    print(f"packed {shape[0]} images {list(shape)} {args.dtype} ({nbytes / 2 ** 20:.1f} MiB) to {args.out}; "
          f"use it with --data {args.out} (memory-mapped with --mmap)")
    return 0
