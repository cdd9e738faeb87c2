"""Output paths: every command checks where it will write before any work starts, and a failed write is one
line and a non-zero exit, never a traceback (an existing file where a folder goes, a folder where a file goes,
a read-only folder, a full disk)."""

import subprocess
import uuid

import numpy as np
import pytest
from PIL import Image

import boneless.cli
import boneless.evaluate
from boneless.cli import main
from boneless.outputs import atomic_path, check_output_dir, check_output_file

COMMANDS = {  # command line before --out, and a function of the command that must not run before the check
    "sample": (["sample", "--data", "digits", "--steps", "5"], (boneless.cli, "load_dataset")),
    "demo": (["demo", "tweedie", "--quick"], None),
    "eval": (["eval", "--data", "digits", "--pool", "50", "--test", "10"], (boneless.evaluate, "split_data")),
    "bench": (["bench", "--quick"], None),
}


def one_line_error(capsys, code):
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("boneless: error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("name", list(COMMANDS))
def test_output_folder_that_is_a_file_is_refused_before_any_work(tmp_path, capsys, monkeypatch, name):
    argv, guarded = COMMANDS[name]
    if guarded is not None:
        monkeypatch.setattr(*guarded, lambda *a, **k: pytest.fail("work started before the output check"))
    f = tmp_path / "f.txt"
    f.write_text("hi\n")
    err = one_line_error(capsys, main(argv + ["--out", str(f)]))
    assert "exists and is not a folder" in err and f.read_text() == "hi\n"


def test_output_file_that_is_a_folder_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(boneless.cli, "load_dataset", lambda *a, **k: pytest.fail("work started"))
    (tmp_path / "run" / "report.json").mkdir(parents=True)
    err = one_line_error(capsys, main(COMMANDS["sample"][0] + ["--out", str(tmp_path / "run")]))
    assert "report.json there is a folder" in err
    images = tmp_path / "images"
    images.mkdir()
    Image.new("L", (8, 8)).save(images / "a.png")
    (tmp_path / "d.npy").mkdir()
    err = one_line_error(capsys, main(["pack", str(images), "--out", str(tmp_path / "d.npy"), "--no-progress"]))
    assert "is a folder, where a file will be written" in err


@pytest.fixture
def mounted(tmp_path):
    """A tmpfs mounted with the given options (root only; skipped where mounting is not allowed)."""
    points = []

    def mount(options):
        point = tmp_path / f"mnt-{uuid.uuid4().hex[:6]}"
        point.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True).returncode:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        points.append(point)
        return point
    yield mount
    for point in points:
        subprocess.run(["umount", str(point)], capture_output=True)


def test_read_only_folder(mounted, capsys):
    ro = mounted("ro,size=64k")
    for argv in (COMMANDS["sample"][0] + ["--out", str(ro / "run")], COMMANDS["demo"][0] + ["--out", str(ro)]):
        err = one_line_error(capsys, main(argv))
        assert "cannot write there (Read-only file system)" in err
    with pytest.raises(ValueError, match="Read-only"):
        check_output_file(ro / "d.npy")


def test_full_disk_is_one_line_and_leaves_no_temporary_file(mounted, capsys):
    tiny = mounted("size=16k")
    err = one_line_error(capsys, main(COMMANDS["sample"][0] + ["--out", str(tiny), "--no-progress"]))
    assert "No space left on device" in err
    assert not [p for p in tiny.iterdir() if p.name.startswith(".")]  # no temporary file left behind
    with pytest.raises(ValueError, match=r"cannot write .*big.npy \(.*written\)"):  # numpy's words for it
        with atomic_path(tiny / "big.npy") as tmp:
            np.save(tmp, np.zeros(1 << 16))
    assert not (tiny / "big.npy").exists() and not [p for p in tiny.iterdir() if p.name.startswith(".")]


def test_check_output_dir_creates_the_folder(tmp_path):
    assert check_output_dir(tmp_path / "a" / "b").is_dir()
    assert not list((tmp_path / "a" / "b").iterdir())  # the write probe is removed
