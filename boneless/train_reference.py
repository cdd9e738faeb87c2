"""Train a small reference network (a diffusers UNet2DModel) on N images, to hold against the ideal denoiser.

``boneless train-reference --data fashion-mnist --n-train 1000 --out DIR`` trains on the first N images of the
training split and writes DIR as a diffusers pipeline folder (``model_index.json``, ``unet/``, ``scheduler/``:
``DDPMPipeline.from_pretrained(DIR)`` loads it) plus ``reference.json`` (data, settings, losses, time).
``boneless gap --model DIR`` then measures how far it is from the exact denoiser of the same N images.

Training is the standard one of Ho et al. (2020) with the v-parametrisation of Salimans & Ho (2022): a timestep
``k`` uniform in 0..T-1, ``x_k = sqrt(abar_k) x0 + sqrt(1 - abar_k) eps`` and the loss ``|v_hat - v|^2`` with
``v = sqrt(abar_k) eps - sqrt(1 - abar_k) x0``, Adam with a learning rate decaying linearly to 0. Every random
draw comes from one seeded generator, so ``--resume`` from ``DIR/checkpoint.pt`` gives the same network as an
uninterrupted run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from .data import is_image, load_dataset
from .outputs import atomic_path, check_output_dir

CHECKPOINT_VERSION = 1
OUTPUTS = ("model_index.json", "reference.json", "checkpoint.pt")


def diffusers_module():
    """``diffusers``, or a clear error when it is missing."""
    try:
        import diffusers
    except ImportError:
        raise ValueError("this needs diffusers: pip install 'boneless-flow[adapters]'") from None
    return diffusers


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .options import add_resume_arguments, positive_float, positive_int

    p.add_argument("--data", default="fashion-mnist", metavar="NAME|PATH",
                   help="image dataset: a name (fashion-mnist, digits, faces) or a path (default: fashion-mnist)")
    p.add_argument("--n-train", type=positive_int, default=1000, metavar="N",
                   help="train on the first N images of the training split (default 1000)")
    p.add_argument("--size", type=positive_int, help="resize images to SIZE x SIZE (default: native size)")
    p.add_argument("--out", required=True, help="output folder (a diffusers pipeline folder)")
    p.add_argument("--steps", type=positive_int, default=3000, help="optimisation steps (default 3000)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per step (default 32)")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate, decays linearly to 0 "
                   "(default 1e-3)")
    p.add_argument("--channels", type=positive_int, nargs="+", default=[32, 64, 64], metavar="C",
                   help="UNet channels per resolution; the image side must divide by 2^(levels - 1) "
                        "(default 32 64 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation and of every draw (default 0)")
    p.add_argument("--checkpoint-every", type=positive_int, default=250, metavar="K",
                   help="save the training state to OUT/checkpoint.pt every K steps (default 250)")
    add_resume_arguments(p, result="the same network as an uninterrupted run")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def make_unet(shape: tuple[int, int, int], channels: list[int]):
    """A small ``UNet2DModel`` for images of ``shape`` (C, H, W): one ResNet block per level, no attention."""
    diffusers = diffusers_module()
    c, h, w = shape
    levels = len(channels)
    if h != w or h % 2 ** (levels - 1):
        raise ValueError(f"images of {h}x{w} do not fit a UNet with {levels} levels: the side must be square and "
                         f"divide by {2 ** (levels - 1)} (use --size or fewer --channels)")
    groups = 8 if all(ch % 8 == 0 for ch in channels) else 1
    return diffusers.UNet2DModel(sample_size=h, in_channels=c, out_channels=c, block_out_channels=tuple(channels),
                                 layers_per_block=1, norm_num_groups=groups,
                                 down_block_types=("DownBlock2D",) * levels, up_block_types=("UpBlock2D",) * levels)


def make_scheduler():
    """DDPM's linear beta schedule over T = 1000 steps, predicting v."""
    return diffusers_module().DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear",
                                            prediction_type="v_prediction", clip_sample=False)


def settings_of(args, X: torch.Tensor) -> dict:
    return {"data": str(args.data), "split": "train", "n_train": len(X), "shape": list(X.shape[1:]),
            "size": args.size, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
            "channels": list(args.channels), "seed": args.seed, "prediction_type": "v_prediction"}


def run(args) -> int:
    out = check_output_dir(args.out, files=OUTPUTS)
    checkpoint = out / "checkpoint.pt"
    if checkpoint.exists() and not (args.resume or args.restart):
        raise ValueError(f"{checkpoint} exists (an interrupted run): continue it with --resume, or start over with "
                         "--restart")
    if args.threads:
        torch.set_num_threads(args.threads)
    X = load_dataset(args.data, limit=args.n_train, size=args.size)
    if not is_image(X):
        raise ValueError(f"{args.data}: train-reference needs images [N, C, H, W], got shape {list(X.shape)}")
    if len(X) < args.n_train:
        raise ValueError(f"{args.data}: --n-train {args.n_train} but the training split has only {len(X)} images")
    settings = settings_of(args, X)
    with torch.random.fork_rng():  # diffusers initialises layers from the global generator; leave it untouched
        torch.manual_seed(args.seed)
        unet = make_unet(tuple(X.shape[1:]), list(args.channels))
    scheduler = make_scheduler()
    if args.restart:
        checkpoint.unlink(missing_ok=True)
    result = train(unet, scheduler, X, settings, checkpoint=checkpoint, resume=args.resume,
                   checkpoint_every=args.checkpoint_every, progress=not args.no_progress)
    save_reference(out, unet, scheduler, {**settings, **result})
    checkpoint.unlink(missing_ok=True)  # the run is complete and written
    n_params = sum(p.numel() for p in unet.parameters())
    print(f"trained a {n_params / 1e6:.2f}M-parameter UNet on {len(X)} images of {args.data} for {args.steps} steps "
          f"in {result['seconds']:.0f} s (final loss {result['final_loss']:.4f}); wrote {out}/")
    return 0


def train(unet, scheduler, X: torch.Tensor, settings: dict, *, checkpoint: Path | None = None,
          resume: bool = False, checkpoint_every: int | None = None, progress: bool = False) -> dict:
    """Train ``unet`` in place on ``X`` [N, C, H, W]; returns ``{"losses", "seconds", "final_loss"}``."""
    from tqdm.auto import tqdm

    steps, batch_size = settings["steps"], settings["batch_size"]
    generator = torch.Generator().manual_seed(settings["seed"])
    optimiser = torch.optim.Adam(unet.parameters(), lr=settings["lr"])
    decay = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda i: max(0.0, 1.0 - i / steps))
    abar = scheduler.alphas_cumprod.to(torch.float32)
    step, losses, seconds = 0, [], 0.0
    if resume and checkpoint is not None:
        state = load_checkpoint(checkpoint, settings)
        if state is not None:
            unet.load_state_dict(state["unet"])
            optimiser.load_state_dict(state["optimiser"])
            decay.load_state_dict(state["decay"])
            generator.set_state(state["generator"])
            step, losses, seconds = state["step"], state["losses"], state["seconds"]
    unet.train()
    bar = tqdm(total=steps, initial=step, desc="train-reference", unit="step", disable=not progress)
    start = time.perf_counter()
    while step < steps:
        idx = torch.randint(len(X), (batch_size,), generator=generator)
        k = torch.randint(len(abar), (batch_size,), generator=generator)
        eps = torch.randn((batch_size, *X.shape[1:]), generator=generator)
        x0 = X[idx]
        a, s = abar[k].sqrt().view(-1, 1, 1, 1), (1 - abar[k]).sqrt().view(-1, 1, 1, 1)
        v = a * eps - s * x0  # Salimans & Ho (2022), eq. 9
        loss = (unet(a * x0 + s * eps, k).sample - v).pow(2).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        decay.step()
        step += 1
        losses.append(float(loss.detach()))
        bar.update(1)
        bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
        if checkpoint is not None and checkpoint_every and step % checkpoint_every == 0 and step < steps:
            save_checkpoint(checkpoint, settings, unet, optimiser, decay, generator, step, losses,
                            seconds + time.perf_counter() - start)
    bar.close()
    unet.eval()
    seconds += time.perf_counter() - start
    tail = losses[-100:]
    return {"losses": [round(v, 5) for v in losses], "seconds": round(seconds, 1),
            "final_loss": sum(tail) / max(len(tail), 1),
            "parameters": sum(p.numel() for p in unet.parameters())}


def save_checkpoint(path: Path, settings, unet, optimiser, decay, generator, step, losses, seconds) -> None:
    state = {"version": CHECKPOINT_VERSION, "settings": settings, "unet": unet.state_dict(),
             "optimiser": optimiser.state_dict(), "decay": decay.state_dict(), "generator": generator.get_state(),
             "step": step, "losses": losses, "seconds": seconds}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, settings: dict) -> dict | None:
    """The training state at ``path``; None when there is none; refused when written with other settings."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        ok = state.get("version") == CHECKPOINT_VERSION and "unet" in state
    except Exception as e:  # torch.load raises many types for foreign or truncated files
        raise ValueError(f"checkpoint {path}: cannot read: {' '.join(str(e).split())[:300]}") from e
    if not ok:
        raise ValueError(f"checkpoint {path}: not a train-reference checkpoint")
    for key, value in settings.items():
        if state["settings"].get(key) != value:
            raise ValueError(f"checkpoint {path} was written by a different run: {key} {state['settings'].get(key)} "
                             f"there, {value} now (delete it or use the same settings)")
    return state


def save_reference(out: Path, unet, scheduler, info: dict) -> None:
    """Write OUT as a diffusers ``DDPMPipeline`` folder plus ``reference.json``, each entry moved into place whole."""
    diffusers = diffusers_module()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".reference-", dir=out) as tmp:
        diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp)
        (Path(tmp) / "reference.json").write_text(json.dumps(info) + "\n")
        for name in ("unet", "scheduler", "model_index.json", "reference.json"):  # reference.json last: complete
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(Path(tmp) / name, target)
