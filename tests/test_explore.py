"""``boneless explore``: the computations behind the page, the command line, and the page in a real browser.

The browser test starts ``boneless explore`` on a free port of 127.0.0.1 and drives headless Chromium through
Playwright; it needs Gradio, Playwright and Debian's ``chromium`` (``apt-get install chromium``; no browser is
downloaded) and is skipped without them. Set ``BONELESS_EXPLORE_SCREENSHOTS=docs/explore`` to keep its screenshots.
"""

import importlib.util
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

pytest.importorskip("matplotlib")

from boneless import EmpiricalDenoiser, explore, get_schedule, load_dataset  # noqa: E402
from boneless.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def digits():
    X = load_dataset("digits")[:300]
    return X, EmpiricalDenoiser(X)


def test_noisy_example_follows_the_schedule(digits):
    X, _ = digits
    for name in ("rectified-flow", "vp-cosine", "ve"):
        x0, eps, x_t, c = explore.noisy_example(X, name, 0.3, index=7, seed=1)
        ref = get_schedule(name)(0.3)
        assert torch.equal(x0, X[7:8])
        assert torch.allclose(x_t, ref.alpha * X[7:8] + ref.sigma * eps)
        _, eps2, _, _ = explore.noisy_example(X, name, 0.9, index=7, seed=1)
        assert torch.equal(eps, eps2)  # one noise draw moved through time


def test_view_collapses_at_low_noise_and_is_the_prior_at_pure_noise(digits):
    X, exact = digits
    low = explore.time_view(X, exact, exact, "rectified-flow", 0.01, index=11, seed=0)
    assert low.indices[0] == 11 and low.weights[0] > 0.999 and low.n_eff < 1.001
    top = explore.time_view(X, exact, exact, "rectified-flow", 1.0, index=11, seed=0)  # alpha = 0
    assert torch.allclose(top.weights, torch.full_like(top.weights, 1 / len(X)), rtol=1e-4)
    assert math.isclose(top.n_eff, len(X), rel_tol=1e-4)
    assert torch.allclose(top.x0_hat, X.mean(0, keepdim=True), atol=1e-5)
    # the curve is the same posterior at the curve's times: its first point is the view at T_MIN
    first = explore.time_view(X, exact, exact, "rectified-flow", explore.T_MIN, index=11, seed=0)
    assert math.isclose(float(low.curve[0]), first.n_eff, rel_tol=1e-4)


def test_view_uses_the_chosen_denoiser(digits):
    X, exact = digits
    gaussian = explore.DENOISERS["gaussian"](X)
    v = explore.time_view(X, exact, gaussian, "vp-cosine", 0.4, index=3, seed=2)
    assert torch.allclose(v.x0_hat, gaussian(v.x_t, v.alpha, v.sigma))
    assert not torch.allclose(v.x0_hat, exact(v.x_t, v.alpha, v.sigma), atol=1e-3)


def test_two_d_view_has_particles_and_tweedie_arrows():
    X = load_dataset("moons", n=explore.TOY_POINTS)
    exact = EmpiricalDenoiser(X)
    v = explore.time_view(X, exact, exact, "rectified-flow", 0.3, index=0, seed=0)
    assert v.particles.shape == (explore.VIEW_PARTICLES, 2)
    assert torch.allclose(v.particles_x0_hat, exact(v.particles, v.alpha, v.sigma))
    assert explore.two_d_figure(v, X, exact, index=0).size[0] > 100


def test_copy_verdict_uses_the_one_third_rule(digits):
    X, _ = digits
    idx, ratio, copies = explore.copy_verdict(X[5:6] + 1e-4, X)
    assert idx.tolist() == [5] and copies.tolist() == [True]
    mid = (X[5:6] + X[6:7]) / 2  # equidistant from two examples: ratio 1, not a copy
    _, ratio, copies = explore.copy_verdict(mid, X)
    assert copies.tolist() == [False] and ratio[0] > 1 / 3
    assert "**a copy** of training example #5" in explore.verdict_text(X[5:6], X)
    assert "**new**" in explore.verdict_text(mid, X)


def test_points_other_than_2d_are_refused(tmp_path):
    import numpy as np

    np.save(tmp_path / "points.npy", np.zeros((10, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="2-D points"):
        explore.load(str(tmp_path / "points.npy"))


def test_cli_bad_input_is_one_line(capsys):
    assert main(["explore", "--data", "/no/such/data.npy", "--port", "7999"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("boneless: error:") and "no such file" in err and "\n" not in err
    assert main(["explore", "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err


def test_missing_gradio_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio now raises ImportError
    assert main(["explore", "--data", "digits"]) == 2
    assert "pip install 'boneless-flow[explore]'" in capsys.readouterr().err


# ---------------------------------------------------------------- in a real browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    if importlib.util.find_spec("gradio") is None or importlib.util.find_spec("playwright") is None:
        pytest.skip("needs the explore extra and playwright: pip install -e '.[explore]' playwright")
    if not os.path.exists(CHROMIUM):
        pytest.skip("needs Debian's chromium: apt-get install chromium")
    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", GRADIO_ANALYTICS_ENABLED="False")
    proc = subprocess.Popen([sys.executable, "-m", "boneless.cli", "explore", "--data", "digits", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180  # start-up of the server, not a speed requirement
    while True:
        if proc.poll() is not None:
            pytest.fail(f"boneless explore exited with {proc.returncode}: {proc.stdout.read()}")
        try:
            urllib.request.urlopen(url, timeout=5)
            break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail("boneless explore did not start serving")
            time.sleep(0.5)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def choose(page, element: str, value: str) -> None:
    """Pick ``value`` in the page's dropdown ``#element`` as a user does: click, type, Enter."""
    page.locator(f"#{element} input").click()
    page.locator(f"#{element} input").fill(value)
    page.keyboard.press("Enter")


def _n_eff(text: str) -> float:
    return float(re.search(r"n_eff = ([0-9.e+-]+)", text).group(1))


def test_page_in_a_browser(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    shots = Path(os.environ.get("BONELESS_EXPLORE_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    wait = 120_000  # ms: the page's work runs on a shared 2-core machine
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1300, "height": 1400})
        page.goto(server)
        view, neff, status = page.locator("#view img"), page.locator("#neff img"), page.locator("#status")
        expect(status).to_contain_text("t = 0.500", timeout=wait)
        src_view, src_neff = view.get_attribute("src"), neff.get_attribute("src")
        n_eff_mid = _n_eff(status.inner_text())
        gallery_first = page.locator("#neighbours img").first.get_attribute("src")

        # move the slider with the mouse to t near 0.3: the images change, the posterior collapses
        box = page.locator("#time input[type=range]").bounding_box()
        page.mouse.click(box["x"] + 0.3 * box["width"], box["y"] + box["height"] / 2)
        expect(status).not_to_contain_text("t = 0.500", timeout=wait)
        expect(view).not_to_have_attribute("src", src_view, timeout=wait)
        expect(neff).not_to_have_attribute("src", src_neff, timeout=wait)
        t_low = float(page.locator("#time input[type=number]").input_value())
        assert t_low < 0.4
        assert _n_eff(status.inner_text()) < n_eff_mid
        assert page.locator("#neighbours img").first.get_attribute("src") != gallery_first
        page.screenshot(path=str(shots / "slider.png"), full_page=True)

        # sample: the trajectory plays, then the sample beside its nearest training image and the verdict
        page.locator("#sample").click()
        expect(page.locator("#verdict")).to_contain_text("second-nearest", timeout=wait)
        assert "a copy" in page.locator("#verdict").inner_text()  # the exact flow copies a training digit
        expect(page.locator("#movie img")).to_have_count(1)
        expect(page.locator("#final img")).to_have_count(1)
        page.screenshot(path=str(shots / "sample.png"), full_page=True)

        # a bad path: an error on the page, and the page keeps working
        page.locator("#path textarea").fill("/no/such/data.npy")
        page.locator("#path textarea").press("Enter")
        expect(status).to_contain_text("Error", timeout=wait)
        expect(status).to_contain_text("no such file", timeout=wait)
        page.screenshot(path=str(shots / "error.png"), full_page=True)
        page.locator("#path textarea").fill("")
        before = view.get_attribute("src")
        number = page.locator("#time input[type=number]")
        number.fill("0.9")
        number.press("Enter")
        expect(status).to_contain_text("t = 0.900", timeout=wait)
        expect(view).not_to_have_attribute("src", before, timeout=wait)

        # 2-D data: density, particles and Tweedie arrows; sampling the particles
        choose(page, "dataset", "moons")
        expect(status).to_contain_text("moons", timeout=wait)
        number.fill("0.3")
        number.press("Enter")
        expect(status).to_contain_text("t = 0.300", timeout=wait)
        page.screenshot(path=str(shots / "two-d.png"), full_page=True)
        choose(page, "spacing", "logsnr")
        expect(page.locator("#spacing input")).to_have_value("logsnr")
        page.locator("#sample").click()
        expect(page.locator("#verdict")).to_contain_text("Copy rate", timeout=wait)
        # the exact flow, finely stepped where the posterior collapses, lands most particles on training points
        assert float(re.search(r"Copy rate ([0-9.]+)", page.locator("#verdict").inner_text()).group(1)) > 0.5
        page.screenshot(path=str(shots / "two-d-sample.png"), full_page=True)

        # a denoiser that needs images, on points: an error on the page, which keeps working
        choose(page, "denoiser", "local")
        expect(status).to_contain_text("needs image data", timeout=wait)
        number.fill("0.6")
        number.press("Enter")
        expect(page.locator("#denoiser input")).to_have_value("local")
        choose(page, "denoiser", "gmm")
        expect(status).to_contain_text("denoiser gmm", timeout=wait)
        expect(status).to_contain_text("t = 0.600", timeout=wait)
        browser.close()
