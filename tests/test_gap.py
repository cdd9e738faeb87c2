"""``boneless train-reference`` and ``boneless gap``: tiny networks on digits, run as a user runs them."""

import json
import textwrap

import numpy as np
import pytest
import torch

from boneless import load_dataset
from boneless.cli import main

diffusers = pytest.importorskip("diffusers")

from boneless import train_reference  # noqa: E402  (needs diffusers)


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """Digits not among the first 1000 (digits has no test split)."""
    path = tmp_path_factory.mktemp("data") / "held.npy"
    np.save(path, load_dataset("digits")[1500:1560].numpy())
    return path


@pytest.fixture(scope="module")
def random_model(tmp_path_factory):
    """A randomly initialised tiny UNet2DModel in a pipeline folder, as train-reference writes it."""
    path = tmp_path_factory.mktemp("model") / "unet-random"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        unet = train_reference.make_unet((1, 8, 8), [8, 8])
    train_reference.save_reference(path, unet, train_reference.make_scheduler(),
                                   {"data": "digits", "n_train": 40, "size": None})
    return path


def test_help(capsys):
    for command in ("gap", "train-reference"):
        with pytest.raises(SystemExit) as e:
            main([command, "--help"])
        assert e.value.code == 0
        assert "--out" in capsys.readouterr().out


TINY = ["--data", "digits", "--n-train", "24", "--batch-size", "4", "--channels", "8", "8", "--no-progress"]


def test_train_reference_writes_a_diffusers_pipeline(tmp_path, capsys):
    out = tmp_path / "ref"
    assert main(["train-reference", *TINY, "--steps", "3", "--out", str(out)]) == 0
    pipe = diffusers.DDPMPipeline.from_pretrained(out)
    assert pipe.unet.config.sample_size == 8 and pipe.scheduler.config.prediction_type == "v_prediction"
    info = json.loads((out / "reference.json").read_text())
    assert info["n_train"] == 24 and info["data"] == "digits" and len(info["losses"]) == 3
    assert not (out / "checkpoint.pt").exists()


def test_train_reference_resume_gives_the_uninterrupted_network(tmp_path, monkeypatch):
    whole = tmp_path / "whole"
    assert main(["train-reference", *TINY, "--steps", "4", "--out", str(whole)]) == 0

    class Stop(Exception):
        pass

    save = train_reference.save_checkpoint

    def save_then_stop(*args, **kwargs):
        save(*args, **kwargs)
        raise Stop

    parts = tmp_path / "parts"
    monkeypatch.setattr(train_reference, "save_checkpoint", save_then_stop)
    with pytest.raises(Stop):  # interrupted right after the checkpoint at step 2
        main(["train-reference", *TINY, "--steps", "4", "--checkpoint-every", "2", "--out", str(parts)])
    assert (parts / "checkpoint.pt").exists() and not (parts / "unet").exists()
    monkeypatch.setattr(train_reference, "save_checkpoint", save)
    assert main(["train-reference", *TINY, "--steps", "4", "--out", str(parts)]) == 2  # neither --resume nor --restart
    assert main(["train-reference", *TINY, "--steps", "4", "--checkpoint-every", "2", "--resume",
                 "--out", str(parts)]) == 0
    a = diffusers.UNet2DModel.from_pretrained(whole / "unet").state_dict()
    b = diffusers.UNet2DModel.from_pretrained(parts / "unet").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((whole / "reference.json").read_text())["losses"] == \
        json.loads((parts / "reference.json").read_text())["losses"]


def test_train_reference_refuses_a_resume_with_other_settings(tmp_path, capsys):
    out = tmp_path / "ref"
    settings = {"data": "digits", "split": "train", "n_train": 24, "shape": [1, 8, 8], "size": None, "steps": 4,
                "batch_size": 4, "lr": 1e-3, "channels": [8, 8], "seed": 1, "prediction_type": "v_prediction"}
    out.mkdir()
    torch.save({"version": train_reference.CHECKPOINT_VERSION, "settings": settings, "unet": {}},
               out / "checkpoint.pt")
    assert main(["train-reference", *TINY, "--steps", "4", "--resume", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("boneless: error:") and "seed" in err and len(err.splitlines()) == 1


def test_gap_of_a_random_unet(random_model, held_out, tmp_path, capsys):
    out = tmp_path / "gap"
    assert main(["gap", "--model", str(random_model), "--held-out", str(held_out), "--out", str(out),
                 "--n-eval", "30", "--sigmas", "0.1", "1", "10", "--samples", "6", "--steps", "3",
                 "--no-progress"]) == 0
    result = json.loads((out / "gap.json").read_text())
    assert result["n_train"] == 40 and result["sigmas"] == [0.1, 1.0, 10.0]
    assert result["train"]["n"] == 30 and result["heldout"]["n"] == 30
    for name in ("train", "heldout"):
        for key in ("gap", "model_mse", "ideal_mse", "wiener_mse"):
            assert len(result[name][key]) == 3 and all(np.isfinite(result[name][key]))
    assert 0 <= result["samples"]["copy_rate"] <= 1
    assert (out / "gap.png").stat().st_size > 0 and (out / "samples.png").stat().st_size > 0


def test_gap_of_the_ideal_denoiser_is_zero(tmp_path, held_out, monkeypatch):
    """A ``module:callable`` model that is the exact denoiser of the training data: no gap at any noise level,
    its error is the ideal's, and its samples are copies."""
    (tmp_path / "ideal_model.py").write_text(textwrap.dedent("""
        import boneless

        def make():
            return boneless.EmpiricalDenoiser(boneless.load_dataset("digits", limit=40))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "gap"
    assert main(["gap", "--model", "ideal_model:make", "--data", "digits", "--n-train", "40",
                 "--held-out", str(held_out), "--out", str(out), "--n-eval", "50", "--sigmas", "0.05", "0.5", "5",
                 "--samples", "8", "--steps", "30", "--no-progress"]) == 0
    result = json.loads((out / "gap.json").read_text())
    assert result["train"]["n"] == 40 and result["heldout"]["n"] == 50  # all 40 training images, 50 held-out
    for name in ("train", "heldout"):
        assert max(result[name]["gap"]) < 1e-10
        np.testing.assert_allclose(result[name]["model_mse"], result[name]["ideal_mse"], rtol=1e-6)
    assert result["train"]["ideal_mse"][0] < 1e-6 < result["heldout"]["ideal_mse"][0]  # it returns training images
    assert result["samples"]["copy_rate"] == 1.0


@pytest.mark.parametrize("problem", ["missing", "no-scheduler", "bad-json", "bad-callable", "wrong-shape"])
def test_gap_bad_model_is_one_line_and_writes_nothing(problem, random_model, held_out, tmp_path, capsys):
    import shutil

    extra = []
    if problem == "missing":
        spec = str(tmp_path / "nowhere")
    elif problem == "wrong-shape":  # 7 x 7 images through a UNet for 8 x 8
        spec, extra = str(random_model), ["--size", "7", "--held-out", "digits"]
    elif problem == "bad-callable":
        spec = "boneless.denoisers:no_such_thing"
    else:
        spec = str(tmp_path / "broken")
        shutil.copytree(random_model, spec)
        if problem == "no-scheduler":
            shutil.rmtree(tmp_path / "broken" / "scheduler")
        else:
            (tmp_path / "broken" / "unet" / "config.json").write_text("{ not json")
    out = tmp_path / "out"
    assert main(["gap", "--model", spec, "--held-out", str(held_out), "--data", "digits", "--out", str(out),
                 "--n-eval", "10", "--no-progress", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("boneless: error: --model" if not extra else "boneless: error: the model failed")
    assert len(err.splitlines()) == 1
    assert not out.exists() or not any(out.iterdir())  # no file written (the folder is made when checked)


# ---- latent data -------------------------------------------------------------------------------------------


def tiny_autoencoder():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return diffusers.AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                                       up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8),
                                       latent_channels=4, norm_num_groups=4, sample_size=16).eval()


def test_sample_latents_decoded_by_an_autoencoder(tmp_path, capsys):
    """Latents of a (random) AutoencoderKL, in its scaled convention and of any range: sampled with the exact
    flow, decoded to images; the samples are training latents, so the decoded samples are decoded training
    latents."""
    vae = tiny_autoencoder()
    vae.save_pretrained(tmp_path / "vae")
    images = torch.rand(20, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        z = vae.encode(images).latent_dist.mean * vae.config.scaling_factor * 40  # spread beyond [-1, 1]
    np.save(tmp_path / "latents.npy", z.numpy())
    out = tmp_path / "out"
    assert main(["sample", "--data", str(tmp_path / "latents.npy"), "--decode", str(tmp_path / "vae"), "-n", "4",
                 "--steps", "40", "--out", str(out), "--no-progress"]) == 0
    saved = np.load(out / "samples.npz")
    assert saved["samples"].shape == (4, 4, 8, 8)
    np.testing.assert_allclose(saved["samples"], z.numpy()[saved["nearest"]], atol=1e-3 * float(z.abs().max()))
    from PIL import Image
    assert Image.open(out / "decoded.png").mode == "RGB"
    assert Image.open(out / "decoded_neighbours.png").size[0] > 0


def test_decode_with_a_wrong_autoencoder_fails_before_sampling(tmp_path, capsys):
    vae = tiny_autoencoder()
    vae.save_pretrained(tmp_path / "vae")
    np.save(tmp_path / "latents.npy", np.random.default_rng(0).normal(size=(10, 3, 8, 8)).astype(np.float32))
    out = tmp_path / "out"
    assert main(["sample", "--data", str(tmp_path / "latents.npy"), "--decode", str(tmp_path / "vae"),
                 "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "4 channels" in err and len(err.splitlines()) == 1 and not (out / "report.json").exists()
    assert main(["sample", "--data", str(tmp_path / "latents.npy"), "--decode", str(tmp_path / "nowhere"),
                 "--out", str(out), "--no-progress"]) == 2
    assert "no autoencoder there" in capsys.readouterr().err and not (out / "report.json").exists()
