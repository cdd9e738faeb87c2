"""The FAISS back-end's rule: a query is served from its neighbours only where their certified error is within
the tolerance, and by the exact bank elsewhere, so its error against float64 never exceeds the tolerance when the
neighbours are the true top k (flat index). Skipped without faiss-cpu."""

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from boneless import EmpiricalDenoiser
from boneless.bank import FaissBank
from boneless.denoisers import exact_reference

faiss = pytest.importorskip("faiss")


def data(n, d, seed=0, scale=1.0):
    """Correlated rows with a non-zero mean, of the given scale."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d // 2, generator=g).repeat_interleave(2, 1) + 0.3 * torch.randn(n, d, generator=g)
    return scale * torch.tanh(z + torch.linspace(-0.5, 0.8, d))


def noised(X, ratio, B, seed=1):
    g = torch.Generator().manual_seed(seed)
    a, s = 1 / (1 + ratio), ratio / (1 + ratio)
    return a * X[torch.randint(0, len(X), (B,), generator=g)] + s * torch.randn(B, X.shape[1], generator=g), a, s


def full(v, B):
    return torch.full((B,), v, dtype=torch.float64)


def rel_err(y, ref):
    return (y.double() - ref).norm(dim=1) / ref.norm(dim=1)


class Counting:
    """The exact bank, counting the queries passed to it."""

    def __init__(self, bank):
        self.bank, self.queries = bank, 0

    def __getattr__(self, name):
        return getattr(self.bank, name)

    def __len__(self):
        return len(self.bank)

    def reduce(self, x, *a, **kw):
        self.queries += len(x)
        return self.bank.reduce(x, *a, **kw)


@settings(max_examples=40)
@given(n=st.integers(50, 400), d=st.sampled_from([2, 8, 24]), k=st.integers(1, 64),
       log_ratio=st.floats(-3, 3), tol=st.sampled_from([1e-4, 1e-2, 0.1]), scale=st.sampled_from([1e-2, 1.0, 30.0]),
       seed=st.integers(0, 3))
def test_error_within_tolerance_for_every_query(n, d, k, log_ratio, tol, scale, seed):
    X = data(n, d, seed, scale)
    ratio = 10 ** log_ratio * float(X.std())  # sigma / alpha from 1e-3 to 1e3 times the data's spread
    den = EmpiricalDenoiser(X, bank="faiss-flat", neighbours=k, tolerance=tol)
    x, a, s = noised(X, ratio, 16, seed)
    err = rel_err(den(x, a, s), exact_reference(X, x, a, s))
    # the certified bound, plus what float32 output and the exact bank's own contract allow
    assert float(err.max()) <= tol + 1e-4, (float(err.max()), tol)


def test_rule_serves_sharp_queries_from_neighbours_and_sends_broad_ones_to_the_exact_bank():
    X = data(600, 16)
    den = EmpiricalDenoiser(X, bank="faiss-flat", neighbours=32)
    fb = den.bank
    fb.exact = counter = Counting(fb.exact)
    B = 10
    x, a, s = noised(X, 1e-3, B)  # sharp: the nearest row carries all the mass
    bound = fb.estimate(x, full(a, B), full(s, B)).x0_bound
    assert float(bound.max()) <= fb.tolerance
    y = den(x, a, s)
    assert counter.queries == 0 and float(rel_err(y, exact_reference(X, x, a, s)).max()) < 1e-5
    x, a, s = noised(X, 100.0, B)  # broad: 32 of 600 rows cannot carry the mass, so no bound within 1 %
    assert float(fb.estimate(x, full(a, B), full(s, B)).x0_bound.min()) > fb.tolerance
    y = den(x, a, s)
    assert counter.queries == B and float(rel_err(y, exact_reference(X, x, a, s)).max()) < 1e-4


def test_mixed_batch_equals_each_query_alone():
    """Prior (alpha = 0), sharp and broad queries in one batch: each row of the statistics is what that query
    gives alone (the pieces from the neighbours and from the exact bank are put back in their places)."""
    X = data(500, 8)
    fb = EmpiricalDenoiser(X, bank="faiss-flat", neighbours=16).bank
    xs, als, sgs = [], [], []
    for ratio in (1e-3, 100.0, 1e-2, 30.0):
        x, a, s = noised(X, ratio, 3, seed=int(ratio * 7) + 1)
        xs.append(x), als.append(full(a, 3)), sgs.append(full(s, 3))
    xs.append(torch.randn(2, 8)), als.append(full(0.0, 2)), sgs.append(full(1.0, 2))
    x, alpha, sigma = torch.cat(xs), torch.cat(als), torch.cat(sgs)
    both = fb.reduce(x, alpha, sigma, k=3)
    for i in range(len(x)):
        one = fb.reduce(x[i:i + 1], alpha[i:i + 1], sigma[i:i + 1], k=3)
        x0_both, x0_one = both.acc[i] / both.s[i], one.acc[0] / one.s[0]
        assert torch.allclose(x0_both, x0_one, rtol=1e-5, atol=1e-6), i
        assert torch.equal(both.top_i[i], one.top_i[0]), i


def test_no_tolerance_is_the_tail_estimator_without_a_switch():
    X = data(800, 8)
    den = EmpiricalDenoiser(X, bank="faiss-flat", neighbours=32, tail_samples=400, tolerance=None, seed=1)
    fb = den.bank
    fb.exact = counter = Counting(fb.exact)
    x, a, s = noised(X, 100.0, 12)
    y = den(x, a, s)
    assert counter.queries == 0  # never switched
    err = rel_err(y, exact_reference(X, x, a, s))
    assert 0 < float(err.max()) < 0.05  # approximate, but the control variate keeps broad posteriors close
    with pytest.raises(ValueError, match="tolerance"):
        EmpiricalDenoiser(X, bank="faiss", tolerance=0.0)
    with pytest.raises(ValueError, match="tolerance"):
        FaissBank(fb.exact.bank, tolerance=math.inf)


def test_blocks_of_queries_give_the_same_result(monkeypatch):
    """Queries are processed in blocks that bound the gathered rows' memory; the block size changes nothing."""
    import boneless.bank as bank_mod
    X = data(300, 8)
    den = EmpiricalDenoiser(X, bank="faiss-flat", neighbours=16)
    x, a, s = noised(X, 0.05, 9)
    y = den(x, a, s)
    monkeypatch.setattr(bank_mod, "GATHER_BYTES", 8 * 16 * 8 * 2)  # two queries per block
    assert torch.allclose(den(x, a, s), y, rtol=1e-6, atol=1e-7)
