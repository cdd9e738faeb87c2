"""Checkpoints: a sampling run that survives interruption, and resumes bit-identically.

:func:`sample_resumable` is :func:`boneless.sample` in parts of ``every`` steps, saving the run's state (``x``,
the step, the generator's state, the trajectory so far) atomically after each part. Resumed from that file, the
remaining grid runs from the saved ``x`` with the saved generator, so the result equals an uninterrupted run's
(same machine, same denoiser). A file holding another run's progress is never overwritten in silence: a run
that would write it refuses to start (resume it, or delete the file to start over).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from .outputs import atomic_path
from .samplers import Run, SampleResult, Trajectory, advance, finish, progress_bar, start

CHECKPOINT_VERSION = 1
RESTART = "start over with --restart (Python: delete the file), or write elsewhere"


def sample_resumable(denoiser, schedule="rectified-flow", *, checkpoint: str | os.PathLike,
                     every: int | None = None, resume: bool = False, progress: bool = False,
                     identity: dict | None = None, **options) -> SampleResult:
    """:func:`boneless.sample` (same ``options``) with its state saved to the file ``checkpoint`` every ``every``
    steps (atomically; only rank 0 writes under torch.distributed; ``None``: never). With ``resume``, continue
    from that file when it exists (refused if it was written with other settings; a warning and step 0 when it
    does not exist). Without ``resume`` an existing file is refused: it holds progress that would be lost.
    The file is left in place when the run finishes. ``identity``: what else makes two runs the same run beyond
    the sampling settings and the denoiser's class (for example the denoiser's options and :func:`data_digest`
    of its data), saved with the state and compared on resume."""
    if every is not None and not (isinstance(every, int) and every >= 1):
        raise ValueError(f"checkpoint every must be a positive integer, got {every!r}")
    run = start(denoiser, schedule, **options)
    run.settings.update(identity or {})
    if not resume and Path(checkpoint).exists():
        raise ValueError(unfinished_run(checkpoint, run.settings))
    if resume:
        restore(run, checkpoint)
    bar = progress_bar(run, progress)
    every = every or run.steps
    while run.step < run.steps:
        advance(run, (run.step // every + 1) * every)
        if run.step < run.steps:
            save(run, checkpoint)
    if bar is not None:
        bar.close()
    return finish(run)


def data_digest(X) -> str:
    """A SHA-1 of the data's shape and float32 values, read in parts (memory-mapped data is never copied whole)."""
    h = hashlib.sha1(str(list(X.shape)).encode())
    for i in range(0, len(X), 4096):
        part = X[i:i + 4096]
        part = part.detach().cpu().numpy() if isinstance(part, torch.Tensor) else np.asarray(part)
        h.update(np.ascontiguousarray(part, dtype=np.float32).tobytes())
    return h.hexdigest()


def save(run: Run, path: str | os.PathLike) -> None:
    """Write the run's state to ``path`` atomically (torch.save of tensors and lists); rank 0 alone writes
    (all ranks hold the same state), every process without torch.distributed."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        return
    tr = run.recorder.trajectory
    state = {"version": CHECKPOINT_VERSION, "settings": run.settings, "x": run.x.detach().cpu(), "step": run.step,
             "generator": run.generator.get_state(), "calls": run.recorder.calls, "seconds": run.seconds,
             "trajectory": {f.name: list(getattr(tr, f.name)) for f in fields(tr)}}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def restore(run: Run, path: str | os.PathLike) -> Run:
    """The run as saved at ``path`` (the same settings), or unchanged with a warning when there is no file."""
    state = load(path, run.settings)
    if state is None:
        return run
    run.x, run.step, run.seconds = state["x"].to(run.x.device), int(state["step"]), float(state["seconds"])
    run.generator.set_state(state["generator"])
    run.recorder.trajectory, run.recorder.calls = Trajectory(**state["trajectory"]), int(state["calls"])
    return run


def unfinished_run(path, settings: dict) -> str:
    """Why a run that would write ``path`` does not start: the file holds another run's progress."""
    try:
        state = load(path, settings)
    except ValueError as e:  # another run's, or not a checkpoint at all
        return str(e)
    return (f"checkpoint {path} holds step {int(state['step'])} of {settings['steps']} of this run: continue it "
            "with --resume (Python: resume=True), or start over with --restart (Python: delete the file)")


def load(path, settings: dict) -> dict | None:
    """The state saved at ``path``, or None (with a warning) when there is none; refuses other settings."""
    path = Path(path)
    if not path.exists():
        warnings.warn(f"no checkpoint at {path}: starting from step 0", stacklevel=3)
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        saved = state["settings"]
        ok = state.get("version") == CHECKPOINT_VERSION and all(k in state for k in ("x", "step", "generator"))
    except Exception as e:  # torch.load raises many types for foreign or truncated files
        raise ValueError(f"checkpoint {path}: cannot read: {' '.join(str(e).split())[:300]} ({RESTART})") from e
    if not ok:
        raise ValueError(f"checkpoint {path}: not a boneless sample checkpoint (version {CHECKPOINT_VERSION}; "
                         f"{RESTART})")
    for key in settings:
        if saved.get(key) != settings[key]:
            name, there, now = _difference(key, saved.get(key), settings[key])
            show = lambda v: str(v) if len(str(v)) < 60 else str(v)[:60] + "..."  # noqa: E731
            raise ValueError(f"checkpoint {path} was written by a different run: {name} {show(there)} "
                             f"there, {show(now)} now ({RESTART})")
    return state


def _difference(name: str, there, now) -> tuple:
    """The first setting in which two differing values differ, looking into dictionaries (the denoiser's options):
    ``(name, there, now)``, with ``name.key`` for an entry and ``(not set)`` for a missing one."""
    if isinstance(there, dict) and isinstance(now, dict):
        for k in sorted(set(there) | set(now), key=str):
            a, b = there.get(k, "(not set)"), now.get(k, "(not set)")
            if a != b:
                return _difference(f"{name}.{k}", a, b)
    return name, there, now
