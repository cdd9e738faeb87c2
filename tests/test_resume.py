"""Resumable runs: a run interrupted after a checkpoint and resumed gives bit-identical samples and trajectory."""


import numpy as np
import pytest
import torch

import boneless.cli
from boneless import EmpiricalDenoiser, load_dataset, sample
from boneless.checkpoints import sample_resumable
from boneless.cli import main


class Interrupt(Exception):
    pass


class Crashing:
    """A denoiser that raises after ``after`` main (per-step) calls, like a run killed mid-way."""

    def __init__(self, den, after, error=Interrupt):
        self.den, self.after, self.error, self.calls, self.shape = den, after, error, 0, den.shape

    def __call__(self, x, alpha, sigma):
        return self.den(x, alpha, sigma)

    def posterior(self, x, alpha, sigma, k=5):
        self.calls += 1
        if self.calls > self.after:
            raise self.error()
        return self.den.posterior(x, alpha, sigma, k=k)


def crashing(den, after, error=Interrupt):
    """A :class:`Crashing` whose class name is the wrapped denoiser's (checkpoints record the denoiser's class)."""
    return type(type(den).__name__, (Crashing,), {})(den, after, error)


@pytest.fixture(scope="module")
def den():
    return EmpiricalDenoiser(load_dataset("digits", limit=300))


def same_result(a, b):
    ta, tb = a.trajectory.stacked(), b.trajectory.stacked()
    return (torch.equal(a.samples, b.samples) and ta.keys() == tb.keys()
            and all(torch.equal(ta[k], tb[k]) for k in ta) and a.denoiser_calls == b.denoiser_calls)


CASES = [
    dict(sampler="euler-maruyama", steps=10, noise_strength=(0.8, 0.1), flow_scale=(0.2, 1.0)),  # the notebook's knobs
    dict(sampler="ddim", eta=0.6, steps=10),
    dict(sampler="heun", steps=7, schedule="vp-cosine"),
    dict(sampler="euler", steps=8, schedule="ve"),  # the VE grid ends above sigma = 0: one final denoising
]


@pytest.mark.parametrize("case", CASES, ids=[c["sampler"] for c in CASES])
def test_resumed_equals_uninterrupted(tmp_path, den, case):
    case = dict(case)
    schedule = case.pop("schedule", "rectified-flow")
    kw = dict(n=4, seed=7, **case)
    ref = sample(den, schedule, **kw)
    ck = tmp_path / "ck.pt"
    # checkpointing alone changes nothing
    assert same_result(ref, sample_resumable(den, schedule, checkpoint=ck, every=4, **kw))
    for every, crash_after in [(4, 6), (1, 3)]:
        ck.unlink(missing_ok=True)
        with pytest.raises(Interrupt):
            sample_resumable(crashing(den, crash_after), schedule, checkpoint=ck, every=every, **kw)
        saved = torch.load(ck, weights_only=True)
        assert saved["step"] == crash_after // every * every  # the last checkpoint before the crash
        resumed = sample_resumable(crashing(den, 10 ** 6), schedule, checkpoint=ck, every=every, resume=True, **kw)
        assert same_result(ref, resumed)
        # resuming twice from the same checkpoint is just as exact
        assert same_result(ref, sample_resumable(den, schedule, checkpoint=ck, resume=True, **kw))
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]  # atomic writes leave no temporary files


def test_checkpoint_of_another_run_is_refused(tmp_path, den):
    ck = tmp_path / "ck.pt"
    with pytest.raises(Interrupt):
        sample_resumable(crashing(den, 5), n=3, steps=10, seed=1, checkpoint=ck, every=2)
    with pytest.raises(ValueError, match="different run: steps 10 there, 12 now"):
        sample_resumable(den, n=3, steps=12, seed=1, checkpoint=ck, resume=True)
    with pytest.raises(ValueError, match="different run: seed 1 there, 2 now"):
        sample_resumable(den, n=3, steps=10, seed=2, checkpoint=ck, resume=True)
    ck.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read"):
        sample_resumable(den, n=3, steps=10, seed=1, checkpoint=ck, resume=True)


def test_resume_without_checkpoint_starts_over_with_a_warning(tmp_path, den):
    with pytest.warns(UserWarning, match="no checkpoint"):
        r = sample_resumable(den, n=3, steps=6, seed=1, checkpoint=tmp_path / "none.pt", resume=True)
    assert torch.equal(r.samples, sample(den, n=3, steps=6, seed=1).samples)
    for every in (0, -1, 2.5):
        with pytest.raises(ValueError, match="every must be a positive integer"):
            sample_resumable(den, n=3, steps=6, checkpoint=tmp_path / "c.pt", every=every)
    with pytest.raises(TypeError):  # checkpointing is sample_resumable's; sample() has no such option
        sample(den, n=3, steps=6, checkpoint=tmp_path / "c.pt")


def test_cli_interrupted_then_resumed(tmp_path, monkeypatch, capsys):
    args = ["sample", "--data", "digits", "--limit", "300", "-n", "4", "--steps", "12", "--sampler", "ddpm",
            "--seed", "3", "--no-progress", "--checkpoint-every", "5"]
    assert main(args + ["--out", str(tmp_path / "whole")]) == 0
    assert not (tmp_path / "whole" / "checkpoint.pt").exists()  # removed once the outputs are written

    make = boneless.cli.make_denoiser
    monkeypatch.setattr(boneless.cli, "make_denoiser", lambda *a, **k: crashing(make(*a, **k), 7, KeyboardInterrupt))
    out = tmp_path / "cut"
    assert main(args + ["--out", str(out)]) == 130  # Ctrl-C after step 7
    assert (out / "checkpoint.pt").exists() and not (out / "report.json").exists()
    monkeypatch.setattr(boneless.cli, "make_denoiser", make)
    assert main(args + ["--out", str(out), "--resume"]) == 0
    a, b = np.load(tmp_path / "whole" / "samples.npz"), np.load(out / "samples.npz")
    assert np.array_equal(a["samples"], b["samples"]) and np.array_equal(a["nearest"], b["nearest"])
    assert not (out / "checkpoint.pt").exists() and (out / "report.json").exists()
    capsys.readouterr()
    # a different setting with --resume: one-line error, exit 2
    (out / "checkpoint.pt").write_bytes((tmp_path / "whole" / "samples.npz").read_bytes())
    assert main(args + ["--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("boneless: error: checkpoint") and err.count("\n") == 1


def test_rerun_into_a_folder_with_a_checkpoint_resumes_or_refuses(tmp_path, monkeypatch, capsys):
    """Ctrl-C, then the same command again: it refuses (naming --resume) and keeps the checkpoint; --resume
    continues, --restart starts over; the interrupt message itself names --resume."""
    args = ["sample", "--data", "digits", "--limit", "300", "-n", "4", "--steps", "12", "--seed", "3",
            "--no-progress", "--checkpoint-every", "5", "--out", str(tmp_path / "x")]
    ck = tmp_path / "x" / "checkpoint.pt"
    make = boneless.cli.make_denoiser
    monkeypatch.setattr(boneless.cli, "make_denoiser", lambda *a, **k: crashing(make(*a, **k), 7, KeyboardInterrupt))
    assert main(args) == 130
    err = capsys.readouterr().err
    assert f"{ck} holds step 5: run the same command with --resume" in err and err.count("\n") == 1
    saved = ck.read_bytes()
    monkeypatch.setattr(boneless.cli, "make_denoiser", make)
    for again in (args, args[:-4] + args[-2:]):  # the same command, with or without --checkpoint-every
        assert main(again) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"boneless: error: checkpoint {ck} holds step 5 of 12 of this run") and "--resume" in err
        assert err.count("\n") == 1 and ck.read_bytes() == saved  # the progress is kept
    assert main(args + ["--resume"]) == 0
    resumed = np.load(tmp_path / "x" / "samples.npz")["samples"]
    # a checkpoint of other settings: refused too, naming --restart; --restart starts over and finishes
    monkeypatch.setattr(boneless.cli, "make_denoiser", lambda *a, **k: crashing(make(*a, **k), 7, KeyboardInterrupt))
    assert main(args) == 130
    monkeypatch.setattr(boneless.cli, "make_denoiser", make)
    capsys.readouterr()
    assert main(args[:-2] + ["--steps", "13", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "different run: steps 12 there, 13 now" in err and "--restart" in err
    assert main(args + ["--restart"]) == 0 and not ck.exists()
    assert np.array_equal(np.load(tmp_path / "x" / "samples.npz")["samples"], resumed)
    with pytest.raises(SystemExit) as exit_:  # one or the other (argparse's one-line error)
        main(args + ["--resume", "--restart"])
    assert exit_.value.code == 2 and "not allowed with argument --resume" in capsys.readouterr().err


def test_python_api_refuses_to_overwrite_a_checkpoint(tmp_path, den):
    ck = tmp_path / "ck.pt"
    with pytest.raises(Interrupt):
        sample_resumable(crashing(den, 5), n=3, steps=10, seed=1, checkpoint=ck, every=2)
    saved = ck.read_bytes()
    with pytest.raises(ValueError, match="holds step 4 of 10 of this run: continue it with --resume"):
        sample_resumable(den, n=3, steps=10, seed=1, checkpoint=ck, every=2)
    assert ck.read_bytes() == saved


def test_cli_resume_refuses_other_data_or_other_denoiser_options(tmp_path, monkeypatch, capsys):
    """The checkpoint records the denoiser's name and options and a digest of the data: a resume with another
    --limit, a denoiser flag or an --option of another value is one line and exit 2, and the checkpoint is kept;
    the same command resumes, to the uninterrupted run's samples."""
    base = ["sample", "--data", "digits", "-n", "4", "--steps", "12", "--seed", "3", "--no-progress",
            "--checkpoint-every", "5"]
    args = base + ["--limit", "300", "--softmax-temperature", "0.5", "--option", "seed=1", "--out", str(tmp_path / "x")]
    assert main(args[:-1] + [str(tmp_path / "whole")]) == 0
    ck = tmp_path / "x" / "checkpoint.pt"
    make = boneless.cli.make_denoiser
    monkeypatch.setattr(boneless.cli, "make_denoiser", lambda *a, **k: crashing(make(*a, **k), 7, KeyboardInterrupt))
    assert main(args) == 130
    monkeypatch.setattr(boneless.cli, "make_denoiser", make)
    saved = ck.read_bytes()
    capsys.readouterr()
    for other, key in ((["--limit", "301", "--softmax-temperature", "0.5", "--option", "seed=1"], "data "),
                       (["--limit", "300", "--softmax-temperature", "0.25", "--option", "seed=1"],
                        "denoiser_options.temperature 0.5 there, 0.25 now"),
                       (["--limit", "300", "--softmax-temperature", "0.5", "--option", "seed=2"],
                        "denoiser_options.seed 1 there, 2 now"),
                       (["--limit", "300", "--softmax-temperature", "0.5"], "denoiser_options.seed 1 there, (not set) now")):
        assert main(base + other + ["--out", str(tmp_path / "x"), "--resume"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"boneless: error: checkpoint {ck} was written by a different run: {key}"), err
        assert err.count("\n") == 1 and ck.read_bytes() == saved
    assert main(args + ["--resume"]) == 0
    a, b = np.load(tmp_path / "whole" / "samples.npz"), np.load(tmp_path / "x" / "samples.npz")
    assert np.array_equal(a["samples"], b["samples"])
