"""Where the within-class gap is: docs/EVAL.md, "Twelfth push". Validation images only (training images
10000-10499), never test images.

    python per_class.py real|S.npy ...

For each set of 500 (``real``: training images 10500-10999): per class (the classifier's top class), the squared
distance between the mean classifier features of the set's images of that class and of the validation images of
that class, the mean confidence and the count; and the mean squared Laplacian of the pixels inside the garments
(above -0.5), a measure of high frequencies.
"""
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tenth-push"))
from scoring import R, V, clf, fV  # noqa: E402

cV = clf.probabilities(V).argmax(1)


def laplacian_inside(A):
    A = A.reshape(-1, 28, 28).double()
    lap = 4 * A[:, 1:-1, 1:-1] - A[:, :-2, 1:-1] - A[:, 2:, 1:-1] - A[:, 1:-1, :-2] - A[:, 1:-1, 2:]
    return float((lap ** 2)[A[:, 1:-1, 1:-1] > -0.5].mean())


for path in sys.argv[1:]:
    S = R[:500] if path == "real" else torch.from_numpy(np.load(path))
    f, p = clf.features(S).double(), clf.probabilities(S)
    c, conf = p.argmax(1), p.max(1).values
    cells = [f"{k}: {((f[c == k].mean(0) - fV[cV == k].double().mean(0)) ** 2).sum():.2f} / "
             f"{conf[c == k].mean():.2f} / {int((c == k).sum())}" for k in range(10)]
    print(f"{Path(path).name}: laplacian inside {laplacian_inside(S):.3f} (validation {laplacian_inside(V):.3f}); "
          "per class (mean shift / confidence / count): " + ", ".join(cells), flush=True)
