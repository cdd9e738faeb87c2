"""Mathematics of the patch denoisers: local (LS), local-equivariant (ELS/bbELS), local-wiener, patch-composite
(PSPC-Square), local-gaussian; schedules and calibration; the registry."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import record
from hypothesis import given, settings
from hypothesis import strategies as st

from boneless import DENOISERS
from boneless.closed_form import GaussianDenoiser, GMMDenoiser
from boneless.data import REFERENCE_SPREAD, spread
from boneless.denoisers import exact_reference
from boneless.patches import (PATCH_FAST_DELTA, EquivariantLocalDenoiser, LocalDenoiser, LocalGaussianDenoiser,
                              PatchCompositeDenoiser, PatchSchedule, WienerLocalDenoiser, calibrate, validation_errors,
                              wiener_footprints)

N, C, H, W = 40, 2, 6, 5


def images(n, *, seed):
    """Smooth random images in [-1, 1] (blurred noise, so patches carry structure), [n, C, H, W]."""
    z = torch.randn(n, C, H + 2, W + 2, generator=torch.Generator().manual_seed(seed))
    z = F.avg_pool2d(z, 3, stride=1)
    return (z / z.abs().max()).clamp(-1, 1)


@pytest.fixture(scope="module")
def X():
    return images(N, seed=0)


@pytest.fixture(scope="module")
def queries():
    x0 = images(4, seed=1)
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2))
    a = torch.tensor([1.0, 0.8, 1.0, 0.5], dtype=torch.float64)
    s = torch.tensor([0.3, 0.5, 1.0, 0.2], dtype=torch.float64)
    return (a.float()[:, None, None, None] * x0 + s.float()[:, None, None, None] * z), a, s


def softmax_mean(q, P, values, a, s):
    """Independent float64 posterior mean: q [B, d], stored patches P [n, d], values [n, ...]."""
    logits = -((q[:, None, :] - a[:, None, None] * P[None]) ** 2).sum(-1) / (2 * s[:, None] ** 2)
    return torch.einsum("bn,n...->b...", torch.softmax(logits, 1), values)


def brute_local(X, x, a, s, k):
    r = k // 2
    X, x = X.double(), x.double()
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    for i in range(h):
        for j in range(w):
            i0, i1, j0, j1 = max(0, i - r), min(h, i + r + 1), max(0, j - r), min(w, j + r + 1)
            q, P = x[:, :, i0:i1, j0:j1].flatten(1), X[:, :, i0:i1, j0:j1].flatten(1)
            out[:, :, i, j] = softmax_mean(q, P, X[:, :, i, j], a, s)
    return out


def brute_composite(X, x, a, s, k):
    X, x = X.double(), x.double()
    total, count = torch.zeros_like(x), torch.zeros(H, W, dtype=torch.float64)
    for i in range(H - k + 1):
        for j in range(W - k + 1):
            q, P = x[:, :, i:i + k, j:j + k].flatten(1), X[:, :, i:i + k, j:j + k].flatten(1)
            total[:, :, i:i + k, j:j + k] += softmax_mean(q, P, X[:, :, i:i + k, j:j + k], a, s)
            count[i:i + k, j:j + k] += 1
    return total / count


def brute_els(X, x, a, s, k, boundary):
    """ELS from its definition: for pixel p, all training patches at locations of the same kind."""
    r = k // 2
    X, x = X.double(), x.double()
    out = torch.zeros_like(x)
    if boundary == "zero":
        Xp, xp = F.pad(X, (r, r, r, r)), F.pad(x, (r, r, r, r))
        P = torch.stack([Xp[:, :, i:i + k, j:j + k].flatten(1) for i in range(H) for j in range(W)], 1).flatten(0, 1)
        centres = torch.stack([X[:, :, i, j] for i in range(H) for j in range(W)], 1).flatten(0, 1)
        for i in range(H):
            for j in range(W):
                out[:, :, i, j] = softmax_mean(xp[:, :, i:i + k, j:j + k].flatten(1), P, centres, a, s)
        return out

    def kind(i, j):
        return min(i, r), min(H - 1 - i, r), min(j, r), min(W - 1 - j, r)

    for i in range(H):
        for j in range(W):
            up, down, left, right = kind(i, j)
            Ps, cs = [], []
            for u in range(H):
                for v in range(W):
                    if kind(u, v) == kind(i, j):
                        Ps.append(X[:, :, u - up:u + down + 1, v - left:v + right + 1].flatten(1))
                        cs.append(X[:, :, u, v])
            q = x[:, :, i - up:i + down + 1, j - left:j + right + 1].flatten(1)
            out[:, :, i, j] = softmax_mean(q, torch.cat(Ps), torch.cat(cs), a, s)
    return out


def test_whole_image_patches_give_the_exact_denoiser(X, queries):
    x, a, s = queries
    ref = exact_reference(X, x, a, s)
    big = 2 * max(H, W) - 1  # a centred patch this large covers the whole image from every pixel
    for den in (LocalDenoiser(X, schedule=big), PatchCompositeDenoiser(X, schedule=max(H, W)),
                EquivariantLocalDenoiser(X, schedule=big), LocalDenoiser(X, schedule=99),
                WienerLocalDenoiser(X, schedule=max(H, W))):  # max(H, W)^2 >= H W pixels: all of them
        torch.testing.assert_close(den(x, a, s).double(), ref, rtol=0, atol=2e-5)


@pytest.mark.parametrize("k", [1, 3])
def test_local_is_the_per_pixel_same_location_posterior(X, queries, k):
    x, a, s = queries
    torch.testing.assert_close(LocalDenoiser(X, schedule=k)(x, a, s).double(), brute_local(X, x, a, s, k),
                               rtol=0, atol=2e-5)


def brute_footprints(X, lam, d):
    """Independent float64 footprints: the Wiener filter's Jacobian ``Sigma (Sigma + lam^2 I)^-1`` by a solve (no
    eigenbasis), pixel sensitivities summed over channel pairs, the pixel first, then by decreasing sensitivity
    (no ties in smooth random data): [H W, d] as sets."""
    Xf = X.double().flatten(1)
    Xc = Xf - Xf.mean(0)
    S = Xc.T @ Xc / len(X)
    J = torch.linalg.solve(S + lam ** 2 * torch.eye(len(S), dtype=S.dtype), S).T  # S (S + lam^2)^-1, symmetric
    sens = J.abs().reshape(C, H * W, C, H * W).sum((0, 2))
    sens.fill_diagonal_(math.inf)
    return [set(row.argsort(descending=True)[:d].tolist()) for row in sens]


def brute_wiener_local(X, x, a, s, footprints):
    """Pixel p: the float64 posterior over the training images restricted to the pixels ``footprints[b][p]``."""
    shape = x.shape
    X, x = X.double().flatten(2), x.double().flatten(2)  # [n, C, H W]
    out = torch.zeros_like(x)
    for b in range(len(x)):
        for p, fp in enumerate(footprints[b]):
            fp = torch.as_tensor(fp)
            out[b:b + 1, :, p] = softmax_mean(x[b:b + 1, :, fp].flatten(1), X[:, :, fp].flatten(1), X[:, :, p],
                                              a[b:b + 1], s[b:b + 1])
    return out.reshape(shape)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_local_wiener_follows_its_definition(X, queries, k):
    x, a, s = queries
    den = WienerLocalDenoiser(X, schedule=k)
    lams = (s / a).tolist()
    fps = [den.footprints(lam) for lam in lams]
    for fp, lam in zip(fps, lams):  # the footprints: the pixel first, then the filter's most sensitive pixels
        assert fp.shape == (H * W, k * k) and bool((fp[:, 0] == torch.arange(H * W)).all())
        assert [set(row.tolist()) for row in fp] == brute_footprints(X, lam, k * k)
    torch.testing.assert_close(den(x, a, s).double(), brute_wiener_local(X, x, a, s, fps), rtol=0, atol=2e-5)


def random_case(n, c, h, w, scale, offset, log_lam, alpha, near, seed):
    """Data ``[n, c, h, w]`` of any scale and offset, and two noisy queries at ``sigma / alpha = 10^log_lam scale``
    (``near``: of training images, where the posterior is peaked): ``X, x, alpha, sigma``."""
    g = torch.Generator().manual_seed(seed)
    Xd = offset + scale * torch.randn(n, c, h, w, generator=g)
    x0 = Xd[torch.randint(n, (2,), generator=g)] if near else offset + scale * torch.randn(2, c, h, w, generator=g)
    a = torch.full((2,), alpha, dtype=torch.float64)
    sg = a * (10 ** log_lam * scale)
    x = alpha * x0 + sg.float()[:, None, None, None] * torch.randn(x0.shape, generator=g)
    return Xd, x, a, sg


@settings(max_examples=settings.default.max_examples * 3 // 20, deadline=None)  # 60 in CI, 300 thorough
@given(n=st.integers(1, 30), c=st.integers(1, 2), h=st.integers(1, 6), w=st.integers(2, 6), k=st.integers(1, 4),
       scale=st.floats(1e-2, 1e2), offset=st.floats(-50, 50), log_lam=st.floats(-3, 1), alpha=st.floats(0.1, 1.0),
       near=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_local_wiener_matches_float64_at_any_size_scale_and_noise(n, c, h, w, k, scale, offset, log_lam, alpha,
                                                                 near, seed):
    """Property (Hypothesis): on any finite data (any scale and offset, one training image possible), at any
    noise level, each query's float32 estimate is within 1e-4 (relative L2, the exactness contract's measure) of
    the float64 posterior of the definition on the denoiser's own footprints, with the default float32 tier
    (``fast_delta``) and with the exact tiers alone. ``near``: queries close to a training image, where the
    posterior is peaked."""
    Xd, x, a, sg = random_case(n, c, h, w, scale, offset, log_lam, alpha, near, seed)
    case = dict(n=n, c=c, h=h, w=w, k=k, scale=scale, offset=offset, log_lam=log_lam, alpha=alpha, near=near,
                seed=seed)
    for fast_delta in (PATCH_FAST_DELTA, 1e-9):
        den = WienerLocalDenoiser(Xd, schedule=k, fast_delta=fast_delta)
        want = brute_wiener_local(Xd, x, a, sg, [den.footprints(float(l)) for l in (sg / a).tolist()])
        err = (den(x, a, sg).double() - want).flatten(1).norm(dim=1) / want.flatten(1).norm(dim=1)
        record("local-wiener" if fast_delta == PATCH_FAST_DELTA else "local-wiener, exact tiers", err.tolist(), case)
        assert float(err.max()) <= 1e-4


@given(n=st.integers(1, 30), c=st.integers(1, 2), h=st.integers(1, 9), w=st.integers(2, 9),
       k=st.sampled_from([1, 3, 5, 7]), scale=st.floats(1e-2, 1e2), offset=st.floats(-50, 50),
       log_lam=st.floats(-3, 1), alpha=st.floats(0.1, 1.0), near=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_local_matches_float64_at_any_size_scale_and_noise(n, c, h, w, k, scale, offset, log_lam, alpha, near,
                                                          seed):
    """Property (Hypothesis): the local score machine (``parzen-local``'s member at the lowest noise levels, where
    its posteriors are peaked) on any finite data, at any noise level: each query's float32 estimate is within 1e-4
    (relative L2, the exactness contract's measure) of the float64 per-pixel posterior of the definition, with the
    default float32 tier and with the exact tiers alone. ``near``: queries close to a training image."""
    Xd, x, a, sg = random_case(n, c, h, w, scale, offset, log_lam, alpha, near, seed)
    case = dict(n=n, c=c, h=h, w=w, k=k, scale=scale, offset=offset, log_lam=log_lam, alpha=alpha, near=near,
                seed=seed)
    want = brute_local(Xd, x, a, sg, k)
    for fast_delta in (PATCH_FAST_DELTA, 1e-9):
        got = LocalDenoiser(Xd, schedule=k, fast_delta=fast_delta)(x, a, sg).double()
        err = (got - want).flatten(1).norm(dim=1) / want.flatten(1).norm(dim=1)
        record("local" if fast_delta == PATCH_FAST_DELTA else "local, exact tiers", err.tolist(), case)
        assert float(err.max()) <= 1e-4


def test_wiener_footprints_of_independent_pixels_are_squares():
    """A diagonal covariance has a diagonal filter: every tie goes to the nearer pixel, so away from the border
    the footprint of k^2 pixels is the k x k square (the LS machine's patch)."""
    Hh, Ww = 7, 6
    eye = torch.eye(Hh * Ww, dtype=torch.float64)
    fp = wiener_footprints(eye, torch.ones(Hh * Ww, dtype=torch.float64), 0.3, (1, Hh, Ww), 9)
    for i in range(1, Hh - 1):
        for j in range(1, Ww - 1):
            want = {(i + u) * Ww + j + v for u in (-1, 0, 1) for v in (-1, 0, 1)}
            assert set(fp[i * Ww + j].tolist()) == want


@pytest.mark.parametrize("k", [2, 3])
def test_patch_composite_averages_square_posteriors(X, queries, k):
    x, a, s = queries
    torch.testing.assert_close(PatchCompositeDenoiser(X, schedule=k)(x, a, s).double(),
                               brute_composite(X, x, a, s, k), rtol=0, atol=2e-5)


@pytest.mark.parametrize("boundary", ["broken", "zero"])
def test_equivariant_local_follows_its_definition(X, queries, boundary):
    x, a, s = queries
    den = EquivariantLocalDenoiser(X[:12], schedule=3, boundary=boundary)
    torch.testing.assert_close(den(x, a, s).double(), brute_els(X[:12], x, a, s, 3, boundary), rtol=0, atol=2e-5)


@pytest.mark.parametrize("boundary", ["broken", "zero"])
def test_equivariant_local_with_repeated_patches_and_its_kept_banks(X, queries, boundary):
    """Training images that repeat, and a constant border (many equal patches): each distinct patch is held once
    with its count as weight, which must leave the posterior of the definition unchanged, call after call."""
    Xr = torch.cat([X[:6], X[:3]]).clone()
    Xr[:, :, 0, :] = -1.0  # a constant top row: equal patches at many locations
    x, a, s = queries
    den = EquivariantLocalDenoiser(Xr, schedule=3, boundary=boundary)
    want = brute_els(Xr, x, a, s, 3, boundary)
    for _ in range(2):  # the second call reads the banks the first one made
        torch.testing.assert_close(den(x, a, s).double(), want, rtol=0, atol=2e-5)


def test_exact_tiers_agree_with_the_fast_tier(X, queries):
    """The patch banks' float32 tier (fast_delta) against the exact tiers, at a low noise level."""
    x, a, s = queries
    s = s * 0.1
    fast = PatchCompositeDenoiser(X, schedule=3)(x, a, s)
    exact = PatchCompositeDenoiser(X, schedule=3, fast_delta=1e-5)(x, a, s)
    torch.testing.assert_close(fast.double(), brute_composite(X, x, a, s, 3), rtol=0, atol=1e-4)
    torch.testing.assert_close(exact.double(), brute_composite(X, x, a, s, 3), rtol=0, atol=2e-5)


def test_equivariance_of_els_and_its_absence_in_ls(X):
    """ELS's output at a pixel depends only on the patch there (translation equivariance in the interior);
    LS has one posterior per location and does not."""
    blob = images(1, seed=5)[:, :, :3, :3]
    q = torch.zeros(1, C, H, W)
    q[:, :, 0:3, 0:3] = blob
    q[:, :, 3:6, 2:5] = blob  # disjoint copies, centres (1, 1) and (4, 3), both interior
    for boundary in ("broken", "zero"):
        out = EquivariantLocalDenoiser(X, schedule=3, boundary=boundary)(q, 1.0, 0.4)
        torch.testing.assert_close(out[:, :, 1, 1], out[:, :, 4, 3])
    out = LocalDenoiser(X, schedule=3)(q, 1.0, 0.4)
    assert not torch.allclose(out[:, :, 1, 1], out[:, :, 4, 3], atol=1e-3)


@pytest.mark.parametrize("name", ["local", "local-equivariant", "patch-composite", "local-gaussian"])
def test_flip_equivariance_with_a_flip_closed_training_set(X, queries, name):
    """With the training set closed under horizontal flips, every patch machine commutes with the flip."""
    x, a, s = queries
    Xf = torch.cat([X[:20], X[:20].flip(-1)])
    den = DENOISERS[name](Xf, schedule=3)
    torch.testing.assert_close(den(x.flip(-1), a, s), den(x, a, s).flip(-1), rtol=0, atol=1e-5)


def test_local_gaussian_with_all_neighbours_and_whole_image_is_gaussian(X, queries):
    """One square (the image), K = N neighbours (all of them), no ridge: the Gaussian (Wiener) denoiser."""
    x, a, s = queries
    den = LocalGaussianDenoiser(X, schedule=max(H, W), neighbours=N, passes=1, ridge=0.0)
    torch.testing.assert_close(den(x, a, s), GaussianDenoiser(X)(x, a, s), rtol=0, atol=1e-4)


def test_local_gaussian_default_sides_are_capped_on_a_small_pool():
    """The default schedule's square holds at most 4 K pixels: on a pool of 10 images of 28 x 28 the whole-image
    level becomes 6 x 6 squares (the same estimate as asking for side 6); on a pool of 200 the cap does not bind
    (the calibrated 200 neighbours of whole images); an explicit schedule is never capped."""
    g = torch.Generator().manual_seed(5)
    X = torch.rand(10, 1, 28, 28, generator=g) * 2 - 1
    x = X[:2] + 3.0 * torch.randn(2, 1, 28, 28, generator=g)
    den = LocalGaussianDenoiser(X)
    lam = 3.0 * den.unit  # the 28-pixel level of the default schedule
    assert den.neighbour_count(lam) == 10 and den.patch_size(lam) == 6 == math.isqrt(4 * 10)
    torch.testing.assert_close(den(x, 1.0, lam), LocalGaussianDenoiser(X, schedule=6)(x, 1.0, lam), rtol=0, atol=0)
    assert LocalGaussianDenoiser(X, schedule=LocalGaussianDenoiser.default_schedule).patch_size(lam) == 28
    assert LocalGaussianDenoiser(torch.rand(200, 1, 28, 28, generator=g) * 2 - 1).patch_size(lam) == 28


def test_local_gaussian_restores_constant_background_exactly():
    """Squares whose neighbours are all identical have zero covariance: the estimate is that square."""
    X = -torch.ones(30, 1, 6, 6)
    X[:, :, 2:4, 2:4] = torch.rand(30, 1, 2, 2, generator=torch.Generator().manual_seed(3)) * 2 - 1
    x = -1 + 0.1 * torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(4))
    out = LocalGaussianDenoiser(X, schedule=2, neighbours=5, ridge=0.0)(x, 1.0, 0.1)
    torch.testing.assert_close(out[:, :, 0, :], -torch.ones(2, 1, 6))


@pytest.mark.parametrize("name", ["local", "local-equivariant", "local-wiener", "patch-composite", "local-gaussian"])
def test_shapes_alpha_zero_and_batched_sigma(X, queries, name):
    x, a, s = queries
    den = DENOISERS[name](X[:10])
    out = den(x, a, s)
    assert out.shape == x.shape and out.dtype == x.dtype and bool(torch.isfinite(out).all())
    for b in range(len(x)):  # a batch with mixed noise levels (and patch sizes) = one query at a time
        torch.testing.assert_close(den(x[b:b + 1], float(a[b]), float(s[b]))[0], out[b], rtol=0, atol=1e-5)
    torch.testing.assert_close(den(x, 0.0, 1.0), X[:10].double().mean(0).float().expand_as(x))
    assert bool(torch.isfinite(den(x, 1.0, 0.0)).all())  # sigma = 0 (a sampler's last step)


def test_schedule_picks_nearest_level_on_a_log_scale_and_rescales():
    sch = PatchSchedule((0.1, 1.0, 10.0), (3, 7, 15), reference=28)
    assert sch.size(0.01) == 3 and sch.size(0.2) == 3 and sch.size(0.5) == 7 and sch.size(1e3) == 15
    assert sch.size(math.inf) == 15  # alpha = 0
    assert sch.size(1.0, 56) == 14 and sch.size(1.0, 56, odd=True) == 15
    assert PatchSchedule.constant(5).size(123.0, 8) == 5


def test_calibrate_picks_the_size_with_the_lowest_validation_error(X):
    Xv = images(6, seed=7)
    sizes, table = validation_errors(PatchCompositeDenoiser, X, Xv, [0.05, 2.0], sizes=(1, 2, 5), seed=1)
    sch = calibrate(PatchCompositeDenoiser, X, Xv, [2.0, 0.05], sizes=(1, 2, 5), seed=1)
    unit = spread(X) / REFERENCE_SPREAD  # levels are stated for data of the reference spread
    assert sch.sigmas == pytest.approx((0.05 / unit, 2.0 / unit), rel=1e-12) and sch.reference == H
    assert sch.sizes == tuple(sizes[int(j)] for j in table.argmin(1))
    den = PatchCompositeDenoiser(X, schedule=sch)  # ... and read at this data's spread: the calibrated sizes
    assert (den.patch_size(0.05), den.patch_size(2.0)) == sch.sizes
    # the table entry is the validation MSE of that fixed size (recomputed independently)
    z = torch.randn(Xv.shape, generator=torch.Generator().manual_seed(1))
    mse = float(((PatchCompositeDenoiser(X, schedule=2)(Xv + 2.0 * z, 1.0, 2.0) - Xv).double() ** 2).mean())
    assert abs(mse - float(table[1, 1])) < 1e-9
    assert sch.sizes[1] >= sch.sizes[0]  # high noise needs larger patches here


def test_bad_input_and_options(X):
    den = PatchCompositeDenoiser(X, schedule=3)
    with pytest.raises(ValueError):
        den(torch.zeros(2, C, H, W + 1), 1.0, 0.5)
    with pytest.raises(ValueError, match="both be 0"):
        den(torch.zeros(2, C, H, W), 0.0, 0.0)
    for bad in ({"schedule": 0}, {"schedule": "big"}, {"chunk_size": 0}, {"fast_delta": 0.0},
                {"schedule": PatchSchedule((1.0, 2.0), (3,))}):
        with pytest.raises(ValueError):
            PatchCompositeDenoiser(X, **bad)
    with pytest.raises(ValueError):
        EquivariantLocalDenoiser(X, boundary="circular")
    with pytest.raises(ValueError):
        LocalGaussianDenoiser(X, passes=3)
    with pytest.raises(ValueError, match="image data"):
        LocalDenoiser(torch.zeros(5, 3))
    with pytest.raises(ValueError):
        calibrate(LocalDenoiser, X, X[:, :1], [0.1])
    with pytest.raises(ValueError):
        calibrate(LocalDenoiser, X, X, [])


def test_every_registered_denoiser_is_constructible_with_defaults():
    X = images(12, seed=8)
    x = images(2, seed=9)
    for name, cls in DENOISERS.items():
        den = cls(X)
        assert tuple(den.shape) == tuple(X.shape[1:]), name
        out = den(x, torch.tensor([1.0, 0.5], dtype=torch.float64), torch.tensor([0.2, 1.0], dtype=torch.float64))
        assert out.shape == x.shape and bool(torch.isfinite(out).all()), name


def test_blend_weights_fit_interpolate_and_select_members(X):
    from boneless.composites import BLEND_MEMBERS, BlendDenoiser
    Xv = images(8, seed=11)
    sig = (0.1, 1.0)
    onehot = torch.zeros(2, len(BLEND_MEMBERS), dtype=torch.float64)
    onehot[:, BLEND_MEMBERS.index("gaussian")] = 1
    x = images(3, seed=12)
    a, s = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64), torch.full((3,), 0.3, dtype=torch.float64)
    den = BlendDenoiser(X, sigmas=sig, weights=onehot)
    full = den.members(x, a, s)
    for name in ("local_gaussian", "composite", "local", "gmm"):  # weight 0 at every level: never called
        setattr(den, name, None)
    torch.testing.assert_close(den(x, a, s), GaussianDenoiser(X)(x, a, s), rtol=0, atol=1e-5)
    some = den.members(x, a, s, active=[m in ("gaussian", "identity") for m in BLEND_MEMBERS])
    torch.testing.assert_close(some[-2:], full[-2:], rtol=0, atol=0)
    assert not bool(some[:-2].any())
    onehot = torch.zeros_like(onehot)
    onehot[:, BLEND_MEMBERS.index("identity")] = 1
    ident = BlendDenoiser(X, sigmas=sig, weights=onehot)(x, a, s)
    torch.testing.assert_close(ident, x / a.float()[:, None, None, None])
    # fitted: least squares, so on the validation images no single member does better at a calibration level
    den = BlendDenoiser(X, validation=Xv, sigmas=sig, seed=3)
    unit = spread(X) / REFERENCE_SPREAD  # the levels are stated for data of the reference spread
    assert den.sigmas == pytest.approx((0.1 * unit, 1.0 * unit), rel=1e-12)
    sig = den.sigmas
    z = torch.randn(Xv.shape, generator=torch.Generator().manual_seed(4))  # the fit's noise draw (seed + 1)
    for i, sg in enumerate(sig):
        E = den.members(Xv + sg * z, 1.0, sg)
        blended = float(((torch.einsum("m,m...->...", den.weights[i], E) - Xv.double()) ** 2).mean())
        assert all(blended <= float(((e - Xv.double()) ** 2).mean()) + 1e-12 for e in E)
    # interpolation in log sigma, clamped beyond the calibration levels
    w = den.weights_at(torch.tensor([sig[0], sig[1], math.sqrt(sig[0] * sig[1]), 1e-3, 1e3], dtype=torch.float64))
    for got, want in ((w[0], den.weights[0]), (w[1], den.weights[1]), (w[2], den.weights.mean(0)),
                      (w[3], den.weights[0]), (w[4], den.weights[1])):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(den(x, 0.0, 1.0), X.double().mean(0).float().expand_as(x))


def test_blend_fit_shares_the_weight_of_members_equal_up_to_rounding(X, monkeypatch):
    """Two members equal up to float32 rounding (with `local-wiener` a member, it and `patch-composite` are both
    the whole-image posterior at the highest level): least squares must not fit huge opposite weights to that
    rounding, but share one weight between them. Without the cutoff it does."""
    from boneless import composites
    from boneless.composites import BLEND_MEMBERS, BlendDenoiser
    g = torch.Generator().manual_seed(4)
    V = images(16, seed=22)
    good = V.double() + 0.05 * torch.randn(V.shape, generator=g, dtype=torch.float64)
    twin = good * (1 + 1e-7 * torch.randn(V.shape, generator=g, dtype=torch.float64))  # float32 rounding
    rest = [torch.randn(V.shape, generator=g, dtype=torch.float64) for _ in BLEND_MEMBERS[2:]]
    i, j = BLEND_MEMBERS.index("local-gaussian"), BLEND_MEMBERS.index("composite")
    blend = BlendDenoiser(X, sigmas=(1.0,), weights=torch.zeros(1, len(BLEND_MEMBERS)), components=2)
    monkeypatch.setattr(blend, "members", lambda x, a, s: torch.stack([good, twin, *rest]))
    w = blend.fit(V)[0]
    assert float(w.abs().max()) < 2 and abs(float(w[i] - w[j])) < 1e-3 and abs(float(w[i] + w[j]) - 1) < 0.1
    monkeypatch.setattr(composites, "FIT_RCOND", None)
    assert float(blend.fit(V)[0].abs().max()) > 100  # the failure the cutoff prevents


def test_blend_refits_its_members_on_every_image_after_the_fit(X):
    """The weights come from members that did not see the validation images; with ``refit`` the same weights then
    serve members built on all of X (the registry's denoisers of those names), without it the members stay."""
    from boneless.composites import BlendDenoiser
    kw = dict(sigmas=(0.1, 1.0), holdout=4, components=2)
    refit, kept = BlendDenoiser(X, **kw), BlendDenoiser(X, refit=False, **kw)
    assert torch.equal(refit.weights, kept.weights)
    assert len(kept.local_gaussian.X) == len(kept.composite.X) == len(X) - 4
    for member in (refit.local_gaussian, refit.composite, refit.local):
        assert torch.equal(member.X, X)
    x = images(3, seed=13)
    want = torch.einsum("bm,mb...->b...", refit.weights_at(torch.full((3,), 0.3, dtype=torch.float64)),
                        torch.stack([e.double() for e in (
                            LocalGaussianDenoiser(X)(x, 1.0, 0.3), PatchCompositeDenoiser(X)(x, 1.0, 0.3),
                            WienerLocalDenoiser(X)(x, 1.0, 0.3), GMMDenoiser(X, components=2)(x, 1.0, 0.3),
                            GaussianDenoiser(X)(x, 1.0, 0.3), x)]))
    torch.testing.assert_close(refit(x, 1.0, 0.3), want.float(), rtol=0, atol=1e-5)
    torch.testing.assert_close(refit(x, 0.0, 1.0), X.double().mean(0).float().expand_as(x))


def test_coarse_to_fine_is_exact_above_the_switch_and_blend_below(X):
    from boneless.denoisers import EmpiricalDenoiser
    from boneless.composites import BLEND_MEMBERS, CoarseToFineDenoiser
    w = torch.rand(2, len(BLEND_MEMBERS), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    opts = {"sigmas": (0.1, 1.0), "weights": w}
    x = images(4, seed=13)
    a = torch.tensor([1.0, 0.5, 1.0, 0.0], dtype=torch.float64)
    s = torch.tensor([0.1, 1.0, 0.4, 1.0], dtype=torch.float64)  # sigma / alpha = 0.1, 2, 0.4, inf
    exact = EmpiricalDenoiser(X)(x, a, s)  # (batch composition changes float32 rounding: 1e-6 below)
    den = CoarseToFineDenoiser(X, switch=1.0, blend=opts)
    assert den.switch == pytest.approx(spread(X) / REFERENCE_SPREAD) and 0.4 < den.switch < 2  # at X's spread
    blend = den.blend(x, a, s)
    got = den(x, a, s)
    coarse = torch.tensor([False, True, False, True])
    torch.testing.assert_close(got[coarse], exact[coarse], rtol=0, atol=1e-6)
    torch.testing.assert_close(got[~coarse], blend[~coarse], rtol=0, atol=1e-6)
    assert float((exact[0] - blend[0]).abs().max()) > 1e-3  # the two members differ, so the split is seen
    torch.testing.assert_close(CoarseToFineDenoiser(X, switch=0.0, blend=opts)(x, a, s), exact, rtol=0, atol=1e-6)
    torch.testing.assert_close(CoarseToFineDenoiser(X, switch=math.inf, blend=opts)(x, a, s), blend, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="switch"):
        CoarseToFineDenoiser(X, switch=-1.0, blend=opts)


def test_parzen_local_is_parzen_above_the_switch_local_gaussian_below_and_local_at_the_bottom(X):
    from boneless.closed_form import ParzenDenoiser
    from boneless.composites import ParzenLocalDenoiser
    from boneless.patches import LocalDenoiser
    x = images(5, seed=13).double()
    a = torch.tensor([1.0, 0.5, 1.0, 0.0, 1.0], dtype=torch.float64)
    s = torch.tensor([0.05, 1.0, 0.4, 1.0, 0.02], dtype=torch.float64)  # sigma / alpha = 0.05, 2, 0.4, inf, 0.02
    den = ParzenLocalDenoiser(X, switch=1.0, low_switch=0.2, parzen=dict(neighbours=5))
    unit = spread(X) / REFERENCE_SPREAD
    assert den.switch == pytest.approx(unit) and 0.4 < den.switch < 2  # at X's spread
    assert den.low_switch == pytest.approx(0.2 * unit) and 0.05 < den.low_switch < 0.4
    parzen, middle = ParzenDenoiser(X, neighbours=5)(x, a, s), LocalGaussianDenoiser(X)(x, a, s)
    high, bottom = torch.tensor([False, True, False, True, False]), torch.tensor([True, False, False, False, True])
    mid = ~high & ~bottom
    low = torch.zeros_like(x)  # the bottom queries as the composite batches them (float32 rounding: 1e-6 above)
    low[bottom] = LocalDenoiser(X, schedule=3)(x[bottom], a[bottom], s[bottom])
    got = den(x, a, s)
    torch.testing.assert_close(got[high], parzen[high], rtol=0, atol=1e-12)
    torch.testing.assert_close(got[mid], middle[mid], rtol=0, atol=1e-6)
    torch.testing.assert_close(got[bottom], low[bottom], rtol=0, atol=1e-6)
    # the members differ, so each split is seen
    assert float((parzen[mid] - middle[mid]).abs().max()) > 1e-3
    assert float((middle[bottom] - low[bottom]).abs().max()) > 1e-3
    torch.testing.assert_close(ParzenLocalDenoiser(X, switch=0.0, low_switch=0.0, parzen=dict(neighbours=5))(x, a, s),
                               parzen)
    torch.testing.assert_close(ParzenLocalDenoiser(X, switch=math.inf, low_switch=0.0)(x, a, s), middle, rtol=0,
                               atol=1e-6)
    torch.testing.assert_close(ParzenLocalDenoiser(X, switch=math.inf, low_switch=math.inf, local=dict(schedule=5))(
        x, a, s), LocalDenoiser(X, schedule=5)(x, a, s), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="switch"):
        ParzenLocalDenoiser(X, switch=math.nan)
    with pytest.raises(ValueError, match="low_switch must be at most switch"):
        ParzenLocalDenoiser(X, switch=0.5, low_switch=1.0)


@pytest.mark.parametrize("middle, member_options", [("patch-composite", dict(schedule=5)),
                                                    ("blend", dict(holdout=8, components=3))])
def test_parzen_local_middle_names_the_member_between_the_switches(X, middle, member_options):
    """``middle="patch-composite"`` or ``"blend"``: that member, with the options of ``local_gaussian``, answers
    between the switches; above and below, the same members as the default."""
    from boneless.composites import PARZEN_LOCAL_MIDDLE, ParzenLocalDenoiser
    x = images(4, seed=17).double()
    a = torch.tensor([1.0, 0.5, 1.0, 1.0], dtype=torch.float64)
    s = torch.tensor([0.05, 1.0, 0.4, 0.3], dtype=torch.float64)  # sigma / alpha = 0.05, 2, 0.4, 0.3
    options = dict(switch=1.0, low_switch=0.2, parzen=dict(neighbours=5))
    default = ParzenLocalDenoiser(X, **options)
    den = ParzenLocalDenoiser(X, middle=middle, local_gaussian=member_options, **options)
    got, ref = den(x, a, s), default(x, a, s)
    mid = torch.tensor([False, False, True, True])
    member = PARZEN_LOCAL_MIDDLE[middle](X, **member_options)(x[mid], a[mid], s[mid])
    torch.testing.assert_close(got[mid], member, rtol=0, atol=1e-6)
    torch.testing.assert_close(got[~mid], ref[~mid], rtol=0, atol=0)
    assert float((got[mid] - ref[mid]).abs().max()) > 1e-3  # the members differ, so the choice is seen
    with pytest.raises(ValueError, match="middle must be one of local-gaussian, patch-composite, blend, got 'gmm'"):
        ParzenLocalDenoiser(X, middle="gmm")


@pytest.mark.parametrize("K, d", [(12, 5), (5, 12), (7, 7), (170, 160), (160, 170)])
def test_wiener_step_in_either_space_is_the_posterior_mean(K, d):
    """The local Gaussian's Wiener step ``mu + C (C + lam^2 I)^-1 (y - mu)``, solved in the d x d space or (K < d)
    the K x K Woodbury one, equals the plain float64 formula (one system at a time); at lam = 0 without ridge it
    returns y. Large systems with two threads: batched LU there gives wrong solutions (pytorch/pytorch#142815)."""
    from boneless.patches import _wiener_mean
    g = torch.Generator().manual_seed(K * 100 + d)
    B = 4
    nb = torch.randn(B, K, d, generator=g, dtype=torch.float64)
    mu = nb.mean(1)
    dev = nb - mu[:, None]
    y = torch.randn(B, d, generator=g, dtype=torch.float64)
    lam2 = torch.tensor([0.01, 0.3, 1.0, 4.0], dtype=torch.float64)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for ridge in (0.0, 1e-3):
            C = dev.transpose(1, 2) @ dev / K + ridge * torch.eye(d, dtype=torch.float64)
            want = torch.stack([mu[b] + C[b] @ torch.linalg.solve(C[b] + lam2[b] * torch.eye(d, dtype=torch.float64),
                                                                 y[b] - mu[b]) for b in range(B)])
            torch.testing.assert_close(_wiener_mean(dev, y, y - mu, lam2, ridge), want, rtol=1e-8, atol=1e-8)
        zero = torch.zeros(B, dtype=torch.float64)
        torch.testing.assert_close(_wiener_mean(dev, y, y - mu, zero, 0.0), y, rtol=0, atol=1e-8)
    finally:
        torch.set_num_threads(threads)


def per_location_local_gaussian(den, x, sigma):
    """The local Gaussian as it was before its locations were batched: one bank per location and pass, one
    Wiener step per location (single patch size, alpha = 1, mean aggregation, no shift)."""
    from boneless.bank import Bank
    from boneless.patches import _wiener_mean
    B, C_, H_, W_ = x.shape
    k = den.patch_size(sigma)
    kh, kw = min(k, H_), min(k, W_)
    K = min(den.neighbours.size(sigma / den.unit), len(den.X))
    a = torch.ones(B, dtype=torch.float64)
    s = torch.full((B,), sigma, dtype=torch.float64)
    lam2 = s ** 2
    est = None
    for _ in range(den.passes):
        total = torch.zeros(x.shape, dtype=torch.float64)
        count = torch.zeros(x.shape, dtype=torch.float64)
        for i in range(H_ - kh + 1):
            for j in range(W_ - kw + 1):
                rows = den.X[:, :, i:i + kh, j:j + kw].reshape(len(den.X), -1)
                bank = Bank(rows, chunk_size=den.chunk_size, fast_delta=den.fast_delta)
                src, aq, sq = (x, a, s) if est is None else (est.float(), a, torch.ones_like(s))
                st = bank.reduce(src[:, :, i:i + kh, j:j + kw].reshape(B, -1), aq, sq, k=K, entropy=False)
                nb = rows[st.top_i.clamp(min=0)].double()
                mu = nb.mean(1)
                yS = x[:, :, i:i + kh, j:j + kw].reshape(B, -1).double()
                e = _wiener_mean(nb - mu[:, None], yS, yS - mu, lam2, den.ridge * den.unit ** 2)
                total[:, :, i:i + kh, j:j + kw] += e.reshape(B, C_, kh, kw)
                count[:, :, i:i + kh, j:j + kw] += 1
        est = total / count
    return est.float()


@pytest.mark.parametrize("sigma", [1e-3, 0.05, 0.4, 3.0])
def test_batched_locations_equal_one_bank_per_location(X, queries, sigma, monkeypatch):
    """The patch posteriors of many locations in one batched reduction equal one Bank.reduce per location (means
    to float32 rounding, the same top-k rows), in the float32 tier and past it (sigma 1e-3: the bank's exact
    tiers), with the queries split into blocks or not."""
    from boneless.bank import Bank
    from boneless.patches import PATCH_FAST_DELTA, _reduce_locations, _square_columns, _square_rows
    x = queries[0]
    a = torch.tensor([1.0, 0.8, 1.0, 0.5], dtype=torch.float64)
    s = torch.full((4,), sigma, dtype=torch.float64)
    s[0] = 1e-3  # one query past the float32 tier at every sigma
    locs = [(i, j) for i in range(H - 2) for j in range(W - 2)]
    R, q = _square_columns(X.permute(2, 3, 1, 0).contiguous(), 3, 3, locs), _square_rows(x, 3, 3, locs)
    torch.testing.assert_close(R.transpose(1, 2), _square_rows(X, 3, 3, locs), rtol=0, atol=0)  # one order
    mean, top = _reduce_locations(R, q, a, s, k=5, fast_delta=PATCH_FAST_DELTA, chunk_size=16)
    for l in range(len(locs)):
        st = Bank(R[l].T, chunk_size=16, fast_delta=PATCH_FAST_DELTA).reduce(q[l], a, s, k=5, entropy=False)
        torch.testing.assert_close(mean[l], st.acc / st.s.float()[:, None], rtol=0, atol=2e-6)
        assert torch.equal(top[l].sort(1).values, st.top_i.sort(1).values)
    monkeypatch.setattr("boneless.patches.LOCATION_BLOCK", len(locs) * N)  # one query per block
    mean_b, top_b = _reduce_locations(R, q, a, s, k=5, fast_delta=PATCH_FAST_DELTA, chunk_size=16)
    torch.testing.assert_close(mean_b, mean, rtol=0, atol=1e-6)
    assert torch.equal(top_b, top)
    # only some values of each location's mean (the local score's own pixel), the exact tiers' queries included
    cols = torch.randint(0, R.shape[1], (len(locs), 2), generator=torch.Generator().manual_seed(3))
    part, _ = _reduce_locations(R, q, a, s, fast_delta=PATCH_FAST_DELTA, chunk_size=16, columns=cols)
    torch.testing.assert_close(part, mean.gather(2, cols[:, None].expand(-1, len(a), -1)), rtol=0, atol=1e-6)


@pytest.mark.parametrize("side", [3, max(H, W)])
@pytest.mark.parametrize("sigma", [0.05, 0.5, 2.0])
def test_local_gaussian_equals_its_per_location_form(X, queries, sigma, side, monkeypatch):
    """The batched local Gaussian (locations in blocks, Wiener steps batched over locations) equals the plain
    per-location computation, with blocks of every size; also with the whole image as the square (the default at
    high noise), where the K < N nearest images make a Gaussian that is not the Wiener filter's."""
    x = queries[0]
    den = LocalGaussianDenoiser(X, schedule=side, neighbours=6)
    want = per_location_local_gaussian(den, x, sigma)
    torch.testing.assert_close(den(x, 1.0, sigma), want, rtol=0, atol=1e-5)
    assert (want - GaussianDenoiser(X)(x, 1.0, sigma)).abs().max() > 0.1  # not the Wiener filter
    monkeypatch.setattr("boneless.patches.LOCATION_BLOCK", 3 * N * C * 9)  # three locations per block
    monkeypatch.setattr("boneless.patches.WIENER_BLOCK", 2 * 6 * C * 9 * len(x))  # two per Wiener step
    torch.testing.assert_close(den(x, 1.0, sigma), want, rtol=0, atol=1e-5)
