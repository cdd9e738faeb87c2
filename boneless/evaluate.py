"""Compare denoisers on one footing: held-out denoising error against the Wiener filter, copy rate, nearest-
training distances and sample quality, for every denoiser in ``boneless.DENOISERS``.

Protocol. The pool is the first ``--pool`` training images (the training split; for datasets without a test
split, a ``--seed`` shuffle), the held-out set the first ``--test`` images of the test split (or the next ones of
the shuffle). Each held-out image is noised once, ``y = x + sigma z`` with one ``z`` per image shared by every
sigma and every denoiser; the table gives MSE / MSE of the Wiener filter fitted to the same pool (in-sample,
on ``--in-sample`` pool images, in parentheses). Each denoiser then generates ``--samples`` images with
``boneless.sample`` from the same seed; they are scored by copy rate, nearest-training distance against that of
held-out images, Frechet distance to the held-out images in PCA space and in the features of a small
Fashion-MNIST classifier (trained once, cached), and split consistency (same seeds on a second, disjoint pool).

A denoiser that fails, or whose cost (estimated from a probe call) exceeds ``--budget``, is reported and
skipped; one that overruns its budget keeps the results it finished. Outputs in ``--out``: ``table.md``,
``results.json``, ``heldout.png``, ``real.png``, ``samples_<name>.png``, ``neighbours_<name>.png``,
``comparison.png`` and ``n_eff.png``, each written atomically as soon as it is known.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import re
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .checks import one_line
from .data import DATASETS, is_image, load_dataset
from .denoisers import PosteriorDenoiser
from .classifier import fashion_classifier
from .memo import sharing
from .metrics import (COPY_RATIO, PCAFeatures, WienerFilter, denoising_error, effective_examples, frechet_distance,
                      nearest, nearest_distance_stats, split_consistency)
from .options import (add_grid_arguments, add_knob_arguments, add_option_arguments, grid_steps, non_negative_int,
                      option_texts, options_for, positive_float, positive_int, torch_device)
from .outputs import atomic_path, check_output_dir
from .plots import (display_range, image_grid, neighbours_grid, pyplot, samples_grid, save_figure, save_image,
                    scatter_samples)
from .registry import DENOISERS, check_options, make_denoiser
from .samplers import SAMPLERS, draws_noise, sample
from .schedules import get_schedule

DEFAULT_SIGMAS = "0.05,0.1,0.2,0.5,1,2"
REFERENCE = "reference"  # the row of the trained network given by --reference
IN_SAMPLE = 100  # pool images for the in-sample error by default
REFERENCE_SETS = 5  # disjoint sets of unseen real images give the real-image quality and its spread


def reuses_samples(args) -> bool:
    """Whether the split consistency's first side is the sampling stage's first samples (same start, no noise)."""
    return not draws_noise(args.sampler, eta=args.eta, churn=args.churn) and args.consistency <= args.samples


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="fashion-mnist", metavar="NAME|PATH",
                   help=f"dataset name ({', '.join(DATASETS)}) or path (default fashion-mnist)")
    p.add_argument("--size", type=positive_int, help="resize + centre-crop images to SIZE x SIZE")
    p.add_argument("--pool", type=positive_int, default=10000, help="training images the denoisers see (10000)")
    p.add_argument("--test", type=positive_int, default=500, help="held-out images for the error table (500)")
    p.add_argument("--denoisers", default="all", metavar="A,B,...",
                   help=f"comma-separated names, 'all' or 'none' (now: {', '.join(DENOISERS)})")
    add_option_arguments(p, several=True)
    p.add_argument("--reference", metavar="DIR",
                   help="also evaluate a trained network, a diffusers pipeline folder (as `boneless "
                        "train-reference` writes), as the row 'reference', with its size and training time")
    p.add_argument("--score", action="append", default=[], metavar="NAME=PATH",
                   help="also score a sample set made elsewhere (another model's, an earlier run's): the first "
                        "--samples images of an array file or image folder, read as --data reads a path, as the "
                        "row NAME, with the sample columns only (repeatable)")
    p.add_argument("--sigmas", default=DEFAULT_SIGMAS, metavar="S1,S2,...",
                   help=f"noise levels of y = x + sigma z (default {DEFAULT_SIGMAS})")
    p.add_argument("--in-sample", type=positive_int,
                   help="pool images for the in-sample error (default: 100, or the pool if smaller)")
    p.add_argument("--samples", type=positive_int, default=32, help="samples generated per denoiser (32)")
    p.add_argument("--steps", type=positive_int, default=12, help="sampling steps (12)")
    p.add_argument("--sampler", default="euler", choices=list(SAMPLERS), help="sampler (euler)")
    p.add_argument("--schedule", default="rectified-flow", help="noise schedule for sampling (rectified-flow)")
    add_grid_arguments(p, spacing_help="time grid of the sampling steps (default: the schedule's; karras and logsnr "
                                       "take smaller last steps; split: even steps in t down to sigma / alpha = 1.5, "
                                       "Karras below: parzen-local's measured grid with --sampler heun)")
    add_knob_arguments(p)
    p.add_argument("--consistency", type=non_negative_int, default=8,
                   help="paired samples from a second, disjoint pool of the same size (8; 0: off)")
    p.add_argument("--pca-dim", type=positive_int, default=32, help="PCA components for the PCA Frechet distance")
    p.add_argument("--classifier", choices=("auto", "off"), default="auto",
                   help="Frechet distance in classifier features for 1x28x28 data (auto: load or train once)")
    p.add_argument("--budget", type=positive_float, default=2700.0,
                   help="seconds allowed per denoiser; slower ones are skipped or stopped (2700)")
    p.add_argument("--batch-size", type=positive_int, default=250, help="images per denoiser call (250)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise draw, the samples and shuffles (0)")
    p.add_argument("--device", default="cpu", help="torch device for the denoisers (cpu)")
    p.add_argument("--out", default="runs/eval", help="output folder (runs/eval)")
    p.add_argument("--resume", action="store_true",
                   help="keep the denoisers OUT/results.json already holds under the same settings and evaluate "
                        "only the others; several runs with disjoint --denoisers may share one --out this way")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


# ---------------------------------------------------------------- options and data

def parse_sigmas(text: str) -> list[float]:
    out = []
    for part in text.split(","):
        try:
            v = float(part)
        except ValueError:
            raise ValueError(f"--sigmas: expected comma-separated positive numbers, got {text!r}") from None
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"--sigmas: noise levels must be positive and finite, got {part.strip()!r}")
        out.append(v)
    return sorted(set(out))


def parse_denoisers(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ValueError("--denoisers: give at least one name, or 'all'")
    if names == ["all"]:
        return list(DENOISERS)
    if names == ["none"]:  # only --score or --reference rows
        return []
    unknown = [n for n in names if n not in DENOISERS]
    if unknown:
        raise ValueError(f"--denoisers: unknown {', '.join(map(repr, unknown))}; choose from "
                         f"{', '.join(DENOISERS)} or 'all'")
    return list(dict.fromkeys(names))


def parse_scores(items: list[str]) -> dict[str, str]:
    """``--score NAME=PATH`` items -> {NAME: PATH}; a NAME must be new (not a denoiser's, not ``reference``) and
    fit in a file name."""
    scores = {}
    for item in items:
        name, eq, path = item.partition("=")
        name, path = name.strip(), path.strip()
        if not eq or not name or not path:
            raise ValueError(f"--score: expected NAME=PATH, got {item!r}")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise ValueError(f"--score {item}: NAME may hold letters, digits, '_', '.' and '-' only")
        if name in DENOISERS or name == REFERENCE or name in scores:
            raise ValueError(f"--score {item}: the row name {name!r} is taken; give the set another name")
        scores[name] = path
    return scores


def load_scored(name: str, path: str, *, n: int, shape: tuple, size: int | None) -> torch.Tensor:
    """The first ``n`` images of the sample set ``path`` (``boneless.load_dataset``'s reading of a path), which
    must hold at least ``n`` of the data's shape: a Frechet distance depends on the size of the sets."""
    try:
        S = load_dataset(Path(path).expanduser(), size=size, mmap=False)
    except ValueError as e:
        raise ValueError(f"--score {name}: {one_line(e)}") from None
    if tuple(S.shape[1:]) != tuple(shape):
        raise ValueError(f"--score {name}: {path} holds examples of shape {list(S.shape[1:])}, the data here are "
                         f"{list(shape)}")
    if len(S) < n:
        raise ValueError(f"--score {name}: {path} holds {len(S)} examples, fewer than --samples {n} (the real "
                         "sets have --samples images, and a Frechet distance depends on the set size)")
    return torch.as_tensor(S[:n]).float()


def split_data(data: str, *, pool: int, test: int, extra: int, second_pool: bool, size: int | None,
               seed: int) -> dict:
    """The pool [pool, ...], held-out set [test, ...], up to ``extra`` more unseen real images (the real-image
    reference of the sample statistics) and, if ``second_pool``, a disjoint second pool (None if too few)."""
    try:
        X_test_all = load_dataset(data, split="test", size=size)
    except ValueError as e:
        if "has no test split" not in str(e):
            raise
        X_test_all = None
    if X_test_all is not None:
        X = load_dataset(data, split="train", size=size, limit=2 * pool if second_pool else pool)
        if len(X) < pool:
            raise ValueError(f"--pool {pool} exceeds the {len(X)} training examples of {data}")
        if len(X_test_all) < test:
            raise ValueError(f"--test {test} exceeds the {len(X_test_all)} test examples of {data}")
        reference = X_test_all[test:test + extra]
        return {"pool": X[:pool], "test": X_test_all[:test], "second": X[pool:2 * pool] if len(X) >= 2 * pool else None,
                "reference": reference if len(reference) >= 2 else None, "test_source": "test split",
                "available": len(X_test_all)}
    X = load_dataset(data, size=size)
    if pool + test > len(X):
        raise ValueError(f"--pool {pool} + --test {test} exceeds the {len(X)} examples of {data} (it has no test "
                         "split, so both come from one shuffle)")
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(seed))
    rest = perm[pool + test:]
    second = None
    if second_pool and len(rest) >= pool + min(extra, 2):  # the second pool first, if a reference set still fits
        second, rest = X[rest[:pool]], rest[pool:]
    reference = X[rest[:extra]]
    return {"pool": X[perm[:pool]], "test": X[perm[pool:pool + test]], "second": second,
            "reference": reference if len(reference) >= 2 else None, "test_source": "held out of a shuffle",
            "available": len(X)}


def load_reference(path: str, shape: tuple) -> tuple:
    """``(denoiser, info)`` for the trained network in the diffusers folder ``path`` (``boneless.adapters.
    from_diffusers``), ``info`` what its ``reference.json`` says (size, training time, data, pool), plus the path
    and parameter count; a network for images of another shape is an error."""
    from .gap import load_model

    if not Path(path).expanduser().is_dir():
        raise ValueError(f"--reference {path}: no such folder (a diffusers pipeline folder, as `boneless "
                         "train-reference` writes)")
    den, info = load_model(str(path))
    trained = info.get("shape")
    if trained is not None and tuple(trained) != tuple(shape):
        raise ValueError(f"--reference {path}: trained on images of shape {list(trained)}, the data here are "
                         f"{list(shape)}")
    keep = ("data", "n_train", "size", "steps", "batch_size", "channels", "seconds", "final_loss", "parameters")
    return den, {"path": str(path), **{k: info[k] for k in keep if k in info}}


# ---------------------------------------------------------------- resuming: records already in OUT/results.json

# settings that change a denoiser's numbers; the others (budget, batch size, device, progress) may differ on resume
RESULT_SETTINGS = ("data", "size", "pool", "test", "sigmas", "in_sample", "samples", "steps", "sampler", "schedule",
                   "spacing", "times", "eta", "churn", "consistency", "pca_dim", "classifier", "seed", "options")
SETTING_DEFAULTS = {"eta": 0.0, "churn": 1.0, "options": []}  # for a results.json made before the setting existed


def previous_records(out: Path, settings: dict) -> dict:
    """The denoiser records of ``out/results.json`` if it was made with the same result settings, else {} when
    there is none; a file made with other settings is an error (its numbers would not be comparable)."""
    path = out / "results.json"
    if not path.exists():
        return {}
    try:
        old = json.loads(path.read_text())
        records = old["denoisers"]
        old_settings = {k: old["settings"].get(k, SETTING_DEFAULTS.get(k)) for k in RESULT_SETTINGS}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"--resume: cannot read {path} ({type(e).__name__}: {one_line(e)})") from None
    differ = [k for k in RESULT_SETTINGS if old_settings[k] != settings.get(k)]
    if differ:
        k = differ[0]
        raise ValueError(f"--resume: {path} was made with other settings ({k} {old_settings[k]!r}, now "
                         f"{settings.get(k)!r}); use another --out")
    return records


def load_samples(out: Path, name: str) -> torch.Tensor | None:
    """The raw samples ``samples_<name>.npy`` a run saved, or None."""
    path = out / f"samples_{name}.npy"
    try:
        return torch.from_numpy(np.load(path, allow_pickle=False))
    except (OSError, ValueError):
        return None


def take_in(out: Path, results: dict, samples: dict, records: dict, *, skip=()) -> None:
    """Add to ``results`` (and ``samples``, from their saved files) the records of denoisers it does not hold yet,
    except those in ``skip`` (the ones this run evaluates itself)."""
    for name, rec in records.items():
        if name not in results["denoisers"] and name not in skip:
            results["denoisers"][name] = rec
            if (s := load_samples(out, name)) is not None:
                samples[name] = s


# ---------------------------------------------------------------- a time guard around each denoiser

class _OverBudget(Exception):
    pass


class _Guard:
    """Wraps a denoiser: counts calls (progress) and stops it once its time budget is spent."""

    def __init__(self, den, deadline: float, on_call):
        self.den, self.deadline, self.on_call = den, deadline, on_call
        self.shape = getattr(den, "shape", None)
        if isinstance(den, PosteriorDenoiser):
            self.posterior = self._posterior

    def _check(self):
        if time.perf_counter() > self.deadline:
            raise _OverBudget()
        self.on_call()

    def __call__(self, x, alpha, sigma):
        self._check()
        return self.den(x, alpha, sigma)

    def _posterior(self, x, alpha, sigma, k=5):
        self._check()
        return self.den.posterior(x, alpha, sigma, k=k)


# ---------------------------------------------------------------- the run

def run(args) -> int:
    start = time.perf_counter()
    sigmas = parse_sigmas(args.sigmas)
    names = parse_denoisers(args.denoisers)
    scores = parse_scores(args.score)
    if not (names or scores or args.reference):
        raise ValueError("--denoisers none: nothing to evaluate (add --score NAME=PATH or --reference DIR)")
    schedule = get_schedule(args.schedule)
    device = torch_device(args.device)
    out = check_output_dir(args.out, files=("results.json", "table.md"))
    split = split_data(args.data, pool=args.pool, test=args.test, extra=REFERENCE_SETS * args.samples,
                       second_pool=args.consistency > 0, size=args.size, seed=args.seed)
    pool, test = split["pool"], split["test"]
    shape = tuple(pool.shape[1:])
    if args.consistency > 0 and split["second"] is None:
        warnings.warn(f"split consistency skipped: {args.data} has too few examples for a second pool of {args.pool}")
    if args.in_sample and args.in_sample > len(pool):
        raise ValueError(f"--in-sample {args.in_sample} exceeds --pool {len(pool)}")
    args.in_sample = args.in_sample or min(IN_SAMPLE, len(pool))  # recorded in the settings
    grid_steps(args)
    options = {n: options_for(n, args.options, names) for n in names}  # checked before any work
    for n in names:
        check_options(n, options[n])
    args.options = option_texts(args.options)  # as text, in the settings
    in_sample = pool[:args.in_sample]
    batch = args.batch_size
    settings = {k: v for k, v in vars(args).items() if k != "func"}
    kept = previous_records(out, settings) if args.resume else {}  # checked before any work
    network = load_reference(args.reference, shape) if args.reference else None
    scored = {k: load_scored(k, v, n=args.samples, shape=shape, size=args.size) for k, v in scores.items()}
    if network is not None:
        names = names + [REFERENCE]

    # references: the Wiener filter, feature spaces, real held-out images
    wiener = WienerFilter(pool)
    lo, hi = display_range(pool)
    w_held = denoising_error(wiener, test, sigmas, seed=args.seed, batch_size=batch, peak=hi - lo)
    w_in = denoising_error(wiener, in_sample, sigmas, seed=args.seed + 1, batch_size=batch, peak=hi - lo)
    pca = PCAFeatures(pool, dim=args.pca_dim)
    clf, clf_info = None, None
    if args.classifier == "auto" and shape == (1, 28, 28):
        try:
            clf = fashion_classifier(progress=not args.no_progress)
            clf_info = {"test_accuracy": clf.test_accuracy, "path": str(clf.path) if clf.path else None,
                        **clf.info}
        except ValueError as e:
            warnings.warn(f"classifier Frechet distance skipped: {e}")
    feats = {"pca": pca}
    if clf is not None:
        feats["classifier"] = clf.features
    test_feats = {k: f(test) for k, f in feats.items()}

    def quality(images: torch.Tensor) -> dict:
        q = {f"fd_{k}": frechet_distance(f(images), test_feats[k]) for k, f in feats.items()}
        if clf is not None:
            probs = clf.probabilities(images)
            q["confidence"] = float(probs.max(1).values.mean())
            q["classes"] = torch.bincount(probs.argmax(1), minlength=probs.shape[1]).tolist()  # by top class
        return q

    ref = split["reference"]
    real = {"n": 0 if ref is None else len(ref)}
    held_stats = nearest_distance_stats(test, pool)
    real.update({"copy_rate": held_stats["copy_rate"], "nearest_median": held_stats["nearest_median"],
                 "nearest_mean": held_stats["nearest_mean"]})
    if ref is not None:  # up to REFERENCE_SETS disjoint sets of as many real images as samples: mean and spread
        sets = [ref[i:i + args.samples] for i in range(0, len(ref), args.samples)]
        sets = [r for r in sets if len(r) == len(sets[0])]
        qs = [quality(r) for r in sets]
        real.update({"n": len(sets[0]), "sets": len(sets)})
        for key in qs[0]:
            if isinstance(qs[0][key], list):  # the class counts: one list per set
                real[key] = [q[key] for q in qs]
                continue
            v = torch.tensor([q[key] for q in qs], dtype=torch.float64)
            real[key] = float(v.mean())
            real[key + "_std"] = float(v.std()) if len(v) > 1 else None

    results = {
        "version": __version__, "command": "eval", "settings": settings, "sigmas": sigmas,
        "protocol": {"noise": "y = x + sigma z, one z per image, shared by all sigmas and denoisers",
                     "pool": len(pool), "test": len(test), "test_source": split["test_source"],
                     "in_sample": len(in_sample), "second_pool": None if split["second"] is None else len(split["second"]),
                     "shape": list(shape), "copy_rule": f"nearest / second-nearest < {COPY_RATIO:.4f}",
                     "psnr": f"10 log10(peak^2 / MSE), peak {hi - lo:.4g} (the data's range; 2 for images)"},
        "wiener": {"heldout": {"mse": w_held.mse.tolist(), "psnr": w_held.psnr.tolist()},
                   "in_sample": {"mse": w_in.mse.tolist(), "psnr": w_in.psnr.tolist()}},
        "classifier": clf_info, "pca_dim": pca.dim, "real": real, "denoisers": {},
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "device": str(device)},
    }
    out.mkdir(parents=True, exist_ok=True)
    if is_image(pool):
        save_image(samples_grid(test[:args.samples], value_range=display_range(pool), title="real held-out images"),
                   out / "real.png")
    else:
        save_figure(scatter_samples(test[:args.samples], pool, title="held-out points"), out / "real.png")

    sample_calls = args.steps * (2 if args.sampler == "heun" else 1)  # progress unit: one denoiser call
    sides = 1 if reuses_samples(args) else 2
    per_denoiser = len(sigmas) * (-(-len(test) // batch) - (-len(in_sample) // batch)) + sample_calls + (
        sides * sample_calls if split["second"] is not None and args.consistency else 0)
    bar = None
    if not args.no_progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=per_denoiser * len(names), desc="eval", unit="call")
    samples = {}
    redo = [n for n in names if kept.get(n, {}).get("status") == "failed" or n == REFERENCE]  # the given network
    take_in(out, results, samples, kept, skip=redo + list(scored))
    if results["denoisers"]:
        print(f"resuming: {', '.join(results['denoisers'])} already in {out / 'results.json'}")
    # one sharing block for the run (boneless.memo): a denoiser built again from the same pool and options (a
    # composite's member, the second pool's copy) is the same object, and no query is answered twice
    with sharing():
        for name in names:
            if name in results["denoisers"]:
                if bar is not None:
                    bar.update(per_denoiser)
                continue
            if bar is not None:
                bar.set_postfix_str(name)
            done_before = bar.n if bar is not None else 0
            rec = evaluate_denoiser(name, args, split, sigmas, w_held, w_in, quality, schedule, device, bar, shape,
                                    build=(lambda X: network[0]) if name == REFERENCE else None,
                                    options=options.get(name, {}))
            if name == REFERENCE:
                rec["network"] = network[1]
            if bar is not None:
                bar.update(max(0, done_before + per_denoiser - bar.n))
            s = rec.pop("_samples", None)
            if s is not None:
                samples[name] = s
                _write_sample_pictures(out, name, s, pool)
            results["denoisers"][name] = rec
            if rec["status"] != "ok":
                warnings.warn(f"{name}: {rec['status']}: {rec.get('error', '')}")
            _merge_and_write(out, results, samples, test[:args.samples], pool, args, start, names)
    if bar is not None:
        bar.close()
    for name, S in scored.items():  # sets made elsewhere: the sample columns only, scored again on every run
        t0 = time.perf_counter()
        results["denoisers"][name] = {"status": "ok", "source": scores[name],
                                      "samples": sample_scores(S, pool, test, quality),
                                      "timings": {"total_s": round(time.perf_counter() - t0, 3)}}
        samples[name] = S
        _write_sample_pictures(out, name, S, pool)
    _merge_and_write(out, results, samples, test[:args.samples], pool, args, start, names)
    ok = [n for n in names if results["denoisers"][n]["status"] in ("ok", "partial")]
    also = f" and scored {len(scored)} sample set{'s' * (len(scored) != 1)}" if scored else ""
    print(f"evaluated {len(ok)} of {len(names)} denoisers{also} on {args.data} (pool {len(pool)}, test {len(test)}) "
          f"in {results['seconds']:.1f} s; wrote {out}/table.md")
    return 0 if ok or not names else 1


def probe_costs(timed, *, b_err: int, n_test: int, budget: float) -> tuple[float, float]:
    """The cost model ``t(b) = c0 + c1 b`` (per-call overhead, per-image seconds) of a denoiser from timed calls,
    ``timed(b, start)``: one call on the ``b`` held-out images from ``start``.

    A single image first, so that a very slow denoiser cannot stall the probe itself. Then, if affordable, the
    held-out stage's first batch of ``b_err`` images (that stage then takes its answer from memory,
    :mod:`boneless.memo`: it costs nothing extra), else two images, and a single image again, another one: the
    first call may include one-time set-up (banks and caches made at first use), which the later calls do not pay,
    so the two points of the model are the later ones. Without a second point the cost is taken as linear in the
    images (pessimistic)."""
    t_first = timed(1, 0)
    b2 = next((b for b in (b_err, 2) if 1 < b <= n_test and t_first * b <= 0.25 * budget), None)
    if b2 is None:
        return 0.0, t_first
    t_batch = timed(b2, 0)
    t_one = timed(1, 1)
    c1 = max((t_batch - t_one) / (b2 - 1), 0.0)
    return max(t_one - c1, 0.0), c1


def evaluate_denoiser(name, args, split, sigmas, w_held, w_in, quality, schedule, device, bar, shape, *,
                      build=None, options: dict | None = None) -> dict:
    """One denoiser through the protocol; never raises (a failure is recorded in the result). ``build(X)``
    makes it from the pool (default: the registry's ``name`` with ``options``); with ``build`` given there is no
    second denoiser from the second pool, so no split consistency (a trained network is one network).

    After building it, a probe call at each batch size estimates the cost of every stage (held-out error,
    sampling, in-sample error, split consistency); the stages that fit in ``--budget`` run in that order, the
    others are reported as skipped; a stage that overruns the budget is stopped (results so far are kept). The
    split consistency pairs the sampling stage's samples with the second pool's, so it runs only after that."""
    pool, test = split["pool"], split["test"]
    in_sample = pool[:args.in_sample]
    lo, hi = display_range(pool)
    psnr_peak = hi - lo
    rec = {"status": "ok", "timings": {}, **({"options": {k: repr(v) for k, v in options.items()}} if options else {})}
    t0 = time.perf_counter()
    deadline = t0 + args.budget
    stage = "build"
    on_call = (lambda: bar.update(1)) if bar is not None else (lambda: None)
    consistency = bool(split["second"] is not None and args.consistency and build is None)
    if build is None:
        build = lambda X: make_denoiser(name, X, device=device, **(options or {}))  # noqa: E731
    try:
        den = build(pool)
        build_s = time.perf_counter() - t0
        rec["timings"]["build_s"] = round(build_s, 3)
        stage = "probe"
        sig = sigmas[len(sigmas) // 2]
        noise = torch.randn(test.shape, generator=torch.Generator().manual_seed(args.seed))

        def timed(b, start=0):  # seconds of one denoiser call on b held-out images from start
            t1 = time.perf_counter()
            den(test[start:start + b] + sig * noise[start:start + b], 1.0, sig)
            return time.perf_counter() - t1

        b_err, b_sample, b_cons = min(args.batch_size, len(test)), args.samples, args.consistency
        c0, c1 = probe_costs(timed, b_err=b_err, n_test=len(test), budget=args.budget)

        def cost(n):  # seconds to denoise n images in calls of at most batch_size
            full, rest = divmod(n, args.batch_size)
            return full * (c0 + c1 * args.batch_size) + (c0 + c1 * rest if rest else 0.0)

        calls = args.steps * (2 if args.sampler == "heun" else 1)
        estimates = {"held-out error": len(sigmas) * cost(len(test)),
                     "sampling": calls * (c0 + c1 * b_sample),
                     "in-sample error": len(sigmas) * cost(len(in_sample))}
        reuse = reuses_samples(args)
        start_noise = torch.randn((max(b_sample, b_cons), *shape), generator=torch.Generator().manual_seed(args.seed))
        if consistency:
            estimates["split consistency"] = build_s + (1 if reuse else 2) * calls * (c0 + c1 * b_cons)
        rec["timings"]["estimates_s"] = {k: round(v, 1) for k, v in estimates.items()}
        guard = _Guard(den, deadline, on_call)
        skipped, ran, factor = [], [], 1.0
        for stage in estimates:
            # plan stage by stage: the estimates are rescaled by how the held-out stage actually went
            est, left = estimates[stage] * factor, deadline - time.perf_counter()
            if stage == "split consistency" and "_samples" not in rec:  # it pairs the sampling stage's samples
                skipped.append(f"{stage} (the sampling stage was skipped)")
                continue
            fits = est / len(sigmas) <= left if stage == "held-out error" else est <= left  # held-out: >= 1 sigma
            if not fits:
                skipped.append(f"{stage} (~{est:.0f} s)")
                continue
            ran.append(stage)
            t1 = time.perf_counter()
            if stage in ("held-out error", "in-sample error"):
                # one noise level at a time (the noise draw does not depend on the sigmas), so that a run
                # stopped by the budget keeps the levels it finished
                key, X_eval, seed, ref = (("heldout", test, args.seed, w_held) if stage == "held-out error" else
                                          ("in_sample", in_sample, args.seed + 1, w_in))
                r = rec[key] = {"mse": [None] * len(sigmas), "psnr": [None] * len(sigmas),
                                "ratio": [None] * len(sigmas)}
                for i, sg in enumerate(sigmas):
                    e = denoising_error(guard, X_eval, [sg], seed=seed, batch_size=args.batch_size,
                                        peak=psnr_peak)
                    r["mse"][i], r["psnr"][i] = float(e.mse[0]), float(e.psnr[0])
                    r["ratio"][i] = float(e.mse[0] / ref.mse[i])
            elif stage == "sampling":
                res = sample(guard, schedule, noise=start_noise[:b_sample], steps=args.steps, sampler=args.sampler,
                             spacing=args.spacing, times=args.times, eta=args.eta, churn=args.churn, seed=args.seed,
                             top_k=5, device=device)
                samples = res.samples.float()
                rec["_samples"] = samples
                if not bool(torch.isfinite(samples).all()):
                    raise ValueError("samples contain NaN or inf values")
                q = sample_scores(samples, pool, test, quality)
                eff = effective_examples(res.trajectory)
                if eff is not None:
                    q["n_eff"] = {"times": [round(float(t), 5) for t in eff.times],
                                  "median": [float(v) for v in eff.median], "collapse_t": eff.collapse_t}
                rec["samples"] = q
            else:
                den_b = _Guard(build(split["second"]), deadline, on_call)
                center = torch.cat([pool, split["second"]]).double().mean(0)
                sc = split_consistency(guard, den_b, center=center, n=b_cons, steps=args.steps, seed=args.seed,
                                       noise=start_noise[:b_cons], schedule=schedule, sampler=args.sampler,
                                       spacing=args.spacing, times=args.times, eta=args.eta, churn=args.churn,
                                       samples_a=rec["_samples"][:b_cons] if reuse else None, device=device)
                rec["consistency"] = {"mean": sc.mean, "baseline": sc.baseline, "n": args.consistency}
            took = time.perf_counter() - t1
            rec["timings"][stage.replace(" ", "_").replace("-", "_") + "_s"] = round(took, 3)
            if stage == "held-out error" and estimates[stage] > 0:
                factor = min(max(took / estimates[stage], 0.05), 20.0)
        if skipped:
            rec.update(status="partial" if ran else "skipped",
                       error=f"too slow for --budget {args.budget:g} s: skipped {', '.join(skipped)}")
    except _OverBudget:
        rec.update(status="partial", error=f"stopped during {stage}: over --budget {args.budget:g} s")
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001 -- one denoiser must not sink the run
        rec.update(status="failed", error=f"{stage}: {type(e).__name__}: {one_line(e)}")
    rec["timings"]["total_s"] = round(time.perf_counter() - t0, 3)
    return rec


def sample_scores(samples: torch.Tensor, pool: torch.Tensor, test: torch.Tensor, quality) -> dict:
    """The sample columns of a set: copy rate and nearest-training distances against the held-out images', the
    share of pixels outside the data's range, and ``quality`` (Frechet distances, confidence, classes) of the
    samples clamped to that range."""
    lo, hi = display_range(pool)
    st = nearest_distance_stats(samples, pool, heldout=test)
    q = {k: st[k] for k in ("copy_rate", "nearest_median", "nearest_mean", "median_ratio", "ks")}
    slack = 0.025 * (hi - lo)
    q["out_of_range"] = float(((samples < lo - slack) | (samples > hi + slack)).double().mean())
    q.update(quality(samples.clamp(lo, hi)))
    return q


# ---------------------------------------------------------------- outputs

def _merge_and_write(out, results, samples, real, pool, args, start, names) -> None:
    """Write the outputs; with --resume, first take in the records another run sharing ``out`` wrote meanwhile."""
    if args.resume:
        take_in(out, results, samples, previous_records(out, results["settings"]), skip=names)  # ours stay ours
        order = {n: i for i, n in enumerate(DENOISERS)}
        results["denoisers"] = dict(sorted(results["denoisers"].items(), key=lambda kv: order.get(kv[0], len(order))))
        samples = {n: samples[n] for n in results["denoisers"] if n in samples}
    results["seconds"] = round(time.perf_counter() - start, 2)
    _write_outputs(out, results, samples, real, pool)


def _write_sample_pictures(out: Path, name: str, samples: torch.Tensor, pool: torch.Tensor) -> None:
    with atomic_path(out / f"samples_{name}.npy") as tmp:  # the raw samples, for other metrics and --resume
        np.save(tmp, samples.float().numpy())
    if is_image(pool):
        shown = display_range(pool)
        save_image(samples_grid(samples, value_range=shown, title=f"samples: {name}"), out / f"samples_{name}.png")
        _, idx = nearest(samples, pool, k=1)
        save_image(neighbours_grid(samples, pool, idx[:, 0], value_range=shown), out / f"neighbours_{name}.png")
    else:
        save_figure(scatter_samples(samples, pool, title=f"samples: {name}"), out / f"samples_{name}.png")


def _write_outputs(out: Path, results: dict, samples: dict, real: torch.Tensor, pool: torch.Tensor) -> None:
    with atomic_path(out / "results.json") as tmp:
        Path(tmp).write_text(json.dumps(_finite(results), indent=2, allow_nan=False) + "\n")
    with atomic_path(out / "table.md") as tmp:
        Path(tmp).write_text(markdown_table(results))
    try:
        if any("heldout" in r for r in results["denoisers"].values()):  # not when only --score sets were scored
            save_figure(heldout_figure(results), out / "heldout.png")
        if samples and is_image(pool):
            save_figure(comparison_figure(samples, real), out / "comparison.png")
        if any("n_eff" in r.get("samples", {}) for r in results["denoisers"].values()):
            save_figure(n_eff_figure(results), out / "n_eff.png")
    except ValueError as e:  # matplotlib missing: the table and grids are still there
        warnings.warn(f"plots skipped: {e}")


def _finite(obj):
    """NaN / inf -> None, so results.json is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.{digits}g}"


def markdown_table(results: dict) -> str:
    """``table.md``: held-out MSE / Wiener per sigma (in-sample in parentheses), then sample statistics."""
    s, p = results["settings"], results["protocol"]
    sig = results["sigmas"]
    dens = results["denoisers"]
    built = {name: r for name, r in dens.items() if "source" not in r}  # denoisers' rows, not --score sets
    if built:
        sampling = (f"{s['samples']} samples per denoiser ({s['sampler']}, {s['schedule']}, {s['steps']} steps"
                    f"{', ' + s['spacing'] + ' spacing' if s.get('spacing') else ''}"
                    f"{', times ' + ','.join(f'{t:g}' for t in s['times']) if s.get('times') else ''}"
                    f"{', eta ' + format(s['eta'], 'g') if s['sampler'] == 'ddim' and s.get('eta') else ''}"
                    f"{', churn ' + format(s.get('churn', 1.0), 'g') if s['sampler'] == 'euler-maruyama' else ''}"
                    f", seed {s['seed']}).")
    else:
        sampling = f"The first {s['samples']} images of each set given by --score are scored."
    lines = [f"# boneless eval: {s['data']}", "",
             f"Pool {p['pool']} training images; {p['test']} held-out images ({p['test_source']}); "
             f"y = x + sigma z with one z per image for every sigma and denoiser. {sampling} "
             f"This run took {results.get('seconds', 0):.0f} s; the denoisers' times (column 'seconds', runs "
             f"resumed with --resume included) sum to "
             f"{sum(r['timings'].get('total_s', 0) for r in dens.values()):.0f} s."]
    if built:  # sets made elsewhere have no held-out error
        lines += ["", "## Held-out MSE / Wiener MSE (in-sample ratio in parentheses; lower is better, best in bold)",
                  "", "| denoiser | " + " | ".join(f"σ = {v:g}" for v in sig) + " |", "|---|" + "---:|" * len(sig),
                  "| Wiener MSE (absolute) | " + " | ".join(_fmt(v, 3) for v in results["wiener"]["heldout"]["mse"])
                  + " |"]
    best = [min((r["heldout"]["ratio"][i] for r in built.values()
                 if "heldout" in r and r["heldout"]["ratio"][i] is not None), default=None) for i in range(len(sig))]
    for name, r in built.items():
        if "heldout" not in r:
            lines.append(f"| {name} | " + " | ".join("–" for _ in sig) + " |")
            continue
        cells = []
        for i in range(len(sig)):
            v = _fmt(r["heldout"]["ratio"][i])
            v = f"**{v}**" if best[i] is not None and r["heldout"]["ratio"][i] == best[i] else v
            ins = r.get("in_sample", {}).get("ratio")
            cells.append(v + (f" ({_fmt(ins[i])})" if ins and ins[i] is not None else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    real = results["real"]
    has_clf = results.get("classifier") is not None
    head = ["denoiser", "copy rate", "nearest dist. (median)", "÷ held-out", "KS", f"FD PCA-{results['pca_dim']}"]
    if has_clf:
        head += ["FD classifier", "confidence"]
    head += ["n_eff collapse t", "split consistency (baseline)", "seconds", "status"]
    lines += ["", "## Samples", "",
              "Copy rate: nearest / second-nearest training distance < 1/3. ÷ held-out: median nearest-training "
              "distance of the samples over that of held-out images (1 = as novel as real unseen images). KS: "
              "Kolmogorov-Smirnov distance between the two distance distributions. FD: Frechet distance to the "
              "held-out images (lower is better); 'real' is the same for "
              f"sets of {real['n']} unseen real images (mean ± sd over {real.get('sets', 0)} disjoint sets). Split consistency: cosine similarity of samples from two disjoint "
              "pools with the same seeds (baseline: unpaired).", "",
              "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 2) + "---|"]
    def pm(key):
        sd = real.get(key + "_std")
        return _fmt(real.get(key)) + (f" ± {_fmt(sd, 2)}" if sd is not None else "")

    row = ["real (held-out)", _fmt(real["copy_rate"]), _fmt(real["nearest_median"]), "1", "0", pm("fd_pca")]
    if has_clf:
        row += [pm("fd_classifier"), pm("confidence")]
    row += ["–", "–", "–", ""]
    lines.append("| " + " | ".join(row) + " |")
    for name, r in dens.items():
        q = r.get("samples", {})
        c = r.get("consistency")
        row = [name, _fmt(q.get("copy_rate")), _fmt(q.get("nearest_median")), _fmt(q.get("median_ratio")),
               _fmt(q.get("ks")), _fmt(q.get("fd_pca"))]
        if has_clf:
            row += [_fmt(q.get("fd_classifier")), _fmt(q.get("confidence"))]
        n_eff = q.get("n_eff")
        row += [_fmt(n_eff["collapse_t"]) if n_eff else "–",
                f"{_fmt(c['mean'])} ({_fmt(c['baseline'])})" if c else "–",
                _fmt(r["timings"].get("total_s")), r["status"] + (f": {r['error']}" if r.get("error") else "")]
        lines.append("| " + " | ".join(row).replace("\n", " ") + " |")
    if has_clf:
        lines += ["", f"Classifier: small CNN, test accuracy {results['classifier']['test_accuracy']:.3f} on "
                      f"Fashion-MNIST (confidence: mean top class probability)."]
    else:
        lines += ["", "FD classifier and confidence: n/a (the feature classifier is trained on Fashion-MNIST "
                      "and only reads 1x28x28 images)."]
    for name, r in dens.items():
        if "network" in r:
            lines += ["", network_note(name, r["network"], p["pool"], s["data"])]
        if "source" in r:
            lines += ["", f"Row '{name}': the first {s['samples']} images of {r['source']}, made elsewhere and "
                          "scored here (--score)."]
        if r.get("options"):
            lines += ["", f"Row '{name}': built with " + ", ".join(f"{k}={v}" for k, v in r["options"].items())
                      + " (--option)."]
    return "\n".join(lines) + "\n"


def network_note(name: str, net: dict, pool: int, data: str) -> str:
    """One line on the trained network of row ``name``: its size, its training and whether it saw this pool."""
    size = f"{net['parameters'] / 1e6:.2f}M parameters" if "parameters" in net else "size unknown"
    what = (f"trained by `boneless train-reference` ({net.get('steps', '?')} steps of {net.get('batch_size', '?')} "
            f"images, channels {net.get('channels', '?')}) in {_fmt(net.get('seconds'))} s on the first "
            f"{net.get('n_train', '?')} training images of {net.get('data', '?')}")
    same = net.get("n_train") == pool and net.get("data") == data
    return (f"Row '{name}': a UNet of {size}, {what}" + ("" if same else f" (not this pool of {pool}: compare "
            "with care)") + f"; folder {net['path']}.")


def heldout_figure(results: dict):
    """Held-out MSE / Wiener against sigma (solid), in-sample (dashed), one colour per denoiser."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sig = results["sigmas"]
    for i, (name, r) in enumerate(results["denoisers"].items()):
        if "heldout" not in r:
            continue
        nan = lambda v: [float("nan") if x is None else x for x in v]
        line, = ax.plot(sig, nan(r["heldout"]["ratio"]), "o-", label=name)
        if "in_sample" in r:
            ax.plot(sig, nan(r["in_sample"]["ratio"]), "--", c=line.get_color(), alpha=0.5, lw=1)
    ax.axhline(1.0, c="k", lw=1, ls=":", label="Wiener")
    held = [v for r in results["denoisers"].values() if "heldout" in r for v in r["heldout"]["ratio"]
            if v is not None and math.isfinite(v) and v > 0] + [1.0]
    ax.set_ylim(min(held) / 2, max(held) * 2)  # in-sample ratios of memorisers (~0) would flatten the plot
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("sigma (y = x + sigma z)")
    ax.set_ylabel("MSE / Wiener MSE")
    ax.set_title(f"held-out denoising error (dashed: in-sample), {results['settings']['data']}")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    return fig


def comparison_figure(samples: dict, real: torch.Tensor, *, per_row: int = 12):
    """One row of samples per denoiser, and a last row of real held-out images, labelled."""
    plt = pyplot()
    shown = display_range(real)
    rows = [(name, s[:per_row]) for name, s in samples.items()] + [("real (held-out)", real[:per_row])]
    fig, axes = plt.subplots(len(rows), 1, figsize=(per_row * 0.8, 0.95 * len(rows)), squeeze=False)
    fig.suptitle("samples of each denoiser beside real held-out images", fontsize=10)
    for ax, (name, imgs) in zip(axes[:, 0], rows):
        ax.imshow(image_grid([imgs], min_width=1, value_range=shown), cmap="gray", vmin=0, vmax=255,
                  interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
    fig.tight_layout()
    return fig


def n_eff_figure(results: dict):
    """Median posterior effective number of training examples along the sampling run."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in results["denoisers"].items():
        e = r.get("samples", {}).get("n_eff")
        if e:
            ax.plot(e["times"], e["median"], label=name)
    ax.set_yscale("log")
    ax.set_xlim(1, 0)
    ax.set_xlabel("t (1 = noise, 0 = data)")
    ax.set_ylabel("median effective number of examples")
    ax.set_title("posterior collapse during sampling")
    ax.legend(fontsize=8)
    return fig
