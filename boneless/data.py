"""Datasets as float32 tensors: images ``[N, C, H, W]`` (pixels mapped to [-1, 1]), latents ``[N, C, h, w]`` and
points ``[N, D]`` (any finite values, kept as they are).

``load_dataset`` reads a named dataset (bundled with scikit-learn / scikit-image, the Debian package
``dataset-fashion-mnist``, or a 2-D toy generated from ``seed``) or a path (a folder of images, a folder of
IDX files, ``.npy``, ``.npz``, ``.pt``/``.pth``, ``.safetensors``). Nothing is downloaded. Every problem is a
one-line ``ValueError`` naming the dataset or path; ``check_data`` applies the same checks to any tensor.
"""

from __future__ import annotations

import gzip
import math
import os
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from .checks import is_positive_int, one_line
from .rows import MappedRows, array_rule, convert

DATASETS = ("digits", "faces", "fashion-mnist", "moons", "spiral", "checkerboard", "circles", "gmm", "swiss-roll")
TOYS = ("moons", "spiral", "checkerboard", "circles", "gmm", "swiss-roll")
_ALIASES = {"fmnist": "fashion-mnist", "swissroll": "swiss-roll"}
_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_ARRAY_KEYS = ("x", "X", "data", "images", "samples")
_LABEL_KEYS = ("labels", "y", "targets")
_FMNIST_DIR = "/usr/share/datasets/fashion-mnist"


def is_image(X: torch.Tensor) -> bool:
    """True for image data ``[N, C, H, W]``, False for points ``[N, D]``."""
    return X.ndim == 4


# the spread (per-coordinate standard deviation, root-mean-square over coordinates) of the first 10000
# Fashion-MNIST training images in [-1, 1]: the data on which the generalising denoisers' noise-level-dependent
# settings (patch schedules, blend levels, smoothing) were calibrated; they are read at the data's own spread
REFERENCE_SPREAD = 0.5912


def spread(X: torch.Tensor) -> float:
    """The data's spread: ``sqrt(mean_j var_j)`` over coordinates ``j`` (translation-invariant, scales with the
    data), computed in float64; :data:`REFERENCE_SPREAD` for data without spread (one example, constant data)."""
    v = float(X.reshape(len(X), -1).double().var(0, correction=0).mean().sqrt()) if len(X) > 1 else 0.0
    return v if v > 0 else REFERENCE_SPREAD


def check_data(X: torch.Tensor, *, name: str = "data") -> torch.Tensor:
    """Validate a dataset tensor and return it as contiguous float32.

    Requires a floating tensor ``[N, D]`` or ``[N, C, H, W]`` with N >= 1, no empty dimension and finite
    values, of any range (images, latents, standardised features, 2-D toys of any spread). Raises a one-line
    ``ValueError`` starting with ``name`` otherwise.
    """
    if not isinstance(X, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(X).__name__}")
    if not X.is_floating_point():
        raise ValueError(f"{name}: expected floating-point data, got {X.dtype}")
    if X.ndim not in (2, 4):
        raise ValueError(f"{name}: expected shape [N, D] or [N, C, H, W], got {list(X.shape)}")
    if X.numel() == 0:
        raise ValueError(f"{name}: data is empty (shape {list(X.shape)})")
    X = X.to(torch.float32).contiguous()
    # NaN and inf propagate through a sum, so a finite sum proves every entry finite without an N x D mask (the
    # mask's page faults cost 40x the sum); an infinite one (or a sum that overflowed) is checked entry by entry
    if not bool(torch.isfinite(X.sum())):
        bad = int((~torch.isfinite(X)).sum())
        if bad:
            raise ValueError(f"{name}: data contains NaN or inf values ({bad} entries)")
    return X


# ---------------------------------------------------------------- arrays (npy, npz, pt, safetensors, IDX)

def _to_tensor(a: np.ndarray | torch.Tensor, *, limit: int | None, name: str) -> torch.Tensor:
    """Array of any supported layout/dtype -> float32 ``[N, D]`` or ``[N, C, H, W]`` (the rule of
    :func:`array_rule`)."""
    rule = array_rule(a, a.shape, a.dtype, name=name)
    return convert(a[:limit] if limit is not None else a, rule=rule)


def _pick(arrays: dict, name: str, keys: tuple[str, ...] = _ARRAY_KEYS, *, required: bool = True):
    for key in keys:
        if key in arrays:
            return arrays[key]
    if required and len(arrays) == 1:
        return next(iter(arrays.values()))
    if required:
        found = ", ".join(map(str, arrays)) or "none"
        raise ValueError(f"{name}: cannot tell which array holds the data; expected one of keys "
                         f"{', '.join(_ARRAY_KEYS)} or a single array, found keys: {found}")
    return None


def _load_array_file(path: Path, name: str) -> tuple[np.ndarray | torch.Tensor, object]:
    """Read ``path`` -> (data array, labels array or None)."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            with open(path, "rb") as f:  # else numpy takes it for a pickle and says so
                magic = np.lib.format.MAGIC_PREFIX
                if f.read(len(magic)) != magic:
                    raise ValueError(f"{name}: cannot read file: not a NumPy .npy file (no .npy header)")
            return np.load(path, mmap_mode="r", allow_pickle=False), None
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        elif suffix in (".pt", ".pth"):
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(obj, torch.Tensor):
                return obj, None
            if not isinstance(obj, dict):
                raise ValueError(f"expected a tensor or a dict of tensors, found {type(obj).__name__}")
            arrays = obj
        else:
            try:
                from safetensors.torch import load_file
            except ImportError:
                raise ValueError(f"{name}: reading .safetensors needs safetensors: pip install 'boneless-flow[data]'")
            arrays = load_file(str(path))
    except ValueError as e:
        if str(e).startswith(name):
            raise
        raise ValueError(f"{name}: cannot read file: {one_line(e)}") from e
    except Exception as e:  # corrupt or foreign files: numpy, torch and safetensors raise many types
        raise ValueError(f"{name}: cannot read file: {one_line(e)}") from e
    return _pick(arrays, name), _pick(arrays, name, _LABEL_KEYS, required=False)


def _idx_file(folder: Path, stem: str) -> Path | None:
    for cand in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (folder / cand).is_file():
            return folder / cand
    return None


def _has_idx(folder: Path) -> bool:
    return any(_idx_file(folder, f"{p}-images-idx3-ubyte") for p in ("train", "t10k"))


def _read_idx(path: Path, *, limit: int | None = None) -> np.ndarray:
    """Parse an IDX file (optionally gzipped): magic 0 0 dtype ndim, big-endian int32 dims, then the data."""
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            magic = f.read(4)
            if len(magic) < 4 or magic[:2] != b"\0\0" or magic[2] not in dtypes or magic[3] == 0:
                raise ValueError("bad IDX magic number")
            dims = [int(d) for d in np.frombuffer(f.read(4 * magic[3]), dtype=">i4")]
            if len(dims) != magic[3] or min(dims) < 0:
                raise ValueError("bad IDX header")
            n = dims[0] if limit is None else min(limit, dims[0])
            dtype = np.dtype(dtypes[magic[2]])
            count = n * math.prod(dims[1:])
            buf = f.read(count * dtype.itemsize)
    except (OSError, EOFError, ValueError, IndexError) as e:
        raise ValueError(f"{path}: cannot read IDX file: {one_line(e)}") from e
    if len(buf) != count * dtype.itemsize:
        raise ValueError(f"{path}: IDX file is truncated")
    return np.frombuffer(buf, dtype=dtype).astype(dtype.newbyteorder("="), copy=True).reshape([n, *dims[1:]])


def _load_idx_folder(folder: Path, split: str, limit: int | None, name: str):
    prefix = "train" if split == "train" else "t10k"
    images = _idx_file(folder, f"{prefix}-images-idx3-ubyte")
    if images is None:
        raise ValueError(f"{name}: no {prefix}-images-idx3-ubyte[.gz] in {folder} (split={split!r})")
    X = _to_tensor(_read_idx(images, limit=limit), limit=None, name=name)
    labels_file = _idx_file(folder, f"{prefix}-labels-idx1-ubyte")
    if labels_file is None:
        return X, None
    labels = torch.from_numpy(_read_idx(labels_file, limit=limit).astype(np.int64)).reshape(-1)
    if len(labels) != len(X):
        raise ValueError(f"{name}: {len(X)} images but {len(labels)} labels in {folder}")
    return X, labels


# ---------------------------------------------------------------- image folders

def _resize_crop(h: int, w: int, size: int) -> tuple[int, int, int, int]:
    """Size after resizing the short side to ``size`` (as torchvision's Resize), then the centre crop's top, left."""
    nh, nw = (size, max(size, int(size * w / h))) if h <= w else (max(size, int(size * h / w)), size)
    return nh, nw, int(round((nh - size) / 2)), int(round((nw - size) / 2))


def _image_files(folder: Path, name: str) -> list[Path]:
    """The image files of ``folder``, sorted by name (hidden files skipped); an error when there are none."""
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in _IMAGE_EXTS)
    if not files:
        raise ValueError(f"{name}: folder has no image files ({', '.join(_IMAGE_EXTS)})")
    return files


def _is_gray_mode(mode: str) -> bool:
    return mode in ("1", "L", "LA", "I", "F") or mode.startswith("I;16")


def _read_image(path: Path, size: int) -> tuple[np.ndarray, bool]:
    """One image -> (uint8 ``[size, size]`` or ``[size, size, 3]``, is_gray): Resize(short side = size) then
    CenterCrop(size). Raises whatever Pillow raises for an unreadable file."""
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        is_gray = _is_gray_mode(img.mode)
        img = img.convert("L" if is_gray else "RGB")
    nh, nw, top, left = _resize_crop(img.height, img.width, size)
    img = img.resize((nw, nh), Image.BICUBIC)
    return np.asarray(img.crop((left, top, left + size, top + size))), is_gray


def _load_image_folder(folder: Path, *, size: int, limit: int | None, name: str) -> torch.Tensor:
    """Folder of images -> ``[N, C, size, size]``: Resize(short side = size) then CenterCrop(size)."""
    files = _image_files(folder, name)
    arrays, gray, skipped = [], [], []
    for p in files:
        if limit is not None and len(arrays) >= limit:
            break
        try:
            a, is_gray = _read_image(p, size)
        except Exception:  # Pillow raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
            skipped.append(p.name)
            continue
        arrays.append(a)
        gray.append(is_gray)
    if skipped:
        shown = ", ".join(skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        warnings.warn(f"skipped {len(skipped)} unreadable file(s): {shown}", stacklevel=3)
    if not arrays:
        raise ValueError(f"{name}: no readable images ({len(skipped)} unreadable file(s))")
    if all(gray):
        X = np.stack(arrays)[:, None]
    else:
        X = np.stack([np.repeat(a[..., None], 3, axis=-1) if g else a for a, g in zip(arrays, gray)])
        X = X.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(X)).to(torch.float32) / 127.5 - 1


def _resize(X: torch.Tensor, size: int) -> torch.Tensor:
    """``[N, C, H, W]`` -> ``[N, C, size, size]``: bilinear antialiased resize of the short side, centre crop."""
    h, w = X.shape[-2:]
    if h == w == size:
        return X
    nh, nw, top, left = _resize_crop(h, w, size)
    X = F.interpolate(X, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    return X[..., top:top + size, left:left + size].clamp(-1, 1).contiguous()


# ---------------------------------------------------------------- bundled datasets and 2-D toys

def _digits(name: str):
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ValueError("dataset 'digits' needs scikit-learn: pip install 'boneless-flow[data]'") from None
    d = load_digits()
    X = torch.from_numpy(d.images).to(torch.float32)[:, None] / 8 - 1  # values 0..16
    return X, torch.from_numpy(d.target).to(torch.int64)


def _faces(size: int | None):
    try:
        from skimage.data import lfw_subset
    except ImportError:
        raise ValueError("dataset 'faces' needs scikit-image: pip install 'boneless-flow[data]'") from None
    faces = lfw_subset()[:100].astype(np.float32)  # floats in [0, 1]; the first 100 of 200 are faces
    if size is not None and size != faces.shape[-1]:
        from PIL import Image

        faces = np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.LANCZOS)) for f in faces])
    X = torch.from_numpy(np.clip(faces, 0, 1))[:, None] * 2 - 1
    return X, None


def _toy(kind: str, n: int, seed: int):
    """2-D toy ``[n, 2]`` within [-1, 1] and its labels (component ids, or None)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, generator=g)
    noise = torch.randn(n, 2, generator=g)
    labels = None
    if kind == "moons":
        labels = torch.randint(0, 2, (n,), generator=g)
        th = u * math.pi
        outer = torch.stack([th.cos(), th.sin()], 1)
        inner = torch.stack([1 - th.cos(), 0.5 - th.sin()], 1)
        x = (torch.where(labels[:, None] == 0, outer, inner) - torch.tensor([0.5, 0.25]) + 0.05 * noise) * 0.6
    elif kind == "spiral":
        labels = torch.randint(0, 2, (n,), generator=g)
        th = u.sqrt() * 3 * math.pi
        x = 0.9 * th[:, None] / (3 * math.pi) * torch.stack([(th + labels * math.pi).cos(),
                                                              (th + labels * math.pi).sin()], 1) + 0.02 * noise
    elif kind == "checkerboard":
        x1 = u * 4 - 2
        x2 = torch.rand(n, generator=g) - torch.randint(0, 2, (n,), generator=g) * 2 + torch.floor(x1) % 2
        x = torch.stack([x1, x2], 1) / 2
    elif kind == "circles":
        labels = torch.randint(0, 2, (n,), generator=g)
        r = torch.where(labels == 0, 0.9, 0.45)
        x = r[:, None] * torch.stack([(2 * math.pi * u).cos(), (2 * math.pi * u).sin()], 1) + 0.02 * noise
    elif kind == "gmm":
        labels = torch.randint(0, 8, (n,), generator=g)
        phi = labels * (2 * math.pi / 8)
        x = 0.7 * torch.stack([phi.cos(), phi.sin()], 1) + 0.05 * noise
    else:  # swiss-roll: t cos t, t sin t for t in [1.5 pi, 4.5 pi]
        t = 1.5 * math.pi * (1 + 2 * u)
        x = 0.95 * t[:, None] / (4.5 * math.pi) * torch.stack([t.cos(), t.sin()], 1) + 0.01 * noise
    return x.to(torch.float32).clamp(-1, 1), None if labels is None else labels.to(torch.int64)


# ---------------------------------------------------------------- entry point

MMAP_AUTO_BYTES = 4 << 30  # .npy data above this size as float32 are memory-mapped unless mmap=False


def _use_mmap(path: Path, mmap: bool | None, name: str) -> bool:
    if mmap is not None:
        return bool(mmap)
    try:
        return 4 * math.prod(MappedRows.peek_shape(path, name=name)) > MMAP_AUTO_BYTES
    except ValueError:  # unreadable: the in-memory reader reports it
        return False

def load_dataset(name_or_path: str | os.PathLike, *, split: Literal["train", "test"] = "train",
                 limit: int | None = None, size: int | None = None, n: int | None = None, seed: int = 0,
                 with_labels: bool = False, mmap: bool | None = None):
    """Load a dataset as a float32 CPU tensor: images ``[N, C, H, W]`` (pixels in [-1, 1]), latents
    ``[N, C, h, w]`` or points ``[N, D]`` (any finite values, as stored).

    Args:
        name_or_path: one of ``DATASETS`` (case-insensitive; ``_`` works for ``-``, also ``fmnist``), or a path:
            a folder of images, a folder of IDX files (``train-images-idx3-ubyte[.gz]``, Fashion-MNIST layout),
            ``.npy``, ``.npz``, ``.pt``/``.pth`` or ``.safetensors``. A ``str`` is a name first; pass a
            ``Path`` (or ``./name``) for a folder that shares a dataset's name. Array files hold ``[N, D]``,
            ``[N, H, W]``, ``[N, C, H, W]`` (any C) or ``[N, H, W, C]`` (C in {1, 3}); in ``.npz``/``.pt``/``.safetensors``
            the data is under ``x``, ``X``, ``data``, ``images`` or ``samples`` (or is the only array), labels
            under ``labels``, ``y`` or ``targets``. Values: uint8 -> ``/127.5 - 1`` (8-bit images); floats
            within [0, 1] in an image layout (``[N, H, W]``, or 1 or 3 channels) -> ``*2 - 1``; every other
            array (latents ``[N, 4, h, w]``, features, points) is kept as it is, of any finite range.
        split: ``"test"`` exists only for Fashion-MNIST and IDX folders; other sources raise for it.
        limit: keep the first ``limit`` examples (after generation, before resizing).
        size: image side. Image folders: short side resized (bicubic) to ``size`` then centre-cropped,
            default 64. ``faces``: Lanczos resize. Other images: bilinear antialiased resize of the short side +
            centre crop, only when ``size`` differs from the native size. Ignored for point data.
        n: number of points of a 2-D toy (default 2000); an error for other datasets (use ``limit``).
        seed: seed of the toy's own ``torch.Generator`` (global RNG untouched).
        with_labels: also return int64 labels ``[N]`` (None where the source has none).
        mmap: for a ``.npy`` file, return a :class:`boneless.rows.MappedRows` (rows read from disk chunk by
            chunk, never all in memory; accepted wherever the empirical denoiser, ``nearest`` and the pictures
            take data) instead of a tensor. ``None`` (default): only when the float32 data would exceed
            ``MMAP_AUTO_BYTES``. ``size`` must then be the stored size (pack at the size you want).

    Returns:
        a float32 tensor (or a ``MappedRows``), with the labels when ``with_labels``.

    Raises:
        ValueError: one line naming the dataset/path and the problem.
    """
    display = str(name_or_path)
    if not display.strip():
        raise ValueError("dataset name or path is empty")
    if split not in ("train", "test"):
        raise ValueError(f"{display}: split must be 'train' or 'test', got {split!r}")
    for opt, v in (("limit", limit), ("size", size), ("n", n)):
        if v is not None and not is_positive_int(v):
            raise ValueError(f"{display}: {opt} must be a positive integer, got {v!r}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise ValueError(f"{display}: seed must be an integer, got {seed!r}")
    key = display.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    labels, sized = None, False  # sized: already at the requested size
    if isinstance(name_or_path, str) and key in DATASETS:
        name = key
        if n is not None and key not in TOYS:
            raise ValueError(f"{name}: n sets the size of the 2-D toys ({', '.join(TOYS)}); use limit= instead")
        if mmap:
            raise ValueError(f"{name}: memory mapping needs a .npy file (boneless pack FOLDER --out data.npy)")
        if split == "test" and key != "fashion-mnist":
            raise ValueError(f"{name}: has no test split (only fashion-mnist and IDX folders do)")
        if key == "digits":
            X, labels = _digits(name)
        elif key == "faces":
            X, labels, sized = *_faces(size), True
        elif key == "fashion-mnist":
            folder = Path(os.environ.get("BONELESS_FASHION_MNIST") or _FMNIST_DIR)
            if not _has_idx(folder):
                raise ValueError(f"Fashion-MNIST not found in {folder}: install the Debian package "
                                 "dataset-fashion-mnist (apt-get install dataset-fashion-mnist) or point "
                                 "BONELESS_FASHION_MNIST at a folder of IDX files")
            X, labels = _load_idx_folder(folder, split, limit, name)
        else:
            X, labels = _toy(key, 2000 if n is None else int(n), int(seed))
    else:
        name = display
        path = Path(name_or_path).expanduser()
        if not path.exists():
            if isinstance(name_or_path, str) and not any(c in display for c in "/\\.") and display:
                raise ValueError(f"unknown dataset {display!r}: known names are {', '.join(DATASETS)}, "
                                 "or give a path to a folder of images, .npy, .npz, .pt or .safetensors")
            raise ValueError(f"{display}: no such file or folder")
        if n is not None:
            raise ValueError(f"{name}: n sets the size of the 2-D toys ({', '.join(TOYS)}); use limit= instead")
        if mmap and not (path.is_file() and path.suffix.lower() == ".npy"):
            raise ValueError(f"{name}: memory mapping needs a .npy file (boneless pack FOLDER --out data.npy)")
        if path.is_file() and path.suffix.lower() == ".npy" and split == "train" and _use_mmap(path, mmap, name):

            X = MappedRows(path, name=name)
            X = X.narrow(0, 0, min(limit, len(X))) if limit is not None else X
            if size is not None and X.ndim == 4 and tuple(X.shape[-2:]) != (size, size):
                raise ValueError(f"{name}: a memory-mapped dataset is used at its stored size "
                                 f"{X.shape[-2]}x{X.shape[-1]}, not {size}: pack it again with --size {size}")
            return (X, None) if with_labels else X
        is_idx = path.is_dir() and _has_idx(path)
        if split == "test" and not is_idx:
            raise ValueError(f"{name}: has no test split (only fashion-mnist and IDX folders do)")
        if is_idx:
            X, labels = _load_idx_folder(path, split, limit, name)
        elif path.is_dir():
            X = _load_image_folder(path, size=64 if size is None else int(size), limit=limit, name=name)
            sized = True
        elif path.suffix.lower() in (".npy", ".npz", ".pt", ".pth", ".safetensors"):
            data, raw_labels = _load_array_file(path, name)
            X = _to_tensor(data, limit=limit, name=name)
            if raw_labels is not None:
                if raw_labels.ndim != 1 or len(raw_labels) != len(data):
                    raise ValueError(f"{name}: labels must have shape [{len(data)}], got {list(raw_labels.shape)}")
                labels = raw_labels[:limit]
                labels = labels.to(torch.int64) if isinstance(labels, torch.Tensor) else torch.from_numpy(
                    np.array(labels, dtype=np.int64))
        else:
            raise ValueError(f"{name}: unsupported file type {path.suffix or '(none)'!r}; expected a folder of "
                             "images, .npy, .npz, .pt, .pth or .safetensors")
    if limit is not None:
        X = X[:limit]
        labels = None if labels is None else labels[:limit]
    if size is not None and X.ndim == 4 and not sized:
        X = _resize(X, int(size))
    X = check_data(X, name=name)
    return (X, labels) if with_labels else X
