"""`boneless sample` end to end, and every bad input of SPEC §6 as a one-line error with a non-zero exit."""

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
from PIL import Image

from boneless.cli import main


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_sample_digits_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, _ = run(["sample", "--data", "digits", "-n", "8", "--steps", "40", "--out", str(out),
                           "--no-progress"], capsys)
    assert code == 0
    for name in ("samples.png", "samples.npz", "trajectory.png", "posterior.png", "neighbours.png", "report.json"):
        assert (out / name).stat().st_size > 0, name
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # no temporary files left
    report = json.loads((out / "report.json").read_text())
    assert report["copy_rate"] >= 0.875  # the exact flow memorises (SPEC §2.4)
    assert report["world_size"] == 1 and report["settings"]["steps"] == 40
    npz = np.load(out / "samples.npz")
    assert npz["samples"].shape == (8, 1, 8, 8) and npz["nearest"].shape == (8,)
    assert report["nearest"] == npz["nearest"].tolist()
    assert Image.open(out / "samples.png").width >= 600
    assert "copy rate" in stdout


@pytest.mark.parametrize("scale,offset", [(5.0, 3.0), (1e-3, 0.0)])
def test_sample_latents_of_any_range(tmp_path, capsys, scale, offset):
    """VAE-like latents [N, 4, h, w] far outside [-1, 1] (or of tiny scale) sample in their own scale: the exact
    flow lands on training latents, and the pictures show them (first three channels, scaled for display)."""
    X = (np.random.default_rng(0).standard_normal((60, 4, 6, 6)) * scale + offset).astype(np.float32)
    np.save(tmp_path / "latents.npy", X)
    out = tmp_path / "run"
    code, _, err = run(["sample", "--data", str(tmp_path / "latents.npy"), "-n", "4", "--steps", "30",
                        "--spacing", "logsnr", "--out", str(out), "--no-progress"], capsys)
    assert code == 0, err
    npz = np.load(out / "samples.npz")
    assert npz["samples"].shape == (4, 4, 6, 6)
    np.testing.assert_allclose(npz["samples"], X[npz["nearest"]], rtol=0, atol=1e-3 * scale)
    assert json.loads((out / "report.json").read_text())["copy_rate"] == 1.0
    im = np.asarray(Image.open(out / "samples.png"))
    assert im.ndim == 3 and im.shape[2] == 3 and im.std() > 20  # RGB of the first three channels, not saturated


def test_sample_points_and_other_options(tmp_path, capsys):
    out = tmp_path / "moons"
    code, _, _ = run(["sample", "--data", "moons", "-n", "16", "--steps", "20", "--schedule", "ve", "--sampler",
                      "heun", "--spacing", "karras", "--softmax-temperature", "2", "--flow-scale", "0", "1",
                      "--noise-strength", "1", "0", "--out", str(out), "--no-progress"], capsys)
    assert code == 0
    assert json.loads((out / "report.json").read_text())["schedule"] == "ve"
    assert (out / "posterior.png").exists() and (out / "trajectory.png").exists()


def test_sample_on_a_given_time_grid(tmp_path, capsys):
    """--times is the grid of the run (recorded in the report); a grid that does not decrease, or --times with
    --spacing, is a one-line error with exit code 2."""
    out = tmp_path / "grid"
    code, _, err = run(["sample", "--data", "moons", "-n", "4", "--times", "1,0.8,0.5,0.2,0.05,0", "--sampler",
                        "heun", "--out", str(out), "--no-progress"], capsys)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["steps"] == 5 and report["time_grid"] == [1.0, 0.8, 0.5, 0.2, 0.05, 0.0]
    for extra in (["--times", "1,0.5,0.7"], ["--times", "1,x"], ["--times", "1,0", "--spacing", "karras"]):
        with pytest.raises(SystemExit) as e:  # argparse's one-line error
            main(["sample", "--data", "moons", "--out", str(tmp_path / "bad"), *extra])
        err = capsys.readouterr().err
        assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and "--times" in err, err


def test_sample_from_an_image_folder_with_an_unreadable_file(tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        code, _, err = run(["sample", "--data", str(folder), "--size", "16", "-n", "2", "--steps", "10", "--out",
                            str(out), "--no-progress"], capsys)
    assert code == 0
    assert "broken.png" in err and "warning" in err
    assert np.load(out / "samples.npz")["samples"].shape == (2, 3, 16, 16)


def bad_inputs(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    nan = tmp_path / "nan.npy"
    np.save(nan, np.array([[0.1, np.nan], [0.2, 0.3]], dtype=np.float32))
    shape5 = tmp_path / "five.npy"
    np.save(shape5, np.zeros((2, 1, 1, 2, 2), dtype=np.float32))
    text = tmp_path / "junk.npy"
    text.write_text("hello")
    return [
        (["--data", str(tmp_path / "missing.npy")], "no such"),
        (["--data", str(empty)], "empty"),
        (["--data", str(nan)], "NaN"),
        (["--data", str(shape5)], "shape"),
        (["--data", str(text)], "junk.npy"),
        (["--data", "not-a-dataset"], "unknown dataset"),
        (["--steps", "0"], "positive integer"),
        (["-n", "-3"], "positive integer"),
        (["--schedule", "cosine-ish"], "unknown schedule"),
        (["--sampler", "rk4"], "invalid choice"),
        (["--softmax-temperature", "0"], "positive number"),
        (["--noise-strength", "-1", "0"], "noise-strength"),
        (["--eta", "-0.5"], "eta"),
        (["--device", "cuda:7"] if not __import__("torch").cuda.is_available() else ["--device", "tpu"], "device"),
        (["--limit", "0"], "positive integer"),
    ]


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    for args, needle in bad_inputs(tmp_path):
        try:
            code = main(["sample", "--out", str(tmp_path / "out"), "--no-progress", *args])
        except SystemExit as e:  # argparse's own validation
            code = e.code
        _, err = capsys.readouterr()
        lines = [line for line in err.strip().splitlines() if line]
        assert code == 2, (args, err)
        assert len(lines) == 1, (args, err)
        assert "error" in lines[0] and needle.lower() in lines[0].lower(), (args, err)
        assert "Traceback" not in err
    assert not (tmp_path / "out" / "report.json").exists()


def test_console_script_reports_errors_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "boneless.cli", "sample", "--data", str(tmp_path / "nope.npz")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("boneless: error:")


def test_help_texts(capsys):
    for argv in (["--help"], ["sample", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0
    out, _ = capsys.readouterr()
    assert "--schedule" in out and "--noise-strength" in out and "sample" in out


@pytest.mark.parametrize("command", ["sample", "demo", "eval", "bench", "pack"])
def test_help_states_each_default_once(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    entries = [e for e in text.split("\n  -")[1:]]  # one entry per option
    assert entries
    for entry in entries:
        assert entry.count("default") <= 1, entry
    if command == "sample":
        for expect in ("(default: digits)", "(default 100)", "(default: 0.0)", "(default: the denoiser's own"):
            assert " ".join(text.split()).count(expect) == 1, expect


def test_sample_with_repeated_rows_held_once_or_not(tmp_path, capsys):
    """A dataset whose rows repeat: the same samples and posterior records whether the repeats are held once (the
    default) or every row is held (--no-dedupe)."""
    g = np.random.default_rng(0)
    X = np.repeat(g.standard_normal((12, 2, 3, 3)).astype(np.float32), 5, axis=0)
    np.save(tmp_path / "repeats.npy", X)
    got = {}
    for flag in ([], ["--no-dedupe"]):
        out = tmp_path / ("all" if flag else "once")
        code, _, err = run(["sample", "--data", str(tmp_path / "repeats.npy"), "-n", "4", "--steps", "12",
                            "--seed", "3", "--out", str(out), "--no-progress", *flag], capsys)
        assert code == 0, err
        got[bool(flag)] = np.load(out / "samples.npz")
    np.testing.assert_allclose(got[True]["samples"], got[False]["samples"], rtol=0, atol=1e-5)
    assert np.array_equal(X[got[True]["nearest"]], X[got[False]["nearest"]])  # the same rows (any of the copies)
