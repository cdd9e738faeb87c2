"""A small Fashion-MNIST classifier for sample quality: its penultimate-layer features give a Frechet distance
(:func:`boneless.metrics.frechet_distance`) and its confidence a plausibility score. Trained once on the
Fashion-MNIST training split (a few minutes on a CPU) and cached on disk; never downloaded.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import NamedTuple

import torch

CLASSIFIER_VERSION = 1  # bump when the network or its training changes (invalidates the cache)


def cache_dir() -> Path:
    """``$BONELESS_CACHE`` or ``~/.cache/boneless``."""
    return Path(os.environ.get("BONELESS_CACHE") or Path.home() / ".cache" / "boneless").expanduser()


def classifier_net() -> torch.nn.Module:
    """The feature network on [n, 1, 28, 28]: two 3x3 stride-2 conv + ReLU layers (16, 32 channels; 28 -> 14
    -> 7), a 128-unit ReLU layer (the features) and a linear layer to 10 class logits. Strided convolutions
    instead of max-pooling: half the CPU time for the same accuracy here."""
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU(),
        nn.Linear(128, 10))


class Classifier(NamedTuple):
    """A trained classifier: ``net`` (eval mode), its ``test_accuracy``, and where it was cached (``path``)."""

    net: torch.nn.Module
    test_accuracy: float
    path: Path | None
    info: dict

    @torch.no_grad()
    def features(self, images: torch.Tensor, *, batch_size: int = 1000) -> torch.Tensor:
        """The 128 penultimate-layer features [n, 128] of images [n, 1, 28, 28] in [-1, 1]."""
        return torch.cat([self.net[:-1](images[i:i + batch_size].float()) for i in range(0, len(images), batch_size)])

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor, *, batch_size: int = 1000) -> torch.Tensor:
        """Class probabilities [n, 10]."""
        return torch.cat([torch.softmax(self.net(images[i:i + batch_size].float()), 1)
                          for i in range(0, len(images), batch_size)])


def train_classifier(X: torch.Tensor, y: torch.Tensor, *, X_test: torch.Tensor, y_test: torch.Tensor,
                     epochs: int = 3, batch_size: int = 256, lr: float = 3e-3, seed: int = 0,
                     progress: bool = False) -> tuple[torch.nn.Module, float]:
    """Train :func:`classifier_net` on images ``X`` [N, 1, 28, 28] with labels ``y`` [N] (Adam, cosine learning
    rate, seeded initialisation and shuffling from ``seed``); return the network (eval mode) and its accuracy
    on ``X_test``, ``y_test``."""
    g = torch.Generator().manual_seed(int(seed))
    net = classifier_net()
    for m in net:
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.kaiming_uniform_(m.weight, nonlinearity="relu", generator=g)
            torch.nn.init.zeros_(m.bias)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    steps = epochs * -(-len(X) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=steps, desc="training the feature classifier (once)", unit="step", leave=False)
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(len(X), generator=g)
        for i in range(0, len(X), batch_size):
            idx = perm[i:i + batch_size]
            loss = torch.nn.functional.cross_entropy(net(X[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    net.eval()
    with torch.no_grad():
        pred = torch.cat([net(X_test[i:i + 1000]).argmax(1) for i in range(0, len(X_test), 1000)])
    return net, float((pred == y_test).double().mean())


def fashion_classifier(*, epochs: int = 3, limit: int | None = None, seed: int = 0, directory=None,
                       progress: bool = False) -> Classifier:
    """The project's Fashion-MNIST feature classifier: loaded from the cache (``directory``, default
    :func:`cache_dir`), or trained once on the Fashion-MNIST training split (first ``limit`` images, default
    all 60000), tested on the test split, and cached atomically. It only measures; it never generates."""
    from .data import load_dataset
    from .outputs import atomic_path
    tag = f"fashion_cnn_v{CLASSIFIER_VERSION}_e{epochs}_s{seed}" + (f"_n{limit}" if limit else "")
    path = Path(directory).expanduser() if directory is not None else cache_dir()
    path = path / f"{tag}.pt"
    net = classifier_net()
    if path.exists():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            net.load_state_dict(blob["state_dict"])
            net.eval()
            return Classifier(net, float(blob["test_accuracy"]), path, dict(blob["info"]))
        except Exception as e:  # a damaged cache file is retrained, not fatal
            warnings.warn(f"ignoring unreadable classifier cache {path} ({type(e).__name__}); retraining")
    X, y = load_dataset("fashion-mnist", split="train", limit=limit, with_labels=True)
    X_test, y_test = load_dataset("fashion-mnist", split="test", with_labels=True)
    start = time.perf_counter()
    net, acc = train_classifier(X, y, X_test=X_test, y_test=y_test, epochs=epochs, seed=seed, progress=progress)
    info = {"epochs": epochs, "train_size": len(X), "test_size": len(X_test), "seed": seed,
            "train_seconds": round(time.perf_counter() - start, 2), "threads": torch.get_num_threads()}
    try:
        with atomic_path(path) as tmp:
            torch.save({"state_dict": net.state_dict(), "test_accuracy": acc, "info": info}, tmp)
    except OSError as e:
        warnings.warn(f"could not cache the classifier in {path.parent} ({e.strerror}); it will be retrained")
        path = None
    return Classifier(net, acc, path, info)
