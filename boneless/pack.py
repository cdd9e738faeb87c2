"""Pack an image folder into one .npy file, so that later runs start at once and can stream data larger than memory.

``boneless pack FOLDER --out data.npy`` reads every image once (resized and centre-cropped exactly as
``load_dataset(FOLDER, size=...)`` does), with a progress bar, and writes a uint8 (lossless for images) or
float16 ``[N, C, size, size]`` array atomically. ``load_dataset("data.npy", mmap=True)`` (automatic above
``MMAP_AUTO_BYTES``; ``boneless sample --mmap``) then returns a :class:`MappedRows`: the rows stay on disk and
the exact denoiser reads them chunk by chunk, converting each chunk to float32, never holding the whole set.
"""

from __future__ import annotations

import argparse
import math
import os
import struct
import warnings
from pathlib import Path
from typing import Literal

import numpy as np

from .data import _image_files, _is_gray_mode, _read_image

PackDtype = Literal["uint8", "float16"]


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
    from .options import positive_int

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
