"""Tests for boneless.demos: each demo's numbers (not its pixels), the helpers against their formulas, and the CLI."""

import math

import pytest
import torch
from PIL import Image

from boneless import demos
from boneless.cli import main
from boneless.closed_form import GaussianDenoiser
from boneless.data import load_dataset
from boneless.demos._common import GIF_FRAMES, _animate, _log_density64
from boneless.demos.blur import _gaussian_blur
from boneless.denoisers import EmpiricalDenoiser
from boneless.plots import pyplot


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The demos are small; one thread avoids the slow path of contended multi-threaded kernels on shared CPUs."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("demos")


def _wide(path, frames=None):
    with Image.open(path) as im:
        assert im.width >= 600
        if frames is not None:
            assert im.n_frames == frames
    return True


# ---------------------------------------------------------------- each demo's numbers

def test_vp_ve(out, capsys):
    r = demos.demo_vp_ve(out, quick=True)
    assert r["max_rel_error_sigma_ratio"] < 1e-12  # VP's sigma/alpha is VE's sigma at the matched times
    assert r["max_rescaling_error"] < 1e-10  # x_VE = x_VP / alpha with the same eps
    assert r["max_denoiser_rescaling_error"] < 1e-5  # E[x0 | x, alpha, sigma] = E[x0 | x / alpha, 1, sigma / alpha]
    assert _wide(out / "vp-ve.gif", frames=r["frames"]) and _wide(out / "snr.png")
    assert GIF_FRAMES >= 40
    assert "max |x_VP / alpha - x_VE|" in capsys.readouterr().out


def test_density(out):
    r = demos.demo_density(out, quick=True)
    for row in r["rows"]:
        assert abs(row["integral"] - 1) < 1e-4
    modes = [row["modes"] for row in r["rows"]]
    assert modes[0] == 1  # t = 1: one Gaussian
    assert 1 < modes[-1] <= r["n_examples"]  # small t: one spike per (resolved) example
    assert r["rows"][-1]["peak"] > 10 * r["rows"][0]["peak"]
    assert _wide(out / "density.png")


def test_log_density_matches_float64_formula():
    X = load_dataset("moons", n=50, seed=3)
    den = EmpiricalDenoiser(X)
    y = torch.randn(20, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for alpha, sigma in ((0.0, 1.0), (0.5, 0.5), (0.97, 0.03), (1.0, 3.0)):
        got = demos.log_density(den, y.float(), alpha, sigma)
        ref = _log_density64(X, y.float().double(), alpha, sigma)
        assert torch.allclose(got, ref, rtol=0, atol=1e-4)


def test_flow(out):
    r = demos.demo_flow(out, quick=True)
    assert r["landing_fraction"] >= 0.95  # the exact flow lands on training points
    assert _wide(out / "flow.gif", frames=r["frames"])


def test_tweedie(out):
    r = demos.demo_tweedie(out, quick=True)
    assert r["max_residual_float64"] < 1e-12  # E[x|y] = y + sigma^2 grad log p(y) to float64 precision
    assert r["max_residual_float32"] < 1e-5  # the library's float32 denoiser, to float32 precision
    assert r["max_rel_score_error"] < 1e-3
    assert _wide(out / "tweedie.png")


def test_regression(out):
    r = demos.demo_regression(out, quick=True)
    assert r["residual_after"] < r["residual_before"]
    # each ascent step multiplies the residual by (1 - eta) exactly
    assert math.isclose(r["residual_after"] / r["residual_before"], (1 - r["eta"]) ** r["steps"], rel_tol=1e-9)
    assert abs(r["m"] - r["m_true"]) < 0.25 and abs(r["b"] - r["b_true"]) < 0.25
    assert _wide(out / "regression.png")
    again = demos.demo_regression(out, quick=True)  # randomness comes from the seed
    assert again["residuals"] == pytest.approx(r["residuals"], rel=1e-12, abs=0)


def test_blur(out):
    r = demos.demo_blur(out, quick=True)
    seen, unseen = r["in_dataset"], r["held_out"]
    assert seen["top_index"] == seen["index"] and seen["top_weight"] > 0.99  # it recognises the face
    assert seen["psnr_exact"] > seen["psnr_wiener"] and seen["psnr_exact"] > seen["psnr_blur"]
    assert unseen["psnr_wiener"] > unseen["psnr_exact"]  # and cannot produce one it has not seen
    for case in (seen, unseen):
        assert case["psnr_blur"] > case["psnr_noisy"] and case["psnr_wiener"] > case["psnr_noisy"]
    assert _wide(out / "blur.png")


def test_mean_face(out):
    r = demos.demo_mean_face(out, quick=True)
    d = r["max_abs_difference"]
    assert r["times"][-1] == 1.0 and d[-1] < 1e-5  # alpha = 0: the posterior is the prior, x0_hat is the mean
    assert all(a > b for a, b in zip(d, d[1:]))  # closer to the mean as the noise grows
    assert r["distance_mean_to_nearest_face"] > 0 and r["roughness_mean"] < r["roughness_faces_min"]
    assert _wide(out / "mean-face.png")


def test_posterior(out):
    r = demos.demo_posterior(out, quick=True)
    assert all(n > 0.9 * r["n_examples"] for n in r["n_eff_first"])  # near-uniform at t ~ 1
    assert all(abs(n - 1) < 1e-3 for n in r["final_n_eff"])  # collapsed onto one example
    assert all(w > 0.999 for w in r["final_top_weight"])
    assert r["final_index"] == r["nearest_index"] and r["distance_to_final"] < 1e-4
    assert all(0 < t < 1 for t in r["t_collapse"])
    assert _wide(out / "posterior.png")


# ---------------------------------------------------------------- helpers against their formulas

def test_wiener_closed_form():
    """The blur demo's linear denoiser (the library's Gaussian one) is the Wiener formula, also for a singular
    covariance (40 examples in 64 dimensions)."""
    X = load_dataset("faces")[:40, :, :8, :8] * 0.9
    den = GaussianDenoiser(X)
    P = X.reshape(40, -1).double()
    mu = P.mean(0)
    S = (P - mu).T @ (P - mu) / 40
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for a, s in ((1.0, 0.5), (0.6, 0.8), (0.0, 1.0)):
        ref = mu + (a * S @ torch.linalg.solve(a * a * S + s * s * torch.eye(64, dtype=torch.float64),
                                                (x - a * mu).T)).T
        assert torch.allclose(den(x.reshape(3, 1, 8, 8), a, s).reshape(3, -1), ref, atol=1e-10)


def test_gaussian_blur_is_an_average():
    g = torch.Generator().manual_seed(0)
    const = torch.full((1, 1, 12, 12), 0.3, dtype=torch.float64)
    assert torch.allclose(_gaussian_blur(const, 1.5), const)  # weights sum to one
    x = torch.randn(1, 1, 12, 12, generator=g, dtype=torch.float64)
    assert _gaussian_blur(x, 1.0).std() < x.std()
    assert _gaussian_blur(x, 1.0).shape == x.shape


def test_animate_frames(tmp_path):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.2, 1), dpi=100)
    (line,) = ax.plot([0, 1], [0, 0])

    def draw(i):
        line.set_ydata([0, i / 40])

    written = _animate(fig, draw, 40, tmp_path / "a.gif", fps=20)
    assert written[0] == tmp_path / "a.gif"
    assert _wide(tmp_path / "a.gif", frames=40)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written)  # no temporary files left


# ---------------------------------------------------------------- command line

def test_cli_list(capsys):
    assert main(["demo", "--list"]) == 0
    text = capsys.readouterr().out
    for name in ("vp-ve", "density", "flow", "tweedie", "regression", "blur", "mean-face", "posterior"):
        assert name in text and name in demos.DEMOS


def test_cli_runs_one(tmp_path, capsys):
    assert main(["demo", "regression", "--out", str(tmp_path), "--quick", "--seed", "3"]) == 0
    assert (tmp_path / "regression.png").exists()
    assert "regression: least squares" in capsys.readouterr().out


def test_cli_all_runs_every_demo(tmp_path, monkeypatch):
    calls = []
    fake = {name: (lambda out, *, seed, quick, name=name: calls.append((name, out, seed, quick)) or {}, text)
            for name, (_, text) in demos.DEMOS.items()}
    monkeypatch.setattr(demos, "DEMOS", fake)
    assert main(["demo", "all", "--out", str(tmp_path), "--seed", "5"]) == 0
    assert [c[0] for c in calls] == list(fake) and all(c[2] == 5 and c[3] is False for c in calls)


@pytest.mark.parametrize("argv, message", [(["demo"], "name a demo"), (["demo", "nope"], "unknown demo 'nope'")])
def test_cli_bad_input(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("boneless: error:") and message in err and err.count("\n") == 1


def test_cli_out_is_a_file(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["demo", "regression", "--out", str(f), "--quick"]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_cli_bad_seed(capsys):
    with pytest.raises(SystemExit) as e:
        main(["demo", "flow", "--seed", "-1"])
    assert e.value.code == 2 and "error" in capsys.readouterr().err
