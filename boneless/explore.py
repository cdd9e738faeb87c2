"""A local web page to look inside the exact flow and the denoisers that generalise: boneless explore, then open
the address it prints (pip install 'boneless-flow[explore]').

Pick a dataset, a schedule, a sampler and a denoiser. Move the time slider: for one noisy example
``x_t = alpha(t) x0 + sigma(t) eps`` the page shows x_t, the denoiser's ``x0_hat``, the top-k training examples
with their posterior weights, and the effective number of examples ``n_eff = 1 / sum_i p_i^2`` of the exact
posterior over time. Press "sample" to watch a trajectory from noise to a sample, shown at the end beside its
nearest training example with the copy verdict. For 2-D data the view shows particles, the noised density p_t and
Tweedie's arrows ``sigma^2 grad log p_t(x_t) = alpha x0_hat - x_t``.

Needs the optional extra: pip install 'boneless-flow[explore]' (Gradio).

The page only calls the library (the one protocol ``denoiser(x, alpha, sigma) -> x0_hat``,
``EmpiricalDenoiser.posterior``, ``boneless.sample``, ``boneless.metrics.nearest``); the functions below that
build its pictures need no web library and are tested on their own.
"""

from __future__ import annotations

import argparse
import functools
import io
import os
import time
from dataclasses import dataclass

import torch
from PIL import Image

from . import (DATASETS, DENOISERS, SAMPLERS, SCHEDULES, EmpiricalDenoiser, get_schedule, load_dataset, sample,
               score_from_x0)
from .data import TOYS, is_image
from .demos import log_density
from .metrics import COPY_RATIO, nearest
from .options import add_data_arguments, positive_int
from .plots import display_range, image_grid
from .registry import make_denoiser

TOY_POINTS = 200  # points of a 2-D toy: the density on a grid and the arrows stay quick
FASHION_LIMIT = 10_000  # Fashion-MNIST examples loaded by the page (the CLI's --limit sets it for --data)
POOL = 256  # training examples behind a generalising denoiser: small, so that the page responds quickly
TOP_K = 5  # neighbours shown
CURVE_POINTS = 40  # times at which the n_eff curve is drawn
PARTICLES = 200  # particles of a 2-D sampling run
VIEW_PARTICLES = 100  # particles (with their Tweedie arrows) in the 2-D view
T_MIN = 0.001  # the slider's smallest t (t = 0 has sigma = 0 on most schedules: the data itself)
FRAME_SECONDS = 0.08  # pause between frames of the sampling animation
MAX_FRAMES = 40  # frames of the animation at most (every k-th step of a longer run)
GRID_SIDE = 120  # density grid of the 2-D view


# ---------------------------------------------------------------- the computations (no web library)

@functools.lru_cache(maxsize=6)
def load(data: str, *, split: str = "train", limit: int | None = None, size: int | None = None) -> torch.Tensor:
    """The dataset ``data`` (a name or a path) as the page uses it; cached (one load per name and options)."""
    name = data.strip()
    if name in TOYS:
        return load_dataset(name, n=TOY_POINTS)
    if name == "fashion-mnist" and limit is None:
        limit = FASHION_LIMIT
    X = load_dataset(name, split=split, limit=limit, size=size, mmap=False)
    if len(X) < 2:
        raise ValueError(f"{name}: needs at least two examples, got {len(X)}")
    if not is_image(X) and X.shape[1:] != (2,):
        raise ValueError(f"{name}: the page shows images [N, C, H, W] or 2-D points [N, 2], got {list(X.shape)}")
    return X


@functools.lru_cache(maxsize=8)
def build(data: str, denoiser: str, **load_options):
    """``(X, exact, den)``: the data, the exact denoiser over all of it, and the chosen denoiser (the exact one, or a
    generalising one built on the first ``POOL`` examples); cached."""
    X = load(data, **load_options)
    exact = EmpiricalDenoiser(X)
    if denoiser == "empirical":
        return X, exact, exact
    return X, exact, make_denoiser(denoiser, X[:POOL])


def noisy_example(X: torch.Tensor, schedule_name: str, t: float, *, index: int, seed: int):
    """``(x0, eps, x_t, c)`` for training example ``index``: ``x_t = alpha(t) x0 + sigma(t) eps`` with ``eps``
    drawn from ``seed`` (the same eps at every t, so the slider moves one noisy image through time)."""
    if not 0 <= index < len(X):
        raise ValueError(f"example index must be in [0, {len(X) - 1}], got {index}")
    if not 0 < t <= 1:
        raise ValueError(f"t must be in (0, 1], got {t}")
    c = get_schedule(schedule_name)(float(t))
    x0 = X[index:index + 1]
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(int(seed)))
    return x0, eps, c.alpha * x0 + c.sigma * eps, c


def n_eff_curve(exact: EmpiricalDenoiser, schedule_name: str, x0: torch.Tensor, eps: torch.Tensor,
                times: torch.Tensor) -> torch.Tensor:
    """``n_eff`` [T] of the exact posterior for ``x_t = alpha(t) x0 + sigma(t) eps`` at each of ``times``
    (one batch)."""
    c = get_schedule(schedule_name)(times.double())
    alpha, sigma = c.alpha.float(), c.sigma.float()
    shape = (-1,) + (1,) * (x0.ndim - 1)
    x_t = alpha.reshape(shape) * x0 + sigma.reshape(shape) * eps
    return exact.posterior(x_t, alpha, sigma, k=1).n_eff


@dataclass
class TimeView:
    """What the slider shows at one time: ``x_t`` and ``x0_hat`` [1, *shape]; the exact posterior's top-k
    ``indices``/``weights`` [k] and ``n_eff``; the curve ``n_eff`` over ``times``; and for 2-D data the
    particles ``x_t`` [P, 2] with their ``x0_hat`` [P, 2]."""

    t: float
    alpha: float
    sigma: float
    x_t: torch.Tensor
    x0_hat: torch.Tensor
    indices: torch.Tensor
    weights: torch.Tensor
    n_eff: float
    times: torch.Tensor
    curve: torch.Tensor
    particles: torch.Tensor | None = None
    particles_x0_hat: torch.Tensor | None = None


def time_view(X: torch.Tensor, exact: EmpiricalDenoiser, den, schedule_name: str, t: float, *, index: int,
              seed: int, k: int = TOP_K) -> TimeView:
    """Everything the slider shows at time ``t``, computed through the denoiser protocol and the exact posterior."""
    x0, eps, x_t, c = noisy_example(X, schedule_name, t, index=index, seed=seed)
    x0_hat = den(x_t, c.alpha, c.sigma)
    post = exact.posterior(x_t, c.alpha, c.sigma, k=k)
    times = torch.linspace(T_MIN, 1.0, CURVE_POINTS, dtype=torch.float64)
    view = TimeView(float(t), float(c.alpha), float(c.sigma), x_t, x0_hat, post.indices[0], post.weights[0],
                    float(post.n_eff[0]), times, n_eff_curve(exact, schedule_name, x0, eps, times))
    if not is_image(X):
        g = torch.Generator().manual_seed(int(seed) + 1)
        x0s = X[:VIEW_PARTICLES]
        view.particles = c.alpha * x0s + c.sigma * torch.randn(x0s.shape, generator=g)
        view.particles_x0_hat = den(view.particles, c.alpha, c.sigma)
    return view


def copy_verdict(samples: torch.Tensor, X: torch.Tensor):
    """``(nearest index [n], ratio [n], is_copy [n])``: the nearest training example of each sample and whether the
    sample is a copy, i.e. its nearest / second-nearest training distance ratio is below ``COPY_RATIO`` (1/3)."""
    dist, idx = nearest(samples, X, k=2)
    ratio = dist[:, 0] / dist[:, 1].clamp(min=1e-30)
    return idx[:, 0], ratio, ratio < COPY_RATIO


def verdict_text(samples: torch.Tensor, X: torch.Tensor) -> str:
    idx, ratio, copies = copy_verdict(samples, X)
    if len(samples) == 1:
        what = (f"**a copy** of training example #{int(idx[0])}" if copies[0]
                else f"**new**: not a copy of any training example (nearest: #{int(idx[0])})")
        return (f"The sample is {what}. Nearest / second-nearest training distance = {float(ratio[0]):.3g} "
                f"({'<' if copies[0] else '>='} 1/3).")
    return (f"Copy rate **{float(copies.double().mean()):.2f}**: {int(copies.sum())} of {len(samples)} particles "
            "landed on a training example (nearest / second-nearest training distance < 1/3).")


# ---------------------------------------------------------------- pictures

def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # the object API: no pyplot state shared between requests

    return Figure(figsize=(width, height), dpi=90)


def to_pil(fig) -> Image.Image:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def upscaled(x: torch.Tensor, *, width: int = 160, value_range=(-1.0, 1.0)) -> Image.Image:
    """One image [1, C, H, W] (or [C, H, W]) as a PIL image at least ``width`` px wide, ``value_range`` black to
    white (data of any range scale for display only)."""
    return image_grid([x.reshape(1, *x.shape[-3:])], min_width=width, pad=0, value_range=value_range)


def panels(images: list[tuple[torch.Tensor, str]], value_range=(-1.0, 1.0)) -> Image.Image:
    """Images [1, C, H, W] (or [C, H, W]) side by side, each with its title."""
    fig = _figure(3 * len(images), 3.2)
    for ax, (img, title) in zip(fig.subplots(1, len(images), squeeze=False)[0], images):
        ax.imshow(upscaled(img, value_range=value_range), cmap="gray")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    return to_pil(fig)


def pair_figure(view: TimeView, denoiser: str, value_range=(-1.0, 1.0)) -> Image.Image:
    """x_t beside x0_hat, titled with t, alpha and sigma."""
    return panels([(view.x_t, f"x_t  (t = {view.t:.3f}, alpha = {view.alpha:.3f}, sigma = {view.sigma:.3g})"),
                   (view.x0_hat, f"x0_hat of {denoiser}")], value_range)


def n_eff_figure(view: TimeView, n: int) -> Image.Image:
    """The effective number of training examples of the exact posterior against t, the slider's t marked."""
    fig = _figure(5, 3.2)
    ax = fig.subplots()
    ax.plot(view.times.numpy(), view.curve.numpy(), c="tab:blue")
    ax.scatter([view.t], [view.n_eff], c="tab:red", zorder=3, label=f"t = {view.t:.3f}: n_eff = {view.n_eff:.3g}")
    ax.set_yscale("log")
    ax.set_ylim(0.8, n * 1.3)
    ax.set_xlim(1, 0)
    ax.set_xlabel("t (1 = noise, 0 = data)")
    ax.set_ylabel("n_eff = 1 / sum p_i^2")
    ax.set_title(f"effective number of the {n} examples (exact posterior)", fontsize=9)
    ax.legend(loc="upper right", fontsize=8)
    return to_pil(fig)


def two_d_figure(view: TimeView, X: torch.Tensor, exact: EmpiricalDenoiser, *, index: int) -> Image.Image:
    """2-D view at time t: the noised density p_t (exact), particles x_t, Tweedie arrows
    ``sigma^2 grad log p_t(x_t) = alpha x0_hat - x_t`` (from the chosen denoiser), the slider's example and the
    training points that carry its posterior."""
    a, s = view.alpha, view.sigma
    lim = 1.05 * a * float(X.abs().max()) + 2.5 * s  # the data's own scale
    g = torch.linspace(-lim, lim, GRID_SIDE)
    grid = torch.stack(torch.meshgrid(g, g, indexing="xy"), -1).reshape(-1, 2)
    logp = log_density(exact, grid, a, s).reshape(GRID_SIDE, GRID_SIDE)
    fig = _figure(6.2, 6.2)
    ax = fig.subplots()
    ax.imshow(logp.clamp(min=float(logp.max()) - 10).numpy(), origin="lower", extent=(-lim, lim, -lim, lim),
              cmap="Greys")
    P = view.particles
    arrows = (s * s * score_from_x0(P, view.particles_x0_hat, a, s)).numpy()  # = alpha x0_hat - x_t
    ax.quiver(P[:, 0].numpy(), P[:, 1].numpy(), arrows[:, 0], arrows[:, 1], angles="xy", scale_units="xy", scale=1,
              width=0.003, color="tab:purple", alpha=0.8, label="Tweedie: sigma^2 grad log p_t(x_t)")
    ax.scatter(P[:, 0], P[:, 1], s=6, c="tab:blue", label=f"{len(P)} particles x_t")
    ax.scatter(a * X[:, 0], a * X[:, 1], s=2, c="tab:green", alpha=0.5, label="alpha x_i (training data)")
    nb = X[view.indices.clamp(min=0)]
    ax.scatter(a * nb[:, 0], a * nb[:, 1], s=30 + 300 * view.weights.numpy(), facecolors="none", edgecolors="tab:red",
               label="top neighbours (size: posterior weight)")
    ax.scatter(view.x_t[:, 0], view.x_t[:, 1], marker="*", s=160, c="tab:red", label=f"x_t of example #{index}")
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xlabel("x[0]")
    ax.set_ylabel("x[1]")
    ax.set_title(f"log p_t (darker: denser), t = {view.t:.3f}, alpha = {a:.3f}, sigma = {s:.3g}", fontsize=9)
    ax.legend(loc="upper right", fontsize=7)
    return to_pil(fig)


def neighbours_table(view: TimeView, X: torch.Tensor) -> str:
    rows = ["| rank | training example | posterior weight |", "|---:|---:|---:|"]
    for r, (i, w) in enumerate(zip(view.indices.tolist(), view.weights.tolist()), 1):
        where = f" at ({X[i, 0]:.3f}, {X[i, 1]:.3f})" if not is_image(X) and i >= 0 else ""
        rows.append(f"| {r} | #{i}{where} | {w:.4f} |")
    return "\n".join(rows)


def frame(x: torch.Tensor, x0_hat: torch.Tensor, X: torch.Tensor, t: float) -> Image.Image:
    """One frame of the sampling animation: x_t beside x0_hat (images), or the particles (2-D)."""
    if is_image(X):
        return panels([(x[:1], f"x_t, t = {t:.3f}"), (x0_hat[:1], "x0_hat")], display_range(X))
    fig = _figure(5, 5)
    ax = fig.subplots()
    ax.scatter(X[:, 0], X[:, 1], s=3, c="0.7", label="training data")
    ax.scatter(x[:, 0], x[:, 1], s=8, c="tab:red", label="particles x_t")
    lim = 1.1 * max(float(X.abs().max()), float(x.abs().max()))  # the data's own scale, and the particles'
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_title(f"sampling, t = {t:.3f}", fontsize=9)
    ax.legend(loc="upper right", fontsize=7)
    return to_pil(fig)


def final_figure(samples: torch.Tensor, X: torch.Tensor) -> Image.Image:
    """The sample beside its nearest training example (images), or particles joined to their nearest point (2-D)."""
    idx, _, copies = copy_verdict(samples, X)
    if is_image(X):
        return panels([(samples[:1], "sample"), (X[idx[:1]], f"nearest training example #{int(idx[0])}")],
                      display_range(X))
    fig = _figure(5, 5)
    ax = fig.subplots()
    ax.scatter(X[:, 0], X[:, 1], s=3, c="0.7", label="training data")
    for s_, j in zip(samples, idx):
        ax.plot([s_[0], X[j, 0]], [s_[1], X[j, 1]], c="k", lw=0.6)
    ax.scatter(samples[:, 0], samples[:, 1], s=10, c=["tab:red" if c else "tab:blue" for c in copies.tolist()],
               zorder=3)
    ax.set_aspect("equal")
    ax.set_title("samples (red: copies, blue: new) and their nearest training points", fontsize=9)
    return to_pil(fig)


# ---------------------------------------------------------------- the page

def _gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # a local page: nothing is sent anywhere
    try:
        import gradio
    except ImportError:
        raise ValueError("boneless explore needs Gradio: pip install 'boneless-flow[explore]'") from None
    return gradio


def build_page(*, data: str = "digits", load_options: dict | None = None):
    """The Gradio page; ``data`` (a name or path, loaded with ``load_options``) is preselected."""
    gr = _gradio()
    load_options = dict(load_options or {})
    datasets = list(DATASETS) + ([] if data in DATASETS else [data])

    def options(name):  # the command line's --split/--limit/--size apply to the command line's dataset only
        return load_options if name == data else {}

    def chosen(name: str, path: str) -> str:
        return path.strip() or name

    def on_view(name, path, schedule, denoiser, t, index, seed, progress=gr.Progress()):
        name = chosen(name, path)
        try:
            progress(0, desc=f"loading {name} and building {denoiser}")
            X, exact, den = build(name, denoiser, **options(name))
            index = int(index)
            view = time_view(X, exact, den, schedule, float(t), index=index, seed=int(seed))
            if is_image(X):
                shown = display_range(X)
                picture = pair_figure(view, denoiser, shown)
                gallery = [(upscaled(X[i], width=96, value_range=shown), f"{w:.3f}")  # indices: the table beside it
                           for i, w in zip(view.indices.tolist(), view.weights.tolist()) if i >= 0]
            else:
                picture, gallery = two_d_figure(view, X, exact, index=index), []
            gallery = gr.Gallery(gallery, visible=bool(gallery))  # no pictures of neighbours for points
        except ValueError as e:
            return (gr.skip(), gr.skip(), gr.skip(), gr.skip(), f"**Error:** {' '.join(str(e).split())}")
        status = (f"{name}: {len(X)} examples of shape {list(X.shape[1:])}; denoiser {denoiser}"
                  + (f" on the first {min(POOL, len(X))}" if denoiser != "empirical" else " (exact)")
                  + f". t = {view.t:.3f}: n_eff = {view.n_eff:.4g}")
        return picture, n_eff_figure(view, len(X)), gallery, neighbours_table(view, X), status

    def on_sample(name, path, schedule, sampler, denoiser, steps, spacing, seed,
                  progress=gr.Progress(track_tqdm=True)):
        name = chosen(name, path)
        try:
            progress(0, desc=f"loading {name} and building {denoiser}")
            X, exact, den = build(name, denoiser, **options(name))
            n = 1 if is_image(X) else PARTICLES
            res = sample(den, schedule, n=n, steps=int(steps), sampler=sampler, seed=int(seed),
                         record_every=max(1, -(-int(steps) // MAX_FRAMES)),
                         spacing=None if spacing == "default" else spacing, top_k=0, progress=True)
        except ValueError as e:
            yield gr.skip(), gr.skip(), f"**Error:** {' '.join(str(e).split())}"
            return
        tr = res.trajectory
        for t, x, x0_hat in zip([tr.times[i] for i in tr.steps], tr.x, tr.x0_hat):
            yield frame(x, x0_hat, X, t), gr.skip(), f"sampling: t = {t:.3f}"
            time.sleep(FRAME_SECONDS)
        yield (frame(res.samples, res.samples, X, float(res.ts[-1])), final_figure(res.samples, X),
               verdict_text(res.samples, X) + f" ({denoiser}, {schedule}, {sampler}, {int(steps)} steps on the "
               f"{spacing} time grid, "
               f"{res.seconds:.2f} s)")

    with gr.Blocks(title="Boneless Flow explorer", analytics_enabled=False) as page:
        gr.Markdown("# Boneless Flow explorer\nThe exact MMSE denoiser of a dataset and the denoisers that "
                    "generalise: move the time slider (t = 1 noise, t = 0 data), or press *sample*.")
        with gr.Row():
            name = gr.Dropdown(datasets, value=data, label="dataset", elem_id="dataset")
            path = gr.Textbox(label="or a path (folder of images, .npy, .npz, .pt, .safetensors)",
                              placeholder="path/to/data.npy", elem_id="path")
            schedule = gr.Dropdown(list(SCHEDULES), value="rectified-flow", label="schedule", elem_id="schedule")
            sampler = gr.Dropdown(list(SAMPLERS), value="euler", label="sampler", elem_id="sampler")
            denoiser = gr.Dropdown(list(DENOISERS), value="empirical", label="denoiser", elem_id="denoiser")
        with gr.Row():
            t = gr.Slider(T_MIN, 1.0, value=0.5, step=0.001, label="t (1 = noise, 0 = data)", elem_id="time")
            index = gr.Number(0, precision=0, label="training example", elem_id="index")
            seed = gr.Number(0, precision=0, label="noise seed", elem_id="seed")
        status = gr.Markdown(elem_id="status")
        with gr.Row():
            picture = gr.Image(label="x_t and x0_hat (2-D: density, particles, Tweedie arrows)", format="png",
                               interactive=False, show_label=False, elem_id="view")
            curve = gr.Image(label="effective number of examples", format="png", interactive=False, show_label=False,
                             elem_id="neff")
        with gr.Row():
            gallery = gr.Gallery(label="top training examples (exact posterior weights)", columns=TOP_K,
                                 height=180, format="png", elem_id="neighbours")
            table = gr.Markdown(elem_id="weights")
        gr.Markdown("## Sample")
        with gr.Row():
            steps = gr.Slider(2, 200, value=30, step=1, label="steps", elem_id="steps")
            spacing = gr.Dropdown(["default", "uniform", "karras", "logsnr", "split"], value="default", elem_id="spacing",
                                  label="time grid (logsnr: fine steps near the data, where the posterior collapses)")
            go = gr.Button("sample", variant="primary", elem_id="sample")
        with gr.Row():
            movie = gr.Image(label="trajectory: x_t and x0_hat (2-D: particles)", format="png", interactive=False,
                             show_label=False, elem_id="movie")
            final = gr.Image(label="sample beside its nearest training example", format="png", interactive=False,
                             show_label=False, elem_id="final")
        verdict = gr.Markdown(elem_id="verdict")

        view_inputs = [name, path, schedule, denoiser, t, index, seed]
        view_outputs = [picture, curve, gallery, table, status]
        one_at_a_time = {"concurrency_id": "compute"}  # denoisers are used by one request at a time
        for control in (name, schedule, denoiser, index, seed):
            control.change(on_view, view_inputs, view_outputs, **one_at_a_time)
        path.submit(on_view, view_inputs, view_outputs, **one_at_a_time)
        t.change(on_view, view_inputs, view_outputs, trigger_mode="always_last", **one_at_a_time)
        page.load(on_view, view_inputs, view_outputs, **one_at_a_time)
        for control in (name, path):  # a new dataset: the last sample no longer belongs to the page
            control.change(lambda: (None, None, ""), None, [movie, final, verdict])
        go.click(on_sample, [name, path, schedule, sampler, denoiser, steps, spacing, seed], [movie, final, verdict],
                 **one_at_a_time)
    return page.queue(default_concurrency_limit=1)


# ---------------------------------------------------------------- command line

def add_arguments(p: argparse.ArgumentParser) -> None:

    add_data_arguments(p)
    p.add_argument("--port", type=positive_int, default=7860, help="port to serve on (default 7860)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 exposes the page)")


def run(args) -> int:
    if args.port > 65535:
        raise ValueError(f"--port must be at most 65535, got {args.port}")
    gr = _gradio()
    load_options = {k: v for k, v in (("split", args.split), ("limit", args.limit), ("size", args.size))
                    if v not in (None, "train")}
    X = load(args.data, **load_options)  # a bad --data is an error here, before the server starts
    page = build_page(data=args.data, load_options=load_options)
    print(f"boneless explore: {args.data} ({len(X)} examples); open http://{args.host}:{args.port} "
          "(Ctrl+C stops the server)", flush=True)
    try:
        page.launch(server_name=args.host, server_port=args.port, quiet=True, theme=gr.themes.Default(
            font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]))
    except OSError as e:
        raise ValueError(f"cannot serve on {args.host}:{args.port}: {e}") from None
    return 0
