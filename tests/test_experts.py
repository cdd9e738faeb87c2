"""SURE-weighted experts: Stein's estimate, the probe divergence, the simplex weights, and the protocol."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from boneless.closed_form import GaussianDenoiser, wiener_gain
from boneless.experts import SUREExpertsDenoiser, project_simplex, simplex_quadratic


def images(n, seed, shape=(1, 6, 6)):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, *shape, generator=g) * 2 - 1).cumsum(-1) / 3


def test_one_expert_is_the_expert_itself():
    X = images(40, 0)
    x = images(5, 1)
    a = torch.tensor([1.0, 0.7, 0.5, 1.0, 0.9], dtype=torch.float64)
    s = torch.tensor([0.1, 0.3, 1.0, 2.0, 0.05], dtype=torch.float64)
    den = SUREExpertsDenoiser(X, experts=("gaussian",))
    torch.testing.assert_close(den(x, a, s), GaussianDenoiser(X)(x, a, s), rtol=0, atol=1e-6)
    assert bool((den.weights(x, a, s) == 1).all())
    ident = SUREExpertsDenoiser(X, experts=("identity",))(x, a, s)
    torch.testing.assert_close(ident, x / a.float()[:, None, None, None])


def test_probe_divergence_of_a_linear_expert_is_the_quadratic_form_of_its_jacobian():
    # f(y) = mu + alpha U diag(g) U^T (y - mu) with x = alpha y: df/dy = alpha U diag(g) U^T, so
    # b . (f(y + tau b) - f(y)) / tau = alpha b^T U diag(g) U^T b for every tau (exact for a linear map)
    X = images(60, 2).double()
    x = images(3, 3).double()
    a = torch.tensor([1.0, 0.6, 0.8], dtype=torch.float64)
    s = torch.tensor([0.2, 0.5, 1.5], dtype=torch.float64)
    den = SUREExpertsDenoiser(X, experts=("gaussian", "identity"), probe=0.3)
    F, G = den.estimates(x * a[:, None, None, None], a, s)
    gauss = den.experts[0]
    b = den.probes(x * a[:, None, None, None]).reshape(3, -1)
    assert not torch.allclose(b[0], b[1])  # a probe per query
    g = wiener_gain(gauss.lam, a, s)  # [B, r]
    exact = a * ((b @ gauss.U) ** 2 * g).sum(1)
    torch.testing.assert_close(G[0].sum(1), exact, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(G[1].sum(1), torch.full((3,), 36.0, dtype=torch.float64))  # identity: D exactly
    torch.testing.assert_close(F[1], x.reshape(3, -1))


def test_sure_is_unbiased_for_the_squared_error():
    # Gaussian data, Wiener expert: the mean of SURE over many noisy queries matches the mean squared error
    g = torch.Generator().manual_seed(4)
    D, n, lam = 8, 4000, 0.7
    A = torch.randn(D, D, generator=g, dtype=torch.float64) / 3
    X = (torch.randn(5000, D, generator=g, dtype=torch.float64) @ A.T).float()
    x0 = (torch.randn(n, D, generator=g, dtype=torch.float64) @ A.T)
    y = x0 + lam * torch.randn(n, D, generator=g, dtype=torch.float64)
    den = SUREExpertsDenoiser(X, experts=("gaussian", "identity"))
    one, s = torch.ones(n, dtype=torch.float64), torch.full((n,), lam, dtype=torch.float64)
    F, G = den.estimates(y, one, s)
    for m in range(2):
        sure = ((F[m] - y) ** 2).sum(1) - D * lam ** 2 + 2 * lam ** 2 * G[m].sum(1)
        err = ((F[m] - x0) ** 2).sum(1)
        diff = sure - err
        assert abs(float(diff.mean())) < 4 * float(diff.std()) / math.sqrt(n), m


def quadratic(A, b, w):
    return (w[..., None, :] @ A @ w[..., :, None])[..., 0, 0] + 2 * (b * w).sum(-1)


def test_weights_minimise_sure_over_the_simplex():
    g = torch.Generator().manual_seed(5)
    for M in (2, 3, 4):
        L = torch.randn(6, M, M + 1, generator=g, dtype=torch.float64)
        A = L @ L.transpose(1, 2)
        b = torch.randn(6, M, generator=g, dtype=torch.float64)
        w = simplex_quadratic(A, b)
        assert bool((w >= 0).all()) and torch.allclose(w.sum(1), torch.ones(6, dtype=torch.float64))
        for _ in range(200):  # no point of the simplex does better
            e = -torch.rand(6, M, generator=g, dtype=torch.float64).log()  # uniform on the simplex
            q = e / e.sum(1, keepdim=True)
            assert bool((quadratic(A, b, w) <= quadratic(A, b, q) + 1e-9).all())
        twice = torch.cat([A[:, :, :1], A], 2)  # expert 0 listed twice: the same optimum
        twice = torch.cat([twice[:, :1], twice], 1)
        w2 = simplex_quadratic(twice, torch.cat([b[:, :1], b], 1))
        merged = torch.cat([w2[:, :1] + w2[:, 1:2], w2[:, 2:]], 1)
        torch.testing.assert_close(quadratic(A, b, merged), quadratic(A, b, w))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=1, max_size=6))
def test_simplex_projection_is_the_nearest_point_of_the_simplex(values):
    v = torch.tensor(values, dtype=torch.float64)
    p = project_simplex(v[None])[0]
    assert bool((p >= 0).all()) and abs(float(p.sum()) - 1) < 1e-12
    torch.testing.assert_close(project_simplex(p[None])[0], p, rtol=0, atol=1e-12)  # idempotent
    # optimality of the projection: (v - p) . (q - p) <= 0 for every q in the simplex (here its vertices)
    for j in range(len(v)):
        q = torch.zeros_like(v)
        q[j] = 1
        assert float((v - p) @ (q - p)) <= 1e-9


def test_regions_give_each_block_its_own_weights_and_one_block_is_the_whole_image():
    X = images(40, 6)
    x = images(3, 7)
    a, s = torch.ones(3, dtype=torch.float64), torch.tensor([0.1, 0.4, 1.0], dtype=torch.float64)
    experts = ("gaussian", "gmm", "identity")
    opts = {"gmm": {"components": 2}}
    whole = SUREExpertsDenoiser(X, experts=experts, options=opts)
    same = SUREExpertsDenoiser(X, experts=experts, options=opts, region=6)
    torch.testing.assert_close(same(x, a, s), whole(x, a, s))
    blocks = SUREExpertsDenoiser(X, experts=experts, options=opts, region=3)
    w = blocks.weights(x, a, s)
    assert w.shape == (3, 4, 3)
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 4, dtype=torch.float64))
    F, _ = blocks.estimates(x, a, s)
    out = blocks(x, a, s).reshape(3, -1).double()
    top_left = [6 * i + j for i in range(3) for j in range(3)]  # block 0 of a 6 x 6 image
    expected = torch.einsum("bm,mbd->bd", w[:, 0], F[:, :, top_left])
    torch.testing.assert_close(out[:, top_left], expected, rtol=0, atol=1e-6)


def test_protocol_alpha_zero_sigma_zero_and_batches():
    X = images(30, 8)
    den = SUREExpertsDenoiser(X, experts=("gaussian", "patch-composite", "identity"))
    x = images(4, 9)
    a = torch.tensor([0.0, 1.0, 0.5, 1.0], dtype=torch.float64)
    s = torch.tensor([1.0, 0.0, 0.5, 0.2], dtype=torch.float64)
    out = den(x, a, s)
    assert out.shape == x.shape and bool(torch.isfinite(out).all())
    torch.testing.assert_close(out[0], X.double().mean(0).float())
    torch.testing.assert_close(out[1], x[1], rtol=0, atol=1e-6)  # no noise: every expert's SURE is |f - y|^2
    torch.testing.assert_close(den(x[2:], a[2:], s[2:]), out[2:])  # a query's answer does not depend on the batch


def test_bad_options_are_one_line_errors():
    X = images(10, 10)
    with pytest.raises(ValueError, match="unknown expert 'nope'"):
        SUREExpertsDenoiser(X, experts=("gaussian", "nope"))
    with pytest.raises(ValueError, match="distinct"):
        SUREExpertsDenoiser(X, experts=("gaussian", "gaussian"))
    with pytest.raises(ValueError, match="probe"):
        SUREExpertsDenoiser(X, probe=0.0)
    with pytest.raises(ValueError, match="not among the experts"):
        SUREExpertsDenoiser(X, experts=("gaussian",), options={"gmm": {}})
    with pytest.raises(ValueError, match="region needs image data"):
        SUREExpertsDenoiser(X.reshape(10, -1), experts=("gaussian",), region=2)
