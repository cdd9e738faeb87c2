"""Data of any finite range: every registered denoiser takes the data's own scale.

Scale-equivariance is what "no assumed range" means for a denoiser: built on ``c X`` and asked at
``(c x, alpha, c sigma)`` it returns ``c`` times its answer on ``X`` at ``(x, alpha, sigma)``. The patch
denoisers' calibrated schedules, the blend's levels and the coarse-to-fine switch are stated for data of a
reference spread and read at the data's own (``boneless.patches.spread``)."""

import pytest
import torch

import boneless
from boneless.data import REFERENCE_SPREAD, spread

BLEND = dict(components=2, holdout=8, sigmas=(0.1, 1.0), local_gaussian=dict(passes=1))
OPTIONS = {"blend": BLEND, "coarse-to-fine": dict(blend=BLEND), "gmm": dict(components=3)}


@pytest.mark.parametrize("name", sorted(boneless.DENOISERS))
def test_every_denoiser_is_scale_equivariant(name):
    g = torch.Generator().manual_seed(0)
    X = (torch.rand(48, 2, 6, 6, generator=g) * 2 - 1).cumsum(-1) / 2  # image-like, outside [-1, 1]
    x = X[:4] + 0.3 * torch.randn(4, 2, 6, 6, generator=g)
    alpha = torch.tensor([1.0, 0.8, 0.5, 1.0])
    sigma = torch.tensor([0.05, 0.3, 1.0, 4.0])
    cls = boneless.DENOISERS[name]
    base = cls(X, **OPTIONS.get(name, {}))(alpha[:, None, None, None] * x, alpha, sigma)
    for c in (1e-3, 5.0, 1e3):
        out = cls(c * X, **OPTIONS.get(name, {}))(c * alpha[:, None, None, None] * x, alpha, c * sigma) / c
        err = (out - base).reshape(4, -1).norm(dim=1) / base.reshape(4, -1).norm(dim=1)
        assert float(err.max()) < 1e-4, (name, c, err)


def test_spread():
    X = torch.randn(1000, 3) * torch.tensor([1.0, 2.0, 3.0]) + 10
    assert abs(spread(X) - (14 / 3) ** 0.5) < 0.1
    assert spread(X[:1]) == REFERENCE_SPREAD and spread(torch.ones(5, 2)) == REFERENCE_SPREAD
