"""Tests for boneless.metrics: each metric on constructed cases whose answer is known in closed form."""

import math
import warnings
from pathlib import Path

import pytest
import torch

from boneless import EmpiricalDenoiser, load_dataset, sample
from boneless.classifier import fashion_classifier
from boneless.metrics import (PEAK, PCAFeatures, WienerFilter, copy_rate, denoising_error, effective_examples,
                              frechet_distance, gaussian_frechet, ks_distance, mean_cov, nearest,
                              nearest_distance_stats, noise_draw, paired_similarity, split_consistency)

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _random_spd(d, seed, rank=None):
    A = torch.randn(d, rank or d, generator=_gen(seed), dtype=torch.float64)
    return A @ A.T / d


# ---------------------------------------------------------------- Frechet distance

def test_frechet_of_identical_sets_is_zero():
    F = torch.randn(200, 16, generator=_gen(0), dtype=torch.float64)
    scale = torch.trace(mean_cov(F)[1])
    assert frechet_distance(F, F) <= 1e-10 * scale
    # singular covariances (rank 3 in 10 dimensions) are no problem for the symmetric square roots
    C = _random_spd(10, 1, rank=3)
    mu = torch.randn(10, generator=_gen(2), dtype=torch.float64)
    assert gaussian_frechet(mu, C, mu, C) <= 1e-10 * torch.trace(C)


def test_frechet_closed_form_for_commuting_covariances():
    # diagonal covariances: FD = |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2
    a = torch.rand(8, generator=_gen(3), dtype=torch.float64) + 0.1
    b = torch.rand(8, generator=_gen(4), dtype=torch.float64) + 0.1
    mu1 = torch.randn(8, generator=_gen(5), dtype=torch.float64)
    mu2 = torch.randn(8, generator=_gen(6), dtype=torch.float64)
    expected = float(((mu1 - mu2) ** 2).sum() + ((a.sqrt() - b.sqrt()) ** 2).sum())
    got = gaussian_frechet(mu1, torch.diag(a), mu2, torch.diag(b))
    assert got == pytest.approx(expected, rel=1e-10)
    # rotating both Gaussians by one orthogonal matrix changes nothing
    Q, _ = torch.linalg.qr(torch.randn(8, 8, generator=_gen(7), dtype=torch.float64))
    got_rot = gaussian_frechet(Q @ mu1, Q @ torch.diag(a) @ Q.T, Q @ mu2, Q @ torch.diag(b) @ Q.T)
    assert got_rot == pytest.approx(expected, rel=1e-9)


def test_frechet_matches_scipy_sqrtm_for_general_covariances():
    linalg = pytest.importorskip("scipy.linalg")
    C1, C2 = _random_spd(12, 8), _random_spd(12, 9)
    mu1, mu2 = torch.zeros(12, dtype=torch.float64), torch.full((12,), 0.3, dtype=torch.float64)
    covmean = linalg.sqrtm(C1.numpy() @ C2.numpy()).real
    expected = float(((mu1 - mu2) ** 2).sum() + torch.trace(C1) + torch.trace(C2)) - 2 * float(covmean.trace())
    assert gaussian_frechet(mu1, C1, mu2, C2) == pytest.approx(expected, rel=1e-8)
    assert gaussian_frechet(mu1, C1, mu2, C2) == pytest.approx(gaussian_frechet(mu2, C2, mu1, C1), rel=1e-9)


def test_frechet_of_samples_approaches_the_gaussian_closed_form():
    d, n = 4, 40000
    L1, L2 = torch.linalg.cholesky(_random_spd(d, 10)), torch.linalg.cholesky(_random_spd(d, 11))
    mu2 = torch.tensor([1.0, -0.5, 0.0, 0.25], dtype=torch.float64)
    A = torch.randn(n, d, generator=_gen(12), dtype=torch.float64) @ L1.T
    B = torch.randn(n, d, generator=_gen(13), dtype=torch.float64) @ L2.T + mu2
    exact = gaussian_frechet(torch.zeros(d), L1 @ L1.T, mu2, L2 @ L2.T)
    assert frechet_distance(A, B) == pytest.approx(exact, rel=0.05)


def test_frechet_rejects_too_few_features():
    with pytest.raises(ValueError, match="n >= 2"):
        frechet_distance(torch.zeros(1, 3), torch.zeros(5, 3))


# ---------------------------------------------------------------- PCA features

def test_pca_features_are_the_top_principal_components():
    X = torch.randn(500, 6, generator=_gen(20)) * torch.tensor([3.0, 2.0, 1.0, 0.5, 0.2, 0.1]) * 0.1
    pca = PCAFeatures(X, dim=3)
    P = pca.components
    assert torch.allclose(P @ P.T, torch.eye(3, dtype=torch.float64), atol=1e-10)  # orthonormal rows
    lam = torch.linalg.eigvalsh(mean_cov(X)[1]).flip(0)
    var = pca(X).var(0)
    assert torch.allclose(var, lam[:3], rtol=1e-8)  # the projected variances are the top eigenvalues


def test_pca_gram_route_equals_covariance_route():
    X = torch.randn(40, 100, generator=_gen(21)) * 0.1  # D > N: the Gram matrix route
    wide = PCAFeatures(X, dim=5)
    tall = PCAFeatures(X, dim=5, max_rows=40)
    ref_C = mean_cov(X)[1]
    _, U = torch.linalg.eigh(ref_C)
    top = U[:, -5:]
    # same subspace: the projector onto it agrees with the covariance's top eigenvectors
    assert torch.allclose(wide.components.T @ wide.components, top @ top.T, atol=1e-8)
    assert torch.allclose(tall.components.T @ tall.components, top @ top.T, atol=1e-8)


# ---------------------------------------------------------------- denoising error and the Wiener filter

class _Identity:
    def __init__(self, shape):
        self.shape = shape

    def __call__(self, x, alpha, sigma):
        return x / alpha


def test_denoising_error_of_the_identity_is_the_noise_energy():
    X = torch.rand(30, 1, 5, 5, generator=_gen(30)) * 2 - 1
    sigmas, alpha = [0.1, 0.5, 2.0], 0.8
    err = denoising_error(_Identity((1, 5, 5)), X, sigmas, seed=7, alpha=alpha, batch_size=7)
    z = noise_draw(tuple(X.shape), seed=7).double()
    for i, s in enumerate(sigmas):  # x0_hat - x = sigma z / alpha
        assert float(err.mse[i]) == pytest.approx(s * s / alpha ** 2 * float((z * z).mean()), rel=1e-6)
        assert float(err.psnr[i]) == pytest.approx(10 * math.log10(PEAK ** 2 / float(err.mse[i])), rel=1e-12)
    assert err.per_image.shape == (3, 30)
    assert torch.allclose(err.per_image.mean(1), err.mse)
    # the same noise for every call and batch size: results are identical
    again = denoising_error(_Identity((1, 5, 5)), X, sigmas, seed=7, alpha=alpha, batch_size=30)
    assert torch.allclose(again.per_image, err.per_image, rtol=1e-6)


def test_denoising_error_rejects_bad_input():
    X = torch.zeros(4, 3)
    den = _Identity((3,))
    for sig in ([], [0.0], [-1.0], [float("nan")]):
        with pytest.raises(ValueError, match="sigmas"):
            denoising_error(den, X, sig, seed=0)
    with pytest.raises(ValueError, match="alpha"):
        denoising_error(den, X, [1.0], seed=0, alpha=0.0)
    with pytest.raises(ValueError, match="shape"):
        denoising_error(lambda x, a, s: x[:, :2], X, [1.0], seed=0)


def test_wiener_filter_is_the_gaussian_posterior_mean():
    C = _random_spd(5, 31) * 0.05
    mu = torch.tensor([0.1, -0.2, 0.0, 0.3, 0.05], dtype=torch.float64)
    X = (torch.randn(4000, 5, generator=_gen(32), dtype=torch.float64) @ torch.linalg.cholesky(C).T + mu)
    X = X.clamp(-1, 1).float()
    w = WienerFilter(X)
    mu_hat, C_hat = X.double().mean(0), mean_cov(X)[1] * (len(X) - 1) / len(X)
    y = torch.randn(6, 5, generator=_gen(33))
    for a, s in ((1.0, 0.3), (0.6, 0.8), (2.0, 0.05)):
        # x0_hat = mu + a C (a^2 C + s^2 I)^-1 (y - a mu), solved directly
        ref = mu_hat + (a * C_hat @ torch.linalg.solve(a * a * C_hat + s * s * torch.eye(5, dtype=torch.float64),
                                                       (y.double() - a * mu_hat).T)).T
        assert torch.allclose(w(y, a, s).double(), ref, atol=1e-5)
    assert torch.allclose(w(y, 0.0, 1.0).double(), mu_hat.expand(6, 5), atol=1e-6)  # pure noise: the mean


def test_wiener_heldout_error_matches_its_expected_mse_on_gaussian_data():
    C = _random_spd(6, 34) * 0.02
    L = torch.linalg.cholesky(C)
    X = (torch.randn(20000, 6, generator=_gen(35), dtype=torch.float64) @ L.T).float()
    X_test = (torch.randn(20000, 6, generator=_gen(36), dtype=torch.float64) @ L.T).float()
    w = WienerFilter(X)
    err = denoising_error(w, X_test, [0.05, 0.2, 1.0], seed=1, batch_size=5000)
    for i, s in enumerate([0.05, 0.2, 1.0]):
        assert float(err.mse[i]) == pytest.approx(w.expected_mse(1.0, s), rel=0.05)


def test_wiener_with_more_dimensions_than_examples():
    X = (torch.rand(20, 50, generator=_gen(37)) * 2 - 1)
    w = WienerFilter(X)  # the Gram route
    Xc = X.double() - X.double().mean(0)
    C = Xc.T @ Xc / len(X)
    y = torch.randn(3, 50, generator=_gen(38))
    ref = X.double().mean(0) + (C @ torch.linalg.solve(C + 0.25 * torch.eye(50, dtype=torch.float64),
                                                       (y.double() - X.double().mean(0)).T)).T
    assert torch.allclose(w(y, 1.0, 0.5).double(), ref, atol=1e-5)


def test_the_exact_denoiser_memorises_in_sample_but_not_held_out():
    X = load_dataset("digits", limit=400)
    held = load_dataset("digits")[1500:1600]
    den = EmpiricalDenoiser(X)
    ins = denoising_error(den, X[:100], [0.05], seed=0)
    out = denoising_error(den, held, [0.05], seed=0)
    w = denoising_error(WienerFilter(X), held, [0.05], seed=0)
    assert float(ins.mse[0]) < 1e-10  # a training example is recovered exactly at small noise
    assert float(out.mse[0]) > float(w.mse[0])  # ... while unseen images are worse than the linear filter


# ---------------------------------------------------------------- copy rate, nearest distances

def test_copy_rate_of_copies_is_one_and_of_held_out_points_near_zero():
    X = torch.rand(300, 64, generator=_gen(40)) * 2 - 1
    copies = X[:50] + 1e-3 * torch.randn(50, 64, generator=_gen(41))
    fresh = torch.rand(50, 64, generator=_gen(42)) * 2 - 1
    assert copy_rate(copies, X) == 1.0
    assert copy_rate(fresh, X) == 0.0
    st = nearest_distance_stats(copies, X, heldout=fresh)
    assert st["copy_rate"] == 1.0 and st["heldout_copy_rate"] == 0.0
    assert st["median_ratio"] < 0.01 and st["ks"] == 1.0
    same = nearest_distance_stats(fresh, X, heldout=fresh)
    assert same["median_ratio"] == pytest.approx(1.0) and same["ks"] == 0.0


def test_nearest_distances_are_exact():
    X = torch.rand(100, 7, generator=_gen(43))
    q = torch.rand(9, 7, generator=_gen(44))
    d, i = nearest(q, X, k=3, chunk_size=17)
    full = torch.cdist(q.double(), X.double())
    ref_d, ref_i = full.topk(3, dim=1, largest=False)
    assert torch.equal(i, ref_i) and torch.allclose(d, ref_d)


def test_ks_distance_known_values():
    a = torch.tensor([0.0, 1.0, 2.0, 3.0])
    assert ks_distance(a, a) == 0.0
    assert ks_distance(a, a + 10) == 1.0
    assert ks_distance(a, a + 2) == pytest.approx(0.5)  # F_a(1.5) = 1/2, F_b(1.5) = 0


# ---------------------------------------------------------------- posterior collapse and split consistency

def test_effective_examples_collapse_for_the_exact_denoiser():
    X = load_dataset("digits", limit=200)
    res = sample(EmpiricalDenoiser(X), "rectified-flow", n=6, steps=12, seed=0)
    eff = effective_examples(res.trajectory)
    assert eff.n_eff.shape == (12, 6) and eff.times.shape == (12,)
    assert bool((eff.n_eff >= 1 - 1e-4).all()) and bool((eff.n_eff <= 200 + 1e-3).all())
    assert float(eff.median[0]) > 10 * float(eff.median[-1])  # broad at t = 1, one example at the end
    assert eff.collapse_t is not None and 0 < eff.collapse_t < 1
    res2 = sample(_Identity((1, 8, 8)), "rectified-flow", n=2, steps=3, seed=0)
    assert effective_examples(res2.trajectory) is None  # no posterior over examples


def test_paired_similarity():
    a = torch.randn(5, 10, generator=_gen(50))
    c = torch.randn(10, generator=_gen(51))
    assert torch.allclose(paired_similarity(a, a, center=c), torch.ones(5, dtype=torch.float64))
    assert torch.allclose(paired_similarity(c + (a - c), c - (a - c), center=c), -torch.ones(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="same shape"):
        paired_similarity(a, a[:3])


def test_split_consistency_of_identical_pools_is_one():
    X = load_dataset("digits", limit=600)
    A, B = X[:300], X[300:]
    same = split_consistency(EmpiricalDenoiser(A), EmpiricalDenoiser(A.clone()), n=5, steps=8, seed=3,
                             center=X.mean(0))
    assert torch.allclose(same.similarity, torch.ones(5, dtype=torch.float64), atol=1e-6)
    assert same.mean == pytest.approx(1.0, abs=1e-6)
    diff = split_consistency(EmpiricalDenoiser(A), EmpiricalDenoiser(B), n=5, steps=8, seed=3, center=X.mean(0))
    assert diff.mean < 1 - 1e-3 and diff.samples_a.shape == (5, 1, 8, 8)
    # den_a's samples given (a deterministic sampler's, from the same start): only den_b is sampled
    z = torch.randn((5, 1, 8, 8), generator=torch.Generator().manual_seed(3))
    given = split_consistency(EmpiricalDenoiser(A), EmpiricalDenoiser(B), n=5, steps=8, center=X.mean(0),
                              noise=z, samples_a=diff.samples_a)
    assert torch.equal(given.samples_b, diff.samples_b) and given.mean == pytest.approx(diff.mean, abs=1e-12)
    with pytest.raises(ValueError, match="samples_a"):
        split_consistency(EmpiricalDenoiser(A), EmpiricalDenoiser(B), n=4, steps=8, samples_a=diff.samples_a)
    # memoriser: each sample is an example of its own pool
    assert float(nearest(diff.samples_a, A, k=1)[0].max()) < 1e-4
    assert float(nearest(diff.samples_b, B, k=1)[0].max()) < 1e-4


# ---------------------------------------------------------------- the Fashion-MNIST feature classifier

@pytest.mark.skipif(not FMNIST.is_dir(), reason="Fashion-MNIST (dataset-fashion-mnist) not installed")
def test_classifier_trains_caches_and_reloads(tmp_path, monkeypatch):
    clf = fashion_classifier(epochs=1, limit=2000, directory=tmp_path)
    assert clf.path is not None and clf.path.exists() and clf.path.parent == tmp_path
    assert clf.test_accuracy > 0.5  # far above chance (0.1) after one epoch on 2000 images
    X = load_dataset("fashion-mnist", split="test", limit=40)
    f = clf.features(X)
    assert f.shape == (40, 128) and bool((f >= 0).all())
    p = clf.probabilities(X)
    assert torch.allclose(p.sum(1), torch.ones(40), atol=1e-5)

    import boneless.classifier as M

    def no_training(*args, **kwargs):
        raise AssertionError("the cached classifier should be loaded, not retrained")

    monkeypatch.setattr(M, "train_classifier", no_training)
    again = fashion_classifier(epochs=1, limit=2000, directory=tmp_path)
    assert again.test_accuracy == clf.test_accuracy
    assert torch.allclose(again.features(X), f)
    monkeypatch.undo()
    clf.path.write_bytes(b"damaged")  # a damaged cache is retrained with a warning, not fatal
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        third = fashion_classifier(epochs=1, limit=2000, directory=tmp_path)
    assert any("unreadable classifier cache" in str(x.message) for x in w)
    assert third.test_accuracy == pytest.approx(clf.test_accuracy)  # seeded: the same training
