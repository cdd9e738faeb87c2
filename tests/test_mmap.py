"""Memory-mapped datasets and `boneless pack`: equal to the in-memory data, streamed chunk by chunk."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from boneless import EmpiricalDenoiser, load_dataset, sample
from boneless.cli import main
from boneless.metrics import nearest
from boneless.pack import pack_folder
from boneless.rows import MappedRows


def arrays():
    """Stored layouts and dtypes load_dataset accepts, with values mapped by each rule."""
    g = np.random.default_rng(0)
    return {
        "uint8_nchw": g.integers(0, 256, (37, 3, 6, 5), dtype=np.uint8),
        "float16_unit_nhw": g.random((29, 7, 7)).astype(np.float16),  # [0, 1] -> *2 - 1; [N, H, W] -> C = 1
        "float32_signed_nhwc": (g.random((23, 4, 4, 3)) * 2 - 1).astype(np.float32),  # channels last
        "float64_points": (g.random((41, 2)) * 1.8 - 0.9),
        "float32_latents_n4hw": (g.standard_normal((19, 4, 5, 5)) * 5 + 3).astype(np.float32),  # kept as stored
    }


@pytest.mark.parametrize("key", list(arrays()))
def test_memory_mapped_equals_in_memory(tmp_path, key):
    path = tmp_path / f"{key}.npy"
    np.save(path, arrays()[key])
    A = load_dataset(path, mmap=False)
    M = load_dataset(path, mmap=True)
    assert isinstance(M, MappedRows) and isinstance(A, torch.Tensor)
    assert M.shape == A.shape and M.ndim == A.ndim and len(M) == len(A)
    assert torch.equal(M[:], A) and torch.equal(M[3:11], A[3:11]) and torch.equal(M[5], A[5])
    assert torch.equal(M[[9, 2, 2, len(A) - 1]], A[[9, 2, 2, len(A) - 1]])
    assert torch.equal(M[:, 0], A[:, 0])
    L = load_dataset(path, mmap=True, limit=10)
    assert torch.equal(L[:], load_dataset(path, mmap=False, limit=10))
    # the exact denoiser streams the rows from disk and agrees with the in-memory one
    den_a, den_m = EmpiricalDenoiser(A, chunk_size=8), EmpiricalDenoiser(M, chunk_size=7)
    assert not isinstance(den_m.bank.X, torch.Tensor)
    g = torch.Generator().manual_seed(1)
    x = torch.randn((5, *A.shape[1:]), generator=g)
    for alpha, sigma in [(1.0, 1e-3), (0.8, 0.2), (0.3, 2.0), (0.0, 1.0)]:
        xq = alpha * A[:5] + sigma * x
        a, m = den_a(xq, alpha, sigma), den_m(xq, alpha, sigma)
        assert (a - m).norm() <= 1e-6 * a.norm()
        pa, pm = den_a.posterior(xq, alpha, sigma, k=3), den_m.posterior(xq, alpha, sigma, k=3)
        assert torch.allclose(pa.weights, pm.weights, atol=1e-6)
        if alpha > 0:  # at alpha = 0 every example has the same weight: the top index is arbitrary
            assert torch.equal(pa.indices[:, 0], pm.indices[:, 0])
    assert torch.allclose(den_a.mean, den_m.mean, atol=1e-6)
    d_a, i_a = nearest(A[:4] * 0.9, A, k=2)
    d_m, i_m = nearest(A[:4] * 0.9, M, k=2, chunk_size=6)
    assert torch.equal(i_a, i_m) and torch.allclose(d_a, d_m)


def test_sampling_from_memory_mapped_equals_in_memory(tmp_path):
    X = load_dataset("digits", limit=300)
    np.save(tmp_path / "d.npy", ((X.numpy() + 1) * 127.5).round().astype(np.uint8))
    M = load_dataset(tmp_path / "d.npy", mmap=True)
    X = load_dataset(tmp_path / "d.npy", mmap=False)
    assert torch.equal(M[:], X)
    a = sample(EmpiricalDenoiser(X), n=4, steps=8, seed=2).samples
    b = sample(EmpiricalDenoiser(M, chunk_size=64), n=4, steps=8, seed=2).samples
    assert (a - b).abs().max() < 1e-5


def test_auto_mmap_only_above_the_threshold(tmp_path, monkeypatch):
    import boneless.data

    np.save(tmp_path / "a.npy", arrays()["uint8_nchw"])
    assert isinstance(load_dataset(tmp_path / "a.npy"), torch.Tensor)
    monkeypatch.setattr(boneless.data, "MMAP_AUTO_BYTES", 1000)
    assert isinstance(load_dataset(tmp_path / "a.npy"), MappedRows)
    assert isinstance(load_dataset(tmp_path / "a.npy", mmap=False), torch.Tensor)


def test_bad_memory_mapped_input(tmp_path):
    np.save(tmp_path / "nan.npy", np.array([[0.5, np.nan]], dtype=np.float32))
    np.save(tmp_path / "f.npy", np.asfortranarray(np.zeros((4, 3), dtype=np.float32)))
    (tmp_path / "junk.npy").write_bytes(b"\x93NUMPY garbage")
    np.save(tmp_path / "ok.npy", arrays()["uint8_nchw"])
    for name, msg in [("nan.npy", "NaN or inf"), ("f.npy", "Fortran"),
                      ("junk.npy", "cannot read")]:
        with pytest.raises(ValueError, match=msg):
            load_dataset(tmp_path / name, mmap=True)
    with pytest.raises(ValueError, match="needs a .npy"):
        load_dataset("digits", mmap=True)
    with pytest.raises(ValueError, match="stored size"):
        load_dataset(tmp_path / "ok.npy", mmap=True, size=4)
    with open(tmp_path / "ok.npy", "r+b") as f:  # truncate the data
        f.truncate(200)
    with pytest.raises(ValueError, match="truncated"):
        load_dataset(tmp_path / "ok.npy", mmap=True)


def image_folder(path, n=9):
    """Images of several sizes and modes (grey, RGB, palette), plus one file that is not an image."""
    path.mkdir()
    g = np.random.default_rng(0)
    for i in range(n):
        h, w = 20 + 3 * i, 26 - i
        a = g.integers(0, 256, (h, w, 3), dtype=np.uint8)
        img = Image.fromarray(a)
        img = img.convert("L") if i % 3 == 0 else img.convert("P") if i % 3 == 1 else img
        img.save(path / f"img{i:02d}.png")
    (path / "broken.png").write_bytes(b"\x89PNG not really")
    return path


def test_pack_equals_loading_the_folder(tmp_path):
    folder = image_folder(tmp_path / "imgs")
    with pytest.warns(UserWarning, match="broken.png"):
        shape = pack_folder(folder, tmp_path / "p.npy", size=12)
    with pytest.warns(UserWarning, match="broken.png"):
        X = load_dataset(folder, size=12)
    assert shape == tuple(X.shape) == (9, 3, 12, 12)
    assert np.load(tmp_path / "p.npy").dtype == np.uint8
    assert torch.equal(load_dataset(tmp_path / "p.npy", mmap=True)[:], X)
    assert torch.equal(load_dataset(tmp_path / "p.npy"), X)
    with pytest.warns(UserWarning):
        pack_folder(folder, tmp_path / "h.npy", size=12, dtype="float16", limit=4)
    H = load_dataset(tmp_path / "h.npy", mmap=True)
    assert H.shape == (4, 3, 12, 12) and (H[:] - X[:4]).abs().max() < 2e-3  # float16 of pixel / 255
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.npy", "imgs", "p.npy"]  # no temporary files left


def test_pack_when_a_file_fails_only_when_decoded(tmp_path):
    """A truncated PNG passes the header pass but not decoding: the header is rewritten with fewer rows."""
    folder = image_folder(tmp_path / "imgs", n=4)
    data = (folder / "img01.png").read_bytes()
    (folder / "img01.png").write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match="img01.png"):
        shape = pack_folder(folder, tmp_path / "p.npy", size=10)
    with pytest.warns(UserWarning):
        X = load_dataset(folder, size=10)
    assert shape == tuple(X.shape) == (3, 3, 10, 10)
    assert torch.equal(torch.from_numpy(np.load(tmp_path / "p.npy")).float() / 127.5 - 1, X)


def test_pack_command(tmp_path, capsys):
    folder = image_folder(tmp_path / "imgs", n=5)
    assert main(["pack", str(folder), "--out", str(tmp_path / "d.npy"), "--size", "8", "--no-progress"]) == 0
    out = capsys.readouterr()
    assert "packed 5 images [5, 3, 8, 8] uint8" in out.out and out.err.count("warning") == 1
    assert main(["sample", "--data", str(tmp_path / "d.npy"), "--mmap", "-n", "2", "--steps", "3",
                 "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    assert (tmp_path / "run" / "samples.png").exists()
    for args, msg in [(["pack", str(tmp_path / "nope"), "--out", str(tmp_path / "x.npy")], "not a folder"),
                      (["pack", str(folder), "--out", str(tmp_path / "x.txt")], ".npy"),
                      (["sample", "--data", "digits", "--mmap"], "needs a .npy")]:
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith("boneless: error:") and msg in err and err.count("\n") == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS semantics")
def test_streams_data_larger_than_the_address_space_limit(tmp_path):
    """Under an address-space limit too small for the file (even as one mapping), let alone for the data as
    float32, the memory-mapped dataset still gives the exact denoiser's samples."""
    rows = 5000  # 59 MiB uint8, 234 MiB as float32; the limit leaves 40 MiB of address space
    g = np.random.default_rng(0)
    np.save(tmp_path / "big.npy", g.integers(0, 256, (rows, 3, 64, 64), dtype=np.uint8))
    code = textwrap.dedent(f"""
        import resource, sys, numpy as np, torch
        from boneless import EmpiricalDenoiser, load_dataset, sample
        from boneless.metrics import nearest
        path = {str(tmp_path / "big.npy")!r}
        M = load_dataset(path, mmap=True)
        den = EmpiricalDenoiser(M, chunk_size=64)
        ref = sample(den, n=2, steps=3, seed=0).samples  # warms up every code path before the limit
        vm = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vm + (40 << 20), vm + (40 << 20)))
        try:
            np.load(path, mmap_mode="r")
            sys.exit("the whole file should not even fit as one mapping")
        except (MemoryError, OSError, ValueError):
            pass
        M = load_dataset(path, mmap=True)
        out = sample(EmpiricalDenoiser(M, chunk_size=64), n=2, steps=3, seed=0).samples
        d, i = nearest(out, M, k=2, chunk_size=64)
        assert torch.equal(out, ref), (out - ref).abs().max()
        print("ok", i[:, 0].tolist())
    """)
    # glibc's dynamic mmap threshold keeps freed chunk buffers in the heap (address space that is not given back);
    # a fixed threshold returns them at once, so the address space in use is what the code holds
    env = dict(os.environ, OMP_NUM_THREADS="1", MALLOC_ARENA_MAX="1", MALLOC_MMAP_THRESHOLD_="131072")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stdout + r.stderr[-3000:]
