"""One registry: every denoiser by name, built with options it takes, and a one-line error for any other."""

import json

import pytest
import torch

import boneless.cli
from boneless import DENOISERS, make_denoiser
from boneless.cli import main
from boneless.registry import options_of


def test_every_registered_denoiser_declares_keyword_only_options():
    for name, cls in DENOISERS.items():
        assert "device" in options_of(name), name
        den = make_denoiser(name, torch.rand(40, 1, 6, 6) * 2 - 1, **({"components": 2} if name == "gmm" else {}))
        assert isinstance(den, cls)


def test_an_option_the_denoiser_does_not_take_is_a_one_line_error():
    X = torch.rand(20, 1, 6, 6)
    with pytest.raises(ValueError, match=r"denoiser 'gmm' does not take temperature; its options: components, "):
        make_denoiser("gmm", X, temperature=2.0)
    with pytest.raises(ValueError, match="does not take storage, bank; its options: schedule, chunk_size"):
        make_denoiser("local", X, storage="uint8", bank="faiss")
    with pytest.raises(ValueError, match="unknown denoiser 'nope': choose one of empirical, "):
        make_denoiser("nope", X)


def test_cli_passes_only_the_options_given(tmp_path, capsys, monkeypatch):
    seen = {}
    make = boneless.cli.make_denoiser

    def spy(name, X, **options):
        seen[name] = sorted(options)
        return make(name, X, **options)
    monkeypatch.setattr(boneless.cli, "make_denoiser", spy)
    args = ["sample", "--data", "digits", "--limit", "60", "-n", "2", "--steps", "3", "--no-progress"]
    assert main(args + ["--denoiser", "local", "--out", str(tmp_path / "a")]) == 0
    assert seen["local"] == ["device"]  # its own chunk size, not the command line's default
    assert main(args + ["--denoiser", "gmm", "--softmax-temperature", "2", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("boneless: error: denoiser 'gmm' does not take temperature; its options:")
    assert err.count("\n") == 1
    assert main(args + ["--softmax-temperature", "2", "--chunk-size", "16", "--out", str(tmp_path / "c")]) == 0
    assert seen["empirical"] == ["chunk_size", "device", "temperature"]


def test_option_text_is_a_python_literal_or_else_text():
    import argparse
    from boneless.options import denoiser_option
    assert denoiser_option("low_switch=0") == (None, "low_switch", 0)
    assert denoiser_option("parzen-local:local={'schedule': 5}") == ("parzen-local", "local", {"schedule": 5})
    assert denoiser_option(" storage = uint8 ") == (None, "storage", "uint8")
    assert denoiser_option("a:b=x=1") == ("a", "b", "x=1")
    assert denoiser_option("switch=inf") == (None, "switch", "inf")  # text: the class says what it takes
    for bad in ("low_switch", "=1", "low_switch=", "1x=2", "a b=1"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected"):
            denoiser_option(bad)


def test_sample_passes_each_option_to_the_denoiser_as_the_api_takes_it(tmp_path, capsys, monkeypatch):
    """--option KEY=VALUE: the class gets the value (not its text), the samples are those of the API with that
    option, and a KEY it does not take, a value it cannot use, a KEY given by its own flag too, or another
    denoiser's name are one-line errors."""
    import numpy as np
    from boneless import sample
    from boneless.data import load_dataset
    from boneless.schedules import get_schedule
    seen = {}
    make = boneless.cli.make_denoiser

    def spy(name, X, **options):
        seen[name] = options
        return make(name, X, **options)
    monkeypatch.setattr(boneless.cli, "make_denoiser", spy)
    args = ["sample", "--data", "digits", "--limit", "200", "-n", "3", "--steps", "8", "--no-progress",
            "--denoiser", "parzen-local"]
    out = tmp_path / "a"
    assert main(args + ["--option", "low_switch=0", "--option", "parzen-local:switch=2.5", "--out", str(out)]) == 0
    assert seen["parzen-local"] == {"low_switch": 0, "switch": 2.5, "device": torch.device("cpu")}
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["options"] == ["low_switch=0", "parzen-local:switch=2.5"]  # as given, as text
    X = load_dataset("digits", limit=200)
    ref = sample(make_denoiser("parzen-local", X, low_switch=0, switch=2.5), get_schedule("rectified-flow"), n=3,
                 steps=8, shape=tuple(X.shape[1:]), seed=0, progress=False)
    default = sample(make_denoiser("parzen-local", X), get_schedule("rectified-flow"), n=3, steps=8,
                     shape=tuple(X.shape[1:]), seed=0, progress=False)
    got = np.load(out / "samples.npz")["samples"]
    assert np.allclose(got, ref.samples.numpy(), atol=1e-6)
    assert not np.allclose(got, default.samples.numpy(), atol=1e-3)  # the options changed the samples
    for extra, message in ((["--option", "low_swich=0"], "denoiser 'parzen-local' does not take low_swich"),
                           (["--option", "low_switch=abc"], "low_switch must be a number >= 0, got 'abc'"),
                           (["--option", "parzen={'neighbours': 'x'}"], "neighbours must be a positive integer, got 'x'"),
                           (["--option", "parzen={'nope': 1}"], "denoiser 'parzen-local' with parzen={'nope': 1}: "),
                           (["--option", "blend:switch=1"], "'blend' is not among the denoisers of this run"),
                           (["--option", "device='cuda'"], "--option device: use --device"),
                           (["--denoiser", "empirical", "--chunk-size", "8", "--option", "chunk_size=16"],
                            "--option chunk_size repeats an option given by its own flag (8)")):
        assert main(args + extra + ["--out", str(tmp_path / "b")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("boneless: error:") and message in err and err.count("\n") == 1, err
