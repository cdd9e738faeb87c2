"""Samplers: they land on training points, converge at their order, and are reproducible per seed."""

import math

import pytest
import torch

import boneless
from boneless import EmpiricalDenoiser, SAMPLERS, sample
from boneless.metrics import copy_rate, nearest
from boneless.schedules import get_schedule, time_grid
from boneless.samplers import euler, heun


@pytest.fixture(scope="module")
def digits():
    return boneless.load_dataset("digits", limit=400)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
@pytest.mark.parametrize("schedule", ["rectified-flow", "vp-cosine", "ve", "edm"])
def test_samplers_land_on_training_points(digits, sampler, schedule):
    den = EmpiricalDenoiser(digits)
    res = sample(den, schedule, n=6, steps=40, sampler=sampler, seed=1)
    assert res.samples.shape == (6, 1, 8, 8)
    assert copy_rate(res.samples, digits) == 1.0
    d, _ = nearest(res.samples, digits, k=1)
    assert d.max() < 0.05 * math.sqrt(64)


def test_identical_samples_per_seed(digits):
    den = EmpiricalDenoiser(digits)
    for sampler in ("euler", "ddpm", "euler-maruyama"):
        a = sample(den, "rf", n=4, steps=20, sampler=sampler, seed=3, noise_strength=(1.0, 0.0)).samples
        b = sample(den, "rf", n=4, steps=20, sampler=sampler, seed=3, noise_strength=(1.0, 0.0)).samples
        c = sample(den, "rf", n=4, steps=20, sampler=sampler, seed=4, noise_strength=(1.0, 0.0)).samples
        assert torch.equal(a, b)
        assert not torch.equal(a, c)


def test_a_given_start_noise(digits):
    """``noise`` is the seed's draw made explicit; a deterministic sampler makes each sample from its own start,
    so the first rows of a larger run are a smaller run from the first rows of its noise."""
    den = EmpiricalDenoiser(digits)
    z = torch.randn((6, 1, 8, 8), generator=torch.Generator().manual_seed(5))
    for sampler in ("euler", "heun", "ddim"):
        seeded = sample(den, "rf", n=6, steps=15, sampler=sampler, seed=5).samples
        given = sample(den, "rf", noise=z, steps=15, sampler=sampler, seed=99).samples  # the seed draws nothing
        assert torch.equal(seeded, given)
        first = sample(den, "rf", noise=z[:2], steps=15, sampler=sampler).samples
        assert torch.allclose(first, given[:2], atol=1e-5)
    run_a = boneless.samplers.start(den, "rf", noise=z, steps=4)
    run_b = boneless.samplers.start(den, "rf", noise=z + 1e-3, steps=4)
    assert run_a.settings["noise"] != run_b.settings["noise"]  # a checkpoint resumes only from its own start
    with pytest.raises(ValueError, match="noise must be"):
        sample(den, "rf", noise=torch.full((2, 1, 8, 8), float("nan")))
    with pytest.raises(ValueError, match="noise must be"):
        sample(den, "rf", noise=torch.zeros(5))


def test_sampling_never_touches_the_global_rng(digits):
    den = EmpiricalDenoiser(digits)
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    sample(den, "rf", n=2, steps=5, sampler="ddpm", seed=0)
    assert torch.equal(torch.rand(3), before)


class GaussianDenoiser:
    """E[x0 | x_t] for data x0 ~ N(mu, s^2 I), derived independently of the library:
    x0_hat = mu + alpha s^2 / (alpha^2 s^2 + sigma^2) (x - alpha mu)."""

    def __init__(self, mu, s):
        self.mu, self.s, self.shape = mu, s, (len(mu),)

    def __call__(self, x, alpha, sigma):
        alpha = torch.as_tensor(alpha, dtype=x.dtype).reshape(-1, 1)
        sigma = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1)
        gain = alpha * self.s ** 2 / (alpha ** 2 * self.s ** 2 + sigma ** 2)
        return self.mu + gain * (x - alpha * self.mu)


def exact_gaussian_endpoint(x1, mu, s, c1):
    """The probability-flow ODE of Gaussian data keeps z = (x_t - alpha mu) / sqrt(alpha^2 s^2 + sigma^2) fixed."""
    z = (x1 - c1.alpha * mu) / math.sqrt(c1.alpha ** 2 * s ** 2 + c1.sigma ** 2)
    return mu + s * z


@pytest.mark.parametrize("schedule", ["rectified-flow", "vp-cosine"])
def test_euler_first_order_heun_second_order(schedule):
    mu, s = torch.tensor([0.3, -0.5], dtype=torch.float64), 0.4
    den = GaussianDenoiser(mu, s)
    sch = get_schedule(schedule)
    x1 = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t_max = 0.98  # vp-cosine's velocity has a 1/cos singularity at t = 1 on Gaussian data; start just below
    exact = exact_gaussian_endpoint(x1, mu, s, sch(t_max))
    errors = {}
    for name, fn in (("euler", euler), ("heun", heun)):
        errs = []
        for steps in (10, 20, 40):
            ts = time_grid(sch, steps, spacing="uniform", t_max=t_max)
            errs.append(float((fn(den, sch, x1.clone(), ts) - exact).abs().max()))
        errors[name] = errs
    orders = {k: [math.log2(v[i] / v[i + 1]) for i in range(2)] for k, v in errors.items()}
    assert all(0.8 < o < 1.3 for o in orders["euler"]), orders
    assert all(1.7 < o < 2.5 for o in orders["heun"]), orders
    assert errors["heun"][-1] < errors["euler"][-1] / 4


def test_an_explicit_time_grid_is_the_named_grid_given_by_hand(digits):
    """``times`` runs exactly the grid it is given: the Karras grid passed by hand gives the Karras samples, a grid
    of its own differs, and a grid that does not decrease in [0, 1] (or comes with ``spacing``) is refused."""
    den, rf = EmpiricalDenoiser(digits), get_schedule("rectified-flow")
    named = sample(den, rf, n=4, steps=6, seed=3, sampler="heun", spacing="karras")
    given = sample(den, rf, n=4, seed=3, sampler="heun", times=time_grid(rf, 6, spacing="karras").tolist())
    assert torch.equal(named.samples, given.samples) and torch.equal(named.ts, given.ts)
    split = sample(den, rf, n=4, steps=6, seed=3, sampler="heun", spacing="split")
    by_hand = torch.cat([torch.linspace(1, 0.6, 4, dtype=torch.float64), time_grid(rf, 3, spacing="karras", t_max=0.6)[1:]])
    assert torch.equal(split.ts, by_hand)
    assert torch.equal(split.samples, sample(den, rf, n=4, seed=3, sampler="heun", times=by_hand.tolist()).samples)
    own = sample(den, rf, n=4, seed=3, sampler="heun", times=[1.0, 0.9, 0.8, 0.6, 0.3, 0.05, 0.0])
    assert len(own.ts) == 7 and float((own.samples - named.samples).abs().max()) > 1e-3
    for bad in ([1.0], [1.0, 0.5, 0.5, 0.0], [0.5, 0.7, 0.0], [1.2, 0.5, 0.0], [1.0, 0.5, -0.1], [1.0, math.nan]):
        with pytest.raises(ValueError, match="times must be"):
            sample(den, rf, n=2, times=bad)
    with pytest.raises(ValueError, match="spacing or times"):
        sample(den, rf, n=2, times=[1.0, 0.0], spacing="karras")


def test_default_knobs_are_the_identity_and_knobs_act(digits):
    den = EmpiricalDenoiser(digits)
    base = sample(den, "rf", n=4, steps=20, seed=2).samples
    same = sample(den, "rf", n=4, steps=20, seed=2, flow_scale=(1.0, 1.0), noise_strength=(0.0, 0.0)).samples
    assert torch.equal(base, same)
    noisy = sample(den, "rf", n=4, steps=20, seed=2, noise_strength=(1.0, 0.0)).samples
    assert not torch.equal(base, noisy)
    # the notebook's settings (flow 0 -> 1, noise 1 -> 0) still end on training examples
    nb = sample(den, "rf", n=4, steps=60, seed=2, flow_scale=(0.0, 1.0), noise_strength=(1.0, 0.0)).samples
    assert nb.shape == base.shape and torch.isfinite(nb).all()


def test_softmax_temperature_flattens_the_posterior(digits):
    sharp = sample(EmpiricalDenoiser(digits), "rf", n=8, steps=30, seed=0)
    flat = sample(EmpiricalDenoiser(digits, temperature=50.0), "rf", n=8, steps=30, seed=0)
    n_eff_sharp = torch.stack(sharp.trajectory.n_eff)[-5:].mean()
    n_eff_flat = torch.stack(flat.trajectory.n_eff)[-5:].mean()
    assert n_eff_flat > n_eff_sharp


def test_trajectory_recording(digits):
    den = EmpiricalDenoiser(digits)
    res = sample(den, "rf", n=3, steps=25, seed=0, record_every=5, top_k=4)
    tr = res.trajectory.stacked()
    assert tr["x"].shape == (6, 3, 1, 8, 8)  # steps 0, 5, 10, 15, 20 and the last (24)
    assert tr["steps"].tolist() == [0, 5, 10, 15, 20, 24]
    assert tr["weights"].shape == (25, 3, 4) and tr["indices"].shape == (25, 3, 4)
    assert tr["n_eff"][0].min() > 100 and tr["n_eff"][-1].max() < 1.5  # the posterior collapses
    assert res.denoiser_calls == 25
    # the last recorded posterior's top example is the nearest training example of the sample
    _, idx = nearest(res.samples, digits, k=1)
    assert torch.equal(tr["indices"][-1, :, 0], idx[:, 0])


def test_any_callable_denoiser_works():
    mu = torch.tensor([0.1, 0.2])
    res = sample(GaussianDenoiser(mu, 0.3), "rf", n=500, steps=50, sampler="heun", seed=0)
    assert torch.allclose(res.samples.mean(0), mu, atol=0.05)
    assert res.samples.std(0).mean() == pytest.approx(0.3, rel=0.15)


def test_bad_sampler_arguments(digits):
    den = EmpiricalDenoiser(digits)
    with pytest.raises(ValueError, match="sampler"):
        sample(den, "rf", sampler="rk45")
    with pytest.raises(ValueError, match="n must"):
        sample(den, "rf", n=0)
    with pytest.raises(ValueError, match="steps"):
        sample(den, "rf", steps=0)
    with pytest.raises(ValueError, match="noise_strength"):
        sample(den, "rf", noise_strength=(-1.0, 0.0))
    with pytest.raises(ValueError, match="schedule"):
        sample(den, "nope")


def test_record_chosen_steps(digits):
    res = sample(EmpiricalDenoiser(digits), "rf", n=2, steps=10, seed=0, record_steps=[0, 3, 9])
    assert res.trajectory.steps == [0, 3, 9]
    with pytest.raises(ValueError, match="record_steps"):
        sample(EmpiricalDenoiser(digits), "rf", n=2, steps=10, record_steps=[10])
