"""Mathematics of the whole-image closed-form denoisers: gaussian (Wiener), smoothed (CFDM), gmm, parzen."""

import math

import pytest
import torch
from hypothesis import given, strategies as st

from boneless import DENOISERS, EmpiricalDenoiser
from boneless.closed_form import GaussianDenoiser, GMMDenoiser, ParzenDenoiser, SmoothedDenoiser, kmeans
from boneless.denoisers import exact_reference
from boneless.data import REFERENCE_SPREAD, spread


def gaussian_data(n, *, seed=0, d=3):
    """``n`` points of N(mu, Sigma) in [-1, 1]^d (spread 0.1: clipping has probability < 1e-12) and (mu, Sigma)."""
    g = torch.Generator().manual_seed(100)
    A = 0.06 * torch.randn(d, d, generator=g, dtype=torch.float64)
    Sigma = A @ A.T + 0.002 * torch.eye(d, dtype=torch.float64)
    mu = 0.2 * torch.rand(d, generator=g, dtype=torch.float64) - 0.1
    z = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    X = mu + z @ torch.linalg.cholesky(Sigma).T
    return X.float().clamp(-1, 1), mu, Sigma


def wiener(x, a, s, mu, Sigma):
    """Independent float64 reference: mu + a Sigma (a^2 Sigma + s^2 I)^-1 (x - a mu), per query (a, s [B])."""
    x = x.double()
    out = []
    I = torch.eye(len(mu), dtype=torch.float64)
    for xb, ab, sb in zip(x, a.tolist(), s.tolist()):
        out.append(mu + ab * Sigma @ torch.linalg.solve(ab * ab * Sigma + sb * sb * I, xb - ab * mu))
    return torch.stack(out)


def sample_cov(X):
    X = X.double()
    Xc = X - X.mean(0)
    return X.mean(0), Xc.T @ Xc / len(X)


@pytest.fixture(scope="module")
def cloud():
    X, _, _ = gaussian_data(400, seed=1, d=5)
    return X


def test_gaussian_is_the_wiener_formula_batched_and_alpha_zero(cloud):
    den = GaussianDenoiser(cloud)
    mu, Sigma = sample_cov(cloud)
    x = 0.3 * torch.randn(6, 5, generator=torch.Generator().manual_seed(2))
    a = torch.tensor([1.0, 0.5, 0.0, 1.0, 2.0, 0.9], dtype=torch.float64)
    s = torch.tensor([0.1, 1.0, 1.0, 0.0, 0.3, 5.0], dtype=torch.float64)
    out = den(x, a, s)
    assert out.shape == x.shape and out.dtype == x.dtype
    torch.testing.assert_close(out.double(), wiener(x, a, s, mu, Sigma), rtol=0, atol=1e-6)
    torch.testing.assert_close(out[2], den.mean)  # alpha = 0: the prior mean
    torch.testing.assert_close(den(x, 1.0, 0.0), x, rtol=0, atol=1e-5)  # no noise, full-rank covariance: x itself
    for b in range(len(x)):  # a batch is the same as one query at a time
        torch.testing.assert_close(den(x[b:b + 1], float(a[b]), float(s[b]))[0], out[b])


def test_gaussian_low_rank_is_the_ppca_model(cloud):
    full = GaussianDenoiser(cloud)
    torch.testing.assert_close(GaussianDenoiser(cloud, rank=5)(cloud[:4], 1.0, 0.2), full(cloud[:4], 1.0, 0.2))
    den = GaussianDenoiser(cloud, rank=2)
    mu, Sigma = sample_cov(cloud)
    lam, U = torch.linalg.eigh(Sigma)
    lam, U = lam.flip(0), U.flip(1)
    P = U[:, :2] @ U[:, :2].T
    model = (U[:, :2] * lam[:2]) @ U[:, :2].T + lam[2:].mean() * (torch.eye(5, dtype=torch.float64) - P)
    torch.testing.assert_close(den.covariance, model)
    x = cloud[:3] + 0.2
    a, s = torch.full((3,), 0.8, dtype=torch.float64), torch.full((3,), 0.4, dtype=torch.float64)
    torch.testing.assert_close(den(x, a, s).double(), wiener(x, a, s, mu, model), rtol=0, atol=1e-6)


def test_expected_mse_matches_monte_carlo():
    X, mu, Sigma = gaussian_data(20000, seed=3, d=4)
    den = GaussianDenoiser(X)
    sigma = 0.08
    z = torch.randn(X.shape, generator=torch.Generator().manual_seed(4))
    mse = float(((den(X + sigma * z, 1.0, sigma) - X).double() ** 2).mean())
    assert abs(mse - den.expected_mse(1.0, sigma)) < 0.03 * mse


def test_exact_denoiser_approaches_gaussian_on_gaussian_data():
    """On Gaussian data the empirical (exact) posterior mean tends to the Gaussian one as N grows."""
    _, mu, Sigma = gaussian_data(1)
    g = torch.Generator().manual_seed(5)
    x0 = mu + torch.randn(64, 3, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(Sigma).T
    sigma = 0.08
    x = (x0 + sigma * torch.randn(64, 3, generator=g, dtype=torch.float64)).float()
    a, s = torch.ones(64, dtype=torch.float64), torch.full((64,), sigma, dtype=torch.float64)
    truth = wiener(x, a, s, mu, Sigma)
    errs = []
    for n in (30, 300, 30000):
        X, _, _ = gaussian_data(n, seed=n)
        errs.append(float((EmpiricalDenoiser(X)(x, 1.0, sigma).double() - truth).norm(dim=1).mean()))
        fitted = GaussianDenoiser(X)(x, 1.0, sigma).double()
        if n == 30000:
            assert float((fitted - truth).norm(dim=1).mean()) < 0.01 * float(truth.norm(dim=1).mean())
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 0.05 * errs[0]


def test_smoothed_zero_is_exact_and_positive_is_the_perturbation_average(cloud):
    x = 0.4 * torch.randn(5, 5, generator=torch.Generator().manual_seed(6))
    exact = EmpiricalDenoiser(cloud)
    torch.testing.assert_close(SmoothedDenoiser(cloud, smoothing=0.0)(x, 1.0, 0.05), exact(x, 1.0, 0.05))
    den = SmoothedDenoiser(cloud, smoothing=0.2, draws=3, seed=7)
    eps = torch.randn(3, 5, generator=torch.Generator().manual_seed(7))
    tau = 0.2 * spread(cloud) / REFERENCE_SPREAD  # the smoothing is stated for data of the reference spread
    ref = torch.stack([exact_reference(cloud, x + tau * e, 1.0, 0.05) for e in eps]).mean(0)
    torch.testing.assert_close(den(x, 1.0, 0.05).double(), ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(den(x, 1.0, 0.05), den(x, 1.0, 0.05))  # deterministic: the draws are fixed
    torch.testing.assert_close(den(x, 0.0, 1.0), exact(x, 0.0, 1.0))  # alpha = 0: the mean, whatever the input


def test_one_component_gmm_is_gaussian(cloud):
    x = 0.5 * torch.randn(7, 5, generator=torch.Generator().manual_seed(8))
    a = torch.tensor([1.0, 0.7, 0.0, 1.0, 1.5, 0.3, 1.0], dtype=torch.float64)
    s = torch.tensor([0.05, 0.5, 1.0, 0.0, 2.0, 0.9, 10.0], dtype=torch.float64)
    for shrinkage in (0.0, 50.0):
        torch.testing.assert_close(GMMDenoiser(cloud, components=1, shrinkage=shrinkage)(x, a, s),
                                   GaussianDenoiser(cloud)(x, a, s), rtol=0, atol=1e-6)


def test_gmm_is_the_mixture_posterior_mean():
    """Against an independent float64 evaluation of the mixture posterior with the fitted parameters."""
    g = torch.Generator().manual_seed(9)
    centres = torch.tensor([[-0.6, -0.5, 0.2], [0.5, 0.6, -0.4], [0.1, -0.6, 0.6]])
    X = (centres.repeat_interleave(100, 0) + 0.08 * torch.randn(300, 3, generator=g)).clamp(-1, 1)
    den = GMMDenoiser(X, components=3, shrinkage=10.0, seed=0)
    assert den.components == 3
    # k-means recovered the three clusters (each centre within 0.05 of a true one)
    assert float(torch.cdist(den.mu.float(), centres).min(1).values.max()) < 0.05
    x = torch.randn(8, 3, generator=g)
    a = torch.linspace(0.0, 1.2, 8, dtype=torch.float64)
    s = torch.linspace(0.1, 1.0, 8, dtype=torch.float64)
    Sig = [(U * lam) @ U.T for lam, U in zip(den.lam, den.U)]
    ref = []
    for xb, ab, sb in zip(x.double(), a.tolist(), s.tolist()):
        logp, means = [], []
        for k in range(3):
            cov = ab * ab * Sig[k] + sb * sb * torch.eye(3, dtype=torch.float64)
            mvn = torch.distributions.MultivariateNormal(ab * den.mu[k], covariance_matrix=cov)
            logp.append(den.log_pi[k] + mvn.log_prob(xb))
            means.append(den.mu[k] + ab * Sig[k] @ torch.linalg.solve(cov, xb - ab * den.mu[k]))
        r = torch.softmax(torch.stack(logp), 0)
        ref.append((r[:, None] * torch.stack(means)).sum(0))
    torch.testing.assert_close(den(x, a, s).double(), torch.stack(ref), rtol=0, atol=1e-6)
    torch.testing.assert_close(den(x, 0.0, 1.0)[0], X.double().mean(0).float(), rtol=0, atol=1e-6)
    r = den.responsibilities(x, a, s)
    torch.testing.assert_close(r.sum(1), torch.ones(8, dtype=torch.float64))


def test_kmeans_is_seeded_and_partitions():
    X = torch.rand(200, 4, generator=torch.Generator().manual_seed(10)) * 2 - 1
    c1, l1 = kmeans(X, 5, seed=3, iterations=200)
    c2, l2 = kmeans(X, 5, seed=3, iterations=200)
    assert torch.equal(c1, c2) and torch.equal(l1, l2)
    assert set(l1.tolist()) == set(range(5))
    # a Lloyd fixed point: every point is assigned to its nearest centre, every centre is its cluster's mean
    assert torch.equal(torch.cdist(X, c1).argmin(1), l1)
    torch.testing.assert_close(c1, torch.stack([X[l1 == k].mean(0) for k in range(5)]))


def parzen_reference(X, x, a, s, K, scale, ridge):
    """Independent float64 reference: the manifold Parzen mixture written out, each component's full covariance
    ``C_i = scale^2 / K sum_j (x_j - x_i)(x_j - x_i)^T + ridge I`` over its K nearest others (by sorting all
    distances), evidence ``N(x; a x_i, a^2 C_i + s^2 I)``, component means by a dense solve."""
    F = X.reshape(len(X), -1).double()
    N, D = F.shape
    I = torch.eye(D, dtype=torch.float64)
    covs = []
    for i in range(N):
        d2 = ((F - F[i]) ** 2).sum(1)
        d2[i] = math.inf
        dev = F[d2.argsort()[:K]] - F[i]
        covs.append(scale ** 2 / max(K, 1) * dev.T @ dev + ridge * I)
    out = []
    for xb, ab, sb in zip(x.reshape(len(x), -1).double(), a.tolist(), s.tolist()):
        if ab == 0:
            out.append(F.mean(0))
            continue
        logp, means = [], []
        for i in range(N):
            cov = ab * ab * covs[i] + sb * sb * I
            logp.append(torch.distributions.MultivariateNormal(ab * F[i], covariance_matrix=cov).log_prob(xb))
            means.append(F[i] + ab * covs[i] @ torch.linalg.solve(cov, xb - ab * F[i]))
        r = torch.softmax(torch.stack(logp), 0)
        out.append((r[:, None] * torch.stack(means)).sum(0))
    return torch.stack(out).reshape(x.shape)


@given(N=st.integers(1, 9), D=st.integers(1, 64), K=st.integers(1, 10), scale=st.floats(0, 3),
       ridge=st.floats(1e-4, 1), spread_=st.floats(1e-3, 1e3), seed=st.integers(0, 2 ** 16),
       log_lam=st.floats(-3, 2), offset=st.floats(-1e3, 1e3))
def test_parzen_is_the_mixture_posterior_mean(N, D, K, scale, ridge, spread_, seed, log_lam, offset):
    """Against the mixture written out in float64 (full covariances, dense solves), for data of any scale (spread
    1e-3 to 1e3) and offset (up to 1000 x the spread), any number of neighbours (more than the data have too), noise
    levels from 1e-3 to 100 x the spread, queries near training points (near-ties of the weights), and alpha = 0;
    errors in units of the data's spread."""
    g = torch.Generator().manual_seed(seed)
    X = (spread_ * torch.randn(N, D, generator=g, dtype=torch.float64) + offset * spread_).float()
    den = ParzenDenoiser(X, neighbours=K, scale=scale, ridge=ridge)
    unit = spread(X) / REFERENCE_SPREAD
    a = torch.tensor([1.0, 0.5, 0.0, 2.0], dtype=torch.float64)
    s = 10 ** log_lam * unit * a.clamp(min=0.5)
    near = X.double()[torch.randint(N, (4,), generator=g)] + 1e-3 * unit * torch.randn(4, D, generator=g)
    x = a[:, None] * near + torch.randn(4, D, generator=g, dtype=torch.float64) * s[:, None]
    x[3] = a[3] * X.double()[:2].mean(0)  # halfway between two examples: a tie of two weights at any noise
    ref = parzen_reference(X, x, a, s, min(K, N - 1), scale, ridge * unit ** 2)
    err = (den(x, a, s) - ref).abs().max() / unit
    assert float(err) < 1e-8, err


def test_parzen_limits(cloud):
    """``scale = 0`` is the exact denoiser of the data blurred by the ridge; one example is a Wiener filter around
    it; no noise returns the query (every component has full support); a batch is one query at a time."""
    x = 0.4 * torch.randn(6, 5, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    a = torch.tensor([1.0, 0.5, 2.0, 1.0, 0.8, 1.0], dtype=torch.float64)
    s = torch.tensor([0.02, 0.1, 0.5, 1.0, 0.3, 3.0], dtype=torch.float64)
    ridge = 0.01 * (spread(cloud) / REFERENCE_SPREAD) ** 2
    y, lam2 = x / a[:, None], (s / a) ** 2
    blurred = exact_reference(cloud, y, 1.0, (ridge + lam2).sqrt())  # the exact denoiser at variance ridge + lam2
    shrink = (lam2 / (ridge + lam2))[:, None]
    torch.testing.assert_close(ParzenDenoiser(cloud, scale=0.0, ridge=0.01)(x, a, s), y - shrink * (y - blurred),
                               rtol=0, atol=1e-9)
    one = ParzenDenoiser(cloud[:1], ridge=0.01)
    r1 = 0.01  # one example has no spread: it counts as the reference spread, so the ridge is as given
    x1 = cloud[0].double() + (1 - lam2 / (r1 + lam2))[:, None] * (y - cloud[0].double())
    torch.testing.assert_close(one(x, a, s), x1, rtol=0, atol=1e-12)
    den = ParzenDenoiser(cloud, neighbours=8)
    torch.testing.assert_close(den(x, a, 0.0), y, rtol=0, atol=1e-12)
    torch.testing.assert_close(den(x.float(), 0.0, 1.0)[0], cloud.double().mean(0).float())
    out = den(x, a, s)
    for b in range(len(x)):
        torch.testing.assert_close(den(x[b:b + 1], a[b:b + 1], s[b:b + 1])[0], out[b], rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["gaussian", "smoothed", "gmm", "parzen"])
def test_bad_input_is_a_one_line_value_error(name, cloud):
    den = DENOISERS[name](cloud) if name != "gmm" else DENOISERS[name](cloud, components=2)
    x = torch.zeros(2, 5)
    for bad in (torch.zeros(2, 4), torch.full((2, 5), math.nan)):
        with pytest.raises(ValueError):
            den(bad, 1.0, 0.5)
    with pytest.raises(ValueError, match="both be 0"):
        den(x, 0.0, 0.0)
    with pytest.raises(ValueError):
        den(x, torch.ones(3), 0.5)
    with pytest.raises(ValueError):
        den(x, 1.0, -1.0)


def test_bad_options():
    X = torch.zeros(10, 3)
    with pytest.raises(ValueError):
        GaussianDenoiser(X, rank=0)
    with pytest.raises(ValueError):
        GMMDenoiser(X, components=0)
    with pytest.raises(ValueError):
        GMMDenoiser(X, shrinkage=-1.0)
    with pytest.raises(ValueError):
        SmoothedDenoiser(X, smoothing=math.inf)
    with pytest.raises(ValueError):
        SmoothedDenoiser(X, draws=0)
    with pytest.raises(ValueError):
        GaussianDenoiser(torch.full((3, 2), math.nan))
    for bad in (dict(neighbours=0), dict(scale=-1.0), dict(ridge=0.0), dict(ridge=math.inf), dict(max_gb=-1.0)):
        with pytest.raises(ValueError):
            ParzenDenoiser(X, **bad)
    with pytest.raises(ValueError, match=r"10 x 9 x 3 float64 directions \(0.0 GB"):
        ParzenDenoiser(X, max_gb=1e-9)  # 2160 bytes
