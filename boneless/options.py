"""Command-line options shared by the commands: number types for argparse, the dataset options, the device.

Each command module (``boneless/cli.py`` for ``sample``, and every module in ``boneless.cli.EXTERNAL``) builds
its own parser from these; a bad value is argparse's one-line error and exit code 2.
"""

from __future__ import annotations

import argparse
import ast
import math
from typing import get_args

import torch

from .data import DATASETS
from .schedules import Spacing, check_times


def _number(cast, accept, what: str):
    """An argparse ``type`` that parses with ``cast`` and keeps values for which ``accept`` holds."""
    def parse(text: str):
        try:
            v = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not accept(v):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return v
    return parse


positive_int = _number(int, lambda v: v >= 1, "a positive integer")
non_negative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _number(float, lambda v: math.isfinite(v) and v > 0, "a positive number")
non_negative_float = _number(float, lambda v: math.isfinite(v) and v >= 0, "a number >= 0")
finite_float = _number(float, math.isfinite, "a finite number")


def time_list(text: str) -> list[float]:
    """An argparse ``type``: comma-separated times, strictly decreasing in [0, 1] (:func:`check_times`)."""
    try:
        values = [float(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected T0,T1,..., got {text!r}") from None
    try:
        return check_times(values).tolist()
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_grid_arguments(p: argparse.ArgumentParser, *, spacing_help: str) -> None:
    """``--spacing`` or ``--times`` (one or the other): the sampling steps' time grid, named or given."""
    grid = p.add_mutually_exclusive_group()
    grid.add_argument("--spacing", choices=get_args(Spacing), help=spacing_help)
    grid.add_argument("--times", type=time_list, metavar="T0,T1,...",
                      help="the time grid itself: decreasing times in [0, 1] (1: pure noise), e.g. 1,0.9,0.7,0.4,0; "
                           "replaces --steps")


def grid_steps(args: argparse.Namespace) -> None:
    """After :func:`add_grid_arguments`: a given ``--times`` grid sets ``args.steps`` (its length - 1), so that the
    run records the steps it takes."""
    if args.times:
        args.steps = len(args.times) - 1


def add_knob_arguments(p: argparse.ArgumentParser) -> None:
    """``--eta`` (DDIM) and ``--churn`` (Euler-Maruyama): the stochastic samplers' noise levels."""
    p.add_argument("--eta", type=non_negative_float, default=0.0,
                   help="DDIM stochasticity (0 deterministic, 1 = DDPM; --sampler ddim only)")
    p.add_argument("--churn", type=non_negative_float, default=1.0,
                   help="euler-maruyama noise level g^2 = 2 churn sigma d_sigma (--sampler euler-maruyama only)")


def denoiser_option(text: str) -> tuple[str | None, str, object]:
    """An argparse ``type``: ``[DENOISER:]KEY=VALUE``, one keyword option of a denoiser class, as
    ``make_denoiser(name, X, KEY=VALUE)`` takes it. VALUE is a Python literal (``0.1``, ``3``, ``True``, ``None``,
    ``{'schedule': 5}``) or else a plain string (``uint8``); DENOISER (optional) limits it to that denoiser."""
    head, eq, value = text.partition("=")
    name, _, key = head.rpartition(":")
    key, value = key.strip(), value.strip()
    if not eq or not key.isidentifier() or not value:
        raise argparse.ArgumentTypeError(f"expected [DENOISER:]KEY=VALUE, got {text!r}")
    try:
        value = ast.literal_eval(value)
    except (ValueError, SyntaxError):  # not a literal: the text itself
        pass
    return name.strip() or None, key, value


def add_option_arguments(p: argparse.ArgumentParser, *, several: bool) -> None:
    """``--option [DENOISER:]KEY=VALUE`` (repeatable): options of the denoiser classes that have no flag of their
    own (docs/DENOISERS.md; an unknown KEY is an error that lists the ones the denoiser takes)."""
    which = ("with DENOISER: only that one of --denoisers; without: every one of them, each of which must take "
             "it" if several else "DENOISER, if given, must be --denoiser")
    p.add_argument("--option", dest="options", type=denoiser_option, action="append", default=[],
                   metavar="[DENOISER:]KEY=VALUE",
                   help="an option of the denoiser's class, e.g. low_switch=0 or local={'schedule':5} (VALUE: a "
                        f"Python literal, else text; repeatable; {which}; default: the class's own values)")


def options_for(name: str, given: list, names: list[str]) -> dict:
    """The ``--option`` values (:func:`denoiser_option`'s triples) that apply to the denoiser ``name``: those
    naming it and those naming none. An option naming a denoiser not in ``names``, or a key given twice, is a
    one-line error."""
    out = {}
    for who, key, value in given:
        if key == "device":
            raise ValueError("--option device: use --device")
        if who is not None and who not in names:
            raise ValueError(f"--option {who}:{key}: {who!r} is not among the denoisers of this run "
                             f"({', '.join(names)})")
        if who in (None, name):
            if key in out:
                raise ValueError(f"--option {key} given twice for {name}")
            out[key] = value
    return out


def option_texts(given: list) -> list[str]:
    """The ``--option`` values as ``[DENOISER:]KEY=repr(VALUE)`` strings, for a run's record."""
    return [f"{who + ':' if who else ''}{key}={value!r}" for who, key, value in given]


def add_data_arguments(p: argparse.ArgumentParser, *, default: str = "digits") -> None:
    """``--data``, ``--split``, ``--limit``, ``--size``: shared by every command that reads a dataset."""
    p.add_argument("--data", default=default, metavar="NAME|PATH",
                   help=f"dataset name ({', '.join(DATASETS)}) or a path: image folder, .npy, .npz, .pt, "
                        f".safetensors, folder of IDX files (default: {default})")
    p.add_argument("--split", choices=("train", "test"), default="train", help="split, where the dataset has one")
    p.add_argument("--limit", type=positive_int, help="use only the first LIMIT examples")
    p.add_argument("--size", type=positive_int, help="resize + centre-crop images to SIZE x SIZE (image folders: 64)")


def add_resume_arguments(p: argparse.ArgumentParser, *, result: str) -> None:
    """``--resume`` / ``--restart`` (one or the other) for a command that checkpoints to ``OUT/checkpoint.pt``;
    ``result``: what a resumed run gives (said in the help)."""
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help=f"continue from OUT/checkpoint.pt (same settings): {result}. Without --resume or "
                            "--restart, a run into a folder holding a checkpoint refuses to start")
    again.add_argument("--restart", action="store_true", help="start over, discarding OUT/checkpoint.pt")


def torch_device(name: str) -> torch.device:
    """The torch device ``name`` (``cpu``, ``cuda``, ``cuda:1``), or a one-line error when it does not exist here."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"unknown device {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return device
