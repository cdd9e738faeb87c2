"""The exact empirical denoiser: mathematics, exactness against float64 (near-ties included), bad input."""

import math

import pytest
import torch

from boneless import EmpiricalDenoiser, score_from_x0, eps_from_x0, velocity_from_x0, get_schedule
from boneless.denoisers import exact_reference


def rel_err(out, ref):
    out, ref = out.reshape(len(out), -1).double(), ref.reshape(len(ref), -1).double()
    return ((out - ref).norm(dim=1) / ref.norm(dim=1).clamp(min=1e-300))


def image_like(n, d, seed=0):
    """Correlated data in [-1, 1] (neighbouring 'pixels' alike), like real images."""
    g = torch.Generator().manual_seed(seed)
    X = (torch.rand(n, d, generator=g) * 2 - 1).cumsum(1) / math.sqrt(d / 4)
    return (X - X.mean(1, keepdim=True)).clamp(-1, 1)


def test_one_point_dataset_returns_that_point():
    x_i = torch.tensor([[0.3, -0.7, 0.2]])
    den = EmpiricalDenoiser(x_i)
    x = torch.randn(5, 3)
    for alpha, sigma in [(1.0, 1e-3), (0.5, 0.5), (0.01, 1.0), (0.0, 1.0)]:
        assert torch.allclose(den(x, alpha, sigma), x_i.expand(5, 3), atol=1e-7)


def test_large_sigma_and_alpha_zero_give_the_mean():
    X = image_like(300, 16)
    den = EmpiricalDenoiser(X)
    x = torch.randn(4, 16)
    mean = X.double().mean(0)
    assert rel_err(den(x, 0.0, 1.0), mean.expand(4, -1)).max() < 1e-6
    assert rel_err(den(x, 1.0, 1e6), mean.expand(4, -1)).max() < 1e-5


def test_alpha_zero_gives_the_weighted_mean():
    X = image_like(50, 8)
    w = torch.rand(50) + 0.1
    den = EmpiricalDenoiser(X, weights=w)
    out = den(torch.randn(3, 8), 0.0, 0.7)
    expect = (w[:, None].double() * X.double()).sum(0) / w.sum()
    assert rel_err(out, expect.expand(3, -1)).max() < 1e-6


def test_sigma_to_zero_returns_the_nearest_example():
    X = image_like(200, 32)
    den = EmpiricalDenoiser(X)
    x = X[:10] + 0.05 * torch.randn(10, 32)
    nearest = torch.cdist(x.double(), X.double()).argmin(1)
    assert torch.equal(den(x, 1.0, 0.0), X[nearest])
    assert torch.allclose(den(x, 1.0, 1e-6), X[nearest], atol=1e-6)


def test_tweedie_identity_against_autograd():
    """E[x0 | x] = (x + sigma^2 grad log p_t(x)) / alpha, with log p_t the Gaussian mixture (SPEC §2.5)."""
    X = image_like(100, 6).double()
    den = EmpiricalDenoiser(X.float())
    alpha, sigma = 0.8, 0.3
    x = (alpha * X[:7] + sigma * torch.randn(7, 6, dtype=torch.float64)).requires_grad_(True)
    log_p = torch.logsumexp(-((x[:, None] - alpha * X[None]) ** 2).sum(-1) / (2 * sigma ** 2), dim=1).sum()
    (grad,) = torch.autograd.grad(log_p, x)
    x0_hat = den(x.detach().float(), alpha, sigma).double()
    score = score_from_x0(x.detach(), x0_hat, alpha, sigma)
    assert torch.allclose(score, grad, rtol=1e-4, atol=1e-4)
    assert torch.allclose((x.detach() + sigma ** 2 * grad) / alpha, x0_hat, atol=1e-5)


def test_conversions_round_trip():
    x, x0 = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    alpha, sigma = torch.tensor([0.2, 0.5, 0.9, 1.0]), torch.tensor([0.9, 0.5, 0.1, 2.0])
    eps = eps_from_x0(x, x0, alpha, sigma)
    assert torch.allclose(alpha.double()[:, None] * x0 + sigma.double()[:, None] * eps, x)
    c = get_schedule("rf")(0.4)
    v = velocity_from_x0(x, x0, c.alpha, c.sigma, c.d_alpha, c.d_sigma)
    assert torch.allclose(v, eps_from_x0(x, x0, c.alpha, c.sigma) - x0)  # RF: v = eps - x0


def test_vp_and_ve_agree_after_rescaling():
    """den(x, alpha, sigma) == den(x / alpha, 1, sigma / alpha): one model, two perspectives (SPEC §2.1)."""
    X = image_like(500, 20)
    den = EmpiricalDenoiser(X)
    vp = get_schedule("vp-cosine")
    for t in (0.2, 0.5, 0.8):
        c = vp(t)
        x = c.alpha * X[:8] + c.sigma * torch.randn(8, 20)
        out_vp = den(x, c.alpha, c.sigma)
        out_ve = den(x / c.alpha, 1.0, c.sigma / c.alpha)
        assert rel_err(out_vp, out_ve).max() < 1e-5


def test_batched_alpha_sigma_equal_single_calls():
    X = image_like(300, 10)
    den = EmpiricalDenoiser(X, chunk_size=64)
    alpha = torch.tensor([1.0, 0.5, 0.0, 0.9])
    sigma = torch.tensor([0.01, 0.5, 1.0, 3.0])
    x = torch.randn(4, 10)
    batched = den(x, alpha, sigma)
    for i in range(4):
        single = den(x[i:i + 1], float(alpha[i]), float(sigma[i]))
        assert torch.allclose(batched[i:i + 1], single, atol=1e-6)


def near_tie_queries(X, alpha, sigma, n, seed):
    """Queries almost equidistant from two training examples: the midpoint of an example and its nearest
    neighbour, plus a nudge of about sigma / 100."""
    g = torch.Generator().manual_seed(seed)
    i = torch.randint(len(X), (n,), generator=g)
    d = torch.cdist(X[i].double(), X.double())
    d[torch.arange(n), i] = math.inf
    j = d.argmin(1)
    mid = alpha * (X[i] + X[j]) / 2
    return mid + 0.01 * sigma * torch.randn(mid.shape, generator=g) / math.sqrt(X.shape[1])


@pytest.mark.parametrize("d", [64, 768])
def test_exactness_against_float64_including_near_ties(d):
    """SPEC §6: relative L2 error <= 1e-4 for every query, sigma / alpha from 1e-3 to 1e3, near-ties included."""
    X = image_like(1500, d, seed=d)
    den = EmpiricalDenoiser(X, chunk_size=512)
    g = torch.Generator().manual_seed(1)
    worst = 0.0
    for ratio in (1e-3, 3e-3, 1e-2, 0.05, 0.2, 0.5, 1.0, 2.0, 5.0, 20.0, 100.0, 1e3):
        for alpha in (1.0, 0.3):
            sigma = ratio * alpha
            noisy = alpha * X[torch.randint(len(X), (24,), generator=g)] + sigma * torch.randn(24, d, generator=g)
            ties = near_tie_queries(X, alpha, sigma, 24, seed=int(ratio * 1000) + d)
            x = torch.cat([noisy, ties])
            err = rel_err(den(x, alpha, sigma), exact_reference(X, x, alpha, sigma)).max().item()
            worst = max(worst, err)
            assert err <= 1e-4, (ratio, alpha, err)
    print(f"worst relative error at D={d}: {worst:.2e}")


def test_exact_ties_are_split_evenly():
    """A query exactly between an example and its nearest neighbour, at tiny sigma, gives weight 1/2 to each.
    Data on a grid of 1/64 make the midpoint and its distances exact; the float32 expanded form gets this badly
    wrong (the logit gap it sees is rounding error far larger than 1)."""
    X = (image_like(400, 3072, seed=3) * 64).round() / 64
    den = EmpiricalDenoiser(X)
    for i in (5, 17, 123):
        d = ((X.double() - X[i].double()) ** 2).sum(1)
        d[i] = math.inf
        j = int(d.argmin())
        x = ((X[i] + X[j]) / 2)[None]
        ref = exact_reference(X, x, 1.0, 2e-3)
        post = den.posterior(x, 1.0, 2e-3, k=2)
        assert rel_err(post.x0_hat, ref).item() < 1e-4
        assert sorted(post.indices[0].tolist()) == sorted([i, j])
        assert torch.allclose(post.weights[0].double(), torch.full((2,), 0.5, dtype=torch.float64), atol=1e-4)


def test_near_tie_queries_defeat_the_plain_float32_form():
    """The adversarial queries of the exactness test have teeth: the plain float32 expanded form
    |x|^2 - 2 x.x_i + |x_i|^2 misses the contract on them (so passing it means something)."""
    X = image_like(1500, 768, seed=768)
    alpha, sigma = 1.0, 2e-3
    x = near_tie_queries(X, alpha, sigma, 24, seed=7)
    l32 = -((x * x).sum(1)[:, None] - 2 * x @ X.T + (X * X).sum(1)[None]) / (2 * sigma ** 2)
    naive = torch.softmax(l32, 1) @ X
    assert rel_err(naive, exact_reference(X, x, alpha, sigma)).max().item() > 1e-3


def test_weights_and_temperature_against_reference():
    X = image_like(400, 12)
    w = torch.rand(400) + 0.05
    x = 0.7 * X[:6] + 0.4 * torch.randn(6, 12)
    for temperature in (0.5, 1.0, 3.0):
        den = EmpiricalDenoiser(X, weights=w, temperature=temperature, chunk_size=100)
        ref = exact_reference(X, x, 0.7, 0.4, weights=w / w.sum(), temperature=temperature)
        assert rel_err(den(x, 0.7, 0.4), ref).max() < 1e-5


def test_posterior_topk_entropy_and_effective_size():
    X = image_like(600, 8)
    den = EmpiricalDenoiser(X, chunk_size=128)
    alpha, sigma = 0.9, 0.15
    x = alpha * X[:5] + sigma * torch.randn(5, 8)
    post = den.posterior(x, alpha, sigma, k=4)
    logits = -((x.double()[:, None] - alpha * X.double()[None]) ** 2).sum(-1) / (2 * sigma ** 2)
    p = torch.softmax(logits, 1)
    top_w, top_i = p.topk(4, dim=1)
    assert torch.equal(post.indices, top_i)
    assert torch.allclose(post.weights.double(), top_w, atol=1e-6)
    entropy = -(p * torch.log(p.clamp(min=1e-300))).sum(1)
    assert torch.allclose(post.entropy.double(), entropy, atol=1e-4)
    assert torch.allclose(post.n_eff.double(), 1 / (p * p).sum(1), rtol=1e-4)
    assert rel_err(post.x0_hat, p @ X.double()).max() < 1e-5


def test_uniform_posterior_entropy_is_log_n():
    X = image_like(64, 4)
    post = EmpiricalDenoiser(X).posterior(torch.zeros(2, 4), 0.0, 1.0, k=3)
    assert torch.allclose(post.entropy, torch.full((2,), math.log(64)), atol=1e-5)
    assert torch.allclose(post.n_eff, torch.full((2,), 64.0), rtol=1e-5)


def test_image_shapes_are_kept():
    X = image_like(50, 48).reshape(50, 3, 4, 4)
    den = EmpiricalDenoiser(X)
    out = den(torch.randn(2, 3, 4, 4), 0.5, 0.5)
    assert out.shape == (2, 3, 4, 4) and den.shape == (3, 4, 4)


@pytest.mark.parametrize("kwargs, match", [
    (dict(temperature=0.0), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(chunk_size=0), "chunk_size"),
    (dict(weights=torch.ones(3)), "weights"),
    (dict(weights=-torch.ones(10)), "weights"),
])
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EmpiricalDenoiser(image_like(10, 4), **kwargs)


def test_bad_data_and_queries():
    with pytest.raises(ValueError, match="NaN"):
        EmpiricalDenoiser(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError):
        EmpiricalDenoiser(torch.zeros(0, 4))
    den = EmpiricalDenoiser(image_like(10, 4))
    with pytest.raises(ValueError, match="shape"):
        den(torch.zeros(2, 5), 1.0, 1.0)
    with pytest.raises(ValueError, match="NaN"):
        den(torch.full((1, 4), float("inf")), 1.0, 1.0)
    with pytest.raises(ValueError, match="sigma"):
        den(torch.zeros(2, 4), 1.0, -1.0)
    with pytest.raises(ValueError, match="both be 0"):
        den(torch.zeros(2, 4), 0.0, 0.0)
    with pytest.raises(ValueError, match="shape"):
        den(torch.zeros(2, 4), torch.ones(3), 1.0)
    with pytest.raises(ValueError, match="k must"):
        den.posterior(torch.zeros(2, 4), 1.0, 1.0, k=0)


def test_an_empty_batch_gives_an_empty_answer():
    """x of shape [0, *shape]: an empty x0_hat and empty posterior records, not an error (repeats held once or not)."""
    g = torch.Generator().manual_seed(0)
    for X in (torch.randn(10, 3, generator=g), torch.randn(40, 1, 2, 2, generator=g).repeat(2, 1, 1, 1)):
        den = EmpiricalDenoiser(X)
        x = torch.zeros(0, *X.shape[1:])
        assert den(x, 1.0, 0.5).shape == x.shape
        post = den.posterior(x, 1.0, 0.5, k=2)
        assert post.x0_hat.shape == x.shape and post.indices.shape == (0, 2) and post.n_eff.shape == (0,)
