"""Samplers: plain functions over an explicit, decreasing time grid (t = 1 noise -> t = 0 data).

Every sampler has the signature ``sampler(denoiser, schedule, x, ts, *, knobs, generator, callback) -> x`` and
calls the denoiser once per step (``heun`` twice). The original notebook's two knobs are options of every
sampler, each a linear schedule over the run (:class:`Knobs`): ``flow_scale`` multiplies the deterministic
update (the notebook's "temperature", 0 -> 1 there) and ``noise_strength`` adds ``strength * |dt| * z`` to
it (Gaussian noise added to the flow, 1 -> 0 there). The true softmax temperature on the posterior logits is
an option of :class:`~boneless.EmpiricalDenoiser`.

:func:`sample` runs a sampler from pure noise and records trajectories (x_t, x0_hat, posterior top-k): a
:class:`Run` made by :func:`start`, moved on by :func:`advance` (any part of the grid), closed by :func:`finish`
(:mod:`boneless.checkpoints` saves and resumes runs between parts).
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Literal, Sequence

import torch

from .denoisers import PosteriorDenoiser, velocity_from_x0
from .schedules import Schedule, Spacing, check_times, get_schedule, time_grid


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
    """The main denoiser call of step ``i`` (a :class:`_Recorder` sees which step it is)."""
    c = _coeffs(schedule, t)
    if isinstance(denoiser, _Recorder):
        x0_hat = denoiser.step_call(i, float(t), x, c.alpha, c.sigma)
    else:
        x0_hat = denoiser(x, c.alpha, c.sigma)
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


def draws_noise(sampler: str, *, eta: float = 0.0, churn: float = 1.0) -> bool:
    """Whether ``sampler`` with these knobs draws noise on its way (without ``Knobs``' noise strength): if not, each
    sample is a function of its start alone."""
    return sampler == "ddpm" or (sampler == "ddim" and eta > 0) or (sampler == "euler-maruyama" and churn > 0)


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
        self.has_posterior = k > 0 and isinstance(denoiser, PosteriorDenoiser)
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


@dataclass
class Run:
    """A sampling run between steps: the grid and options it follows, and where it stands (``x`` after
    ``step`` of ``steps`` steps, the generator, the recorder with the trajectory so far, seconds spent).
    Made by :func:`start`, moved on by :func:`advance`, closed by :func:`finish`; :mod:`boneless.checkpoints`
    saves and restores it between steps."""

    denoiser: Callable
    schedule: Schedule
    sampler: str
    ts: torch.Tensor
    knobs: Knobs
    options: dict
    settings: dict  # what makes two runs the same run (a checkpoint is only resumed by the same run)
    x: torch.Tensor
    generator: torch.Generator
    recorder: "_Recorder"
    step: int = 0
    seconds: float = 0.0

    @property
    def steps(self) -> int:
        return len(self.ts) - 1


def start(denoiser, schedule: Schedule | str = "rectified-flow", *, n: int = 16, steps: int = 100,
          sampler: SamplerName = "euler", seed: int | None = 0, generator: torch.Generator | None = None,
          shape: tuple[int, ...] | None = None, spacing: Spacing | None = None, t_max: float = 1.0,
          flow_scale: tuple[float, float] = (1.0, 1.0), noise_strength: tuple[float, float] = (0.0, 0.0),
          eta: float = 0.0, churn: float = 1.0, record_every: int | None = None,
          record_steps: list[int] | None = None, top_k: int = 5, noise: torch.Tensor | None = None,
          times: Sequence[float] | torch.Tensor | None = None, device: torch.device | str = "cpu") -> Run:
    """A run of :func:`sample` at step 0: options checked, the time grid made (or ``times`` taken as it is, in
    place of ``steps``, ``spacing`` and ``t_max``), ``x`` drawn from the prior (``sigma(ts[0]) * noise`` when the
    standard normal ``noise`` [n, *shape] is given; ``n`` and ``shape`` are then read from it)."""
    schedule = get_schedule(schedule) if isinstance(schedule, str) else schedule
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}: choose one of {', '.join(SAMPLERS)}")
    if noise is not None:
        if noise.ndim < 2 or not bool(torch.isfinite(noise).all()):
            raise ValueError(f"noise must be a finite [n, *shape] tensor, got shape {list(noise.shape)}")
        n, shape = len(noise), tuple(noise.shape[1:])
    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"n must be a positive integer, got {n!r}")
    shape = tuple(shape or getattr(denoiser, "shape", ()))
    if not shape:
        raise ValueError("shape is needed for a denoiser without a .shape attribute")
    for name, (a, b) in (("flow_scale", flow_scale), ("noise_strength", noise_strength)):
        if not all(math.isfinite(v) for v in (a, b)) or (name == "noise_strength" and min(a, b) < 0):
            raise ValueError(f"{name} must be finite" + (" and >= 0" if name == "noise_strength" else ""))
    if times is None:
        ts = time_grid(schedule, steps, spacing=spacing, t_max=t_max)
    elif spacing is not None:
        raise ValueError("give spacing or times, not both")
    else:
        ts = check_times(times)
        steps = len(ts) - 1
    if record_steps is not None:
        if any(not (isinstance(i, int) and 0 <= i < steps) for i in record_steps):
            raise ValueError(f"record_steps must be step indices in [0, {steps - 1}]")
        record_steps = set(record_steps)
    else:
        record_every = record_every or max(1, steps // 10)
        record_steps = set(range(0, steps, record_every)) | {steps - 1}
    settings = {"n": n, "steps": steps, "sampler": sampler, "schedule": schedule.name, "shape": list(shape),
                "spacing": spacing, "t_max": float(t_max), "flow_scale": list(flow_scale),
                "noise_strength": list(noise_strength), "eta": float(eta), "churn": float(churn), "top_k": top_k,
                "record_steps": sorted(record_steps), "seed": seed if generator is None else "generator",
                "denoiser": type(denoiser).__name__, "ts": [float(t) for t in ts]}
    if noise is not None:  # a run resumes only from the same start
        settings["noise"] = hashlib.sha1(noise.float().cpu().numpy().tobytes()).hexdigest()
    if generator is None:
        generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
    if noise is None:
        noise = torch.randn((n, *shape), generator=generator)
    x = (schedule(float(ts[0])).sigma * noise.float().cpu()).to(device)
    options = {"eta": eta} if sampler == "ddim" else {"churn": churn} if sampler == "euler-maruyama" else {}
    return Run(denoiser, schedule, sampler, ts, Knobs(tuple(flow_scale), tuple(noise_strength), total=steps),
               options, settings, x, generator, _Recorder(denoiser, record_steps, top_k, None))


def advance(run: Run, until: int) -> Run:
    """Run the sampler from ``run.step`` to step ``until`` (the grid ``ts[step:until + 1]``; samplers are
    stateless over any part of the grid, so a run split into parts equals the whole)."""
    begin = time.perf_counter()
    until = min(until, run.steps)
    if run.step < until:
        run.recorder.offset = run.step
        run.x = SAMPLERS[run.sampler](run.recorder, run.schedule, run.x, run.ts[run.step:until + 1],
                                      knobs=replace(run.knobs, offset=run.step), generator=run.generator,
                                      **run.options)
        run.step = until
    run.seconds += time.perf_counter() - begin
    return run


def finish(run: Run) -> SampleResult:
    """The samples of a run at its last step: a grid ending above sigma = 0 (e.g. VE's sigma_min) takes the
    final denoised estimate."""
    begin = time.perf_counter()
    x, c_end = run.x, run.schedule(float(run.ts[-1]))
    if c_end.sigma > 0:
        x = run.denoiser(x, c_end.alpha, c_end.sigma)
    run.seconds += time.perf_counter() - begin
    return SampleResult(x.cpu(), run.ts, run.recorder.trajectory, run.seconds, run.recorder.calls)


def progress_bar(run: Run, enabled: bool):
    """A progress bar over the run's steps (from where it stands), or None."""
    if not enabled:
        return None
    from tqdm.auto import tqdm
    run.recorder.progress = tqdm(total=run.steps, initial=run.step, desc=f"{run.sampler} {run.schedule.name}",
                                 unit="step", leave=False)
    return run.recorder.progress


def sample(denoiser, schedule: Schedule | str = "rectified-flow", *, progress: bool = False, **options) -> SampleResult:
    """Generate ``n`` samples from pure noise with ``denoiser`` under ``schedule``.

    Args:
        denoiser: any callable ``denoiser(x, alpha, sigma) -> x0_hat``.
        schedule: a schedule or its name.
        progress: show a progress bar.
        **options: the options of :func:`start`:
            ``n``, ``steps``: number of samples and of steps (16, 100).
            ``sampler``: ``euler`` (the original notebook's), ``heun``, ``ddim`` (``eta``), ``ddpm``,
            ``euler-maruyama`` (``churn``).
            ``seed`` / ``generator``: the randomness (the library never seeds globally).
            ``noise``: the standard normal draw to start from, [n, *shape] (default: drawn from ``seed``).
            ``shape``: the shape of one sample (default: ``denoiser.shape``).
            ``spacing``: time grid (``uniform``, ``karras``, ``logsnr``, ``split``; default per schedule); ``t_max``.
            ``times``: or the grid itself, decreasing times in [0, 1] (``steps`` is then its length - 1).
            ``flow_scale``, ``noise_strength``: the notebook's two knobs as (start, end) linear schedules.
            ``record_every``: record x_t and x0_hat every this many steps (default: about 10 frames), plus the
            last; ``record_steps``: or at exactly these step indices (0 .. steps - 1).
            ``top_k``: posterior top-k recorded at every step, when the denoiser has a posterior (0: off).
            ``device``: where ``x`` lives.

    Returns:
        :class:`SampleResult` with ``samples`` [n, *shape] in data space.

    A run that must survive interruption: :func:`boneless.checkpoints.sample_resumable`.
    """
    run = start(denoiser, schedule, **options)
    bar = progress_bar(run, progress)
    advance(run, run.steps)
    if bar is not None:
        bar.close()
    return finish(run)
