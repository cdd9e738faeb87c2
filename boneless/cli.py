"""The command line: ``boneless sample``, ``boneless demo``, ``boneless eval``, ``boneless bench``.

Bad input is a one-line ``boneless: error: ...`` on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import torch

from . import __version__
from .checks import one_line
from .data import is_image, load_dataset
from .distributed import DistributedError
from .metrics import COPY_RATIO, nearest
from .options import (add_data_arguments, add_grid_arguments, add_knob_arguments, add_option_arguments,
                      add_resume_arguments, finite_float, grid_steps, option_texts, options_for, positive_float,
                      positive_int, torch_device)
from .outputs import check_output_dir, write_json, write_npz
from .registry import DENOISERS, make_denoiser
from .rows import STORAGES
from .plots import (display_range, neighbours_grid, posterior_figure, samples_grid, save_figure, save_image,
                    scatter_samples, trajectory_figure, trajectory_scatter)
from .checkpoints import data_digest, sample_resumable
from .samplers import SAMPLERS, sample
from .schedules import ALIASES, SCHEDULES, get_schedule

# subcommands living in their own modules: name -> (module, help); each module has add_arguments(p) and run(args)
EXTERNAL = {
    "demo": ("boneless.demos", "pictures and animations of the ideas behind diffusion (boneless demo --list)"),
    "eval": ("boneless.evaluate", "compare denoisers: held-out error, copy rate, sample quality"),
    "bench": ("boneless.bench", "time the exact denoiser against baselines and the matrix-product limit"),
    "pack": ("boneless.pack", "convert an image folder into one .npy file (fast start; memory-mapped data)"),
    "explore": ("boneless.explore", "a local web page: step through the flow, sample, see the posterior (Gradio)"),
    "gap": ("boneless.gap", "how far a trained model is from the ideal denoiser, per noise level"),
    "train-reference": ("boneless.train_reference", "train a small diffusers UNet on N images (a reference model)"),
    "single-image": ("boneless.single_image", "new images from the patches of one picture, no training (retargeting too)"),
}


def add_sample_arguments(p: argparse.ArgumentParser) -> None:
    add_data_arguments(p)
    p.add_argument("--denoiser", default="empirical", choices=sorted(DENOISERS),
                   help="closed-form denoiser (default: empirical, the exact E[x0 | x_t])")
    p.add_argument("--schedule", default="rectified-flow",
                   help=f"noise schedule: {', '.join(SCHEDULES)} (aliases: {', '.join(ALIASES)}); default rectified-flow")
    p.add_argument("--sampler", default="euler", choices=list(SAMPLERS), help="default: euler (the original notebook's)")
    p.add_argument("--steps", type=positive_int, default=100, help="sampling steps (default 100)")
    p.add_argument("-n", "--num-samples", dest="n", type=positive_int, default=16, help="number of samples (default 16)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--out", default="runs/sample", help="output folder (default runs/sample)")
    add_grid_arguments(p, spacing_help="time grid (default: per schedule; split: even steps in t down to sigma / alpha "
                                       "= 1.5, Karras below, as parzen-local was measured with --sampler heun)")
    p.add_argument("--softmax-temperature", type=positive_float,
                   help="temperature T on the posterior logits (default 1: the exact posterior; >1 flatter); "
                        "denoisers with a posterior over examples (empirical, smoothed)")
    p.add_argument("--flow-scale", type=finite_float, nargs=2, default=(1.0, 1.0), metavar=("START", "END"),
                   help="the notebook's 'temperature': scales the flow, linear over the run (notebook: 0 1; default 1 1)")
    p.add_argument("--noise-strength", type=float, nargs=2, default=(0.0, 0.0), metavar=("START", "END"),
                   help="Gaussian noise added to the flow, linear over the run (notebook: 1 0; default 0 0)")
    add_knob_arguments(p)
    p.add_argument("--top-k", type=positive_int, default=5, help="posterior examples recorded per step (default 5)")
    p.add_argument("--chunk-size", type=positive_int,
                   help="rows per step of the streaming loop (default: the denoiser's own; 2048 for empirical)")
    p.add_argument("--storage", choices=STORAGES,
                   help="type the dataset is held in, dequantised exactly in the loop (uint8: 8-bit images; "
                        "default float32); empirical only")
    p.add_argument("--rescore", type=positive_int, metavar="K",
                   help="with --storage float16/bfloat16/uint8: rescore each query's top K rows against the data as "
                        "given (exact where they hold the posterior; with --mmap the data stay on disk); empirical only")
    p.add_argument("--bank", choices=("exact", "faiss", "faiss-flat"),
                   help="exact (default) or the approximate FAISS back-end for large N (pip install faiss-cpu): "
                        "a query whose certified error exceeds 1%% goes to the exact bank; empirical only")
    p.add_argument("--no-dedupe", action="store_true",
                   help="hold every row: by default rows that repeat (equal values and weights) are held once with "
                        "their count when at least 1/8 of the rows are repeats (the same posterior); empirical only")
    add_option_arguments(p, several=False)
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--mmap", action=argparse.BooleanOptionalAction, default=None,
                   help="read a .npy dataset from disk chunk by chunk (default: when it exceeds 4 GiB as float32)")
    p.add_argument("--checkpoint-every", type=positive_int, metavar="K",
                   help="save the sampler state to OUT/checkpoint.pt every K steps (atomically)")
    add_resume_arguments(p, result="the result is identical to an uninterrupted run")
    p.add_argument("--decode", metavar="VAE_DIR",
                   help="data are autoencoder latents: decode samples with the diffusers AutoencoderKL in VAE_DIR "
                        "(decoded.png, decoded_neighbours.png)")
    p.add_argument("--dist-timeout", type=positive_float, default=300.0, metavar="SECONDS",
                   help="under torchrun: a rank waiting longer than this for another fails with an error (default 300)")


def build_denoiser(name: str, X, *, device, **options):
    """:func:`make_denoiser` with options from the command line: a value of the wrong type (which the class meets
    as a TypeError) is a one-line error too."""
    try:
        return make_denoiser(name, X, device=device, **options)
    except TypeError as e:
        if not options:
            raise
        given = ", ".join(f"{k}={v!r}" for k, v in options.items())
        raise ValueError(f"denoiser {name!r} with {given}: {one_line(e)}") from None


def run_sample(args) -> int:
    """``boneless sample``; under torchrun each rank holds 1/K of the data (boneless.distributed), rank 0 writes."""
    from . import distributed

    rank, world, device = distributed.init_distributed(device=torch_device(args.device), timeout_s=args.dist_timeout)
    try:
        return _run_sample(args, rank, world, device)
    except ValueError as e:
        if world > 1 and not str(e).startswith("rank "):
            raise ValueError(f"rank {rank} of {world}: {e}") from e
        raise
    finally:
        distributed.close()


def _run_sample(args, rank: int, world: int, device: torch.device) -> int:
    from . import distributed

    timings = {}
    t0 = time.perf_counter()
    out = check_output_dir(args.out, files=SAMPLE_OUTPUTS) if rank == 0 else Path(args.out)
    schedule = get_schedule(args.schedule)
    if min(args.noise_strength) < 0 or not all(map(math.isfinite, args.noise_strength)):
        raise ValueError("--noise-strength values must be finite and >= 0")
    X = load_dataset(args.data, split=args.split, limit=args.limit, size=args.size, mmap=args.mmap)
    mapped = not isinstance(X, torch.Tensor)
    if mapped and args.denoiser != "empirical":
        raise ValueError(f"--denoiser {args.denoiser} needs the data in memory; memory-mapped data works with "
                         "--denoiser empirical")
    if world > 1:  # every rank must hold the same data (and later, the same samples)
        distributed.check_same([len(X), *X.shape[1:], *([] if mapped else distributed.fingerprint(X))],
                               "datasets (size, shape, checksum)", device=device)
    timings["load_s"] = time.perf_counter() - t0
    decode = None
    if getattr(args, "decode", None):
        from .latents import load_decoder
        decode = load_decoder(args.decode, X)
    t0 = time.perf_counter()
    given = {"temperature": args.softmax_temperature, "chunk_size": args.chunk_size, "storage": args.storage,
             "bank": args.bank, "rescore": args.rescore, "dedupe": False if args.no_dedupe else None}  # the options given on the command line; the denoiser's own defaults otherwise
    given = {k: v for k, v in given.items() if v is not None}
    for key, value in options_for(args.denoiser, args.options, [args.denoiser]).items():
        if key in given:
            raise ValueError(f"--option {key} repeats an option given by its own flag ({given[key]!r})")
        given[key] = value
    args.options = option_texts(args.options)  # as text, in report.json
    den = build_denoiser(args.denoiser, X, device=device, **given)
    timings["build_s"] = time.perf_counter() - t0
    checkpoint = out / "checkpoint.pt"
    if args.restart and rank == 0:
        checkpoint.unlink(missing_ok=True)
    if world > 1 and args.resume:  # every rank must resume from the same state (several nodes: a shared --out)
        size = checkpoint.stat().st_size if checkpoint.exists() else -1
        distributed.check_same([size], f"checkpoint sizes at {checkpoint} (-1: missing)", device=device)
    grid_steps(args)
    options = dict(n=args.n, steps=args.steps, sampler=args.sampler, seed=args.seed, shape=tuple(X.shape[1:]),
                   spacing=args.spacing, times=args.times, flow_scale=tuple(args.flow_scale),
                   noise_strength=tuple(args.noise_strength), eta=args.eta, churn=args.churn, top_k=args.top_k,
                   device=device, progress=rank == 0 and not args.no_progress)
    if args.restart and rank:  # rank 0 alone writes checkpoints, and deletes the old one
        res = sample(den, schedule, **options)
    else:
        # a checkpoint is resumed only by the same denoiser of the same data; the digest is a pass over the data,
        # made only when a checkpoint is written or read
        identity = None
        if args.checkpoint_every or args.resume or checkpoint.exists():
            identity = {"denoiser_name": args.denoiser, "data": data_digest(X),
                        "denoiser_options": {k: repr(v) for k, v in sorted(given.items())}}
        res = sample_resumable(den, schedule, checkpoint=checkpoint, every=args.checkpoint_every,
                               resume=args.resume, identity=identity, **options)
    if world > 1:
        distributed.check_same(distributed.fingerprint(res.samples), "final samples", device=device)
    if rank != 0:  # rank 0 alone writes the outputs
        return 0
    timings["sample_s"] = res.seconds
    t0 = time.perf_counter()
    dist, idx = nearest(res.samples, X, k=2, chunk_size=args.chunk_size or 2048)
    copies = (dist[:, 0] < COPY_RATIO * dist[:, 1]).numpy()
    write_sample_outputs(out, X, res, dist, idx, title=f"{args.n} samples: {args.denoiser} denoiser, {schedule.name}, "
                                                      f"{args.sampler}, {args.steps} steps")
    if decode is not None:
        from .latents import write_decoded
        write_decoded(out, decode, res.samples, X, idx[:, 0])
    timings["outputs_s"] = time.perf_counter() - t0
    report = {
        "version": __version__,
        "command": "sample",
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items() if k != "func"},
        "schedule": schedule.name,
        "time_grid": [round(float(t), 6) for t in res.ts],
        "dataset": {"shape": list(X.shape), "n": len(X)},
        "world_size": world,
        "memory_mapped": mapped,
        "denoiser_calls": res.denoiser_calls,
        "timings": {k: round(v, 4) for k, v in timings.items()},
        "seconds_per_step": round(res.seconds / args.steps, 6),
        "copy_rate": float(copies.mean()),
        "copy_rule": f"nearest / second-nearest training distance < {COPY_RATIO:.4f}",
        "nearest_distance": {"mean": float(dist[:, 0].mean()), "max": float(dist[:, 0].max())},
        "nearest_ratio": [round(float(r), 6) for r in (dist[:, 0] / dist[:, 1].clamp(min=1e-30))],
        "nearest": idx[:, 0].tolist(),
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "device": str(device)},
    }
    if res.trajectory.n_eff:
        report["final_n_eff"] = [round(float(v), 4) for v in res.trajectory.n_eff[-1]]
    write_json(report, out / "report.json")
    if checkpoint.exists():  # the run is complete and written: its checkpoint is no longer needed
        checkpoint.unlink()
    print(f"{args.n} samples from {args.data} ({len(X)} examples, {args.denoiser}, {schedule.name}, {args.sampler}, "
          f"{args.steps} steps) in {res.seconds:.2f} s; copy rate {report['copy_rate']:.3f}; wrote {out}/")
    return 0


SAMPLE_OUTPUTS = ("samples.png", "samples.npz", "trajectory.png", "posterior.png", "neighbours.png", "report.json",
                  "checkpoint.pt")


def write_sample_outputs(out: Path, X: torch.Tensor, res, dist: torch.Tensor, idx: torch.Tensor, *,
                         title: str = "samples") -> None:
    """samples.png (under ``title``), samples.npz, trajectory.png, posterior.png, neighbours.png (the outputs the
    README lists)."""
    tr = res.trajectory.stacked()
    write_npz(out / "samples.npz", samples=res.samples.numpy(), nearest=idx[:, 0].numpy(),
              nearest_distance=dist[:, 0].numpy(), second_distance=dist[:, 1].numpy(), times=res.ts.numpy())
    if is_image(X):
        shown = display_range(X)  # pictures scale for display only
        save_image(samples_grid(res.samples, value_range=shown, title=title), out / "samples.png")
        at = tr["steps"]  # x_t and x0_hat are recorded at these steps; times and the posterior at every step
        save_image(trajectory_figure(tr["x"], tr["x0_hat"], tr["times"][at], X=X,
                                     indices=tr["indices"][at] if "indices" in tr else None, value_range=shown),
                   out / "trajectory.png")
        save_image(neighbours_grid(res.samples, X, idx[:, 0], value_range=shown), out / "neighbours.png")
    else:
        save_figure(scatter_samples(res.samples, X, title=title), out / "samples.png")
        save_figure(trajectory_scatter(tr["x"], X, res.samples), out / "trajectory.png")
        save_figure(_neighbour_lines(res.samples, X, idx[:, 0]), out / "neighbours.png")
    if "weights" in tr:
        save_figure(posterior_figure(tr["times"], tr["weights"], tr["indices"], tr["n_eff"]), out / "posterior.png")


def _neighbour_lines(samples, X, idx):
    from .plots import pyplot
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 6.5))
    ax.scatter(X[:, 0], X[:, 1], s=4, c="0.75", label="training data")
    for s, j in zip(samples, idx):
        ax.plot([s[0], X[j, 0]], [s[1], X[j, 1]], c="k", lw=0.8)
    ax.scatter(samples[:, 0], samples[:, 1], s=14, c="tab:red", label="samples", zorder=3)
    ax.set_aspect("equal")
    ax.set_title("each sample and its nearest training example")
    ax.legend(loc="upper right")
    return fig


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """States each option's default once: appended where the help text does not already give it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or not action.option_strings or any(action.default is v for v in (None, False, argparse.SUPPRESS)):
            return text
        return text + " (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; the module of an external subcommand is imported only when that command is run."""
    parser = _Parser(prog="boneless", description="Boneless Flow: the exact ground-truth flow of diffusion models. "
                     "Closed-form denoisers, samplers and pictures; no training.")
    parser.add_argument("--version", action="version", version=f"boneless-flow {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    p = sub.add_parser("sample", help="generate with the exact flow and show that it copies training examples",
                       description="Generate samples with a closed-form denoiser and write samples.png, samples.npz, "
                                   "trajectory.png, posterior.png, neighbours.png and report.json to --out.",
                       formatter_class=_HelpFormatter)
    add_sample_arguments(p)
    p.set_defaults(func=run_sample)
    for name, (module, help_text) in EXTERNAL.items():
        if name != command:
            sub.add_parser(name, help=help_text)
            continue
        mod = importlib.import_module(module)
        q = sub.add_parser(name, help=help_text, description=(mod.__doc__ or help_text).strip().split("\n\n")[0],
                           formatter_class=_HelpFormatter)
        mod.add_arguments(q)
        q.set_defaults(func=mod.run)
    return parser


def _warning_line(message, category, filename, lineno, file=None, line=None):
    print(f"boneless: warning: {' '.join(str(message).split())}", file=sys.stderr)


def _resumable(args) -> str:
    """What to run to continue an interrupted ``boneless sample``: its checkpoint, if one was saved."""
    checkpoint = Path(getattr(args, "out", "")) / "checkpoint.pt"
    if getattr(args, "command", None) != "sample" or not checkpoint.is_file():
        return ""
    try:
        step = int(torch.load(checkpoint, map_location="cpu", weights_only=True)["step"])
    except Exception:  # whatever the file holds, the advice is the same
        return f"; {checkpoint} holds the progress: run the same command with --resume to continue"
    return f"; {checkpoint} holds step {step}: run the same command with --resume to continue"


# PyTorch's CPU allocator asks for transparent huge pages for its allocations of 2 MB and more when this is set
# (read at the first such allocation, so setting it here works). The patch denoisers' batched blocks are tens of
# MB, freed and allocated again at every block; with 4 KB pages each allocation's first touch page-faults through
# it. Measured (one held-out batch of 250 Fashion-MNIST images, local-gaussian at pool 10000, two threads, off then
# on): 17.2 s and 15.2 s at sigma 0.05, 177 s and 119 s at sigma 2 (docs/EVAL.md). A user's own setting is kept.
HUGE_PAGES = ("THP_MEM_ALLOC_ENABLE", "1")


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault(*HUGE_PAGES)
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    warnings.showwarning = _warning_line
    try:
        return int(args.func(args) or 0)
    except ValueError as e:
        print(f"boneless: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except DistributedError as e:  # a collective failed: another rank stopped or stalled
        print(f"boneless: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"boneless: interrupted (outputs already written are complete; nothing half-written){_resumable(args)}",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
