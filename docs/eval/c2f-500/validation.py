"""`coarse-to-fine`'s samples under other samplers, other members below the switch, or a pool augmented with its
horizontal flips, scored against VALIDATION images (Fashion-MNIST training images 10000-10499, which the pool of
the first 10000 does not contain), never test images. docs/EVAL.md, "Goal 2 at 500 samples", has the results.

    python validation.py samplers N [VARIANT,...]    # N samples from seed 1 per sampler variant (default: all)
    python validation.py members N MEMBER[@VARIANT],...  # one blend member alone below the switch (default euler-12)
    python validation.py flips N                       # the pool and its flips (20000 rows; Euler, 12 steps)
    python validation.py alone N NAME[@VARIANT],...    # registry denoisers on their own (default: euler-12)
    python validation.py real N                        # only the real row: 5 sets of N further training images
    python validation.py switch N T[@VARIANT],...      # local-gaussian below a switch at time T, exact above
                                                       # (default heun-split)
"tv" is the total variation between the classifier's class frequencies in the samples and in the validation
images; the class counts of the samples follow each line.
"""
import sys
import time

import torch

import boneless
from boneless.classifier import fashion_classifier
from boneless.composites import BLEND_MEMBERS, BLEND_SIGMAS, CoarseToFineDenoiser
from boneless.data import load_dataset
from boneless.metrics import PCAFeatures, frechet_distance, nearest_distance_stats
from boneless.schedules import get_schedule, time_grid


def heun_split(below: int) -> dict:
    """Heun on a grid of 6 even steps in t down to t = 0.6, where the exact flow's class frequencies are settled
    (docs/eval/class-balance), and ``below`` steps of the Karras grid below (6: 12 steps, 23 denoiser calls)."""
    return dict(sampler="heun", times=torch.cat([torch.linspace(1, 0.6, 7, dtype=torch.float64), time_grid(
        get_schedule("rectified-flow"), below, spacing="karras", t_max=0.6)[1:]]).tolist())


SAMPLERS = {
    "euler-12": dict(sampler="euler", steps=12),
    "euler-24": dict(sampler="euler", steps=24),
    "euler-48": dict(sampler="euler", steps=48),
    "euler-12-karras": dict(sampler="euler", steps=12, spacing="karras"),
    "euler-24-karras": dict(sampler="euler", steps=24, spacing="karras"),
    "euler-48-karras": dict(sampler="euler", steps=48, spacing="karras"),
    "euler-12-logsnr": dict(sampler="euler", steps=12, spacing="logsnr"),
    "heun-12": dict(sampler="heun", steps=12),
    "heun-24": dict(sampler="heun", steps=24),
    "em-12": dict(sampler="euler-maruyama", steps=12, churn=1.0),
    "em-24": dict(sampler="euler-maruyama", steps=24, churn=1.0),
    "em-24-c0.3": dict(sampler="euler-maruyama", steps=24, churn=0.3),
    "ddpm-12": dict(sampler="ddpm", steps=12),
    "heun-split": heun_split(6),
    "heun-split-10": heun_split(10),
}


def split_name(name: str, default: str = "euler-12") -> tuple[str, str]:
    """``NAME[@VARIANT]`` as (name, variant), the variant ``default`` if no ``@`` is given."""
    base, at, variant = name.partition("@")
    return base, variant if at else default


def is_time(text: str) -> bool:
    """Whether ``text`` is a time strictly between 0 and 1 (a switch of the ``switch`` mode)."""
    try:
        return 0 < float(text) < 1
    except ValueError:
        return False


mode, n = sys.argv[1], int(sys.argv[2])
CHOICES = {"samplers": SAMPLERS, "members": BLEND_MEMBERS, "flips": (), "alone": boneless.DENOISERS, "real": (),
           "switch": ()}
if mode not in CHOICES:
    sys.exit(f"unknown mode {mode!r}: {', '.join(CHOICES)}")
names = sys.argv[3].split(",") if len(sys.argv) > 3 else list(SAMPLERS) if mode == "samplers" else []
known = is_time if mode == "switch" else lambda first: first in CHOICES[mode]
unknown = [m for m in names if not known(split_name(m)[0])
           or (mode in ("alone", "members", "switch") and split_name(m)[1] not in SAMPLERS)]
if unknown or (mode not in ("samplers", "flips", "real") and not names):
    sys.exit(f"unknown or missing names {unknown}: choose from {', '.join(CHOICES[mode])}")
X = load_dataset("fashion-mnist", limit=10000 + 500 + 5 * n)
pool, V, ref = X[:10000], X[10000:10500], X[10500:]
clf = fashion_classifier(progress=False)
pca = PCAFeatures(pool)
features = {"pca": pca(V), "clf": clf.features(V)}


def classes(P):
    """Class counts of images whose classifier probabilities are ``P`` [n, 10]."""
    return torch.bincount(P.argmax(1), minlength=10)


classes_V = classes(clf.probabilities(V))


def quality(S, rows=pool):
    """Scores of images S against the validation images; nearest distances to ``rows`` (a copy of any is a copy)."""
    q = nearest_distance_stats(S, rows, heldout=V)
    P = clf.probabilities(S)
    return {"ratio": q["median_ratio"], "ks": q["ks"], "copy": q["copy_rate"],
            "fd_pca": frechet_distance(pca(S), features["pca"]),
            "fd_clf": frechet_distance(clf.features(S), features["clf"]),
            "conf": float(P.max(1).values.mean()),
            "tv": 0.5 * float((classes(P) / len(S) - classes_V / len(V)).abs().sum())}


def report(name, S, t0, rows=pool):
    print(name, f"{time.perf_counter() - t0:.0f} s", {k: round(v, 3) for k, v in quality(S, rows).items()},
          classes(clf.probabilities(S)).tolist(), flush=True)


if mode in ("samplers", "real"):
    real = [quality(ref[i * n:(i + 1) * n]) for i in range(5)]
    print("real (mean, sd over 5 sets)", {k: (round(float(v.mean()), 3), round(float(v.std()), 3)) for k, v in
                                          ((k, torch.tensor([r[k] for r in real])) for k in real[0])}, flush=True)
if mode == "samplers":
    den = CoarseToFineDenoiser(pool)
    for name in names:
        t0 = time.perf_counter()
        report(name, boneless.sample(den, "rectified-flow", n=n, seed=1, **SAMPLERS[name]).samples, t0)
elif mode in ("members", "switch"):
    for name in names:
        t0 = time.perf_counter()
        w = torch.zeros(len(BLEND_SIGMAS), len(BLEND_MEMBERS), dtype=torch.float64)
        first, variant = split_name(name, "euler-12" if mode == "members" else "heun-split")
        t = None if mode == "members" else float(first)  # the switch as a time of the rectified flow
        member, switch = (first, {}) if t is None else ("local-gaussian", {"switch": t / (1 - t)})
        w[:, BLEND_MEMBERS.index(member)] = 1  # one-hot blend weights: this member alone below the switch
        den = CoarseToFineDenoiser(pool, blend={"weights": w}, **switch)
        report(name, boneless.sample(den, "rectified-flow", n=n, seed=1, **SAMPLERS[variant]).samples, t0)
elif mode == "flips":
    t0 = time.perf_counter()
    rows = torch.cat([pool, pool.flip(-1)])
    den = CoarseToFineDenoiser(rows)
    report("flip-augmented", boneless.sample(den, "rectified-flow", n=n, seed=1, sampler="euler", steps=12).samples,
           t0, rows)
elif mode == "alone":
    for name in names:
        t0 = time.perf_counter()
        base, variant = split_name(name)
        den = boneless.DENOISERS[base](pool)
        report(name, boneless.sample(den, "rectified-flow", n=n, seed=1, **SAMPLERS[variant]).samples, t0)
