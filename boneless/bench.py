"""Time the exact denoiser against the per-sample pattern, the broadcast implementation and the matrix-product limit.

In one run, for each size (N examples of dimension D, batches of B queries) and device: the exact denoiser
(:class:`boneless.EmpiricalDenoiser`) at several noise levels, (a) the per-sample pattern of the original
notebook (one sample at a time, an N x D tensor per step, Gaussian log-prob and softmax), (b) the B x N x D
broadcast implementation, (c) the two bare matrix products of the same shape (the limit). Repeats are
interleaved (min and median reported); speeds are ratios measured side by side; a baseline whose memory would
not fit is skipped and reported as such. Also: a real sampling run (time per step over the sigma range),
log-log plots of time per step against N, D and B, and (``--faiss``) the approximate FAISS back-end's speed-up
and error against exact for large N. Data are synthetic images in [-1, 1] with image-like correlation.

Outputs (written atomically to ``--out``): ``bench.json``, ``bench.md`` (tables), ``time_vs_N.png``,
``time_vs_D.png``, ``time_vs_B.png``, ``sampling.png`` (and ``faiss.png``).

``--preset original`` measures the original notebook's workload instead (N = 20,000 images of 128 x 128 x 3,
100 rectified-flow Euler steps; synthetic images and the bundled faces): seconds per sample per batch size
against the two-product limit, smalldiffusion's ideal denoiser and the per-sample pattern, the exact denoiser
per noise level with its error against float64, and construction times (``bench.json``, ``bench.md``).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F

RATIOS = (0.03, 1.0, 30.0)  # sigma / alpha of the exact denoiser's timings: sharp, middle and broad posteriors
FULL = dict(grid=[(20000, (3, 32, 32)), (20000, (3, 128, 128)), (60000, (1, 28, 28))], batches=(1, 64, 1024),
            n_sweep=(2500, 5000, 10000, 20000), d_sweep=((3, 16, 16), (3, 32, 32), (3, 64, 64)),
            b_sweep=(1, 8, 64, 256, 1024), target=(20000, (3, 32, 32), 64), faiss_n=(100000, 300000, 1000000),
            faiss_shape=(1, 16, 16))
QUICK = dict(grid=[(2000, (3, 8, 8)), (3000, (1, 12, 12))], batches=(1, 16, 128),
             n_sweep=(500, 1000, 2000), d_sweep=((1, 8, 8), (3, 8, 8)), b_sweep=(1, 16, 128),
             target=(2000, (3, 8, 8), 16), faiss_n=(5000, 20000), faiss_shape=(1, 8, 8))


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .options import positive_float, positive_int
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run of every part in seconds")
    p.add_argument("--out", default="runs/bench", help="output folder (default runs/bench)")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: the CPU, and CUDA too when available")
    p.add_argument("--repeats", type=positive_int, default=5, help="interleaved repeats per timing (default 5)")
    p.add_argument("--budget", type=positive_float, default=60.0,
                   help="seconds per size: fewer repeats (at least 2) for slow sizes (default 60)")
    p.add_argument("--steps", type=positive_int,
                   help="steps of the sampling run (default 50; --preset original: 100, the notebook's)")
    p.add_argument("--mem-limit", type=positive_float, help="GB a baseline may use (default: half the free memory)")
    p.add_argument("--faiss", action="store_true", help="also time the FAISS back-end for large N (needs faiss-cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic data and queries")
    o = p.add_argument_group("--preset original", "the original notebook's workload: N = 20000 images of 128 x 128 x 3 "
                             "(D = 49152), 100 rectified-flow Euler steps, synthetic images and the bundled faces "
                             "(resized, repeated to N rows), beside smalldiffusion's ideal denoiser when installed "
                             "(about 4 GB per dataset; run one dataset at a time on a small machine)")
    o.add_argument("--preset", choices=("grid", "original"), default="grid",
                   help="grid (default): the sizes, sweeps and sampling run above; original: the original workload")
    o.add_argument("--data", choices=("synthetic", "faces", "both"), default="both",
                   help="original: which data (default both, one after the other)")
    o.add_argument("--rows", type=positive_int, help="original: N (default 20000)")
    o.add_argument("--size", type=positive_int, help="original: image side, D = 3 size^2 (default 128)")
    o.add_argument("--batches", type=positive_int, nargs="+", help="original: batch sizes (default 1 4 16 64)")
    o.add_argument("--timed-steps", type=positive_int,
                   help="original: steps timed, one per equal stratum of the run; the run's time is scaled from "
                        "them (default 10)")
    o.add_argument("--no-dedupe", action="store_true",
                   help="original: hold every row, repeats included (EmpiricalDenoiser(dedupe=False)); by default "
                        "repeated rows (the faces: each about 200 times) are held once with their count")


# ---------------------------------------------------------------- data, baselines, timing

def synthetic_images(n: int, shape: tuple[int, int, int], *, seed: int = 0) -> torch.Tensor:
    """[n, C, H, W] in (-1, 1): smooth random fields (4x upsampled noise), a shared bright centre, per-image
    brightness and fine noise, squashed by tanh: correlated like images, with a non-zero mean image."""
    C, H, W = shape
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, H), torch.linspace(-1, 1, W), indexing="ij")
    mean = 0.6 * torch.exp(-1.5 * (xx ** 2 + yy ** 2)) - 0.2
    out = torch.empty(n, C, H, W)
    for i in range(0, n, 1024):
        m = min(1024, n - i)
        z = torch.randn(m, C, max(H // 4, 1), max(W // 4, 1), generator=g)
        z = F.interpolate(z, size=(H, W), mode="bilinear", align_corners=False)
        z += 0.4 * torch.randn(m, 1, 1, 1, generator=g) + 0.1 * torch.randn(m, C, H, W, generator=g) + mean
        out[i:i + m] = torch.tanh(z)
    return out


def per_sample_pattern(X: torch.Tensor, x: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
    """The original notebook's pattern: one query at a time, an N x D Gaussian log-prob, softmax, weighted sum.
    X [N, D], x [B, D] -> [B, D]."""
    out = []
    for xi in x:
        logp = torch.distributions.Normal(alpha * X, sigma).log_prob(xi[None]).sum(1)  # N x D tensors per step
        out.append(torch.softmax(logp, 0) @ X)
    return torch.stack(out)


def broadcast_pattern(X: torch.Tensor, x: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
    """The common batched implementation: a B x N x D tensor of differences. X [N, D], x [B, D] -> [B, D]."""
    d2 = ((x[:, None, :] - alpha * X[None]) ** 2).sum(-1)
    return torch.softmax(-d2 / (2 * sigma ** 2), 1) @ X


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _trim() -> None:
    """Return freed heap memory to the system (glibc), so that the next call's growth shows in the RSS."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_memory(fn, device: torch.device) -> int:
    """Bytes of memory ``fn()`` needs above what is held before it (CUDA: allocator peak; CPU: resident set
    size sampled every millisecond by a thread, in an untimed call, after freed heap memory was returned)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    if not os.path.exists("/proc/self/statm"):
        return -1
    _trim()
    base, peak, done = _rss(), [0], threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.001)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    try:
        fn()
    finally:
        done.set()
        t.join()
    return max(peak[0], _rss()) - base


def interleaved(fns: dict, repeats: int, device: torch.device) -> dict:
    """Seconds per call of each function, its repeats interleaved with the others': {name: [t, ...]}."""
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def _free_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return 8 << 30


def _coeffs(ratio: float) -> tuple[float, float]:
    """alpha, sigma of the rectified flow at sigma / alpha = ratio."""
    return 1 / (1 + ratio), ratio / (1 + ratio)


# ---------------------------------------------------------------- one size

def bench_case(X: torch.Tensor, B: int, *, device: torch.device, repeats: int, budget: float, mem_limit: float,
               seed: int, ratios=RATIOS, baselines: bool = True) -> dict:
    """Every method on one size (N, D, B); times per call (one denoising step of B queries) in seconds."""
    from .denoisers import EmpiricalDenoiser
    N, D = X.shape[0], X[0].numel()
    Xf = X.reshape(N, D).to(device)
    g = torch.Generator().manual_seed(seed + 1)
    x0 = Xf[torch.randint(0, N, (B,), generator=g).to(device)]
    eps = torch.randn(B, D, generator=g).to(device)
    queries = {r: _coeffs(r)[0] * x0 + _coeffs(r)[1] * eps for r in ratios}
    screens = ("float32", "tf32", "bfloat16") if device.type == "cuda" else ("float32",)
    dens = {s: EmpiricalDenoiser(X, device=device, screen=s) for s in screens}
    p = torch.softmax(torch.randn(B, N, generator=g), 1).to(device)
    fns = {"limit": lambda: (queries[ratios[0]] @ Xf.T, p @ Xf)}
    for s, den in dens.items():
        tag = "exact" if s == "float32" else f"exact[{s}]"
        for r in ratios:
            a, sg = _coeffs(r)
            fns[f"{tag}@{r:g}"] = (lambda den=den, x=queries[r].reshape(B, *X.shape[1:]), a=a, sg=sg: den(x, a, sg))
    skipped = {}
    a1, s1 = _coeffs(1.0)
    n_ps = min(B, 2)  # the per-sample pattern's cost per sample does not depend on B: time a few samples
    if baselines:
        need_ps = 5 * N * D * 4  # alpha X, and the log-prob's N x D temporaries
        need_bc = (2 * B + 1) * N * D * 4  # alpha X, the differences and their squares
        if need_ps > mem_limit:
            skipped["per-sample"] = f"needs ~{need_ps / 2**30:.1f} GB of N x D temporaries > {mem_limit / 2**30:.1f} GB"
        else:
            fns["per-sample"] = lambda: per_sample_pattern(Xf, queries[1.0][:n_ps] if 1.0 in queries
                                                           else a1 * x0[:n_ps] + s1 * eps[:n_ps], a1, s1)
        if need_bc > mem_limit:
            skipped["broadcast"] = f"needs ~{need_bc / 2**30:.1f} GB for B x N x D > {mem_limit / 2**30:.1f} GB"
        else:
            fns["broadcast"] = lambda: broadcast_pattern(Xf, a1 * x0 + s1 * eps, a1, s1)
    t0 = time.perf_counter()
    peaks = {name: peak_memory(fn, device) for name, fn in fns.items()}  # untimed warm-up round, and its cost
    rounds = max(2, min(repeats, int(budget / max(time.perf_counter() - t0, 1e-9))))
    times = interleaved(fns, rounds, device)
    res = {"N": N, "D": D, "B": B, "shape": list(X.shape[1:]), "device": str(device), "repeats": rounds,
           "skipped": skipped, "methods": {}}
    for name, ts in times.items():
        scale = B / n_ps if name == "per-sample" else 1.0  # per-sample: time of B samples, one at a time
        res["methods"][name] = {"min_s": min(ts) * scale, "median_s": statistics.median(ts) * scale,
                                "per_sample_s": min(ts) * scale / B, "peak_bytes": peaks[name]}
    lim = res["methods"]["limit"]["min_s"]
    for name, m in res["methods"].items():
        m["fraction_of_limit"] = lim / m["min_s"]
    ex = [m for k, m in res["methods"].items() if k.startswith("exact@")]
    worst = max(m["min_s"] for m in ex)
    for base in ("per-sample", "broadcast"):
        if base in res["methods"]:
            res[f"speedup_vs_{base}"] = res["methods"][base]["min_s"] / worst  # worst noise level of exact
    return res


def sampling_run(X: torch.Tensor, B: int, *, device: torch.device, steps: int, seed: int) -> dict:
    """A real rectified-flow Euler run of B samples: seconds of every denoiser call against its t and
    sigma / alpha, with the two-matrix-product limit timed between calls (the same shape)."""
    from .denoisers import EmpiricalDenoiser
    from .samplers import sample
    den = EmpiricalDenoiser(X, device=device)
    N, D = X.shape[0], X[0].numel()
    Xf = X.reshape(N, D).to(device)
    g = torch.Generator().manual_seed(seed + 2)
    q, p = torch.randn(B, D, generator=g).to(device), torch.softmax(torch.randn(B, N, generator=g), 1).to(device)
    rec = []

    class Timed:
        shape = den.shape

        def __call__(self, x, alpha, sigma):
            _sync(device)
            t0 = time.perf_counter()
            out = den(x, alpha, sigma)
            _sync(device)
            t1 = time.perf_counter()
            q @ Xf.T, p @ Xf
            _sync(device)
            rec.append((float(alpha), float(sigma), t1 - t0, time.perf_counter() - t1))
            return out

    sample(Timed(), "rectified-flow", n=B, steps=steps, seed=seed, top_k=0, progress=False, device=device,
           shape=tuple(X.shape[1:]))
    total, lim = sum(r[2] for r in rec), sum(r[3] for r in rec)
    return {"N": N, "D": D, "B": B, "steps": steps, "device": str(device), "total_s": total, "limit_total_s": lim,
            "fraction_of_limit": lim / total,
            "calls": [{"alpha": a, "sigma": s, "ratio": (s / a if a else math.inf), "seconds": t, "limit_s": tl}
                      for a, s, t, tl in rec]}


FAISS_RATIOS = (0.03, 0.1, 0.4, 1.3, 3.0, 10.0, 32.0, 199.0)  # sigma / alpha of the FAISS back-end's table


def bench_faiss(ns, shape, *, B: int, device: torch.device, repeats: int, seed: int, ratios=FAISS_RATIOS):
    """The FAISS back-end against the exact denoiser per noise level, for large N: with its default rule (a
    query whose certified error exceeds the tolerance goes to the exact bank) and without it (``tolerance=None``:
    the neighbours plus the sampled tail for every query). Build time; time per call and speed-up of both; the
    share of queries the rule serves from their neighbours; relative L2 error against the exact denoiser."""
    from .denoisers import EmpiricalDenoiser
    out = []
    for n in ns:
        X = synthetic_images(n, shape, seed=seed)
        exact = EmpiricalDenoiser(X, device=device)
        t0 = time.perf_counter()
        approx = EmpiricalDenoiser(X, device=device, bank="faiss", seed=seed)
        build = time.perf_counter() - t0
        fb, tol = approx.bank, approx.bank.tolerance
        g = torch.Generator().manual_seed(seed + 3)
        x0, eps = X[torch.randint(0, n, (B,), generator=g)], torch.randn(B, *shape, generator=g)
        for r in ratios:
            a, s = _coeffs(r)
            x = (a * x0 + s * eps).to(device)
            ys = {}

            def call(name, den, rule=True):
                fb.tolerance = tol if rule else None
                ys[name] = den(x, a, s)
                fb.tolerance = tol

            times = {k: min(v) for k, v in interleaved({
                "exact": lambda: call("exact", exact), "faiss": lambda: call("faiss", approx),
                "no_rule": lambda: call("no_rule", approx, rule=False)}, repeats, device).items()}
            err = {k: _rel(ys[k].cpu(), ys["exact"].cpu()) for k in ("faiss", "no_rule")}
            est = fb.estimate(x.flatten(1), torch.full((B,), a, dtype=torch.float64),
                              torch.full((B,), s, dtype=torch.float64))
            out.append({"N": n, "D": X[0].numel(), "B": B, "ratio": r, "build_s": build, "tolerance": tol,
                        "exact_s": times["exact"], "faiss_s": times["faiss"],
                        "speedup": times["exact"] / times["faiss"],
                        "served": float((est.x0_bound <= tol).double().mean()),
                        "rel_error_median": float(err["faiss"].median()), "rel_error_max": float(err["faiss"].max()),
                        "no_rule_s": times["no_rule"], "no_rule_speedup": times["exact"] / times["no_rule"],
                        "no_rule_error_median": float(err["no_rule"].median()),
                        "no_rule_error_max": float(err["no_rule"].max()),
                        "tail_mass_median": float(est.tail_mass.median()),
                        "x0_bound_median": float(est.x0_bound.median())})
        del exact, approx, X
    return out


# ---------------------------------------------------------------- the original workload (--preset original)

# The original notebook: 20,000 CelebA faces at 128 x 128 x 3, 100 rectified-flow Euler steps, one sample at a
# time, 8.5 s per sample on its GPU.
ORIGINAL = dict(rows=20000, size=128, batches=(1, 4, 16, 64), steps=100, timed_steps=10,
                sweep=(0.4, 1.3, 3.0, 10.0, 19.0, 32.0, 199.0), sweep_batch=16, notebook_s=8.5)


def smalldiffusion_ideal():
    """smalldiffusion's ``IdealDenoiser`` class and version, or ``None`` when smalldiffusion is not installed.
    Its package imports its training code (accelerate, torchvision) on import; the ideal denoiser's own module
    needs only torch and einops, so when the package does not import, that module is loaded alone."""
    import importlib.metadata
    import importlib.util
    try:
        version = importlib.metadata.version("smalldiffusion")
    except importlib.metadata.PackageNotFoundError:
        return None
    try:
        from smalldiffusion import IdealDenoiser
        return IdealDenoiser, version
    except ImportError:
        pass
    spec = importlib.util.find_spec("smalldiffusion")
    path = Path(next(iter(spec.submodule_search_locations))) / "model.py"
    mspec = importlib.util.spec_from_file_location("_smalldiffusion_model", path)
    module = importlib.util.module_from_spec(mspec)
    try:
        mspec.loader.exec_module(module)
    except ImportError:
        return None
    return getattr(module, "IdealDenoiser", None), version


def smalldiffusion_x0(ideal, x: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
    """``x0_hat`` from smalldiffusion's ideal denoiser, which takes the variance-exploding ``x / alpha`` and
    ``sigma / alpha`` and returns the noise: ``x0_hat = x_ve - (sigma / alpha) eps``."""
    x_ve, s_ve = x / alpha, torch.tensor(sigma / alpha)
    with torch.no_grad():
        return x_ve - s_ve * ideal(x_ve, s_ve)


def original_faces(n: int, size: int) -> torch.Tensor:
    """The bundled faces (scikit-image's LFW subset, grey) resized to ``size`` x ``size``, copied into three
    channels and repeated to ``n`` rows: [n, 3, size, size] (every face appears about n / 100 times)."""
    from .data import load_dataset
    faces = load_dataset("faces", size=size).expand(-1, 3, -1, -1)
    return faces.repeat(-(-n // len(faces)), 1, 1, 1)[:n]


def _timed_grid(steps: int, timed: int) -> list[float]:
    """The times of ``timed`` of a ``steps``-step rectified-flow Euler grid (t_i = 1 - i / steps): the middle
    step of each of ``timed`` equal strata, so that their mean time estimates the whole run's."""
    stride = steps / timed
    return [1 - int(stride * (j + 0.5)) / steps for j in range(timed)]


def bench_original(X: torch.Tensor, *, batches, steps: int, timed_steps: int, sweep, sweep_batch: int,
                   repeats: int, seed: int, ideal=None, per_sample_rows: int | None = None, progress=None,
                   dedupe: bool = True) -> dict:
    """The original workload on the data ``X`` [N, *shape] (CPU): for each batch size B, ``timed_steps`` steps of
    a ``steps``-step rectified-flow Euler run (one per equal stratum of the grid, on forward-noised queries; their
    time times ``steps / timed_steps`` is the run's) for the exact denoiser, the two plain float32 products of
    the same shape (``x @ X.T`` and ``p @ X``: the limit) and smalldiffusion's ideal denoiser (``ideal``: its
    class, or None), interleaved; peak memory from an untimed call; at B = ``sweep_batch`` the exact denoiser at
    each sigma / alpha of ``sweep`` against the limit, with its error against float64; the per-sample pattern on
    ``per_sample_rows`` rows, scaled to N (its cost is linear in N); construction times. ``dedupe``: the exact
    denoiser's option (repeated rows held once). ``progress(res)`` is called with the partial result after each
    part."""
    progress = progress or (lambda res: None)
    from .denoisers import EmpiricalDenoiser, exact_reference
    N, D = len(X), X[0].numel()
    Xf = X.reshape(N, D)
    g = torch.Generator().manual_seed(seed)
    cpu = torch.device("cpu")
    res = {"N": N, "D": D, "shape": list(X.shape[1:]), "steps": steps, "timed_steps": timed_steps,
           "repeats": repeats, "threads": torch.get_num_threads()}
    print(f"bench: construction, N {N}, D {D}", file=sys.stderr, flush=True)
    build = {"boneless": lambda: EmpiricalDenoiser(X, dedupe=dedupe)}
    if ideal is not None:
        build["smalldiffusion"] = lambda: ideal(X)
    res["construction_s"] = {k: min(v) for k, v in interleaved(build, repeats, cpu).items()}
    den = EmpiricalDenoiser(X, dedupe=dedupe)
    res["rows_held"] = len(den.bank)  # distinct rows when repeats are held once
    sd = ideal(X) if ideal is not None else None

    def methods(x, a, s, out):
        p = torch.softmax(torch.randn(len(x), N, generator=g), 1)
        fns = {"limit": lambda: (x @ Xf.T, p @ Xf),
               "exact": lambda: out.__setitem__("exact", den(x.view(len(x), *X.shape[1:]), a, s).flatten(1))}
        if sd is not None:
            fns["smalldiffusion"] = lambda: out.__setitem__(
                "smalldiffusion", smalldiffusion_x0(sd, x.view(len(x), *X.shape[1:]), a, s).flatten(1))
        return fns

    def queries(b, ratio):
        a, s = _coeffs(ratio)
        x0 = Xf[torch.randint(0, N, (b,), generator=g)]
        return a * x0 + s * torch.randn(b, D, generator=g), a, s

    res["batches"] = []
    for B in batches:
        print(f"bench: B {B}", file=sys.stderr, flush=True)
        row = {"B": B, "steps": []}
        for t in _timed_grid(steps, timed_steps):
            x, a, s = queries(B, t / (1 - t))
            out = {}
            fns = methods(x, a, s, out)
            if not row["steps"]:  # peak memory in an untimed call at the first (broadest) step
                row["peak_bytes"] = {k: peak_memory(fn, cpu) for k, fn in fns.items()}
            times = interleaved(fns, repeats, cpu)
            step = {"t": t, "ratio": t / (1 - t), **{k: min(v) for k, v in times.items()}}
            if "smalldiffusion" in out:
                step["smalldiffusion_vs_exact"] = float(_rel(out["smalldiffusion"], out["exact"]).max())
            row["steps"].append(step)
        scale = steps / timed_steps / B
        for k in ("limit", "exact", "smalldiffusion"):
            if k in row["steps"][0]:
                row[f"{k}_per_sample_s"] = scale * sum(st[k] for st in row["steps"])
        row["fraction_of_limit"] = row["limit_per_sample_s"] / row["exact_per_sample_s"]
        res["batches"].append(row)
        print(f"bench: B {B}: exact {row['exact_per_sample_s']:.3g} s per sample for {steps} steps, "
              f"{row['fraction_of_limit']:.2f} of the limit", file=sys.stderr, flush=True)
        progress(res)
    print(f"bench: sweep over sigma / alpha, B {sweep_batch}", file=sys.stderr, flush=True)
    res["sweep"] = []
    progress(res)
    for ratio in sweep:
        x, a, s = queries(sweep_batch, ratio)
        out = {}
        fns = methods(x, a, s, out)
        fns["exact"]()  # warm-up
        times = interleaved(fns, repeats, cpu)
        q = min(4, sweep_batch)
        ref = exact_reference(Xf, x[:q], a, s)
        entry = {"ratio": ratio, **{k: min(v) for k, v in times.items()},
                 "exact_error": float(_rel(out["exact"][:q], ref).max())}
        entry["fraction_of_limit"] = entry["limit"] / entry["exact"]
        if "smalldiffusion" in out:
            entry["smalldiffusion_error"] = float(_rel(out["smalldiffusion"][:q], ref).max())
        res["sweep"].append(entry)
        progress(res)
    n_ps = min(N, per_sample_rows or max(100, (1 << 30) // (20 * D)))  # its N x D temporaries within ~1 GB
    x, a, s = queries(1, 1.0)
    t_ps = min(interleaved({"ps": lambda: per_sample_pattern(Xf[:n_ps], x, a, s)}, repeats, cpu)["ps"])
    res["per_sample"] = {"rows_timed": n_ps, "call_s": t_ps, "per_sample_s": steps * t_ps * N / n_ps}
    progress(res)
    return res


def _rel(y: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    y, ref = y.double().flatten(1), ref.double().flatten(1)
    return (y - ref).norm(dim=1) / ref.norm(dim=1).clamp(min=1e-300)


def markdown_original(report: dict) -> str:
    """The tables of ``--preset original``."""
    lines = [f"# boneless bench --preset original\n", f"`{report['command']}`\n", "Machine: " + ", ".join(
        f"{k} {v}" for k, v in report["machine"].items()) + "\n",
        f"Seconds per sample for {report['steps']} rectified-flow Euler steps: {report['timed_steps']} of the steps "
        "timed (the middle step of each equal stratum of the grid, on forward-noised queries; minimum over "
        f"interleaved repeats), times {report['steps'] / report['timed_steps']:g}, over B. `limit`: the two plain "
        "float32 products `x @ X.T` and `p @ X` of the same shapes, timed in the same rounds; `fraction` = limit / "
        f"exact. The original notebook: {report['notebook_s']} s per sample on its GPU.\n"]
    for d in report["datasets"]:
        if not d.get("batches"):
            continue
        sd = "smalldiffusion_per_sample_s" in d["batches"][0]
        lines += [f"\n## {d['data']}: N {d['N']}, D {d['D']} ({'x'.join(map(str, d['shape']))}), "
                  f"{d['threads']} threads\n",
                  "Construction: " + ", ".join(f"{k} {_fmt_s(v)}" for k, v in d["construction_s"].items()) + ". " +
                  (f"Rows held by the exact denoiser: {d['rows_held']} (repeats held once, with their count).\n"
                   if d.get("rows_held", d["N"]) < d["N"] else "Every row held.\n"),
                  "| B | exact s / sample | fraction of limit | limit s / sample | " +
                  ("smalldiffusion s / sample (/ exact) | " if sd else "") +
                  "per-sample pattern s / sample | peak memory: exact, limit" + (", smalldiffusion" if sd else "") +
                  " |", "|---" * (6 + sd) + "|"]
        ps = d.get("per_sample", {}).get("per_sample_s", math.nan)  # nan: not reached (a partial report)
        for r in d["batches"]:
            pk = r["peak_bytes"]
            mem = ", ".join(f"{pk[k] / 2**20:.0f} MB" for k in ("exact", "limit", "smalldiffusion") if k in pk)
            lines.append(f"| {r['B']} | {r['exact_per_sample_s']:.3g} | {r['fraction_of_limit']:.2f} | "
                         f"{r['limit_per_sample_s']:.3g} | " +
                         (f"{r['smalldiffusion_per_sample_s']:.3g} ({r['smalldiffusion_per_sample_s'] / r['exact_per_sample_s']:.2f}) | "
                          if sd else "") + f"{ps:.4g} | {mem} |")
        if "per_sample" in d:
            lines.append(f"\nPer-sample pattern: one call on {d['per_sample']['rows_timed']} of the {d['N']} rows "
                         f"took {d['per_sample']['call_s']:.3g} s, scaled by N / rows (its cost is linear in N).")
        lines += ["\nFraction of the limit per timed step (t; sigma / alpha):\n",
                  "| B | " + " | ".join(f"{st['t']:.2f}; {st['ratio']:.3g}" for st in d["batches"][0]["steps"]) + " |",
                  "|---" * (1 + len(d["batches"][0]["steps"])) + "|"]
        for r in d["batches"]:
            lines.append(f"| {r['B']} | " + " | ".join(f"{st['limit'] / st['exact']:.2f}" for st in r["steps"]) + " |")
        lines += [f"\nPer noise level, B = {report['sweep_batch']} (error: max relative L2 against float64 over 4 "
                  "queries):\n",
                  "| sigma / alpha | exact | limit | fraction of limit | exact error |" +
                  (" smalldiffusion | its error |" if sd else ""), "|---" * (5 + 2 * sd) + "|"]
        for e in d.get("sweep", []):
            lines.append(f"| {e['ratio']:g} | {_fmt_s(e['exact'])} | {_fmt_s(e['limit'])} | "
                         f"{e['fraction_of_limit']:.2f} | {e['exact_error']:.1e} |" +
                         (f" {_fmt_s(e['smalldiffusion'])} | {e['smalldiffusion_error']:.1e} |" if sd else ""))
    if report.get("note"):
        lines.append(f"\n{report['note']}")
    return "\n".join(lines) + "\n"


def run_original(args, report: dict, save) -> None:
    """``--preset original``: the workload on synthetic images and/or the bundled faces at the original size
    (or ``--rows`` / ``--size``), into ``report``; ``save(report)`` after each dataset."""
    n, size = args.rows or ORIGINAL["rows"], args.size or ORIGINAL["size"]
    batches = tuple(args.batches or ORIGINAL["batches"])
    steps = args.steps or ORIGINAL["steps"]
    timed = min(args.timed_steps or ORIGINAL["timed_steps"], steps)
    found = smalldiffusion_ideal()
    ideal = found[0] if found else None
    report.update({"steps": steps, "timed_steps": timed, "sweep_batch": min(ORIGINAL["sweep_batch"], max(batches)),
                   "notebook_s": ORIGINAL["notebook_s"], "datasets": [],
                   "smalldiffusion": found[1] if found else None})
    if not found:
        report["note"] = "smalldiffusion is not installed: its columns are left out (pip install smalldiffusion)."
    for name in (("synthetic", "faces") if args.data == "both" else (args.data,)):
        print(f"bench: {name} data, N {n}, {size}x{size}x3", file=sys.stderr, flush=True)
        X = synthetic_images(n, (3, size, size), seed=args.seed) if name == "synthetic" else original_faces(n, size)
        report["datasets"].append({"data": name})

        def progress(res):
            report["datasets"][-1] = {"data": name, **res}
            save(report)

        bench_original(X, batches=batches, steps=steps, timed_steps=timed, sweep=ORIGINAL["sweep"],
                       sweep_batch=report["sweep_batch"], repeats=args.repeats, seed=args.seed, ideal=ideal,
                       progress=progress, dedupe=not args.no_dedupe)
        del X


# ---------------------------------------------------------------- report

def _fmt_s(t: float) -> str:
    return f"{t * 1e3:.3g} ms" if t < 1 else f"{t:.3g} s"


def markdown(report: dict) -> str:
    lines = [f"# boneless bench\n", f"`{report['command']}`\n", "Machine: " + ", ".join(
        f"{k} {v}" for k, v in report["machine"].items()) + "\n",
        "Times are per denoising step of B queries (min over interleaved repeats); `fraction` is the two-matrix-"
        "product limit's time over the method's; speed-ups are against the exact denoiser's slowest noise level.\n"]
    for dev in sorted({c["device"] for c in report["grid"]}):
        lines += [f"\n## {dev}: exact denoiser vs baselines\n",
                  "| N | D | B | method | time / step | time / sample | fraction of limit | peak memory |",
                  "|---|---|---|---|---|---|---|---|"]
        for c in (c for c in report["grid"] if c["device"] == dev):
            for name, m in c["methods"].items():
                mem = f"{m['peak_bytes'] / 2**20:.0f} MB" if m["peak_bytes"] >= 0 else "n/a"
                lines.append(f"| {c['N']} | {c['D']} | {c['B']} | {name} | {_fmt_s(m['min_s'])} | "
                             f"{_fmt_s(m['per_sample_s'])} | {m['fraction_of_limit']:.2f} | {mem} |")
            for base, why in c["skipped"].items():
                lines.append(f"| {c['N']} | {c['D']} | {c['B']} | {base} | skipped: {why} | | | |")
            sp = [f"{k[len('speedup_vs_'):]}: {c[k]:.0f}x" for k in c if k.startswith("speedup_vs_")]
            if sp:
                lines.append(f"| {c['N']} | {c['D']} | {c['B']} | **exact speed-up** | {', '.join(sp)} | | | |")
    for run in report["sampling"]:
        lines += [f"\n## Sampling run ({run['device']}): N {run['N']}, D {run['D']}, B {run['B']}, "
                  f"{run['steps']} rectified-flow Euler steps\n",
                  f"Total {_fmt_s(run['total_s'])}, limit {_fmt_s(run['limit_total_s'])}: "
                  f"**fraction of the limit over the run {run['fraction_of_limit']:.2f}**.\n",
                  "| sigma / alpha | time | fraction of limit |", "|---|---|---|"]
        for c in run["calls"]:
            lines.append(f"| {c['ratio']:.3g} | {_fmt_s(c['seconds'])} | {c['limit_s'] / c['seconds']:.2f} |")
    if report.get("faiss"):
        tol = report["faiss"][0]["tolerance"]
        lines += ["\n## FAISS back-end (approximate) vs exact\n",
                  f"`faiss`: the default rule (a query whose certified relative error exceeds {tol:g} goes to the "
                  "exact bank); `served`: the share of queries it answers from their neighbours. `no rule`: "
                  "`tolerance=None`, neighbours plus the sampled tail for every query, no bound. Errors: relative "
                  "L2 against the exact denoiser, median and max over the batch.\n",
                  "| N | D | B | sigma / alpha | exact | faiss | speed-up | served | error median | max | "
                  "no rule | speed-up | error median | max | tail mass (est.) |", "|---" * 15 + "|"]
        for f in report["faiss"]:
            lines.append(f"| {f['N']} | {f['D']} | {f['B']} | {f['ratio']:g} | {_fmt_s(f['exact_s'])} | "
                         f"{_fmt_s(f['faiss_s'])} | {f['speedup']:.1f}x | {f['served']:.0%} | "
                         f"{f['rel_error_median']:.1e} | {f['rel_error_max']:.1e} | {_fmt_s(f['no_rule_s'])} | "
                         f"{f['no_rule_speedup']:.1f}x | {f['no_rule_error_median']:.1e} | "
                         f"{f['no_rule_error_max']:.1e} | {f['tail_mass_median']:.1e} |")
    return "\n".join(lines) + "\n"


def plots(report: dict, out: Path) -> list[str]:
    """Log-log time per step against N, D and B; time per step over the sampling run; FAISS speed-up."""
    from .plots import pyplot, save_figure
    plt = pyplot()
    written = []
    for axis, key in (("N", "sweep_N"), ("D", "sweep_D"), ("B", "sweep_B")):
        cases = report[key]
        if not cases:
            continue
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for dev in sorted({c["device"] for c in cases}):
            cs = sorted((c for c in cases if c["device"] == dev), key=lambda c: c[axis])
            for name in dict.fromkeys(k for c in cs for k in c["methods"]):
                pts = [(c[axis], c["methods"][name]["min_s"]) for c in cs if name in c["methods"]]
                ax.plot(*zip(*pts), marker="o", label=f"{name} ({dev})")
        fixed = {a: cases[0][a] for a in "NDB" if a != axis}
        ax.set(xscale="log", yscale="log", xlabel=axis, ylabel="seconds per step (B queries)",
               title=f"time per step vs {axis} ({', '.join(f'{k}={v}' for k, v in fixed.items())})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        save_figure(fig, out / f"time_vs_{axis}.png")
        written.append(f"time_vs_{axis}.png")
    if report["sampling"]:
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for run in report["sampling"]:
            calls = [c for c in run["calls"] if c["alpha"] > 0 and c["sigma"] > 0]
            r = [c["ratio"] for c in calls]
            ax.plot(r, [c["seconds"] for c in calls], marker=".", label=f"exact ({run['device']}, B={run['B']})")
            ax.plot(r, [c["limit_s"] for c in calls], ls="--", label=f"two-product limit ({run['device']})")
        ax.set(xscale="log", yscale="log", xlabel="sigma / alpha", ylabel="seconds per step",
               title="cost over a sampling run (rectified flow, Euler)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        save_figure(fig, out / "sampling.png")
        written.append("sampling.png")
    if report.get("faiss"):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for n in sorted({f["N"] for f in report["faiss"]}):
            fs = [f for f in report["faiss"] if f["N"] == n]
            r = [f["ratio"] for f in fs]
            line, = axes[0].plot(r, [f["speedup"] for f in fs], marker="o", label=f"N {n}, rule")
            axes[0].plot(r, [f["no_rule_speedup"] for f in fs], marker="x", ls="--", color=line.get_color(),
                         label=f"N {n}, no rule")
            axes[1].plot(r, [max(f["rel_error_median"], 1e-17) for f in fs], marker="o", color=line.get_color(),
                         label=f"N {n}, rule")
            axes[1].plot(r, [max(f["no_rule_error_median"], 1e-17) for f in fs], marker="x", ls="--",
                         color=line.get_color(), label=f"N {n}, no rule")
        axes[1].axhline(report["faiss"][0]["tolerance"], color="k", lw=0.8, ls=":", label="tolerance")
        axes[0].set(xscale="log", yscale="log", xlabel="sigma / alpha", ylabel="speed-up over exact",
                    title="FAISS back-end: speed")
        axes[1].set(xscale="log", yscale="log", xlabel="sigma / alpha", ylabel="median relative L2 error vs exact",
                    title="FAISS back-end: error (floored at 1e-17)")
        for ax in axes:
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        save_figure(fig, out / "faiss.png")
        written.append("faiss.png")
    return written


# ---------------------------------------------------------------- command

def run(args) -> int:
    from .outputs import atomic_path, check_output_dir, write_json
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but CUDA is not available")
    devices = [torch.device("cpu")] if args.device == "cpu" else \
        ([torch.device("cuda")] if args.device == "cuda" else
         [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else []))
    if args.faiss:
        from .bank import _faiss
        _faiss()
    cfg = QUICK if args.quick else FULL
    mem_limit = (args.mem_limit * 2**30) if args.mem_limit else _free_bytes() / 2
    original = args.preset == "original"
    if not original and any(v is not None for v in (args.rows, args.size, args.batches, args.timed_steps)):
        raise ValueError("--rows, --size, --batches and --timed-steps apply to --preset original")
    if original and (args.faiss or args.device == "cuda"):
        raise ValueError("--preset original runs on the CPU, without --faiss")
    out = check_output_dir(args.out, files=("bench.json", "bench.md"))
    report = {"command": "boneless bench " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["bench"] else sys.argv[1:]),
              "machine": {"python": platform.python_version(), "torch": torch.__version__,
                          "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
                          "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"}}
    if original:
        def save(report):
            write_json(report, out / "bench.json")
            with atomic_path(out / "bench.md") as tmp:
                Path(tmp).write_text(markdown_original(report))

        run_original(args, report, save)
        for d in report["datasets"]:
            fr = ", ".join(f"B {r['B']}: {r['exact_per_sample_s']:.3g} s ({r['fraction_of_limit']:.2f})"
                           for r in d["batches"])
            print(f"{d['data']}: seconds per sample for {report['steps']} steps (fraction of the limit): {fr}")
        print(f"wrote {out}/bench.json, bench.md")
        return 0
    report.update({"ratios": list(RATIOS), "grid": [], "sweep_N": [], "sweep_D": [], "sweep_B": [], "sampling": []})
    data: dict = {}

    def images(n, shape):
        key = (n, shape)
        if key not in data:
            data.clear()  # one dataset in memory at a time
            data[key] = synthetic_images(n, shape, seed=args.seed)
        return data[key]

    done: dict = {}

    def case(n, shape, b, dev):
        key = (n, shape, b, str(dev))
        if key not in done:
            print(f"bench: N {n}, shape {shape}, B {b}, {dev}", file=sys.stderr, flush=True)
            done[key] = bench_case(images(n, shape), b, device=dev, repeats=args.repeats, budget=args.budget,
                                   mem_limit=mem_limit, seed=args.seed)
        return done[key]

    tn, tshape, tb = cfg["target"]
    for dev in devices:
        for n, shape in cfg["grid"]:
            for b in cfg["batches"]:
                report["grid"].append(case(n, shape, b, dev))
        report["sweep_B"] += [case(tn, tshape, b, dev) for b in cfg["b_sweep"]]
        report["sweep_N"] += [case(n, tshape, tb, dev) for n in cfg["n_sweep"]]
        report["sweep_D"] += [case(tn, shape, tb, dev) for shape in cfg["d_sweep"]]
        print(f"bench: sampling run, {dev}", file=sys.stderr, flush=True)
        report["sampling"].append(sampling_run(images(tn, tshape), tb, device=dev, steps=args.steps or 50,
                                               seed=args.seed))
    data.clear()
    if args.faiss:
        print("bench: FAISS back-end", file=sys.stderr, flush=True)
        report["faiss"] = bench_faiss(cfg["faiss_n"], cfg["faiss_shape"], B=64 if not args.quick else 16,
                                      device=torch.device("cpu"), repeats=min(args.repeats, 3), seed=args.seed)
    write_json(report, out / "bench.json")
    with atomic_path(out / "bench.md") as tmp:
        Path(tmp).write_text(markdown(report))
    figures = plots(report, out)
    target = next(c for c in report["grid"] + report["sweep_B"] if (c["N"], tuple(c["shape"]), c["B"]) ==
                  (tn, tshape, tb) and c["device"] == "cpu") if any(d.type == "cpu" for d in devices) else None
    if target:
        fr = {k: round(m["fraction_of_limit"], 2) for k, m in target["methods"].items() if k.startswith("exact")}
        sp = target.get("speedup_vs_per-sample")
        print(f"target N {tn}, D {target['D']}, B {tb}, {torch.get_num_threads()} threads: fraction of the limit "
              f"{fr}; over a sampling run {report['sampling'][0]['fraction_of_limit']:.2f}"
              + (f"; {sp:.0f}x the per-sample pattern" if sp else ""))
    print(f"wrote {out}/bench.json, bench.md, {', '.join(figures)}")
    return 0
