"""Samplers: plain functions over an explicit, decreasing time grid (t = 1 noise -> t = 0 data).

Every sampler has the signature ``sampler(denoiser, schedule, x, ts, *, knobs, generator, callback) -> x`` and
calls the denoiser once per step (``heun`` twice). The original notebook's two knobs are options of every
sampler, each a linear schedule over the run (:class:`Knobs`): ``flow_scale`` multiplies the deterministic
update (the notebook's "temperature", 0 -> 1 there) and ``noise_strength`` adds ``strength * |dt| * z`` to
it (Gaussian noise added to the flow, 1 -> 0 there). The true softmax temperature on the posterior logits is
an option of :class:`~boneless.EmpiricalDenoiser`.

:func:`sample` runs a sampler from pure noise and records trajectories (x_t, x0_hat, posterior top-k).
"""

from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Callable, Literal

import torch

from .denoisers import velocity_from_x0
from .schedules import Schedule, Spacing, get_schedule, time_grid


@dataclass(frozen=True)
class Knobs:
    """The original notebook's two knobs, each linear from ``start`` to ``end`` over the steps."""

    flow_scale: tuple[float, float] = (1.0, 1.0)
    noise_strength: tuple[float, float] = (0.0, 0.0)
    offset: int = 0  # a sampler run over part of a grid: its step 0 is step ``offset`` of ``total`` steps
    total: int | None = None

    def at(self, i: int, steps: int) -> tuple[float, float]:
        if self.total is not None:
            i, steps = i + self.offset, self.total
        f = i / max(steps - 1, 1)
        lerp = lambda ab: ab[0] + f * (ab[1] - ab[0])
        return lerp(self.flow_scale), lerp(self.noise_strength)


Callback = Callable[[dict], None]


def _coeffs(schedule: Schedule, t: float):
    return schedule(float(t))


def _denoise(denoiser, x, schedule, t, callback, i):
    """The main denoiser call of step ``i`` (a recorder's ``step_call`` sees which step it is)."""
    c = _coeffs(schedule, t)
    step_call = getattr(denoiser, "step_call", None)
    x0_hat = step_call(i, float(t), x, c.alpha, c.sigma) if step_call else denoiser(x, c.alpha, c.sigma)
    if callback is not None:
        callback({"i": i, "t": float(t), "x": x, "x0_hat": x0_hat, "alpha": c.alpha, "sigma": c.sigma})
    return c, x0_hat


def _velocity(x, x0_hat, c):
    if c.sigma == 0:  # at t = 0 the flow is not defined; the data point is its own limit
        return torch.zeros_like(x)
    return velocity_from_x0(x, x0_hat, c.alpha, c.sigma, c.d_alpha, c.d_sigma)


def _knob_step(x, update, dt, knobs, i, steps, generator):
    """``x + flow_scale * update + noise_strength * |dt| * z`` (the notebook's knobs; identity by default)."""
    scale, strength = knobs.at(i, steps)
    x = x + scale * update if scale != 1.0 else x + update
    if strength:
        x = x + strength * abs(dt) * torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    return x


def euler(denoiser, schedule, x, ts, *, knobs=Knobs(), generator=None, callback=None):
    """First-order Euler steps of the probability-flow ODE ``dx/dt = d_alpha x0_hat + d_sigma eps``."""
    steps = len(ts) - 1
    for i in range(steps):
        c, x0_hat = _denoise(denoiser, x, schedule, ts[i], callback, i)
        dt = float(ts[i + 1] - ts[i])
        x = _knob_step(x, dt * _velocity(x, x0_hat, c), dt, knobs, i, steps, generator)
    return x


def heun(denoiser, schedule, x, ts, *, knobs=Knobs(), generator=None, callback=None):
    """Heun's second-order method (EDM, Algorithm 1); the last step to sigma = 0 is an Euler step."""
    steps = len(ts) - 1
    for i in range(steps):
        c, x0_hat = _denoise(denoiser, x, schedule, ts[i], callback, i)
        dt = float(ts[i + 1] - ts[i])
        v = _velocity(x, x0_hat, c)
        c_next = _coeffs(schedule, ts[i + 1])
        if c_next.sigma > 0:
            x_e = x + dt * v
            v = 0.5 * (v + _velocity(x_e, denoiser(x_e, c_next.alpha, c_next.sigma), c_next))
        x = _knob_step(x, dt * v, dt, knobs, i, steps, generator)
    return x


def ddim(denoiser, schedule, x, ts, *, eta: float = 0.0, knobs=Knobs(), generator=None, callback=None):
    """DDIM (Song et al. 2021, eq. 12) for any (alpha, sigma): ``x' = alpha' x0_hat + sqrt(sigma'^2 - c^2) eps_hat
    + c z`` with ``c = eta sigma' sqrt(1 - (alpha sigma')^2 / (alpha' sigma)^2)`` (eta = 1 is ancestral DDPM)."""
    if not (math.isfinite(eta) and eta >= 0):
        raise ValueError(f"eta must be >= 0, got {eta}")
    steps = len(ts) - 1
    for i in range(steps):
        c, x0_hat = _denoise(denoiser, x, schedule, ts[i], callback, i)
        n = _coeffs(schedule, ts[i + 1])
        eps_hat = (x - c.alpha * x0_hat) / c.sigma
        ratio = (c.alpha * n.sigma) / (n.alpha * c.sigma) if n.alpha > 0 else 0.0
        noise_sd = eta * n.sigma * math.sqrt(max(0.0, 1.0 - ratio * ratio))
        noise_sd = min(noise_sd, n.sigma)
        x_det = n.alpha * x0_hat + math.sqrt(max(n.sigma ** 2 - noise_sd ** 2, 0.0)) * eps_hat
        dt = float(ts[i + 1] - ts[i])
        x = _knob_step(x, x_det - x, dt, knobs, i, steps, generator)
        if noise_sd > 0:
            x = x + noise_sd * torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    return x


def ddpm(denoiser, schedule, x, ts, *, knobs=Knobs(), generator=None, callback=None):
    """Ancestral sampling: DDIM with eta = 1 (Ho et al. 2020)."""
    return ddim(denoiser, schedule, x, ts, eta=1.0, knobs=knobs, generator=generator, callback=callback)


def euler_maruyama(denoiser, schedule, x, ts, *, churn: float = 1.0, knobs=Knobs(), generator=None,
                   callback=None):
    """Euler-Maruyama on the reverse SDE ``dx = [v - g^2 / 2 score] dt + g dW`` with ``g^2 = 2 churn sigma
    d_sigma``, which keeps the marginals of the flow for any ``g`` (Fokker-Planck); last step deterministic."""
    if not (math.isfinite(churn) and churn >= 0):
        raise ValueError(f"churn must be >= 0, got {churn}")
    steps = len(ts) - 1
    for i in range(steps):
        c, x0_hat = _denoise(denoiser, x, schedule, ts[i], callback, i)
        h = float(ts[i] - ts[i + 1])
        v = _velocity(x, x0_hat, c)
        last = _coeffs(schedule, ts[i + 1]).sigma == 0
        g2 = 0.0 if last else 2 * churn * c.sigma * c.d_sigma
        score = (c.alpha * x0_hat - x) / (c.sigma ** 2)
        x = _knob_step(x, -h * (v - 0.5 * g2 * score), -h, knobs, i, steps, generator)
        if g2 > 0:
            x = x + math.sqrt(g2 * h) * torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    return x


SAMPLERS: dict[str, Callable] = {"euler": euler, "heun": heun, "ddim": ddim, "ddpm": ddpm,
                                 "euler-maruyama": euler_maruyama}
SamplerName = Literal["euler", "heun", "ddim", "ddpm", "euler-maruyama"]


@dataclass
class Trajectory:
    """Recorded during a run: ``times`` [S]; ``x`` and ``x0_hat`` [R, n, *shape] at steps ``steps`` [R];
    posterior top-k ``indices``/``weights`` [S, n, k], ``entropy``/``n_eff`` [S, n] at every step (when the
    denoiser has a posterior)."""

    times: list = field(default_factory=list)
    steps: list = field(default_factory=list)
    x: list = field(default_factory=list)
    x0_hat: list = field(default_factory=list)
    indices: list = field(default_factory=list)
    weights: list = field(default_factory=list)
    entropy: list = field(default_factory=list)
    n_eff: list = field(default_factory=list)

    def stacked(self) -> dict[str, torch.Tensor]:
        out = {"times": torch.tensor(self.times), "steps": torch.tensor(self.steps, dtype=torch.long)}
        for name in ("x", "x0_hat", "indices", "weights", "entropy", "n_eff"):
            values = getattr(self, name)
            if values:
                out[name] = torch.stack(values)
        return out


@dataclass
class SampleResult:
    samples: torch.Tensor  # [n, *shape]
    ts: torch.Tensor  # the time grid [steps + 1]
    trajectory: Trajectory
    seconds: float
    denoiser_calls: int


class _Recorder:
    """Wraps a denoiser: counts calls and records the trajectory of the main (first-per-step) calls."""

    def __init__(self, denoiser, record_steps: set[int], k: int, progress):
        self.denoiser, self.record_steps, self.k, self.progress = denoiser, record_steps, k, progress
        self.trajectory, self.calls = Trajectory(), 0
        self.has_posterior = k > 0 and hasattr(denoiser, "posterior")
        self.offset = 0  # index of the sampler's step 0 in the whole run (runs resumed or split in segments)

    def __call__(self, x, alpha, sigma):
        self.calls += 1
        return self.denoiser(x, alpha, sigma)

    def step_call(self, i, t, x, alpha, sigma):
        i += self.offset
        self.calls += 1
        tr = self.trajectory
        tr.times.append(t)
        if self.has_posterior:
            post = self.denoiser.posterior(x, alpha, sigma, k=self.k)
            x0_hat = post.x0_hat
            tr.indices.append(post.indices)
            tr.weights.append(post.weights)
            tr.entropy.append(post.entropy)
            tr.n_eff.append(post.n_eff)
        else:
            x0_hat = self.denoiser(x, alpha, sigma)
        if i in self.record_steps:
            tr.steps.append(i)
            tr.x.append(x.detach().cpu().clone())
            tr.x0_hat.append(x0_hat.detach().cpu().clone())
        if self.progress is not None:
            self.progress.update(1)
        return x0_hat


def sample(denoiser, schedule: Schedule | str = "rectified-flow", *, n: int = 16, steps: int = 100,
           sampler: SamplerName = "euler", seed: int | None = 0, generator: torch.Generator | None = None,
           shape: tuple[int, ...] | None = None, spacing: Spacing | None = None, t_max: float = 1.0,
           flow_scale: tuple[float, float] = (1.0, 1.0), noise_strength: tuple[float, float] = (0.0, 0.0),
           eta: float = 0.0, churn: float = 1.0, record_every: int | None = None,
           record_steps: list[int] | None = None, top_k: int = 5,
           progress: bool = False, device: torch.device | str = "cpu", checkpoint: str | os.PathLike | None = None,
           checkpoint_every: int | None = None, resume: bool = False) -> SampleResult:
    """Generate ``n`` samples from pure noise with ``denoiser`` under ``schedule``.

    Args:
        denoiser: any callable ``denoiser(x, alpha, sigma) -> x0_hat``.
        schedule: a schedule or its name.
        n, steps: number of samples and of steps.
        sampler: ``euler`` (the original notebook's), ``heun``, ``ddim`` (``eta``), ``ddpm``, ``euler-maruyama``
            (``churn``).
        seed / generator: the randomness (the library never seeds globally).
        shape: the shape of one sample (default: ``denoiser.shape``).
        spacing: time grid (``uniform``, ``karras``, ``logsnr``; default per schedule).
        flow_scale, noise_strength: the notebook's two knobs as (start, end) linear schedules.
        record_every: record x_t and x0_hat every this many steps (default: about 10 frames), plus the last.
        record_steps: or record them at exactly these step indices (0 .. steps - 1).
        top_k: posterior top-k recorded at every step, when the denoiser has ``posterior`` (0: off).
        progress: show a progress bar.
        checkpoint, checkpoint_every: save the state (x, step, generator state, trajectory so far) to the file
            ``checkpoint`` atomically every ``checkpoint_every`` steps (only rank 0 writes under torch.distributed).
        resume: continue from ``checkpoint`` when it exists (refused if it was written with other settings): the
            remaining grid runs from the saved ``x`` with the saved generator state, so the result is
            bit-identical to an uninterrupted run (same machine, same denoiser). The file is left in place.

    Returns:
        :class:`SampleResult` with ``samples`` [n, *shape] in data space.
    """
    schedule = get_schedule(schedule) if isinstance(schedule, str) else schedule
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}: choose one of {', '.join(SAMPLERS)}")
    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"n must be a positive integer, got {n!r}")
    shape = tuple(shape or getattr(denoiser, "shape", ()))
    if not shape:
        raise ValueError("shape is needed for a denoiser without a .shape attribute")
    for name, (a, b) in (("flow_scale", flow_scale), ("noise_strength", noise_strength)):
        if not all(math.isfinite(v) for v in (a, b)) or (name == "noise_strength" and min(a, b) < 0):
            raise ValueError(f"{name} must be finite" + (" and >= 0" if name == "noise_strength" else ""))
    ts = time_grid(schedule, steps, spacing=spacing, t_max=t_max)
    if record_steps is not None:
        if any(not (isinstance(i, int) and 0 <= i < steps) for i in record_steps):
            raise ValueError(f"record_steps must be step indices in [0, {steps - 1}]")
        record_steps = set(record_steps)
    else:
        record_every = record_every or max(1, steps // 10)
        record_steps = set(range(0, steps, record_every)) | {steps - 1}
    if checkpoint_every is not None and not (isinstance(checkpoint_every, int) and checkpoint_every >= 1):
        raise ValueError(f"checkpoint_every must be a positive integer, got {checkpoint_every!r}")
    if (checkpoint_every or resume) and checkpoint is None:
        raise ValueError("checkpoint_every and resume need a checkpoint path")
    rec = _Recorder(denoiser, record_steps, top_k, None)
    settings = {"n": n, "steps": steps, "sampler": sampler, "schedule": schedule.name, "shape": list(shape),
                "spacing": spacing, "t_max": float(t_max), "flow_scale": list(flow_scale),
                "noise_strength": list(noise_strength), "eta": float(eta), "churn": float(churn), "top_k": top_k,
                "record_steps": sorted(record_steps), "seed": seed if generator is None else "generator",
                "denoiser": type(denoiser).__name__, "ts": [float(t) for t in ts]}
    if checkpoint is not None and not resume and Path(checkpoint).exists():
        raise ValueError(_unfinished_run(checkpoint, settings))
    state = _load_checkpoint(checkpoint, settings) if resume else None
    if generator is None:
        generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
    if state is None:
        c0 = schedule(float(ts[0]))
        x = (c0.sigma * torch.randn((n, *shape), generator=generator)).to(device)
        i, spent = 0, 0.0
    else:
        x, i, spent = state["x"].to(device), int(state["step"]), float(state["seconds"])
        generator.set_state(state["generator"])
        rec.trajectory, rec.calls = Trajectory(**state["trajectory"]), int(state["calls"])
    if progress:
        from tqdm.auto import tqdm
        rec.progress = tqdm(total=steps, initial=i, desc=f"{sampler} {schedule.name}", unit="step", leave=False)

    kwargs = {"eta": eta} if sampler == "ddim" else {"churn": churn} if sampler == "euler-maruyama" else {}
    start = time.perf_counter()
    knobs = Knobs(tuple(flow_scale), tuple(noise_strength), total=steps)
    every = checkpoint_every if checkpoint is not None and checkpoint_every else steps
    while i < steps:  # segments of the grid between checkpoints; samplers are stateless over ts[i:j + 1]
        j = min((i // every + 1) * every, steps)
        rec.offset = i
        x = SAMPLERS[sampler](rec, schedule, x, ts[i:j + 1], knobs=replace(knobs, offset=i), generator=generator,
                              **kwargs)
        i = j
        if checkpoint is not None and checkpoint_every and i < steps:
            _save_checkpoint(checkpoint, settings, x, i, generator, rec, spent + time.perf_counter() - start)
    c_end = schedule(float(ts[-1]))
    if c_end.sigma > 0:  # a grid ending above sigma = 0 (e.g. VE's sigma_min): take the final denoised estimate
        x = denoiser(x, c_end.alpha, c_end.sigma)
    seconds = spent + time.perf_counter() - start
    if rec.progress is not None:
        rec.progress.close()
    return SampleResult(x.cpu(), ts, rec.trajectory, seconds, rec.calls)


CHECKPOINT_VERSION = 1
RESTART = "start over with --restart (Python: delete the file), or write elsewhere"


def _writes_checkpoints() -> bool:
    """Rank 0 alone writes (all ranks hold the same state); every process without torch.distributed."""
    import torch.distributed as dist
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _save_checkpoint(path, settings: dict, x, step: int, generator, rec: _Recorder, seconds: float) -> None:
    """Write the sampler state after ``step`` steps to ``path`` atomically (torch.save of tensors and lists)."""
    if not _writes_checkpoints():
        return
    from .outputs import atomic_path

    tr = rec.trajectory
    state = {"version": CHECKPOINT_VERSION, "settings": settings, "x": x.detach().cpu(), "step": step,
             "generator": generator.get_state(), "calls": rec.calls, "seconds": seconds,
             "trajectory": {f.name: list(getattr(tr, f.name)) for f in fields(tr)}}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _unfinished_run(path, settings: dict) -> str:
    """Why a run that would write ``path`` does not start: the file holds another run's progress."""
    try:
        state = _load_checkpoint(path, settings)
    except ValueError as e:  # another run's, or not a checkpoint at all
        return str(e)
    return (f"checkpoint {path} holds step {int(state['step'])} of {settings['steps']} of this run: continue it "
            "with --resume (Python: resume=True), or start over with --restart (Python: delete the file)")


def _load_checkpoint(path, settings: dict) -> dict | None:
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
            show = lambda v: str(v) if len(str(v)) < 60 else str(v)[:60] + "..."
            raise ValueError(f"checkpoint {path} was written by a different run: {key} {show(saved.get(key))} "
                             f"there, {show(settings[key])} now ({RESTART})")
    return state
