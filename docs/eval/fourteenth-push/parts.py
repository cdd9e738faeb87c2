"""What a sample set's FD in classifier features is made of, and how its garments differ from real ones in pixels:
docs/EVAL.md, "Fourteenth push".

    python parts.py PATH [PATH ...]    # sample sets [n, 1, 28, 28] (.npy), or folders of `boneless eval` runs

FD = |mu_s - mu_t|^2 + (tr S_s + tr S_t - 2 tr (S_s S_t)^1/2): a shift of the features' mean ("mean shift") and a
difference of their spread ("spread term"), against test images 0-499 (the eval's target). Within classes (the
classifier's top class), against the real unseen images of that class (test images 3000-9999): the squared shift of
each class's mean feature and each class's spread (tr S) over the real class's, weighted by the class's share of the
set. In pixels (clamped to [-1, 1]): the garment (pixels above -0.5) and, inside it, the mean and standard deviation
of each image's pixels and the mean |discrete Laplacian| (pixels whose four neighbours are garment too), averaged
over the images. The eval's real sets (test images 500-2999) get the same columns.
"""
import sys
from pathlib import Path

import numpy as np
import torch

from boneless.classifier import fashion_classifier
from boneless.data import load_dataset
from boneless.metrics import frechet_distance

T = load_dataset("fashion-mnist", split="test")
clf = fashion_classifier(progress=False)
target = clf.features(T[:500]).double()
rest = T[3000:]
rest_feats, rest_class = clf.features(rest).double(), clf.probabilities(rest).argmax(1)
class_mean = torch.stack([rest_feats[rest_class == c].mean(0) for c in range(10)])
class_spread = torch.stack([rest_feats[rest_class == c].var(0).sum() for c in range(10)])


def garments(X: torch.Tensor) -> tuple[float, float, float, float]:
    """Garment pixels per image, the interior's mean and standard deviation, and its mean |Laplacian|."""
    X = X[:, 0]
    m = X > -0.5
    count = m.sum((1, 2)).clamp(min=1)
    mean = (X * m).sum((1, 2)) / count
    sd = (((X - mean[:, None, None]) ** 2 * m).sum((1, 2)) / count).sqrt()
    c = (slice(None), slice(1, -1), slice(1, -1))
    sides = [(slice(None), slice(0, -2), slice(1, -1)), (slice(None), slice(2, None), slice(1, -1)),
             (slice(None), slice(1, -1), slice(0, -2)), (slice(None), slice(1, -1), slice(2, None))]
    lap = (4 * X[c] - sum(X[s] for s in sides)).abs()
    inner = m[c] & m[sides[0]] & m[sides[1]] & m[sides[2]] & m[sides[3]]
    return (float(count.float().mean()), float(mean.mean()), float(sd.mean()),
            float((lap * inner).sum() / inner.sum()))


def row(name: str, images: torch.Tensor) -> None:
    images = images.clamp(-1, 1)
    f = clf.features(images).double()
    c = clf.probabilities(images).argmax(1)
    shift = float(((f.mean(0) - target.mean(0)) ** 2).sum())
    share = torch.bincount(c, minlength=10).double() / len(f)
    present = [k for k in range(10) if (c == k).sum() > 1]
    within_shift = sum(float(share[k] * ((f[c == k].mean(0) - class_mean[k]) ** 2).sum()) for k in present)
    within_spread = sum(float(share[k] * f[c == k].var(0).sum() / class_spread[k]) for k in present)
    fd = frechet_distance(f, target)
    pixels, mean, sd, lap = garments(images)
    print(f"| {name} | {fd:.2f} | {shift:.2f} | {fd - shift:.2f} | {within_shift:.2f} | {within_spread:.3f} | "
          f"{pixels:.1f} | {mean:+.3f} | {sd:.3f} | {lap:.3f} |", flush=True)


print("| set | FD classifier | mean shift | spread term | within-class shift | within-class spread ÷ real | "
      "garment pixels | interior mean | interior sd | interior abs. Laplacian |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for i in range(5):
    row(f"real set {i + 1} (test {500 + 500 * i}-{999 + 500 * i})", T[500 + 500 * i:1000 + 500 * i])
for arg in sys.argv[1:]:
    paths = sorted(Path(arg).glob("samples_*.npy")) if Path(arg).is_dir() else [Path(arg)]
    for path in paths:
        row(str(path), torch.from_numpy(np.load(path)).float())
