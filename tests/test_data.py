"""Tests for boneless.data: named datasets, toys, image folders, array files and one-line errors."""

import gzip
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from boneless.data import DATASETS, TOYS, check_data, is_image, load_dataset

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def _in_range(X):
    assert X.dtype == torch.float32 and X.is_contiguous()
    assert X.min() >= -1 and X.max() <= 1


def _raises(match, fn, *args, **kwargs):
    """Call fn, expect a one-line ValueError matching ``match``; return its message."""
    with pytest.raises(ValueError, match=match) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg and msg.strip() == msg
    return msg


# ---------------------------------------------------------------- named datasets

def test_digits():
    X, y = load_dataset("Digits", with_labels=True)
    assert X.shape == (1797, 1, 8, 8) and is_image(X)
    _in_range(X)
    assert X.min() == -1 and X.max() == 1  # 0..16 spans the full range
    assert y.dtype == torch.int64 and y.shape == (1797,) and set(y.tolist()) == set(range(10))
    X2 = load_dataset("digits", limit=10, size=16)
    assert X2.shape == (10, 1, 16, 16)
    _in_range(X2)


def test_faces():
    X, y = load_dataset("faces", with_labels=True)
    assert X.shape == (100, 1, 25, 25) and y is None
    _in_range(X)
    assert X.min() < -0.5 and X.max() > 0.5  # uses the whole range, not e.g. [0, 1] left as is
    from skimage.data import lfw_subset

    ref = torch.from_numpy(lfw_subset()[:100]).float()[:, None] * 2 - 1
    torch.testing.assert_close(X, ref)
    X32 = load_dataset("faces", size=32, limit=3)
    assert X32.shape == (3, 1, 32, 32)
    _in_range(X32)


@pytest.mark.skipif(not FMNIST.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist(monkeypatch):
    monkeypatch.delenv("BONELESS_FASHION_MNIST", raising=False)
    X, y = load_dataset("fashion-mnist", limit=500, with_labels=True)
    assert X.shape == (500, 1, 28, 28) and y.shape == (500,) and y.dtype == torch.int64
    _in_range(X)
    assert set(y.tolist()) <= set(range(10))
    with gzip.open(FMNIST / "train-images-idx3-ubyte.gz", "rb") as f:  # full length, from the header
        assert struct.unpack(">4i", f.read(16)) == (2051, 60000, 28, 28)
    Xt = load_dataset("FMNIST", split="test")
    assert Xt.shape == (10000, 1, 28, 28)
    assert not torch.equal(Xt[:500], X)
    torch.testing.assert_close(load_dataset("fashion_mnist", limit=7), X[:7])


def _write_idx(path: Path, arr: np.ndarray, *, compress: bool):
    code = {np.dtype(np.uint8): 0x08, np.dtype(np.float32): 0x0D}[arr.dtype]
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}i", *arr.shape)
    raw = header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        raw = gzip.compress(raw)
    path.write_bytes(raw)


@pytest.mark.parametrize("compress", [True, False])
def test_idx_folder_and_env(tmp_path, monkeypatch, compress):
    rng = np.random.default_rng(0)
    imgs = {s: rng.integers(0, 256, (n, 6, 5), dtype=np.uint8) for s, n in (("train", 12), ("t10k", 4))}
    for s, a in imgs.items():
        _write_idx(tmp_path / f"{s}-images-idx3-ubyte", a, compress=compress)
        _write_idx(tmp_path / f"{s}-labels-idx1-ubyte", np.arange(len(a), dtype=np.uint8) % 10, compress=compress)
    X, y = load_dataset(tmp_path, with_labels=True)
    assert X.shape == (12, 1, 6, 5)
    torch.testing.assert_close(X[:, 0], torch.from_numpy(imgs["train"]).float() / 127.5 - 1)
    assert y.tolist() == [i % 10 for i in range(12)]
    assert load_dataset(str(tmp_path), split="test").shape == (4, 1, 6, 5)
    assert load_dataset(tmp_path, limit=3).shape == (3, 1, 6, 5)
    monkeypatch.setenv("BONELESS_FASHION_MNIST", str(tmp_path))
    torch.testing.assert_close(load_dataset("fashion-mnist"), X)
    monkeypatch.setenv("BONELESS_FASHION_MNIST", str(tmp_path / "nowhere"))
    msg = _raises("Fashion-MNIST not found", load_dataset, "fashion-mnist")
    assert "nowhere" in msg and "dataset-fashion-mnist" in msg and "BONELESS_FASHION_MNIST" in msg


def test_idx_truncated(tmp_path):
    _write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((3, 4, 4), np.uint8), compress=False)
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-5])
    _raises("truncated", load_dataset, tmp_path)


# ---------------------------------------------------------------- 2-D toys

@pytest.mark.parametrize("name", TOYS)
def test_toys(name):
    state = torch.random.get_rng_state()
    X, y = load_dataset(name, with_labels=True)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global generator is untouched
    assert X.shape == (2000, 2) and not is_image(X)
    _in_range(X)
    assert X.abs().max() > 0.5 and X.std(0).min() > 0.1  # spread over the square, not collapsed
    assert torch.equal(load_dataset(name, seed=0), X)
    assert not torch.allclose(load_dataset(name, seed=1), X)
    assert load_dataset(name, n=50, seed=3).shape == (50, 2)
    assert torch.equal(load_dataset(name, limit=10), X[:10])
    if y is not None:
        assert y.dtype == torch.int64 and y.shape == (2000,) and len(set(y.tolist())) > 1


def test_gmm_components():
    X, y = load_dataset("gmm", n=4000, with_labels=True)
    assert set(y.tolist()) == set(range(8))
    centres = torch.stack([X[y == k].mean(0) for k in range(8)])
    radii = centres.norm(dim=1)
    assert torch.allclose(radii, radii.mean().expand(8), atol=0.02)  # a ring
    assert max(X[y == k].std(0).max() for k in range(8)) < 0.1  # small spread


# ---------------------------------------------------------------- image folders

def test_image_folder_resize_crop(tmp_path):
    Image.new("RGB", (40, 20), (255, 0, 51)).save(tmp_path / "a.png")  # wide, uniform colour
    img = np.zeros((30, 10, 3), np.uint8)  # tall: top third white, rest black
    img[:10] = 255
    Image.fromarray(img).save(tmp_path / "b.png")
    (tmp_path / ".hidden.png").write_bytes(b"junk")
    (tmp_path / "notes.txt").write_text("not an image")
    X = load_dataset(tmp_path, size=8)
    assert X.shape == (2, 3, 8, 8)
    _in_range(X)
    torch.testing.assert_close(X[0, :, 4, 4], torch.tensor([1.0, -1.0, 51 / 127.5 - 1]))
    assert torch.allclose(X[0], X[0, :, :1, :1].expand(3, 8, 8), atol=1 / 127.5)  # uniform stays uniform
    # tall 10x30 -> 8x24, centre crop rows 8..16: the white band (rows 0..8) is cropped away
    assert X[1].max() < 0
    assert load_dataset(tmp_path).shape == (2, 3, 64, 64)  # default size
    assert load_dataset(tmp_path, size=8, limit=1).shape == (1, 3, 8, 8)


def test_image_folder_grayscale(tmp_path):
    for i, v in enumerate([0, 128, 255]):
        Image.new("L", (12, 12), v).save(tmp_path / f"{i}.png")
    X = load_dataset(tmp_path, size=6)
    assert X.shape == (3, 1, 6, 6)
    torch.testing.assert_close(X[:, 0, 0, 0], torch.tensor([-1.0, 128 / 127.5 - 1, 1.0]))
    Image.new("RGB", (12, 12), (0, 0, 255)).save(tmp_path / "3.jpg")  # one colour image -> all RGB
    X = load_dataset(tmp_path, size=6)
    assert X.shape == (4, 3, 6, 6)
    assert torch.equal(X[1, 0], X[1, 2])  # grey images repeated over channels


def test_unreadable_files(tmp_path):
    Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / "good.png")
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable file\(s\): bad.jpg"):
        X = load_dataset(tmp_path, size=8)
    assert X.shape == (1, 3, 8, 8)
    (tmp_path / "good.png").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _raises("no readable images", load_dataset, tmp_path)


def test_many_unreadable_files_are_abbreviated(tmp_path):
    Image.new("RGBA", (8, 8), (255, 0, 0, 128)).save(tmp_path / "good.png")
    for i in range(7):
        (tmp_path / f"bad{i}.webp").write_bytes(b"xx")
    with pytest.warns(UserWarning) as record:
        X = load_dataset(tmp_path, size=4)
    msg = str(record[0].message)
    assert msg == "skipped 7 unreadable file(s): bad0.webp, bad1.webp, bad2.webp, bad3.webp, bad4.webp, ..."
    assert X.shape == (1, 3, 4, 4)


def test_empty_folder(tmp_path):
    _raises("no image files", load_dataset, tmp_path)


# ---------------------------------------------------------------- array files

def _save(path: Path, arr: np.ndarray, key: str = "x", **extra):
    arr = np.ascontiguousarray(arr)  # safetensors.numpy writes the raw buffer of views
    if path.suffix == ".npy":
        np.save(path, arr)
    elif path.suffix == ".npz":
        np.savez(path, **{key: arr}, **extra)
    elif path.suffix == ".pt":
        torch.save({key: torch.from_numpy(arr), **{k: torch.from_numpy(v) for k, v in extra.items()}}, path)
    else:
        from safetensors.numpy import save_file

        save_file({key: arr, **extra}, str(path))
    return path


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".pt", ".safetensors"])
def test_array_round_trips(tmp_path, suffix):
    rng = np.random.default_rng(1)
    base = rng.uniform(-1, 1, (5, 3, 4, 6)).astype(np.float32)
    for i, (arr, want) in enumerate([
        (base, base),  # [N, C, H, W] in [-1, 1]: kept
        (base.transpose(0, 2, 3, 1).copy(), base),  # channels-last
        (base[:, 0], base[:, :1]),  # [N, H, W] -> C = 1
        (base[:, :, 0, 0].copy(), base[:, :, 0, 0]),  # points [N, D]
        ((base + 1) / 2, base),  # [0, 1] floats -> * 2 - 1
    ]):
        X = load_dataset(_save(tmp_path / f"a{i}{suffix}", arr))
        torch.testing.assert_close(X, torch.from_numpy(want), atol=1e-6, rtol=0)
    u8 = rng.integers(0, 256, (4, 7, 7, 3), dtype=np.uint8)
    X = load_dataset(_save(tmp_path / f"u{suffix}", u8), limit=2)
    torch.testing.assert_close(X, torch.from_numpy(u8[:2]).permute(0, 3, 1, 2).float() / 127.5 - 1)


@pytest.mark.parametrize("suffix", [".npz", ".pt", ".safetensors"])
def test_array_keys_and_labels(tmp_path, suffix):
    x = np.linspace(-1, 1, 12, dtype=np.float32).reshape(6, 2)
    labels = np.arange(6, dtype=np.int64)
    X, y = load_dataset(_save(tmp_path / f"a{suffix}", x, key="samples", labels=labels), with_labels=True, limit=4)
    torch.testing.assert_close(X, torch.from_numpy(x[:4]))
    assert y.tolist() == [0, 1, 2, 3] and y.dtype == torch.int64
    msg = _raises("cannot tell which array", load_dataset, _save(tmp_path / f"b{suffix}", x, key="foo", bar=x))
    assert "foo" in msg and "bar" in msg
    torch.testing.assert_close(load_dataset(_save(tmp_path / f"c{suffix}", x, key="only")), torch.from_numpy(x))
    _raises(r"labels must have shape \[6\]", load_dataset, _save(tmp_path / f"d{suffix}", x, labels=labels[:5]))


def test_pt_plain_tensor_and_size(tmp_path):
    x = torch.rand(3, 1, 10, 20) * 2 - 1
    torch.save(x, tmp_path / "x.pth")
    torch.testing.assert_close(load_dataset(tmp_path / "x.pth"), x)
    X = load_dataset(tmp_path / "x.pth", size=5)  # short side 10 -> 5, then 5x5 centre crop
    assert X.shape == (3, 1, 5, 5)
    _in_range(X)
    torch.testing.assert_close(load_dataset(tmp_path / "x.pth", size=10), x[..., 5:15])


def test_bad_values(tmp_path):
    x = np.zeros((4, 3), np.float32)
    x[1, 2], x[2, 0] = np.nan, np.inf
    _raises(r"NaN or inf values \(2 entries\)", load_dataset, _save(tmp_path / "nan.npy", x))
    # the [0, 1] -> [-1, 1] decision of images is made on the whole array, independent of limit
    y = np.array([[[0.5, 0.5]], [[-0.5, 0.5]]], np.float32)
    torch.testing.assert_close(load_dataset(_save(tmp_path / "y.npy", y), limit=1), torch.tensor([[[[0.5, 0.5]]]]))


def test_data_of_any_range_is_kept_as_it_is(tmp_path):
    """Latents [N, 4, h, w], features and points of any finite range load unchanged; only images (uint8, or
    floats in [0, 1] with 1 or 3 channels) are mapped to [-1, 1]."""
    g = np.random.default_rng(0)
    latents = (g.standard_normal((6, 4, 8, 8)) * 5 + 3).astype(np.float32)
    points = (g.standard_normal((10, 2)) * 1e3).astype(np.float32)
    unit_points = g.random((10, 5)).astype(np.float32)  # features in [0, 1]: not pixels, not rescaled
    tiny = (g.standard_normal((7, 1, 4, 4)) * 1e-3).astype(np.float32)
    for name, a in [("latents.npy", latents), ("points.npy", points), ("unit.npy", unit_points), ("tiny.npy", tiny)]:
        X = load_dataset(_save(tmp_path / name, a))
        assert torch.equal(X, torch.from_numpy(a)), name
    X = load_dataset(_save(tmp_path / "unit_images.npy", unit_points.reshape(10, 1, 5, 1)))
    torch.testing.assert_close(X, torch.from_numpy(unit_points.reshape(10, 1, 5, 1) * 2 - 1))
    for ext in (".npz", ".pt"):
        path = tmp_path / f"latents{ext}"
        np.savez(path, x=latents) if ext == ".npz" else torch.save({"x": torch.from_numpy(latents)}, path)
        assert torch.equal(load_dataset(path), torch.from_numpy(latents))


@pytest.mark.parametrize("shape,match", [
    ((5,), "got shape"), ((2, 1, 1, 1, 1), "got shape"), ((0, 3), "empty"), ((3, 0), "empty"),
])
def test_bad_shapes(tmp_path, shape, match):
    _raises(match, load_dataset, _save(tmp_path / "a.npy", np.zeros(shape, np.float32)))


def test_bad_files(tmp_path):
    (tmp_path / "junk.npy").write_bytes(b"garbage")
    _raises("junk.npy: cannot read file: not a NumPy .npy file", load_dataset, tmp_path / "junk.npy")
    (tmp_path / "cut.npy").write_bytes(b"\x93NUMPY")  # the magic string, then nothing
    _raises("cut.npy: cannot read file", load_dataset, tmp_path / "cut.npy")
    (tmp_path / "a.csv").write_text("1,2")
    _raises("unsupported file type", load_dataset, tmp_path / "a.csv")
    _raises("no such file or folder", load_dataset, tmp_path / "missing.npy")
    _raises("unsupported dtype", load_dataset, _save(tmp_path / "b.npy", np.ones((2, 2), bool)))


# ---------------------------------------------------------------- options and check_data

def test_bad_names_and_options(tmp_path):
    _raises("empty", load_dataset, "")
    msg = _raises("unknown dataset 'celeba'", load_dataset, "celeba")
    assert all(name in msg for name in DATASETS)
    for kwargs, match in [
        ({"limit": 0}, "limit must be a positive integer"), ({"limit": -3}, "limit"), ({"limit": 2.5}, "limit"),
        ({"limit": True}, "limit"), ({"size": 0}, "size must be"), ({"n": 0}, "n must be"),
        ({"split": "val"}, "split must be"), ({"seed": 1.5}, "seed must be"),
    ]:
        _raises(match, load_dataset, "moons", **kwargs)
    _raises("no test split", load_dataset, "digits", split="test")
    _raises("use limit", load_dataset, "digits", n=10)
    assert load_dataset("moons", size=32).shape == (2000, 2)  # size is ignored for points


def test_check_data():
    x = torch.rand(4, 3, dtype=torch.float64) * 2 - 1
    out = check_data(x)
    assert out.dtype == torch.float32 and out.is_contiguous()
    assert check_data(torch.ones(2, 1, 3, 3)[..., ::2]).is_contiguous()
    for scale in (1e-3, 1.5, 1e4):  # any finite range
        assert torch.equal(check_data(torch.full((2, 4, 3, 3), scale)), torch.full((2, 4, 3, 3), scale))
    for bad, match in [
        (torch.zeros(3), "expected shape"), (torch.zeros(0, 2), "empty"),
        (torch.zeros(2, 3, dtype=torch.int64), "floating"),
        (torch.tensor([[0.0, float("nan")]]), r"NaN or inf values \(1 entries\)"),
        (torch.tensor([[float("inf"), 1.0], [float("-inf"), 2.0]]), r"NaN or inf values \(2 entries\)"),
        (np.zeros((2, 2)), "torch.Tensor"),
    ]:
        _raises(f"^mine: .*{match}", check_data, bad, name="mine")
    huge = torch.full((4, 3), torch.finfo(torch.float32).max)  # finite, though its float32 sum overflows
    assert torch.equal(check_data(huge), huge)
