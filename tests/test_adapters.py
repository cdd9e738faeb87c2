"""Adapters: k-diffusion's and diffusers' own, unmodified samplers driven by the ideal denoiser match boneless's
samplers on the same grid, and the wrappers of trained networks are the conversions they claim to be."""

import importlib
import importlib.util
import math
import sys
import types
from dataclasses import dataclass

import pytest
import torch

from boneless.adapters import from_diffusers, from_k_diffusion, to_diffusers, to_k_diffusion
from boneless.denoisers import exact_reference
from boneless.samplers import ddim, ddpm, euler, heun
from boneless.schedules import EDM, Coeffs, RectifiedFlow

# float64 rounding, amplified a little over a few dozen steps (both sides do the same float64 arithmetic in a
# different order): far below any real disagreement, which would be of the order of the step size
FLOAT64_RTOL = 1e-9
# diffusers computes the step coefficients of DDPM and DDIM in float32 from float32 ``alphas_cumprod`` (which
# the boneless side reads too), so only their square roots and products are rounded: unit roundoff 6e-8 on
# samples of size ~1, a few per step, over K <= 25 steps (measured: 1.5e-9)
COEF32_ATOL = 1e-6
# Euler and flow matching cast the sample itself to float32: the same, plus the rounding of the sample, which is
# large at the start (sigma_max ~ 157 for Euler) and shrinks with it (measured: 1.6e-7 at the end)
FLOAT32_ATOL = 5e-6


@pytest.fixture(scope="module")
def X():
    from boneless import load_dataset
    return load_dataset("digits", limit=48).double()  # [48, 1, 8, 8]


def ideal_of(X):
    """The exact empirical denoiser in float64 (the plain formula), answering in the query's type."""
    def den(x, alpha, sigma):
        return exact_reference(X, x, alpha, sigma).to(x.dtype)
    return den


def nearest_index(samples, X):
    d = torch.cdist(samples.reshape(len(samples), -1).double(), X.reshape(len(X), -1))
    return d.min(1)


@pytest.fixture(scope="module")
def k_sampling():
    """``k_diffusion.sampling``, unmodified. The package's ``__init__`` imports its training and evaluation code
    (models, CLIP, torchvision), which its samplers do not use, and torchvision's CPU wheels do not load with
    this torch. So the package is entered without running its ``__init__``, and ``k_diffusion.utils`` (which
    ``sampling`` imports for ``append_dims``) is given a stand-in for the one torchvision module it imports at
    the top (used only by its image-file helpers) when the real one cannot be imported."""
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None:
        pytest.skip("k-diffusion is not installed (pip install --no-deps k-diffusion; see .ci/run)")
    added = {}
    if "k_diffusion" not in sys.modules:
        package = types.ModuleType("k_diffusion")
        package.__path__ = list(spec.submodule_search_locations)
        added["k_diffusion"] = package
    try:
        importlib.import_module("torchvision.transforms.functional")
    except Exception:  # missing, or a wheel built for another torch (fails with various errors)
        for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional"):
            sys.modules.pop(name, None)
            added[name] = types.ModuleType(name)
        added["torchvision"].transforms = added["torchvision.transforms"]
        added["torchvision.transforms"].functional = added["torchvision.transforms.functional"]
    sys.modules.update(added)
    try:
        sampling = importlib.import_module("k_diffusion.sampling")
    finally:  # take the stand-ins out again at once: other libraries (diffusers) look for torchvision too
        for name in added:
            del sys.modules[name]
        if "k_diffusion" in added:
            sys.modules.pop("k_diffusion.sampling", None)
            sys.modules.pop("k_diffusion.utils", None)
    return sampling


# ---- k-diffusion -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["euler", "heun"])
def test_k_diffusion_samplers_follow_boneless_trajectory(k_sampling, X, name):
    """k-diffusion's sample_euler / sample_heun over get_sigmas_karras and boneless's euler / heun on the EDM
    schedule over the same sigmas are the same method: same samples, and they are training examples."""
    den = ideal_of(X)
    sigmas = k_sampling.get_sigmas_karras(20, 0.002, 80.0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn((8, *X.shape[1:]), generator=g, dtype=torch.float64) * float(sigmas[0])
    k_out = getattr(k_sampling, f"sample_{name}")(to_k_diffusion(den), x.clone(), sigmas, disable=True)
    ours = {"euler": euler, "heun": heun}[name](den, EDM(sigma_max=80.0), x.clone(), sigmas.double() / 80.0)
    torch.testing.assert_close(k_out, ours, rtol=FLOAT64_RTOL, atol=FLOAT64_RTOL)
    dist, _ = nearest_index(k_out, X)
    assert float(dist.max()) < 1e-6  # they end on training examples


def test_k_diffusion_dpmpp_2m_ends_on_the_same_examples(k_sampling, X):
    den = ideal_of(X)
    sigmas = k_sampling.get_sigmas_karras(25, 0.002, 80.0)
    x = torch.randn((16, *X.shape[1:]), generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 80.0
    k_out = k_sampling.sample_dpmpp_2m(to_k_diffusion(den), x.clone(), sigmas, disable=True)
    ours = heun(den, EDM(sigma_max=80.0), x.clone(), sigmas.double() / 80.0)
    k_dist, k_idx = nearest_index(k_out, X)
    our_dist, our_idx = nearest_index(ours, X)
    assert float(k_dist.max()) < 1e-6 and float(our_dist.max()) < 1e-6
    assert k_idx.tolist() == our_idx.tolist()
    assert len(set(our_idx.tolist())) > 4  # not all collapsed onto one example


def test_from_k_diffusion_is_the_ve_rescaling(X):
    """For the empirical denoiser, ``D(x, alpha, sigma) = D_ve(x / alpha, sigma / alpha)`` exactly (its logits
    depend on ``|x - alpha x_i|^2 / sigma^2``), so wrapping to k-diffusion and back is the identity."""
    den = ideal_of(X)
    back = from_k_diffusion(to_k_diffusion(den))
    x = torch.randn((5, *X.shape[1:]), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    alpha = torch.tensor([1.0, 0.9, 0.5, 0.1, 0.02], dtype=torch.float64)
    sigma = torch.tensor([0.05, 0.3, 0.8, 0.99, 1.5], dtype=torch.float64)
    torch.testing.assert_close(back(x, alpha, sigma), den(x, alpha, sigma), rtol=1e-12, atol=1e-12)
    # alpha = 0 (pure noise): read at sigma_max, on the point rescaled to that level's spread
    lam = 80.0
    torch.testing.assert_close(back(x, 0.0, 2.0), den(x * math.sqrt(1 + lam * lam) / 2.0, 1.0, lam),
                               rtol=1e-12, atol=1e-12)


# ---- diffusers ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OnGrid:
    """A schedule known only on grid points ``t = i / K``: the coefficients of a diffusers loop's steps."""

    alphas: tuple
    sigmas: tuple
    name: str = "on-grid"

    def __call__(self, t):
        i = round(float(t) * (len(self.alphas) - 1))
        return Coeffs(self.alphas[i], self.sigmas[i], math.nan, math.nan)


def vp_grid(scheduler):
    """The loop's (alpha, sigma) from t = 1 to t = 0: ``abar`` at each timestep, then the final ``abar = 1``."""
    abar = scheduler.alphas_cumprod.double()
    ab = [float(abar[int(t)]) for t in scheduler.timesteps] + [1.0]
    alphas = tuple(reversed([math.sqrt(a) for a in ab]))  # indexed by t * K: t = 0 first
    sigmas = tuple(reversed([math.sqrt(1 - a) for a in ab]))
    return OnGrid(alphas, sigmas), torch.linspace(1, 0, len(ab), dtype=torch.float64)


def diffusers_loop(f, scheduler, x, generator=None):
    """diffusers' standard loop, with ``f`` where the UNet is called (flow-matching pipelines scale nothing)."""
    scale = getattr(scheduler, "scale_model_input", lambda x, t: x)
    for t in scheduler.timesteps:
        model_input = scale(x, t)
        kwargs = {"generator": generator} if generator is not None else {}
        x = scheduler.step(f(model_input, t), t, x, **kwargs).prev_sample
    return x


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_diffusers_ddim_matches_boneless_ddim(X, prediction_type):
    diffusers = pytest.importorskip("diffusers")
    sch = diffusers.DDIMScheduler(prediction_type=prediction_type, clip_sample=False)
    sch.set_timesteps(20)
    den = ideal_of(X)
    x = torch.randn((8, *X.shape[1:]), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    theirs = diffusers_loop(to_diffusers(den, sch), sch, x.clone())
    schedule, ts = vp_grid(sch)
    ours = ddim(den, schedule, x.clone(), ts)
    torch.testing.assert_close(theirs, ours, rtol=0, atol=COEF32_ATOL)
    assert float(nearest_index(ours, X)[0].max()) < 1e-3  # landed on training examples


def test_diffusers_ddpm_matches_boneless_ddpm_draw_for_draw(X):
    """DDPM's posterior step is DDIM with eta = 1 (Song et al. 2021); both draw their noise from the generator in
    the same order, so with the same seed the stochastic trajectories are the same."""
    diffusers = pytest.importorskip("diffusers")
    sch = diffusers.DDPMScheduler(clip_sample=False)
    sch.set_timesteps(25)
    den = ideal_of(X)
    x = torch.randn((8, *X.shape[1:]), generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    theirs = diffusers_loop(to_diffusers(den, sch), sch, x.clone(), torch.Generator().manual_seed(5))
    schedule, ts = vp_grid(sch)
    ours = ddpm(den, schedule, x.clone(), ts, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(theirs, ours, rtol=0, atol=COEF32_ATOL)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_diffusers_euler_matches_boneless_euler(X, prediction_type):
    """EulerDiscreteScheduler steps its VE sample with ``d = (x - x0_hat) / sigma``: boneless's euler on the VE
    (EDM) schedule over the scheduler's own sigmas, from the same start."""
    diffusers = pytest.importorskip("diffusers")
    sch = diffusers.EulerDiscreteScheduler(prediction_type=prediction_type)
    sch.set_timesteps(20)
    den = ideal_of(X)
    z = torch.randn((8, *X.shape[1:]), generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    x = z * float(sch.init_noise_sigma)
    theirs = diffusers_loop(to_diffusers(den, sch), sch, x.clone())
    sigmas = sch.sigmas.double()
    ours = euler(den, EDM(sigma_max=float(sigmas[0])), x.clone(), sigmas / sigmas[0])
    torch.testing.assert_close(theirs.double(), ours, rtol=0, atol=FLOAT32_ATOL)


def test_diffusers_flow_matching_matches_boneless_rectified_flow(X):
    diffusers = pytest.importorskip("diffusers")
    sch = diffusers.FlowMatchEulerDiscreteScheduler()
    sch.set_timesteps(20)
    den = ideal_of(X)
    x = torch.randn((8, *X.shape[1:]), generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    theirs = diffusers_loop(to_diffusers(den, sch), sch, x.clone())
    ours = euler(den, RectifiedFlow(), x.clone(), sch.sigmas.double())
    torch.testing.assert_close(theirs.double(), ours, rtol=0, atol=FLOAT32_ATOL)
    assert float(nearest_index(ours, X)[0].max()) < 1e-3


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction", "flow"])
def test_from_diffusers_inverts_to_diffusers(X, prediction_type):
    """At the scheduler's own noise levels (any scaling of the query: the empirical denoiser only sees
    ``sigma / alpha`` and ``x / alpha``), wrapping to diffusers and back is the identity."""
    diffusers = pytest.importorskip("diffusers")
    if prediction_type == "flow":
        sch = diffusers.FlowMatchEulerDiscreteScheduler()
        s = torch.tensor([1.0, 0.7, 0.3, 0.01], dtype=torch.float64)
        alpha, sigma = 2 * (1 - s), 2 * s
    else:
        sch = diffusers.DDPMScheduler(prediction_type=prediction_type)
        abar = sch.alphas_cumprod.double()[[999, 500, 100, 0]]
        alpha, sigma = 3 * abar.sqrt(), 3 * (1 - abar).sqrt()
    den = ideal_of(X)
    back = from_diffusers(to_diffusers(den, sch), sch)
    x = torch.randn((4, *X.shape[1:]), generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    torch.testing.assert_close(back(x, alpha, sigma), den(x, alpha, sigma), rtol=1e-9, atol=1e-9)


def test_from_diffusers_feeds_a_unet_what_it_was_trained_on():
    """A tiny random UNet2DModel (v-prediction): the wrapper gives it ``x / c`` at the timestep of the query and
    returns ``sqrt(abar) x_in - sqrt(1 - abar) v``; boneless's sampler runs on it."""
    diffusers = pytest.importorskip("diffusers")
    import boneless

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8),
                                 layers_per_block=1, norm_num_groups=4, down_block_types=("DownBlock2D",) * 2,
                                 up_block_types=("UpBlock2D",) * 2).eval()
    sch = diffusers.DDPMScheduler(prediction_type="v_prediction")
    den = from_diffusers(unet, sch)
    k, c = 600, 2.0
    abar = float(sch.alphas_cumprod[k])
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        v = unet(x / c, torch.tensor([k] * 3)).sample
    expected = math.sqrt(abar) * x / c - math.sqrt(1 - abar) * v
    torch.testing.assert_close(den(x, c * math.sqrt(abar), c * math.sqrt(1 - abar)), expected,
                               rtol=1e-5, atol=1e-5)
    res = boneless.sample(den, "rectified-flow", n=2, steps=4, shape=(1, 8, 8), seed=0)
    assert res.samples.shape == (2, 1, 8, 8) and bool(torch.isfinite(res.samples).all())


def test_diffusers_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers now raises ImportError
    with pytest.raises(ValueError, match=r"pip install 'boneless-flow\[adapters\]'"):
        to_diffusers(lambda x, a, s: x, object())
