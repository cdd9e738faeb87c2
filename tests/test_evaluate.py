"""Tests for ``boneless eval``: the whole protocol end to end on tiny configurations, failure isolation, and
one-line errors for bad options."""

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from boneless.cli import main
from boneless import DENOISERS
from boneless import metrics
from boneless.metrics import WienerFilter

FMNIST = Path("/usr/share/datasets/fashion-mnist")


class _Broken:
    """A denoiser that fails at its first call."""

    def __init__(self, X):
        self.shape = tuple(X.shape[1:])

    def __call__(self, x, alpha, sigma):
        raise RuntimeError("boom\nsecond line")


@pytest.fixture
def registry(monkeypatch):
    monkeypatch.setitem(DENOISERS, "wiener-test", WienerFilter)
    monkeypatch.setitem(DENOISERS, "broken-test", _Broken)
    return DENOISERS


def _error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith(("boneless: error:", "boneless eval: error:"))]
    assert len(errors) == 1, err
    return errors[0]


TINY = ["eval", "--data", "digits", "--pool", "300", "--test", "40", "--samples", "8", "--steps", "10",
        "--sigmas", "0.05,0.5,2", "--no-progress"]


def test_eval_end_to_end_on_digits(tmp_path, registry, capsys):
    out = tmp_path / "run"
    rc = main(TINY + ["--denoisers", "empirical,wiener-test,broken-test", "--consistency", "4", "--out", str(out)])
    assert rc == 0
    for f in ("table.md", "results.json", "heldout.png", "real.png", "comparison.png", "n_eff.png",
              "samples_empirical.png", "neighbours_empirical.png", "samples_wiener-test.png"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    assert not list(out.glob(".*"))  # no temporary files left behind
    def strict(token):
        raise AssertionError(f"results.json is not strict JSON: {token}")

    r = json.loads((out / "results.json").read_text(), parse_constant=strict)
    assert r["sigmas"] == [0.05, 0.5, 2.0]
    emp, lin, bad = (r["denoisers"][n] for n in ("empirical", "wiener-test", "broken-test"))
    # the reference filter against itself: ratio exactly 1, in-sample and held-out
    assert lin["status"] == "ok"
    assert lin["heldout"]["ratio"] == pytest.approx([1.0] * 3, rel=1e-6)
    assert lin["in_sample"]["ratio"] == pytest.approx([1.0] * 3, rel=1e-6)
    # the exact denoiser memorises: perfect in-sample at low noise, worse than Wiener held-out, copies samples
    assert emp["in_sample"]["mse"][0] < 1e-10 and emp["heldout"]["ratio"][0] > 1
    assert emp["samples"]["copy_rate"] == 1.0 and emp["samples"]["median_ratio"] < 1e-3
    assert emp["samples"]["n_eff"]["collapse_t"] is not None
    assert 0 < emp["consistency"]["mean"] < 1 and "baseline" in emp["consistency"]
    assert lin["samples"]["copy_rate"] == 0.0 and "n_eff" not in lin["samples"]
    assert "fd_pca" in emp["samples"] and "fd_pca" in r["real"]
    # the broken one is reported, one line, and did not sink the run
    assert bad["status"] == "failed" and "boom" in bad["error"] and "\n" not in bad["error"]
    assert "warning: broken-test: failed" in capsys.readouterr().err
    table = (out / "table.md").read_text()
    assert "| empirical |" in table and "| wiener-test |" in table and "failed" in table
    assert "real (held-out)" in table


@pytest.mark.parametrize("sampler, reused", [("euler", True), ("ddpm", False), ("ddim", True),
                                             ("ddim --eta 0.5", False), ("euler-maruyama", False),
                                             ("euler-maruyama --churn 0", True)])
def test_split_consistency_reuses_the_sampling_stage_when_that_is_the_same(tmp_path, monkeypatch, sampler, reused):
    """With a deterministic sampler the consistency's first side is the sampling stage's first samples (the same
    start); the pairs then compare as if both sides had been sampled apart. A stochastic one samples both."""
    import boneless.evaluate as ev
    calls = []

    def checked(den_a, den_b, *, samples_a=None, **options):
        got = metrics.split_consistency(den_a, den_b, samples_a=samples_a, **options)
        apart = metrics.split_consistency(den_a, den_b, **options)
        calls.append(samples_a is not None)
        assert torch.allclose(got.samples_a, apart.samples_a, atol=1e-5) and torch.equal(got.samples_b, apart.samples_b)
        return got

    monkeypatch.setattr(ev, "split_consistency", checked)
    args = TINY + ["--denoisers", "empirical", "--consistency", "3", "--sampler", *sampler.split(), "--classifier",
                   "off", "--out", str(tmp_path / "run")]
    assert main(args) == 0
    assert calls == [reused]


def test_eval_skips_a_denoiser_over_budget(tmp_path, registry, capsys):
    out = tmp_path / "slow"
    rc = main(TINY + ["--denoisers", "empirical", "--consistency", "0", "--budget", "1e-9", "--out", str(out)])
    assert rc == 1  # nothing evaluated
    r = json.loads((out / "results.json").read_text())
    assert r["denoisers"]["empirical"]["status"] == "skipped"
    assert "too slow" in r["denoisers"]["empirical"]["error"]
    assert "| empirical |" in (out / "table.md").read_text()


def test_split_consistency_runs_only_after_the_sampling_stage(tmp_path, monkeypatch):
    """Modelled costs (3 s per image, no overhead; budget 100 s): held-out, sampling and in-sample do not fit, the
    split consistency alone would (30 s): it is skipped too, since it pairs the sampling stage's samples."""
    import boneless.evaluate as ev
    monkeypatch.setattr(ev, "probe_costs", lambda timed, **kw: (0.0, 3.0))
    out = tmp_path / "run"
    assert main(TINY + ["--denoisers", "empirical", "--consistency", "1", "--budget", "100", "--classifier", "off",
                        "--out", str(out)]) == 1
    rec = json.loads((out / "results.json").read_text())["denoisers"]["empirical"]
    assert rec["status"] == "skipped" and rec["timings"]["estimates_s"]["split consistency"] < 100
    assert "split consistency (the sampling stage was skipped)" in rec["error"]


def test_resume_keeps_finished_denoisers_and_takes_in_a_shared_folder(tmp_path, registry, monkeypatch):
    out = tmp_path / "shared"
    args = TINY + ["--consistency", "0", "--out", str(out), "--resume"]
    assert main(args + ["--denoisers", "empirical"]) == 0
    first = json.loads((out / "results.json").read_text())["denoisers"]["empirical"]
    saved = np.load(out / "samples_empirical.npy")
    assert saved.shape == (8, 1, 8, 8)
    # another run with a disjoint --denoisers shares the folder: both end up in one table, in registry order
    assert main(args + ["--denoisers", "wiener-test"]) == 0
    r = json.loads((out / "results.json").read_text())
    assert list(r["denoisers"]) == ["empirical", "wiener-test"]
    assert r["denoisers"]["empirical"] == first  # kept, not recomputed
    # resuming with the whole list evaluates nothing again: a denoiser built now would fail loudly
    monkeypatch.setitem(DENOISERS, "empirical", _Broken)
    assert main(args + ["--denoisers", "empirical,wiener-test"]) == 0
    r = json.loads((out / "results.json").read_text())
    assert r["denoisers"]["empirical"] == first
    assert "| empirical |" in (out / "table.md").read_text() and (out / "comparison.png").is_file()


def test_resume_runs_again_every_denoiser_that_failed(tmp_path, registry, monkeypatch):
    out = tmp_path / "redo"
    args = TINY + ["--consistency", "0", "--out", str(out), "--resume", "--denoisers", "empirical,wiener-test"]
    with monkeypatch.context() as m:
        m.setitem(DENOISERS, "empirical", _Broken)
        m.setitem(DENOISERS, "wiener-test", _Broken)
        assert main(args) == 1
    r = json.loads((out / "results.json").read_text())["denoisers"]
    assert r["empirical"]["status"] == r["wiener-test"]["status"] == "failed"
    # both run again: the old failed record on disk must not stand in for the one still to come
    assert main(args) == 0
    r = json.loads((out / "results.json").read_text())["denoisers"]
    assert r["empirical"]["status"] == r["wiener-test"]["status"] == "ok"


def test_resume_refuses_results_made_with_other_settings(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(TINY + ["--denoisers", "empirical", "--consistency", "0", "--out", str(out)]) == 0
    rc = main(TINY + ["--steps", "5", "--denoisers", "empirical", "--consistency", "0", "--out", str(out),
                      "--resume"])
    assert rc == 2
    assert "other settings (steps 10, now 5)" in _error_line(capsys)


def test_spacing_reaches_both_sampling_stages_and_is_a_result_setting(tmp_path, registry, monkeypatch, capsys):
    """--spacing karras: the samples differ from the default grid's, the split consistency samples on the same
    grid, the table says so, and resuming with another spacing is refused."""
    import boneless.evaluate as ev
    seen = []

    def recording(den_a, den_b, **options):
        seen.append(options.get("spacing"))
        return metrics.split_consistency(den_a, den_b, **options)

    monkeypatch.setattr(ev, "split_consistency", recording)
    runs = {}
    for spacing in ("uniform", "karras"):
        out = tmp_path / spacing
        assert main(TINY + ["--denoisers", "wiener-test", "--consistency", "2", "--classifier", "off",
                            "--spacing", spacing, "--out", str(out)]) == 0
        runs[spacing] = np.load(out / "samples_wiener-test.npy")
    assert seen == ["uniform", "karras"]
    assert np.abs(runs["uniform"] - runs["karras"]).max() > 1e-3
    assert "10 steps, karras spacing" in (tmp_path / "karras" / "table.md").read_text()
    rc = main(TINY + ["--denoisers", "wiener-test", "--consistency", "2", "--classifier", "off", "--spacing",
                      "logsnr", "--out", str(tmp_path / "karras"), "--resume"])
    assert rc == 2 and "other settings (spacing 'karras', now 'logsnr')" in _error_line(capsys)


def test_a_given_time_grid_reaches_both_sampling_stages_and_is_a_result_setting(tmp_path, registry, monkeypatch,
                                                                                 capsys):
    """--times: both sampling stages run on that grid, the steps and the table follow it, and resuming with
    another grid is refused."""
    import boneless.evaluate as ev
    seen = []

    def recording(den_a, den_b, **options):
        seen.append(options.get("times"))
        return metrics.split_consistency(den_a, den_b, **options)

    monkeypatch.setattr(ev, "split_consistency", recording)
    out = tmp_path / "grid"
    args = TINY + ["--denoisers", "wiener-test", "--consistency", "2", "--classifier", "off", "--out", str(out)]
    assert main(args + ["--times", "1,0.6,0.2,0"]) == 0
    assert seen == [[1.0, 0.6, 0.2, 0.0]]
    assert json.loads((out / "results.json").read_text())["settings"]["steps"] == 3
    assert "3 steps, times 1,0.6,0.2,0, seed" in (out / "table.md").read_text()
    assert main(args + ["--times", "1,0.5,0.2,0", "--resume"]) == 2  # the same steps, another grid
    assert "other settings (times [1.0, 0.6, 0.2, 0.0], now [1.0, 0.5, 0.2, 0.0])" in _error_line(capsys)


def test_the_stochastic_samplers_knobs_reach_the_sampling_stages_and_are_result_settings(tmp_path, registry,
                                                                                          capsys):
    """--eta: DDIM with eta 1 is DDPM, sample for sample (the same noise draws); eta 0.5 gives other samples, and
    the table says so. --churn reaches Euler-Maruyama. Resuming with another eta is refused; a results.json made
    before the knobs existed counts as the defaults."""
    runs = {}
    for name, extra in (("ddpm", ["--sampler", "ddpm"]), ("eta1", ["--sampler", "ddim", "--eta", "1"]),
                        ("eta05", ["--sampler", "ddim", "--eta", "0.5"]), ("em1", ["--sampler", "euler-maruyama"]),
                        ("em0", ["--sampler", "euler-maruyama", "--churn", "0"])):
        out = tmp_path / name
        assert main(TINY + ["--denoisers", "wiener-test", "--consistency", "2", "--classifier", "off",
                            "--out", str(out)] + extra) == 0
        runs[name] = np.load(out / "samples_wiener-test.npy")
    assert np.array_equal(runs["ddpm"], runs["eta1"])
    assert np.abs(runs["eta1"] - runs["eta05"]).max() > 1e-3 and np.abs(runs["em1"] - runs["em0"]).max() > 1e-3
    assert "10 steps, eta 0.5, seed" in (tmp_path / "eta05" / "table.md").read_text()
    args = TINY + ["--denoisers", "wiener-test", "--consistency", "2", "--classifier", "off", "--sampler", "ddim",
                   "--out", str(tmp_path / "eta05"), "--resume"]
    assert main(args) == 2 and "other settings (eta 0.5, now 0.0)" in _error_line(capsys)
    old = tmp_path / "ddpm" / "results.json"  # as written before --eta and --churn: resumed as eta 0, churn 1
    r = json.loads(old.read_text())
    del r["settings"]["eta"], r["settings"]["churn"]
    old.write_text(json.dumps(r))
    args = TINY + ["--denoisers", "wiener-test", "--consistency", "2", "--classifier", "off", "--sampler", "ddpm",
                   "--out", str(tmp_path / "ddpm"), "--resume"]
    assert main(args) == 0


class _Ranked(WienerFilter):
    """The Wiener filter (``gaussian``), recording the rank of each one built."""
    built = []

    def __init__(self, X, *, rank=None, device=None):
        super().__init__(X, rank=rank, device=device)
        _Ranked.built.append(rank)


def test_option_builds_the_named_denoisers_with_it_and_is_a_result_setting(tmp_path, monkeypatch, capsys):
    """--option NAME:KEY=VALUE: that denoiser is built with it from both pools (and its numbers change), the
    others without; the record and the table say so; resuming without it is refused; a KEY one of the denoisers
    does not take, or a NAME not among them, is a one-line error before any work."""
    monkeypatch.setitem(DENOISERS, "ranked-test", _Ranked)
    monkeypatch.setitem(DENOISERS, "plain-test", _Ranked)
    monkeypatch.setattr(_Ranked, "built", [])
    out = tmp_path / "opt"
    args = TINY + ["--denoisers", "ranked-test,plain-test", "--consistency", "2", "--classifier", "off",
                   "--out", str(out)]
    assert main(args + ["--option", "ranked-test:rank=3"]) == 0
    assert _Ranked.built == [3, 3, None, None]  # each from the pool, then from the second pool
    r = json.loads((out / "results.json").read_text())
    assert r["settings"]["options"] == ["ranked-test:rank=3"]
    dens = r["denoisers"]
    assert dens["ranked-test"]["options"] == {"rank": "3"} and "options" not in dens["plain-test"]
    low, full = dens["ranked-test"]["heldout"]["mse"], dens["plain-test"]["heldout"]["mse"]
    assert all(a > b for a, b in zip(low, full))  # rank 3 of 64 dimensions: a worse filter at every sigma
    assert "Row 'ranked-test': built with rank=3 (--option)." in (out / "table.md").read_text()
    assert main(args + ["--resume"]) == 2
    assert "other settings (options ['ranked-test:rank=3'], now [])" in _error_line(capsys)
    _Ranked.built.clear()
    for extra, message in ((["--option", "rank=3", "--denoisers", "ranked-test,empirical"],
                            "denoiser 'empirical' does not take rank; its options:"),
                           (["--option", "parzen:rank=3"], "'parzen' is not among the denoisers of this run"),
                           (["--option", "rank=3", "--option", "ranked-test:rank=4"], "rank given twice")):
        assert main(args + ["--out", str(tmp_path / "bad")] + extra) == 2
        assert message in _error_line(capsys)
    assert _Ranked.built == [] and not (tmp_path / "bad" / "results.json").exists()


class _RunsOutAtHighNoise(WienerFilter):
    """Behaves as if its time budget ran out at its first call with sigma = 2 (no clock involved)."""

    def __call__(self, x, alpha, sigma):
        from boneless.evaluate import _OverBudget
        if float(torch.as_tensor(sigma).max()) == 2.0:
            raise _OverBudget()
        return super().__call__(x, alpha, sigma)


def test_a_stopped_denoiser_keeps_the_noise_levels_it_finished(tmp_path, monkeypatch):
    monkeypatch.setitem(DENOISERS, "stops-test", _RunsOutAtHighNoise)
    out = tmp_path / "stop"
    assert main(TINY + ["--denoisers", "stops-test", "--consistency", "0", "--out", str(out)]) == 0
    r = json.loads((out / "results.json").read_text())["denoisers"]["stops-test"]
    assert r["status"] == "partial" and "held-out error" in r["error"]
    assert r["heldout"]["ratio"][:2] == pytest.approx([1.0, 1.0], rel=1e-6) and r["heldout"]["ratio"][2] is None
    assert "| stops-test | **1** | **1** | – |" in (out / "table.md").read_text()


def test_guard_stops_a_denoiser_past_its_deadline():
    from boneless.evaluate import _Guard, _OverBudget
    calls = []
    g = _Guard(WienerFilter(torch.rand(10, 3)), time.perf_counter() + 3600, lambda: calls.append(1))
    g(torch.zeros(2, 3), 1.0, 0.5)
    assert calls == [1] and not hasattr(g, "posterior")
    late = _Guard(WienerFilter(torch.rand(10, 3)), time.perf_counter() - 1, lambda: None)
    with pytest.raises(_OverBudget):
        late(torch.zeros(2, 3), 1.0, 0.5)


@pytest.mark.skipif(not FMNIST.is_dir(), reason="Fashion-MNIST (dataset-fashion-mnist) not installed")
def test_eval_on_fashion_mnist_with_the_classifier(tmp_path, monkeypatch):
    import boneless.evaluate as E
    from boneless.classifier import fashion_classifier
    tiny = fashion_classifier(epochs=1, limit=1000, directory=tmp_path / "cache")
    monkeypatch.setattr(E, "fashion_classifier", lambda **kw: tiny)
    out = tmp_path / "fm"
    rc = main(["eval", "--data", "fashion-mnist", "--pool", "400", "--test", "30", "--samples", "6", "--steps", "3",
               "--sigmas", "0.1,1", "--consistency", "3", "--denoisers", "empirical", "--pca-dim", "8",
               "--no-progress", "--out", str(out)])
    assert rc == 0
    r = json.loads((out / "results.json").read_text())
    assert r["classifier"]["test_accuracy"] == tiny.test_accuracy
    assert r["protocol"]["test_source"] == "test split" and r["protocol"]["second_pool"] == 400
    s = r["denoisers"]["empirical"]["samples"]
    assert s["fd_classifier"] >= 0 and 0 < s["confidence"] <= 1 and r["real"]["fd_classifier"] >= 0
    assert len(s["classes"]) == 10 and sum(s["classes"]) == 6  # the samples' top classes
    assert all(len(c) == 10 and sum(c) == 6 for c in r["real"]["classes"])  # those of each real set of 6
    assert "FD classifier" in (out / "table.md").read_text()


@pytest.mark.parametrize("extra, message", [
    (["--sigmas", "0,1"], "--sigmas"),
    (["--sigmas", "abc"], "--sigmas"),
    (["--denoisers", "nope"], "unknown 'nope'"),
    (["--denoisers", ","], "at least one"),
    (["--pool", "5000"], "exceeds"),
    (["--in-sample", "301"], "exceeds --pool"),
    (["--schedule", "nope"], "schedule"),
    (["--device", "nonsense"], "device"),
])
def test_bad_options_are_one_line_errors(extra, message, tmp_path, capsys):
    rc = main(TINY + ["--out", str(tmp_path / "x")] + extra)
    assert rc == 2
    assert message in _error_line(capsys)


@pytest.mark.parametrize("extra", [["--pool", "0"], ["--test", "-3"], ["--budget", "-1"], ["--consistency", "-1"],
                                   ["--samples", "x"], ["--classifier", "maybe"], ["--sampler", "nope"],
                                   ["--eta", "-0.5"], ["--churn", "nan"]])
def test_bad_values_are_rejected_by_the_parser(extra, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(TINY + ["--out", str(tmp_path / "x")] + extra)
    assert info.value.code == 2
    _error_line(capsys)


def test_score_rows_give_a_saved_sample_set_the_figures_of_the_run_that_made_it(tmp_path, registry):
    """--score NAME=PATH: a set made elsewhere is scored on the same footing as the denoisers' samples. The samples
    one run saved, scored by another run, get that run's figures; copies of the pool are copies."""
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(TINY + ["--denoisers", "wiener-test", "--consistency", "0", "--out", str(first)]) == 0
    from boneless.evaluate import split_data

    pool = split_data("digits", pool=300, test=40, extra=40, second_pool=False, size=None, seed=0)["pool"]
    np.save(tmp_path / "copies.npy", pool[10:30].numpy())  # more than --samples: the first 8 are scored
    rc = main(TINY + ["--denoisers", "none", "--consistency", "0", "--out", str(second), "--score",
                      f"again={first / 'samples_wiener-test.npy'}", "--score", f"copies={tmp_path / 'copies.npy'}"])
    assert rc == 0
    a, b = (json.loads((d / "results.json").read_text())["denoisers"] for d in (first, second))
    assert list(b) == ["again", "copies"]
    for key in ("copy_rate", "nearest_median", "median_ratio", "ks", "fd_pca", "out_of_range"):
        assert b["again"]["samples"][key] == a["wiener-test"]["samples"][key], key
    assert b["copies"]["samples"]["copy_rate"] == 1.0 and b["copies"]["samples"]["nearest_median"] < 1e-3
    assert "heldout" not in b["copies"]
    table = (second / "table.md").read_text()
    assert "Row 'copies': the first 8 images of" in table
    assert "Held-out MSE" not in table and "samples per denoiser" not in table  # no denoiser ran here
    assert "The first 8 images of each set given by --score are scored." in table
    assert not (second / "heldout.png").exists() and (first / "heldout.png").is_file()
    assert (second / "samples_copies.png").is_file() and (second / "neighbours_again.png").is_file()
    mixed = tmp_path / "mixed"  # beside a denoiser: its held-out row, and none for the set made elsewhere
    assert main(TINY + ["--denoisers", "wiener-test", "--consistency", "0", "--out", str(mixed), "--score",
                        f"copies={tmp_path / 'copies.npy'}"]) == 0
    heldout, samples = (mixed / "table.md").read_text().split("## Samples")
    assert "| wiener-test |" in heldout and "| copies |" not in heldout and "| copies |" in samples
    assert "8 samples per denoiser" in heldout


@pytest.mark.parametrize("arrays, score, message", [
    ({"small.npy": np.zeros((8, 2, 2), np.float32)}, "s=small.npy", "shape [1, 2, 2]"),
    ({"few.npy": np.zeros((3, 1, 8, 8), np.float32)}, "f=few.npy", "holds 3 examples, fewer than --samples 8"),
    ({"bad.npy": np.full((8, 1, 8, 8), np.nan, np.float32)}, "b=bad.npy", "--score b:"),
    ({}, "m=missing.npy", "--score m:"),
    ({}, "nopath", "expected NAME=PATH"),
    ({}, "empirical=x.npy", "is taken"),
    ({}, "a b=x.npy", "NAME may hold"),
])
def test_bad_score_sets_are_one_line_errors_before_any_work(arrays, score, message, tmp_path, capsys):
    for name, a in arrays.items():
        np.save(tmp_path / name, a)
    out = tmp_path / "x"
    path = score.partition("=")[2]
    score = score if "=" not in score or not path else score.replace(path, str(tmp_path / path))
    assert main(TINY + ["--out", str(out), "--denoisers", "empirical", "--score", score]) == 2
    assert message in _error_line(capsys)
    assert not out.exists() or not list(out.iterdir())  # nothing computed or written


def test_nothing_to_evaluate_is_an_error(tmp_path, capsys):
    assert main(TINY + ["--out", str(tmp_path / "x"), "--denoisers", "none"]) == 2
    assert "nothing to evaluate" in _error_line(capsys)


def test_out_must_be_a_folder(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(TINY + ["--out", str(f)]) == 2
    assert "not a folder" in _error_line(capsys)


def test_reference_network_is_a_row_with_its_size_and_training(tmp_path, capsys):
    """--reference DIR: the trained network is evaluated as one more row, on the same noise draw as the others
    (its held-out MSE is that of the network called directly), with its size and training time beside it."""
    diffusers = pytest.importorskip("diffusers")
    from boneless import load_dataset, train_reference
    from boneless.adapters import from_diffusers
    from boneless.metrics import denoising_error

    net = tmp_path / "net"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        unet = train_reference.make_unet((1, 8, 8), [8, 8])
    info = {"data": "digits", "n_train": 300, "shape": [1, 8, 8], "steps": 7, "batch_size": 4, "channels": [8, 8],
            "seconds": 1.5}
    train_reference.save_reference(net, unet, train_reference.make_scheduler(), info)
    out = tmp_path / "run"
    assert main(TINY + ["--denoisers", "gaussian", "--consistency", "2", "--reference", str(net),
                        "--out", str(out)]) == 0
    r = json.loads((out / "results.json").read_text())
    ref = r["denoisers"]["reference"]
    assert ref["status"] == "ok" and "consistency" not in ref  # one network: no second pool to compare with
    assert ref["network"]["parameters"] == sum(p.numel() for p in unet.parameters())
    assert ref["network"]["seconds"] == 1.5 and ref["network"]["n_train"] == 300
    X = load_dataset("digits")
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(0))
    test = X[perm[300:340]]
    den = from_diffusers(diffusers.UNet2DModel.from_pretrained(net / "unet").eval(),
                         diffusers.DDPMScheduler.from_pretrained(net / "scheduler"))
    direct = denoising_error(den, test, r["sigmas"], seed=0, batch_size=250, peak=2.0)
    assert ref["heldout"]["mse"] == pytest.approx(direct.mse.tolist(), rel=1e-5)
    table = (out / "table.md").read_text()
    assert "| reference |" in table and f"{ref['network']['parameters'] / 1e6:.2f}M parameters" in table
    assert "FD classifier and confidence: n/a" in table  # digits are 8x8: no Fashion-MNIST features
    # a network trained on other images is a one-line error before any work
    assert main(["eval", "--data", "faces", "--pool", "40", "--test", "10", "--reference", str(net),
                 "--no-progress", "--out", str(tmp_path / "faces")]) == 2
    assert "trained on images of shape [1, 8, 8]" in _error_line(capsys)
    assert main(TINY + ["--reference", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert "no such folder" in _error_line(capsys)


def test_eval_on_faces_without_a_test_split_or_classifier(tmp_path):
    """The bundled faces (100 images, no test split, not 28x28): held out of a shuffle, no classifier columns."""
    out = tmp_path / "faces"
    assert main(["eval", "--data", "faces", "--pool", "60", "--test", "20", "--samples", "4", "--steps", "3",
                 "--sigmas", "0.1,1", "--consistency", "0", "--denoisers", "gaussian,patch-composite",
                 "--no-progress", "--out", str(out)]) == 0
    r = json.loads((out / "results.json").read_text())
    assert r["classifier"] is None and r["protocol"]["test_source"] == "held out of a shuffle"
    assert r["protocol"]["shape"] == [1, 25, 25] and r["real"]["sets"] == 5  # the other 20 faces, 5 sets of 4
    assert all(d["status"] == "ok" for d in r["denoisers"].values())
    assert "confidence" not in r["denoisers"]["gaussian"]["samples"]
    assert "FD classifier and confidence: n/a" in (out / "table.md").read_text()


def test_the_cost_probe_leaves_out_the_set_up_of_a_first_call():
    """A denoiser whose first call builds its banks (100 s) and then costs 1 s per call and 10 s per image: the
    model is fitted on the calls after the first (no clock: ``timed`` returns modelled seconds)."""
    from boneless.evaluate import probe_costs
    calls = []

    def timed(b, start):
        calls.append((b, start))
        return (100.0 if len(calls) == 1 else 0.0) + 1.0 + 10.0 * b
    c0, c1 = probe_costs(timed, b_err=250, n_test=500, budget=2700)
    assert calls == [(1, 0), (2, 0), (1, 1)]  # 111 s x 250 images is over a quarter of the budget: two images
    assert (c0, c1) == pytest.approx((1.0, 10.0))
    calls.clear()
    c0, c1 = probe_costs(lambda b, start: calls.append(b) or 0.5 + 0.01 * b, b_err=250, n_test=500, budget=2700)
    assert calls == [1, 250, 1] and (c0, c1) == pytest.approx((0.5, 0.01))  # the held-out stage's first batch
    assert probe_costs(lambda b, start: 2000.0, b_err=250, n_test=500, budget=2700) == (0.0, 2000.0)  # linear
