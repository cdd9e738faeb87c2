"""How far is a trained model from the ideal denoiser? Per noise level, on training and on held-out images.

``boneless gap --model SPEC --data NAME|PATH --out DIR``. SPEC is a diffusers pipeline folder on disk (``unet/``
and ``scheduler/``, e.g. what ``boneless train-reference`` writes: its ``reference.json`` then gives the data and
N), or ``module:callable``, a function returning a denoiser ``(x, alpha, sigma) -> x0_hat``.

For each noise level ``lam = sigma / alpha`` of a grid, on the first ``--n-eval`` training images and as many
held-out images, noised as ``x = alpha x0 + sigma z`` with one noise draw: the mean squared difference per pixel
between the model's ``x0_hat`` and the ideal (exact empirical) denoiser's, and the error against the clean image
of the model, of the ideal denoiser and of the Wiener filter of the training images. Then samples of the model:
their copy rate and nearest-training distances, beside held-out images'. The protocol of Niedoba et al. (ICML
2025, Fig. 2) and of Kadkhodaie et al. (ICLR 2024). Writes ``gap.json``, ``gap.png`` and ``samples.png``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import time
from pathlib import Path

import torch

from .outputs import atomic_path, check_output_dir

SETS = ("train", "heldout")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .options import positive_float, positive_int

    p.add_argument("--model", required=True, metavar="SPEC",
                   help="a diffusers pipeline folder (unet/ + scheduler/; boneless train-reference writes one) or "
                        "module:callable returning a denoiser (x, alpha, sigma) -> x0_hat")
    p.add_argument("--data", metavar="NAME|PATH",
                   help="the model's training data (default: from the folder's reference.json)")
    p.add_argument("--n-train", type=positive_int, metavar="N",
                   help="the model was trained on the first N examples (default: reference.json, else all)")
    p.add_argument("--size", type=positive_int, help="resize images to SIZE x SIZE (default: reference.json)")
    p.add_argument("--held-out", metavar="NAME|PATH",
                   help="held-out images (default: the test split of --data, where it has one)")
    p.add_argument("--out", required=True, help="output folder for gap.json, gap.png, samples.png")
    p.add_argument("--n-eval", type=positive_int, default=500,
                   help="training and held-out images denoised per noise level (default 500)")
    p.add_argument("--sigmas", type=positive_float, nargs="+", metavar="LAM",
                   help="noise levels sigma / alpha (default: 14 from 0.01 to 50, geometric)")
    p.add_argument("--samples", type=positive_int, default=100, help="samples of the model (default 100)")
    p.add_argument("--steps", type=positive_int, default=50, help="sampling steps (default 50)")
    p.add_argument("--schedule", default="vp-linear", help="schedule of the sampling run (default vp-linear, "
                   "DDPM's continuous schedule)")
    p.add_argument("--sampler", default="heun", choices=("euler", "heun", "ddim", "ddpm"),
                   help="sampler of the sampling run (default heun)")
    p.add_argument("--batch-size", type=positive_int, default=250, help="images per model call (default 250)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise draws (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


# ---- the model ---------------------------------------------------------------------------------------------


def load_model(spec: str):
    """``(denoiser, info)`` for SPEC: a diffusers pipeline folder or ``module:callable``; ``info`` holds what
    the folder's ``reference.json`` says (data, n_train, size) or is empty."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return _load_diffusers_folder(path)
    if ":" in spec and not path.exists():
        module_name, _, attr = spec.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except ImportError as e:
            raise ValueError(f"--model {spec}: cannot import {module_name}: {e}") from None
        except AttributeError:
            raise ValueError(f"--model {spec}: {module_name} has no {attr!r}") from None
        den = factory()
        if not callable(den):
            raise ValueError(f"--model {spec}: {attr}() returned {type(den).__name__}, not a denoiser "
                             "(x, alpha, sigma) -> x0_hat")
        return den, {}
    if path.exists():
        raise ValueError(f"--model {spec}: not a folder; give a diffusers pipeline folder or module:callable")
    raise ValueError(f"--model {spec}: no such folder (and not module:callable)")


def _load_diffusers_folder(path: Path):
    from .adapters import from_diffusers
    from .train_reference import diffusers_module

    configs = {part: path / part / name for part, name in (("unet", "config.json"),
                                                           ("scheduler", "scheduler_config.json"))}
    missing = [f"{p.parent.name}/{p.name}" for p in configs.values() if not p.is_file()]
    if missing:
        raise ValueError(f"--model {path}: not a diffusers pipeline folder (missing {', '.join(missing)})")
    diffusers = diffusers_module()
    parts = {}
    for part, config in configs.items():
        try:
            class_name = json.loads(config.read_text())["_class_name"]
            cls = getattr(diffusers, class_name)
            quiet = {"low_cpu_mem_usage": False} if part == "unet" else {}  # no advice to install accelerate
            parts[part] = cls.from_pretrained(path / part, **quiet)
        except Exception as e:  # malformed JSON, an unknown class, missing or corrupt weights: many types
            raise ValueError(f"--model {path}: cannot load {part}/: {' '.join(str(e).split())[:300]}") from None
    info = {}
    if (path / "reference.json").is_file():
        try:
            info = json.loads((path / "reference.json").read_text())
        except ValueError as e:
            raise ValueError(f"--model {path}: reference.json is not valid JSON: {e}") from None
    info["parameters"] = sum(p.numel() for p in parts["unet"].parameters())
    return from_diffusers(parts["unet"].eval(), parts["scheduler"]), info


# ---- the measurement ---------------------------------------------------------------------------------------


def measure_gap(model, X: torch.Tensor, heldout: torch.Tensor, lams: list[float], *, n_eval: int, seed: int,
                batch_size: int = 250, progress=None) -> dict:
    """Per noise level ``lam`` (queried as ``alpha = 1 / sqrt(1 + lam^2)``, ``sigma = lam alpha``), for the first
    ``n_eval`` training images ``X`` (all when fewer) and held-out images: per-pixel mean squared ``model - ideal``
    (the gap) and the errors against the clean image of the model, the ideal denoiser and the Wiener filter of
    ``X``."""
    from .denoisers import EmpiricalDenoiser
    from .metrics import WienerFilter, noise_draw

    ideal, wiener = EmpiricalDenoiser(X), WienerFilter(X)
    out = {}
    for name, images in (("train", X[:n_eval]), ("heldout", heldout[:n_eval])):
        z = noise_draw(tuple(images.shape), seed=seed)
        rows = {k: [] for k in ("gap", "model_mse", "ideal_mse", "wiener_mse")}
        for lam in lams:
            alpha = 1 / math.sqrt(1 + lam * lam)
            sums = dict.fromkeys(rows, 0.0)
            for b0 in range(0, len(images), batch_size):
                x0, zz = images[b0:b0 + batch_size], z[b0:b0 + batch_size]
                x = alpha * x0 + lam * alpha * zz
                try:
                    m = model(x, alpha, lam * alpha).double()
                except (RuntimeError, TypeError) as e:  # a network given data of another shape, and the like
                    raise ValueError(f"the model failed on a batch of shape {list(x.shape)}: "
                                     f"{' '.join(str(e).split())[:300]}") from None
                if m.shape != x0.shape:
                    raise ValueError(f"the model returned shape {list(m.shape)} for a batch of shape {list(x0.shape)}")
                if not bool(torch.isfinite(m).all()):
                    raise ValueError(f"the model returned NaN or inf at sigma / alpha = {lam:.3g}")
                i, w = ideal(x, alpha, lam * alpha).double(), wiener(x, alpha, lam * alpha).double()
                for key, (a, b) in {"gap": (m, i), "model_mse": (m, x0), "ideal_mse": (i, x0),
                                    "wiener_mse": (w, x0)}.items():
                    sums[key] += float(((a - b.double()) ** 2).sum())
            for key in rows:
                rows[key].append(sums[key] / images.numel())
            if progress is not None:
                progress.update(1)
        out[name] = {**rows, "n": len(images)}
    return out


def gap_figure(result: dict, title: str):
    from .plots import pyplot

    plt = pyplot()
    lams = result["sigmas"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, style in (("train", "-"), ("heldout", "--")):
        r, which = result[name], "training" if name == "train" else "held-out"
        left.loglog(lams, r["gap"], style, marker="o", ms=3, label=f"{which} images")
        right.loglog(lams, r["model_mse"], style, c="tab:blue", marker="o", ms=3, label=f"model, {which}")
    right.loglog(lams, result["heldout"]["ideal_mse"], "--", c="tab:red", label="ideal (exact), held-out")
    right.loglog(lams, result["heldout"]["wiener_mse"], "--", c="tab:green", label="Wiener, held-out")
    left.set_title("gap: mean (model x0_hat - ideal x0_hat)^2 per pixel")
    right.set_title("error against the clean image, per pixel")
    for ax in (left, right):
        ax.set_xlabel("noise level sigma / alpha (data in [-1, 1])")
        ax.set_ylabel("mean squared error per pixel")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


# ---- the command -------------------------------------------------------------------------------------------


def run(args) -> int:
    from tqdm.auto import tqdm

    from .data import load_dataset
    from .metrics import nearest, nearest_distance_stats
    from .plots import neighbours_grid, save_figure, save_image
    from .samplers import sample
    from .schedules import get_schedule

    schedule = get_schedule(args.schedule)
    start = time.perf_counter()
    model, info = load_model(args.model)
    data = args.data or info.get("data")
    if data is None:
        raise ValueError("--data is needed (the model's training data): the model folder has no reference.json")
    n_train = args.n_train or info.get("n_train")
    size = args.size or info.get("size")
    X = load_dataset(data, limit=n_train, size=size)
    if n_train is not None and len(X) < n_train:
        raise ValueError(f"{data}: the model was trained on {n_train} examples but there are only {len(X)}")
    if args.held_out is not None:
        heldout = load_dataset(args.held_out, limit=args.n_eval, size=size)
    else:
        try:
            heldout = load_dataset(data, split="test", limit=args.n_eval, size=size)
        except ValueError as e:
            raise ValueError(f"{e}: give held-out images with --held-out") from None
    if tuple(heldout.shape[1:]) != tuple(X.shape[1:]):
        raise ValueError(f"held-out images have shape {list(heldout.shape[1:])}, the training data "
                         f"{list(X.shape[1:])}")
    out = check_output_dir(args.out, files=("gap.json", "gap.png", "samples.png"))  # before the long part
    lams = sorted(args.sigmas or [0.01 * (5000 ** (i / 13)) for i in range(14)])

    bar = tqdm(total=2 * len(lams) + args.steps, desc="gap", unit="step", disable=args.no_progress)
    result = {"model": args.model, "data": str(data), "n_train": len(X), "shape": list(X.shape[1:]),
              "n_eval": args.n_eval, "seed": args.seed, "sigmas": lams,
              "sigma_note": "noise level sigma / alpha; queried as alpha = 1 / sqrt(1 + lam^2), sigma = lam alpha",
              "mse_note": "per-pixel mean squared difference; gap = model x0_hat against the ideal x0_hat"}
    result.update(measure_gap(model, X, heldout, lams, n_eval=args.n_eval, seed=args.seed,
                              batch_size=args.batch_size, progress=bar))
    shape = tuple(X.shape[1:])

    class Counting:  # the sampler's steps on the same bar
        def __call__(self, x, alpha, sigma):
            return model(x, alpha, sigma)

        def step_call(self, i, t, x, alpha, sigma):
            bar.update(1)
            return model(x, alpha, sigma)

    res = sample(Counting(), schedule, n=args.samples, steps=args.steps, sampler=args.sampler, seed=args.seed,
                 shape=shape, top_k=0)
    bar.close()
    stats = nearest_distance_stats(res.samples, X, heldout=heldout[:args.samples])
    result["samples"] = {"n": args.samples, "steps": args.steps, "sampler": args.sampler,
                         "schedule": schedule.name, **stats}
    result["seconds"] = round(time.perf_counter() - start, 1)

    with atomic_path(out / "gap.json") as tmp:
        Path(tmp).write_text(json.dumps(result, indent=2) + "\n")
    title = f"{Path(args.model).name or args.model}: trained on N = {len(X)} ({data})"
    save_figure(gap_figure(result, title), out / "gap.png")
    if len(shape) == 3:
        _, idx = nearest(res.samples, X, k=1)
        save_image(neighbours_grid(res.samples, X, idx[:, 0]), out / "samples.png")
    tr, ho = result["train"], result["heldout"]
    print(f"gap of {args.model} (N = {len(X)}): mean over noise levels {sum(tr['gap']) / len(lams):.4g} on training, "
          f"{sum(ho['gap']) / len(lams):.4g} on held-out images; copy rate of its samples {stats['copy_rate']:.2f}; "
          f"wrote {out}/gap.json, gap.png")
    return 0
