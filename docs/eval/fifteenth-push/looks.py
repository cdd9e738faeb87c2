"""What tells `parzen-local`'s samples from real images: docs/EVAL.md, "Fifteenth push".

    python looks.py probe FILE.npy            # samples [n, 1, 28, 28] (e.g. the five test seeds, concatenated)
    python looks.py background FILE.npy ...   # sample sets; writes edited copies for ../fourteenth-push/dev.py

``probe``: a logistic regression (scikit-learn, C = 0.1 on standardised features) learns to tell the samples from as
many real test images (3000-4999, 7500-9999; not the dev targets) in classifier features, on 80 % of both; its
accuracy on the other 20 % says how separable they are (0.5: not at all), and the same on raw pixels (C = 0.01).
probe.png shows the 32 samples it finds most unlike real images (left) and the 32 most like them (right).

``background``: pixels farther than 3 pixels from the garment (pixels above -0.5) should be black. Per set: the share
of those pixels above -0.95 and above -0.8, against real test images 5000-5499. It writes each set with those far
pixels set to -1 (clean-R-FILE, R = 1, 2, 3 pixels) and with the garment pixels brightened by D (bright-D-FILE,
D = 0.01, 0.02, 0.04: over the five test seeds the samples' mean pixel is 0.008 below the test images', whose sets of
500 vary by 0.011).
"""
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from boneless.classifier import fashion_classifier
from boneless.data import load_dataset
from boneless.plots import samples_grid, save_image

T = load_dataset("fashion-mnist", split="test")


def probe(path: str) -> None:
    from sklearn.linear_model import LogisticRegression

    clf = fashion_classifier(progress=False)
    S = torch.from_numpy(np.load(path)).clamp(-1, 1)
    R = torch.cat([T[3000:5000], T[7500:10000]])[:len(S)]
    y = np.r_[np.ones(len(S)), np.zeros(len(R))]
    split = np.random.default_rng(0).permutation(len(y))
    train, test = split[:int(0.8 * len(y))], split[int(0.8 * len(y)):]
    for name, A, c in (("classifier features", torch.cat([clf.features(S), clf.features(R)]).double().numpy(), 0.1),
                       ("pixels", torch.cat([S, R]).reshape(len(y), -1).double().numpy(), 0.01)):
        mu, sd = A[train].mean(0), A[train].std(0) + 1e-6
        A = (A - mu) / sd
        model = LogisticRegression(C=c, max_iter=5000).fit(A[train], y[train])
        print(f"{name}: held-out accuracy {model.score(A[test], y[test]):.3f} ({len(test)} images)")
        if name == "classifier features":
            order = np.argsort(model.decision_function(A[:len(S)]))  # most real-like first
    save_image(samples_grid(torch.cat([S[order[-32:]], S[order[:32]]]), ncols=8,
                            title="most unlike real images (top 4 rows), most like them (bottom 4)"), "probe.png")


def background(paths: list[str]) -> None:
    def far(A: torch.Tensor, r: int) -> torch.Tensor:
        return F.max_pool2d((A > -0.5).float(), 2 * r + 1, 1, r) == 0

    for name, A in [("real test 5000-5499", T[5000:5500])] + [(p, torch.from_numpy(np.load(p))) for p in paths]:
        A = A.clamp(-1, 1)
        bg = A[far(A, 3)]
        print(f"| {name} | {float(far(A, 3).float().mean()):.3f} | {1000 * float((bg > -0.95).float().mean()):.1f} | "
              f"{1000 * float((bg > -0.8).float().mean()):.1f} | {float(A.mean()):+.4f} |")
        if name.startswith("real"):
            continue
        for r in (1, 2, 3):
            np.save(f"clean-{r}-{Path(name).name}", torch.where(far(A, r), -1.0, A).numpy())
        for d in (0.01, 0.02, 0.04):
            np.save(f"bright-{d}-{Path(name).name}", torch.where(A > -0.5, (A + d).clamp(max=1), A).numpy())


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "probe":
        probe(sys.argv[2])
    elif len(sys.argv) >= 3 and sys.argv[1] == "background":
        print("| set | far pixels | of them above -0.95 (per 1000) | above -0.8 (per 1000) | mean pixel |")
        print("|---|---:|---:|---:|---:|")
        background(sys.argv[2:])
    else:
        sys.exit(__doc__)
