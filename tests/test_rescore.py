"""A bank held in float16, bfloat16 or uint8 with its top rows rescored against the original float32 rows:
exact for the original data wherever the rescored rows carry the posterior, from memory or from disk."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from boneless import EmpiricalDenoiser
from boneless.denoisers import exact_reference
from boneless.rows import MappedRows

STORED = ["float16", "bfloat16", "uint8"]


def data(n: int, d: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 4, generator=g) @ torch.randn(4, d, generator=g) / 2 + 0.3 * torch.randn(n, d, generator=g)
    return (torch.tanh(z) * scale).float()


def noisy(X: torch.Tensor, ratio: float, B: int, seed: int, ties: int = 0):
    g = torch.Generator().manual_seed(seed)
    x0 = X[torch.randint(0, len(X), (B,), generator=g)].clone()
    x0[:ties] = 0.5 * (X[:ties] + X[ties:2 * ties])  # midpoints: exactly between two rows
    alpha, sigma = 1 / (1 + ratio), ratio / (1 + ratio)
    x = alpha * x0 + sigma * torch.randn(x0.shape, generator=g)
    x[:ties] = alpha * x0[:ties]
    return x, alpha, sigma


def rel_err(y, ref):
    return float(((y.double() - ref.double()).flatten(1).norm(dim=1) / ref.double().flatten(1).norm(dim=1)).max())


@settings(deadline=None, max_examples=max(10, settings.default.max_examples // 10))
@given(n=st.integers(2, 60), d=st.sampled_from([1, 3, 17, 64]), storage=st.sampled_from(STORED),
       log_ratio=st.floats(-3, 3), seed=st.integers(0, 2 ** 31 - 1), log_scale=st.floats(-3, 3),
       ties=st.integers(0, 1), temperature=st.sampled_from([1.0, 0.5]))
def test_rescoring_every_row_is_exact_for_the_original_data(n, d, storage, log_ratio, seed, log_scale, ties,
                                                            temperature):
    """With every row rescored the stored copy only ranks them: the answer is the float64 reference of the
    original rows at any noise level, near-ties and any data scale included."""
    X = data(n, d, seed, 10.0 ** log_scale)
    rms = float(X.double().pow(2).mean().sqrt()) or 1.0
    x, a, s = noisy(X, 10.0 ** log_ratio * rms, 4, seed + 1, ties=min(ties, n // 2))
    den = EmpiricalDenoiser(X, storage=storage, rescore=n, temperature=temperature)
    ref = exact_reference(X, x, a, s, temperature=temperature)
    assert rel_err(den(x, a, s), ref) < 1e-4


@pytest.mark.parametrize("storage", STORED)
def test_rescoring_the_top_rows_is_exact_for_sharp_posteriors(storage):
    """A few rescored rows suffice where they hold the posterior; the stored bank alone is off by its rounding."""
    X = data(400, 48, 0)
    for ratio in (0.003, 0.05, 0.2):
        x, a, s = noisy(X, ratio, 12, 1, ties=4)
        ref = exact_reference(X, x, a, s)
        rescored = EmpiricalDenoiser(X, storage=storage, rescore=16)
        post = rescored.posterior(x, a, s, k=16)
        assert float(post.weights.sum(1).min()) > 1 - 1e-9  # the top rows hold the posterior
        assert rel_err(post.x0_hat, ref) < 1e-4
        assert rel_err(EmpiricalDenoiser(X, storage=storage)(x, a, s), ref) > 1e-4  # rounding shows without it
        w_ref = torch.softmax(-((x.double()[:, None] - a * X.double()) ** 2).sum(2) / (2 * s * s), 1)
        top = w_ref.topk(3, dim=1)
        assert torch.equal(post.indices[:, :1], top.indices[:, :1]) or bool((top.values[:, 0] - top.values[:, 1] < 1e-6).any())
        assert torch.allclose(post.weights[:, :3].double(), top.values, atol=1e-5)


def test_rescoring_reads_the_original_rows_from_disk(tmp_path):
    """Rows held in bfloat16 in memory, rescored from a memory-mapped .npy: the same answer as from memory."""
    X = data(300, 40, 3)
    path = tmp_path / "rows.npy"
    np.save(path, X.numpy())
    mapped = EmpiricalDenoiser(MappedRows(path), storage="bfloat16", rescore=8)
    memory = EmpiricalDenoiser(X, storage="bfloat16", rescore=8)
    assert mapped.bank.X.data.dtype == torch.bfloat16  # held in half of float32's memory
    x, a, s = noisy(X, 0.1, 6, 2)
    assert torch.equal(mapped(x, a, s), memory(x, a, s))
    assert rel_err(mapped(x, a, s), exact_reference(X, x, a, s)) < 1e-4
    assert torch.equal(mapped.data[:], X)  # the reference is the original data


def test_rescore_options_are_one_line_errors():
    X = data(10, 4, 0)
    for kwargs, match in (({"rescore": 4}, "smaller storage"), ({"rescore": -1, "storage": "bfloat16"}, "non-negative"),
                          ({"rescore": 2.5, "storage": "bfloat16"}, "non-negative")):
        with pytest.raises(ValueError, match=match):
            EmpiricalDenoiser(X, **kwargs)
