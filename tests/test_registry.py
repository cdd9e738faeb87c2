"""One registry: every denoiser by name, built with options it takes, and a one-line error for any other."""

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
