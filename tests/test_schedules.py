import math

import pytest
import torch

from boneless.schedules import SCHEDULES, get_schedule, lam_of_t, time_grid


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_derivatives_match_finite_differences(name):
    s = get_schedule(name)
    for t in (0.1, 0.37, 0.5, 0.81):
        h = 1e-6
        c, up, down = s(t), s(t + h), s(t - h)
        assert c.d_alpha == pytest.approx((up.alpha - down.alpha) / (2 * h), rel=1e-5, abs=1e-6)
        assert c.d_sigma == pytest.approx((up.sigma - down.sigma) / (2 * h), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_tensor_and_float_agree(name):
    s = get_schedule(name)
    t = torch.tensor([0.05, 0.3, 0.7, 0.95], dtype=torch.float64)
    ct = s(t)
    for i, ti in enumerate(t.tolist()):
        cf = s(ti)
        for a, b in zip(ct, cf):
            assert float(a[i]) == pytest.approx(b, rel=1e-12)


@pytest.mark.parametrize("name", ["vp-cosine", "vp-linear"])
def test_variance_preserving(name):
    s = get_schedule(name)
    for t in (0.01, 0.5, 0.99):
        c = s(t)
        assert c.alpha ** 2 + c.sigma ** 2 == pytest.approx(1.0, abs=1e-12)


def test_endpoints():
    rf = get_schedule("rf")
    assert rf(0.0).alpha == 1 and rf(0.0).sigma == 0
    assert rf(1.0).alpha == 0 and rf(1.0).sigma == 1
    assert get_schedule("vp-cosine")(1.0).alpha == 0.0
    ve = get_schedule("ve")
    assert ve(0.0).sigma == pytest.approx(0.002) and ve(1.0).sigma == pytest.approx(80.0)
    assert get_schedule("edm")(0.5).sigma == pytest.approx(40.0)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_t_of_lam_inverts_lam(name):
    s = get_schedule(name)
    for t in (0.2, 0.5, 0.9):
        assert s.t_of_lam(lam_of_t(s, t)) == pytest.approx(t, rel=1e-9)


def test_names_and_errors():
    assert get_schedule("rf") is get_schedule("rectified-flow")
    assert get_schedule("RF").name == "rectified-flow"
    with pytest.raises(ValueError, match="unknown schedule"):
        get_schedule("cosine-ish")


@pytest.mark.parametrize("spacing", ["uniform", "karras", "logsnr", "split"])
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_time_grids_decrease_to_t_min(name, spacing):
    ts = time_grid(get_schedule(name), 20, spacing=spacing)
    assert ts.shape == (21,)
    assert ts[-1] == 0.0 and ts[0] <= 1.0
    assert bool((ts[1:] < ts[:-1]).all())


def test_karras_grid_is_edm_eq5():
    s = get_schedule("edm")
    ts = time_grid(s, 5, spacing="karras")
    lam = ts[:-1] * 80
    rho = 7
    i = torch.arange(5, dtype=torch.float64) / 4
    expect = (80 ** (1 / rho) + i * (0.002 ** (1 / rho) - 80 ** (1 / rho))) ** rho
    assert torch.allclose(lam, expect, rtol=1e-9)


def test_logsnr_grid_is_uniform_in_log_lambda():
    s = get_schedule("vp-cosine")
    ts = time_grid(s, 8, spacing="logsnr")
    log_lam = torch.tensor([math.log(lam_of_t(s, float(t))) for t in ts[:-1]])
    d = log_lam[1:] - log_lam[:-1]
    assert torch.allclose(d, d.mean().expand_as(d), atol=1e-9)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_split_grid_is_even_steps_in_t_then_karras_below_lam_1_5(name):
    s = get_schedule(name)
    ts = time_grid(s, 12, spacing="split")
    t_split = s.t_of_lam(1.5)
    assert abs(lam_of_t(s, t_split) - 1.5) < 1e-9
    assert torch.equal(ts[:7], torch.linspace(1, t_split, 7, dtype=torch.float64))  # 6 even steps in t
    lam = torch.tensor([lam_of_t(s, float(t)) for t in ts[6:-1]], dtype=torch.float64)
    assert torch.equal(ts[6:], time_grid(s, 6, spacing="karras", t_max=t_split))
    rho, hi, lo = 7, 1.5, 0.002  # EDM eq. 5 from lam = 1.5 down to lam_min
    i = torch.arange(6, dtype=torch.float64) / 5
    assert torch.allclose(lam, (hi ** (1 / rho) + i * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho, rtol=1e-6)
    odd = time_grid(s, 7, spacing="split")  # 3 steps above, 4 below
    assert len(odd) == 8 and abs(float(odd[3]) - t_split) < 1e-12
    # no split point inside the grid, or one step: the Karras grid
    assert torch.equal(time_grid(s, 5, spacing="split", t_max=t_split * 0.9),
                       time_grid(s, 5, spacing="karras", t_max=t_split * 0.9))
    assert torch.equal(time_grid(s, 1, spacing="split"), time_grid(s, 1, spacing="karras"))


def test_time_grid_bad_input():
    s = get_schedule("rf")
    with pytest.raises(ValueError):
        time_grid(s, 0)
    with pytest.raises(ValueError):
        time_grid(s, 10, spacing="cubic")
    with pytest.raises(ValueError):
        time_grid(s, 10, t_max=0.0)
