"""Repeated rows held once (``EmpiricalDenoiser(dedupe=True)``, the default): the grouping finds exactly the
equal rows, and the bank with row counts gives the statistics of the rows as given (Hypothesis)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from boneless import EmpiricalDenoiser
from boneless.bank import Bank
from boneless.denoisers import exact_reference
from boneless.rows import repeated_rows


@settings(max_examples=60)
@given(n=st.integers(1, 60), d=st.integers(1, 70), distinct=st.integers(1, 20), seed=st.integers(0, 2 ** 31 - 1),
       background=st.booleans())
def test_repeated_rows_groups_exactly_the_equal_rows(n, d, distinct, seed, background):
    """Groups are the classes of equal rows, whatever the data (including rows that agree on most columns, the
    sampled columns among them, and -0.0 beside 0.0, which may stay apart: that costs speed, not results)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(distinct, d, generator=g)
    if background:  # most columns equal in every row: candidates by the sampled columns, told apart in full
        base[:, : max(0, d - 2)] = 0.0
    X = base[torch.randint(distinct, (n,), generator=g)]
    found = repeated_rows(X, columns=4, rounds=64)
    if found is None:
        assert len(torch.unique(X, dim=0)) == n
        return
    first, owner = found
    assert torch.equal(first, first.sort().values) and torch.equal(first[owner[first]], first)
    assert torch.equal(X[first[owner]], X)  # every row equals the row that stands for it
    assert len(first) == len(torch.unique(X, dim=0))  # and rows that are equal share it (rounds = 64)


def test_repeated_rows_keeps_rows_of_other_weights_apart_and_negative_zero():
    X = torch.tensor([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0], [0.0, 1.0], [-0.0, 1.0]])
    first, owner = repeated_rows(X, torch.tensor([0.0, 0.0, -1.0, 0.0, 0.0]))
    assert first.tolist() == [0, 2, 3, 4] and owner.tolist() == [0, 0, 1, 2, 3]
    assert repeated_rows(torch.eye(4)) is None and repeated_rows(torch.ones(1, 3)) is None


@settings(max_examples=80)
@given(d=st.integers(1, 40), distinct=st.integers(1, 12), seed=st.integers(0, 2 ** 31 - 1),
       temperature=st.sampled_from([1.0, 0.5, 3.0]), log_ratio=st.floats(-3, 3), k=st.integers(1, 12),
       chunk=st.integers(1, 90))
def test_bank_with_counts_equals_the_bank_of_all_copies(d, distinct, seed, temperature, log_ratio, k, chunk):
    """``Bank(distinct rows, log_counts)`` against ``Bank(every copy)``: the same mean, normaliser, entropy and
    effective-size sums, and top-k logits (one copy's), at any noise level."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(distinct, d, generator=g) * 3
    counts = torch.randint(1, 9, (distinct,), generator=g)
    X = base.repeat_interleave(counts, 0)
    x = base[torch.randint(distinct, (3,), generator=g)] + 10 ** log_ratio * torch.randn(3, d, generator=g)
    a, s = torch.full((3,), 0.8, dtype=torch.float64), torch.full((3,), 10 ** log_ratio, dtype=torch.float64)
    merged = Bank(base, log_counts=counts.double().log(), chunk_size=chunk).reduce(x, a, s, temperature=temperature,
                                                                                 k=k)
    full = Bank(X, chunk_size=chunk).reduce(x, a, s, temperature=temperature, k=k)
    shift = torch.exp(merged.m - full.m)  # the two maxima differ by the top row's log count
    torch.testing.assert_close(merged.acc.double() / merged.s[:, None], full.acc.double() / full.s[:, None],
                               rtol=1e-5, atol=1e-5 * float(X.abs().max()))
    torch.testing.assert_close(merged.s * shift, full.s, rtol=1e-5, atol=0)
    # entropy log s - u / s and effective size s^2 / q (both independent of the shift m)
    torch.testing.assert_close(torch.log(merged.s) - merged.u / merged.s, torch.log(full.s) - full.u / full.s,
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(merged.s ** 2 / merged.q, full.s ** 2 / full.q, rtol=1e-5, atol=0)
    # the top-k logits are one copy's, of the distinct rows ranked by it: the float64 logits of the base rows
    x64, base64 = x.double(), base.double()
    ref = ((x64 ** 2).sum(1)[:, None] - torch.cdist(x64, 0.8 * base64) ** 2) / (2 * s[:, None] ** 2 * temperature)
    want = ref.sort(1, descending=True).values[:, :min(k, distinct)]
    got = merged.top_l[:, :want.shape[1]]
    near = want >= want[:, :1] - 10  # rows far below the top carry their capped logits (as the sums used them)
    torch.testing.assert_close(got[near], want[near], rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("weighted", [False, True])
def test_posterior_with_repeats_is_the_posterior_of_the_rows_given(weighted):
    """dedupe on and off: the same mean, data, prior mean, top-k (as sets of rows with their weights), entropy and
    effective size, for a dataset with many repeats; and the bank holds the distinct rows only."""
    g = torch.Generator().manual_seed(3)
    base = torch.randn(12, 2, 1, 5, generator=g)
    pick = torch.randint(12, (96,), generator=g)
    X = base[pick]
    weights = (torch.rand(12, generator=g) + 0.2)[pick] if weighted else None
    on = EmpiricalDenoiser(X, weights=weights, temperature=0.7, chunk_size=5)
    off = EmpiricalDenoiser(X, weights=weights, temperature=0.7, dedupe=False)
    assert len(on.bank) == len(torch.unique(pick)) and len(off.bank) == 96 and on.counts.sum() == 96
    assert torch.equal(on.data, X)
    torch.testing.assert_close(on.mean, off.mean, rtol=1e-6, atol=1e-6)
    x = base[:4] + 0.3 * torch.randn(4, 2, 1, 5, generator=g)
    for sigma in (1e-3, 0.3, 2.0, 300.0):
        p, q = on.posterior(x, 1.0, sigma, k=7), off.posterior(x, 1.0, sigma, k=7)
        ref = exact_reference(X, x, 1.0, sigma, weights=weights, temperature=0.7).float()
        torch.testing.assert_close(p.x0_hat, ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(p.entropy, q.entropy, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(p.n_eff, q.n_eff, rtol=1e-5, atol=0)
        torch.testing.assert_close(p.weights, q.weights, rtol=1e-5, atol=1e-7)  # ranked the same
        logits = -((x.reshape(4, 1, -1) - X.reshape(1, 96, -1)) ** 2).sum(-1).double() / (2 * sigma ** 2)
        if weights is not None:
            logits = logits + weights.double().log()
        prob = torch.softmax(logits / 0.7, 1)
        torch.testing.assert_close(p.weights.double(), prob.gather(1, p.indices), rtol=1e-4, atol=1e-7)
        assert all(len(set(row.tolist())) == 7 for row in p.indices)


def test_few_repeats_are_not_merged():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(100, 4, generator=g)
    X[1:5] = X[0]  # 4 repeats: under 1/8 of the rows
    assert EmpiricalDenoiser(X).counts is None and len(EmpiricalDenoiser(X).bank) == 100
    X[1:20] = X[0]
    den = EmpiricalDenoiser(X)
    assert len(den.bank) == 81 and int(den.counts.max()) == 20
    assert EmpiricalDenoiser(X, rescore=0, storage="float16").counts is not None
    assert EmpiricalDenoiser(X, storage="float16", rescore=4).counts is None  # rescoring reads the rows given
    x = X[:3] + 0.01
    assert math.isclose(float(den.posterior(x, 1.0, 0.01, k=1).weights[0, 0]), 0.05, rel_tol=1e-4)
