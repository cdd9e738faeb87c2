"""Single-image generation: the patch posterior's mathematics, the pyramid, the measurements and the command."""

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from boneless.bank import FAST_DELTA
from boneless.cli import main
from boneless.denoisers import EmpiricalDenoiser, exact_reference
from boneless.single_image import (PatchLists, PatchPosteriorDenoiser, aggregate, copy_share, diversity, extract,
                                   gaussian_window, generate, load_source, nearest_patch_reshuffle, nearest_rows,
                                   patch_index, random_shifts, sifid)


def _rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _smooth_image(C, H, W, seed=0):
    """A random smooth picture in [-1, 1] (blobs), so patches differ but are not noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, C, H // 4 + 1, W // 4 + 1, generator=g)
    x = torch.nn.functional.interpolate(x, size=(H, W), mode="bicubic", align_corners=False)[0]
    return (x / x.abs().max()).clamp(-1, 1)


COEFFS = [(1.0, 1e-3), (0.9, 0.1), (0.6, 0.5), (0.2, 2.0), (0.0, 1.0)]


@pytest.mark.parametrize("alpha,sigma", COEFFS)
def test_patch_the_whole_query_is_the_empirical_denoiser_over_source_patches(alpha, sigma):
    # one query patch covering the whole query: x0_hat is E[x0 | x] over the dataset of the source's k x k patches
    source = _rand(3, 9, 11)
    k = 5
    den = PatchPosteriorDenoiser(source, patch_size=k, fast_delta=FAST_DELTA)
    patches = source.unfold(1, k, 1).unfold(2, k, 1).permute(1, 2, 0, 3, 4).reshape(-1, 3, k, k)  # [35, 3, 5, 5]
    x = alpha * patches[[4, 17]] + sigma * _rand(2, 3, k, k, seed=1)
    ref = exact_reference(patches, x, alpha, sigma)
    got = den(x, alpha, sigma).double()
    assert ((got - ref).flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1)).max() < 1e-4
    torch.testing.assert_close(got.float(), EmpiricalDenoiser(patches)(x, alpha, sigma), rtol=1e-4, atol=1e-5)


def test_patch_the_whole_image_at_one_scale_is_the_empirical_denoiser_of_that_image():
    source = _rand(1, 8, 8)
    den = PatchPosteriorDenoiser(source, patch_size=8)
    x = _rand(3, 1, 8, 8, seed=2)
    torch.testing.assert_close(den(x, 0.7, 0.3), EmpiricalDenoiser(source[None])(x, 0.7, 0.3))


def _brute_force(source, x, alpha, sigma, k, stride):
    """float64, pixel by pixel: every query patch on the stride grid (plus the last offset) gets its softmax
    posterior mean over all source patches; each pixel averages the means of the patches covering it."""
    C, H, W = source.shape
    _, h, w = x.shape
    src = [source[:, i:i + k, j:j + k].double() for i in range(H - k + 1) for j in range(W - k + 1)]
    total = torch.zeros(C, h, w, dtype=torch.float64)
    count = torch.zeros(h, w, dtype=torch.float64)
    ys = sorted(set(list(range(0, h - k + 1, stride)) + [h - k]))
    xs = sorted(set(list(range(0, w - k + 1, stride)) + [w - k]))
    for i in ys:
        for j in xs:
            y = x[:, i:i + k, j:j + k].double()
            logits = torch.tensor([-float(((y - alpha * p) ** 2).sum()) / (2 * sigma ** 2) for p in src])
            wts = torch.softmax(logits.double(), 0)
            total[:, i:i + k, j:j + k] += sum(wt * p for wt, p in zip(wts, src))
            count[i:i + k, j:j + k] += 1
    return total / count


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_aggregated_patch_posterior_against_brute_force(stride):
    source = _smooth_image(2, 9, 10)
    x = 0.8 * _smooth_image(2, 8, 13, seed=3) + 0.3 * _rand(2, 8, 13, seed=4)
    den = PatchPosteriorDenoiser(source, patch_size=3, stride=stride, fast_delta=FAST_DELTA)
    got = den(x[None], 0.8, 0.3)[0].double()
    ref = _brute_force(source, x, 0.8, 0.3, 3, stride)
    assert float((got - ref).norm() / ref.norm()) < 1e-5


def test_inverted_lists_searching_every_list_equal_the_exact_posterior():
    source = _smooth_image(3, 30, 30)
    exact = PatchPosteriorDenoiser(source, patch_size=5, stride=2, search="exact")
    lists = PatchPosteriorDenoiser(source, patch_size=5, stride=2, search="ivf", nprobe=10_000)
    x = 0.7 * _smooth_image(3, 20, 24, seed=5) + 0.3 * torch.randn(3, 20, 24, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(lists(x[None], 0.7, 0.3), exact(x[None], 0.7, 0.3), rtol=1e-5, atol=1e-5)
    assert len(lists.errors) == 1 and float(lists.errors[0].max()) < 1e-5
    few = PatchPosteriorDenoiser(source, patch_size=5, stride=2, search="ivf", nprobe=1)
    few(x[None], 0.7, 0.3)
    assert float(few.errors[0].max()) > 0  # an approximation with one list: its error is measured, not hidden


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 300), lists=st.integers(1, 40), seed=st.integers(0, 2 ** 16))
def test_inverted_lists_hold_every_source_patch_once(n, lists, seed):
    rows = torch.randn(n, 12, generator=torch.Generator().manual_seed(seed))
    pl = PatchLists(rows, lists=lists, seed=seed)
    assert pl.bounds[0] == 0 and pl.bounds[-1] == n and len(pl.bounds) == pl.n_lists + 1 <= min(lists, n) + 1
    assert all(b1 > b0 for b0, b1 in zip(pl.bounds, pl.bounds[1:]))  # no empty list
    held = pl.rows[:, :12]
    assert torch.equal(held[torch.argsort(_lex_key(held))], rows[torch.argsort(_lex_key(rows))])
    list_of_row = torch.repeat_interleave(torch.arange(pl.n_lists), torch.tensor(pl.bounds).diff())
    torch.testing.assert_close(pl.residuals + pl.mu[list_of_row], held, rtol=0, atol=1e-5)


def _lex_key(rows):
    """A key that orders distinct random rows (their first coordinate, with ties broken by the second)."""
    return rows[:, 0].double() * 1e6 + rows[:, 1].double()


def test_inverted_lists_as_sigma_vanishes_give_the_nearest_source_patch():
    source = _smooth_image(3, 24, 24)
    den = PatchPosteriorDenoiser(source, patch_size=5, search="ivf", nprobe=10_000)
    q = extract(_rand(1, 3, 10, 10, seed=7), patch_index(10, 10, 5, 5))[0]
    ones = torch.ones(len(q), dtype=torch.float64)
    got = den.lists.mean(q, ones, ones * 1e-30, nprobe=10_000)
    torch.testing.assert_close(got, den.bank.X[nearest_rows(q, den.bank)], rtol=0, atol=1e-6)


@pytest.mark.parametrize("width", [None, 1.0, 3.0])
def test_aggregation_weights_against_brute_force(width):
    # each pixel: the average of the values the patches covering it give it, weighted by its place in each patch
    k, C, h, w = 4, 2, 9, 11
    idx = patch_index(h, w, k, 3)
    patches = _rand(2, len(idx), C * k * k, seed=8).double()
    wts = torch.ones(k * k, dtype=torch.float64) if width is None else gaussian_window(k, width)
    total, norm = torch.zeros(2, C, h * w, dtype=torch.float64), torch.zeros(h * w, dtype=torch.float64)
    for l, pix in enumerate(idx):
        for j, p in enumerate(pix.tolist()):
            total[:, :, p] += wts[j] * patches[:, l].reshape(2, C, k * k)[:, :, j]
            norm[p] += wts[j]
    torch.testing.assert_close(aggregate(patches, idx, (C, h, w), gaussian_window(k, width)),
                               (total / norm).reshape(2, C, h, w))


def test_constant_source_yields_that_colour():
    colour = torch.tensor([0.2, -0.5, 0.7])
    source = colour[:, None, None].expand(3, 30, 30).clone()
    res = generate(source, n=2, size=(20, 28), scales=2, seed=1)
    torch.testing.assert_close(res.samples, colour[None, :, None, None].expand(2, 3, 20, 28), rtol=0, atol=1e-6)


def test_output_size_and_pyramid_are_honoured():
    source = _smooth_image(3, 36, 48)
    res = generate(source, n=3, size=(20, 70), scales=3, factor=1.5, seed=0)
    assert res.samples.shape == (3, 3, 20, 70)
    assert res.source_sizes[-1] == (36, 48) and res.output_sizes[-1] == (20, 70)
    assert [h for h, w in res.source_sizes] == [round(36 / 1.5 ** 2), round(36 / 1.5), 36]
    assert res.start_noise[0] == 1.0 and len(res.seconds) == 3


def test_any_range_affine_equivariance():
    # data of any range: generating from a * x + b gives a * (samples from x) + b (the work is in standardised units)
    source = _smooth_image(4, 24, 24)
    a, b = 7.5, torch.tensor([-3.0, 10.0, 0.5, 100.0])[:, None, None]
    one = generate(source, n=2, scales=2, seed=4).samples
    two = generate(a * source + b, n=2, scales=2, seed=4).samples
    torch.testing.assert_close(two, a * one + b, rtol=1e-4, atol=1e-3 * a)


def test_seed_reproducible_and_samples_differ():
    source = _smooth_image(3, 32, 32)
    r1 = generate(source, n=2, scales=2, seed=3).samples
    r2 = generate(source, n=2, scales=2, seed=3).samples
    r3 = generate(source, n=2, scales=2, seed=4).samples
    torch.testing.assert_close(r1, r2, rtol=0, atol=0)
    assert float((r1 - r3).abs().max()) > 1e-2 and float((r1[0] - r1[1]).abs().max()) > 1e-2


def test_settings_are_checked():
    source = _smooth_image(3, 32, 32)
    with pytest.raises(ValueError, match="smaller than the"):
        generate(source, scales=8)
    with pytest.raises(ValueError, match="start noise"):
        generate(source, scales=3, start_noise=[0.3, 0.2, 0.1, 0.1])
    with pytest.raises(ValueError, match=r"start noise levels must lie in \(0, 1\]"):
        generate(source, scales=2, start_noise=1.5)
    with pytest.raises(ValueError, match="patch size"):
        generate(source, patch_size=40)


def test_measurements():
    source = _smooth_image(3, 32, 32)
    assert copy_share(source, source, value_range=2.0) == 1.0
    noise = _rand(3, 32, 32, seed=9)
    assert copy_share(noise, source, value_range=2.0) == 0.0
    shifted = random_shifts(source, n=3, seed=0)
    assert torch.equal(shifted[0], torch.roll(shifted[0], 0)) and shifted.shape == (3, 3, 32, 32)
    # a circular shift copies every patch that does not straddle the seam
    assert copy_share(shifted[0], source, patch_size=5, value_range=2.0) >= (28 / 32) ** 2 * 0.99 - 1e-9
    assert diversity(source.expand(3, -1, -1, -1), source) == 0.0
    assert sifid(source, source) < 1e-8 < sifid(noise, source)


def test_nearest_patch_baseline_is_made_of_source_patches():
    source = _smooth_image(1, 24, 24)
    out = nearest_patch_reshuffle(source, n=2, scales=1, iterations=1, stride=5, patch_size=5, seed=0)
    # stride 5 = patch size on 24 px: the patches tile the image (plus the last offset); pixels of the first row of
    # patches are copied verbatim from one source patch
    assert out.shape == (2, 1, 24, 24)
    patches = source.unfold(1, 5, 1).unfold(2, 5, 1).reshape(-1, 25)
    top = out[:, 0, :5, :5].reshape(2, 25)
    assert float(torch.cdist(top.double(), patches.double()).min(1).values.max()) < 1e-5


# ---------------------------------------------------------------- command line

def _png(path, H, W, seed=0):
    a = ((_smooth_image(3, H, W, seed=seed) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    Image.fromarray(a).save(path)
    return path


def _run(capsys, *args):
    code = main(["single-image", *map(str, args), "--no-progress"])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_cli_writes_outputs(tmp_path, capsys):
    src = _png(tmp_path / "src.png", 32, 40)
    out = tmp_path / "out"
    code, stdout, err = _run(capsys, src, "--out", out, "-n", 3, "--size", 24, 50, "--scales", 2, "--seed", 1)
    assert code == 0, err
    for name in ("samples.png", "side_by_side.png", "report.json", "sample_000.png", "sample_002.png"):
        assert (out / name).is_file()
    assert Image.open(out / "sample_001.png").size == (50, 24)
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["size"] == [24, 50] and report["settings"]["n"] == 3
    assert len(report["copy_share"]) == 3 and all(0 <= v <= 1 for v in report["copy_share"])
    assert len(report["sifid"]) == 3 and report["diversity"] > 0
    assert {"generate_s", "generate_cpu_s", "per_scale_s"} <= set(report["timings"])
    assert not list(out.glob(".*"))  # no temporary files left


def test_cli_latents_of_any_range(tmp_path, capsys):
    latent = (_smooth_image(4, 24, 28) * 6 + 2).numpy()  # values in [-4, 8]
    np.save(tmp_path / "z.npy", latent)
    out = tmp_path / "out"
    code, _, err = _run(capsys, tmp_path / "z.npy", "--out", out, "-n", 2, "--scales", 2)
    assert code == 0, err
    z = np.load(out / "sample_001.npy")
    assert z.shape == (4, 24, 28) and np.isfinite(z).all()
    assert z.min() >= latent.min() - 1 and z.max() <= latent.max() + 1  # in the source's range, not [-1, 1]
    assert json.loads((out / "report.json").read_text())["source"]["kind"] == "array"


@pytest.mark.parametrize("make,message", [
    (lambda p: p / "missing.png", "no such file"),
    (lambda p: (p / "bad.png").write_bytes(b"not an image at all") and p / "bad.png", "not a readable image"),
    (lambda p: _png(p / "tiny.png", 4, 30), "too small"),
    (lambda p: (np.save(p / "a.npy", np.full((3, 20, 20), np.nan)), p / "a.npy")[1], "NaN"),
    (lambda p: (np.save(p / "b.npy", np.zeros((2, 3, 20, 20))), p / "b.npy")[1], "expected a real array"),
])
def test_cli_bad_source_is_one_line_error(tmp_path, capsys, make, message):
    code, _, err = _run(capsys, make(tmp_path), "--out", tmp_path / "out")
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_cli_checks_settings_and_output_before_work(tmp_path, capsys):
    src = _png(tmp_path / "src.png", 32, 32)
    (tmp_path / "file").write_text("x")
    code, _, err = _run(capsys, src, "--out", tmp_path / "file")
    assert code == 2 and "not a folder" in err
    code, _, err = _run(capsys, src, "--out", tmp_path / "o", "--scales", 9)
    assert code == 2 and "smaller than the" in err and not (tmp_path / "o").exists()
    code, _, err = _run(capsys, src, "--out", tmp_path / "o", "--scales", 3, "--start-noise", 0.3, 0.2, 0.1, 0.1)
    assert code == 2 and "start noise" in err
    code, _, err = _run(capsys, src, "--out", tmp_path / "o", "--start-noise", 1.5)
    assert code == 2 and "(0, 1]" in err
    for bad in (["--size", "0", "5"], ["--window", "-1"]):
        with pytest.raises(SystemExit):
            main(["single-image", str(src), "--out", str(tmp_path / "o"), *bad])
