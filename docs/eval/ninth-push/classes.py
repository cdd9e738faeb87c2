"""How much of a run's FD in classifier features is the draw of classes: docs/EVAL.md, "Ninth push".

    python classes.py RUN_DIR [RUN_DIR ...]    # folders of `boneless eval` runs (Fashion-MNIST, 500 samples)

For each run's samples (``samples_<name>.npy``, clamped to [-1, 1] as the eval scores them): the FD in classifier
features against the first 500 test images (the eval's figure), the class counts (the classifier's top class) and
their chi-square against even classes, and the FD of *real* unseen images (test images 3000-9999) drawn with the
samples' class counts (mean over 5 draws): what a generator with real images in every class, but these counts,
would score. The real reference sets of the eval (test images 500-2999, five sets of 500) get the same columns.
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
target = clf.features(T[:500])
rest = T[3000:]
rest_feats, rest_class = clf.features(rest), clf.probabilities(rest).argmax(1)


def row(name: str, images: torch.Tensor) -> None:
    counts = torch.bincount(clf.probabilities(images).argmax(1), minlength=10)
    even = len(images) / 10
    chi2 = float(((counts - even) ** 2 / even).sum())
    matched = []
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        idx = torch.cat([torch.nonzero(rest_class == c)[:, 0][torch.randperm(int((rest_class == c).sum()), generator=g)
                                                                 [:int(counts[c])]] for c in range(10)])
        matched.append(frechet_distance(rest_feats[idx], target))
    print(f"| {name} | {frechet_distance(clf.features(images), target):.2f} | {np.mean(matched):.2f} ± "
          f"{np.std(matched, ddof=1):.2f} | {chi2:.1f} | {' / '.join(map(str, counts.tolist()))} |", flush=True)


print("| images | FD classifier | real images with these class counts | chi-square (9 dof) | classes |")
print("|---|---:|---:|---:|---|")
row("first 500 test images (the target)", T[:500])
for i in range(5):
    row(f"real set {i + 1} (test {500 + 500 * i}-{999 + 500 * i})", T[500 + 500 * i:1000 + 500 * i])
for run in sys.argv[1:]:
    for path in sorted(Path(run).glob("samples_*.npy")):
        row(f"{path.stem[len('samples_'):]}, {Path(run).name}", torch.from_numpy(np.load(path)).float().clamp(-1, 1))
