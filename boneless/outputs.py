"""Where commands write: output paths checked before any work starts, and files written atomically.

Every writer goes through :func:`atomic_path`, so an interrupted run never leaves a half-written file, and a
failed write (disk full, read-only folder) is a one-line ``ValueError`` naming the file, never a traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np


def _reason(e: OSError) -> str:
    if e.strerror or e.errno:
        return e.strerror or os.strerror(e.errno)
    return " ".join(str(e).split())[:200] or type(e).__name__


def check_output_dir(path: str | os.PathLike, *, files: tuple[str, ...] = (), what: str = "--out") -> Path:
    """Make sure ``path`` is (or can be made) a folder this process can write ``files`` into, before any
    computing starts: not an existing file, creatable, writable (a probe file is written and removed), and
    none of ``files`` an existing folder. Returns the folder (created)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path}: exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".boneless-probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"{what} {path}: cannot write there ({_reason(e)})") from None
    for name in files:
        if (path / name).is_dir():
            raise ValueError(f"{what} {path}: {name} there is a folder, where a file will be written")
    return path


def check_output_file(path: str | os.PathLike, *, what: str = "--out") -> Path:
    """Make sure the file ``path`` can be written (atomically) before any computing starts: not a folder, its
    folder creatable and writable."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path}: is a folder, where a file will be written")
    check_output_dir(path.parent if str(path.parent) else Path("."), what=what)
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; move it into place only when the block succeeds. A write that
    fails for the file system's reasons (no space, no permission, a folder in the way) is a one-line
    ``ValueError``; the temporary file is removed either way."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=path.suffix, dir=path.parent)
    except OSError as e:
        raise ValueError(f"cannot write {path} ({_reason(e)})") from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        raise ValueError(f"cannot write {path} ({_reason(e)})") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(obj, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(obj, indent=2) + "\n")


def write_npz(path: str | os.PathLike, **arrays) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
