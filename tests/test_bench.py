"""boneless bench: its baselines compute the same denoiser, its data and measurements behave, and the command
writes its report atomically (tiny sizes: behaviour only, no timing claims)."""

import json
import time

import pytest
import torch

import boneless.bench as bench
from boneless.cli import main
from boneless.denoisers import exact_reference


def test_synthetic_images_are_images_in_range_and_reproducible():
    a = bench.synthetic_images(50, (3, 8, 8), seed=3)
    assert a.shape == (50, 3, 8, 8) and float(a.abs().max()) < 1
    assert torch.equal(a, bench.synthetic_images(50, (3, 8, 8), seed=3))
    assert not torch.equal(a, bench.synthetic_images(50, (3, 8, 8), seed=4))
    flat = a.flatten(1)
    neighbours = torch.corrcoef(torch.stack([flat[:, 0], flat[:, 1]]))[0, 1]
    assert neighbours > 0.5  # adjacent pixels correlated, like images
    assert a.mean(0).norm() > 0.1 * a.flatten(1).norm(dim=1).mean()  # a non-zero mean image


@pytest.mark.parametrize("ratio", [0.05, 1.0, 20.0])
def test_baselines_compute_the_exact_denoiser(ratio):
    X = bench.synthetic_images(200, (1, 6, 6), seed=1).flatten(1)
    g = torch.Generator().manual_seed(2)
    a, s = bench._coeffs(ratio)
    assert abs(s / a - ratio) < 1e-12 and abs(a + s - 1) < 1e-12
    x = a * X[:5] + s * torch.randn(5, X.shape[1], generator=g)
    ref = exact_reference(X, x, a, s)
    for fn in (bench.per_sample_pattern, bench.broadcast_pattern):
        y = fn(X, x, a, s)
        assert float(((y.double() - ref).norm(dim=1) / ref.norm(dim=1)).max()) < 1e-3, fn.__name__


def test_interleaved_and_peak_memory():
    calls = []
    times = bench.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3,
                              torch.device("cpu"))
    assert calls == ["a", "b"] * 3 and all(len(v) == 3 and min(v) >= 0 for v in times.values())

    def hold():
        t = torch.ones(64 << 18)  # 64 MB, touched
        time.sleep(0.05)
        return t.sum()
    peak = bench.peak_memory(hold, torch.device("cpu"))
    assert peak == -1 or peak > 32 << 20


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(bench, "QUICK", dict(grid=[(300, (1, 4, 4))], batches=(1, 4), n_sweep=(150, 300),
                                             d_sweep=((1, 4, 4), (2, 4, 4)), b_sweep=(1, 4), target=(300, (1, 4, 4), 4),
                                             faiss_n=(400,), faiss_shape=(1, 4, 4)))


def test_bench_command_writes_its_report(tmp_path, tiny, capsys):
    pytest.importorskip("matplotlib")
    args = ["bench", "--quick", "--out", str(tmp_path), "--repeats", "2", "--steps", "3", "--budget", "1",
            "--device", "cpu", "--threads", "1"]
    try:
        import faiss  # noqa: F401
        args.append("--faiss")
    except ImportError:
        pass
    assert main(args) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    for name in ("bench.md", "time_vs_N.png", "time_vs_D.png", "time_vs_B.png", "sampling.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left
    assert {(c["N"], c["B"]) for c in report["grid"]} == {(300, 1), (300, 4)}
    for c in report["grid"]:
        methods = c["methods"]
        assert {"limit", "per-sample", "broadcast"} <= set(methods)
        assert {f"exact@{r:g}" for r in bench.RATIOS} <= set(methods)
        assert methods["limit"]["fraction_of_limit"] == 1.0
        for m in methods.values():
            assert m["min_s"] <= m["median_s"] and abs(m["per_sample_s"] * c["B"] - m["min_s"]) < 1e-12
    run = report["sampling"][0]
    assert len(run["calls"]) == 3 and run["total_s"] > 0
    assert "fraction of the limit" in capsys.readouterr().out
    if "--faiss" in args:
        assert report["faiss"] and (tmp_path / "faiss.png").exists()


def test_baselines_that_cannot_fit_are_skipped_and_said_so(tiny):
    X = bench.synthetic_images(300, (1, 4, 4))
    res = bench.bench_case(X, 4, device=torch.device("cpu"), repeats=1, budget=1, mem_limit=1000, seed=0)
    assert set(res["skipped"]) == {"per-sample", "broadcast"} and "GB" in res["skipped"]["broadcast"]
    assert "per-sample" not in res["methods"] and "exact@1" in res["methods"]


def test_bad_input_is_a_one_line_error(capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    assert main(["bench", "--quick", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("boneless: error:") and err.count("\n") == 1
    with pytest.raises(SystemExit) as e:
        main(["bench", "--repeats", "0"])
    assert e.value.code == 2


# ---------------------------------------------------------------- --preset original

def test_timed_steps_are_grid_points_one_per_stratum():
    for steps, timed in ((100, 10), (100, 7), (10, 10), (50, 3)):
        ts = bench._timed_grid(steps, timed)
        assert len(ts) == timed and ts == sorted(ts, reverse=True)
        idx = [round((1 - t) * steps) for t in ts]
        assert all(abs((1 - t) * steps - i) < 1e-9 for t, i in zip(ts, idx))  # points of the steps-step grid
        assert [int(i // (steps / timed)) for i in idx] == list(range(timed))  # one in each equal stratum


def test_exact_reference_streamed_over_row_blocks_equals_one_block():
    """The float64 reference the benchmarks compare against, streamed over blocks of rows (as at D = 49152),
    equals its one-block result, weights and temperature included."""
    X = bench.synthetic_images(300, (3, 4, 4), seed=2).flatten(1)
    g = torch.Generator().manual_seed(3)
    x = 0.7 * X[:5] + 0.5 * torch.randn(5, X.shape[1], generator=g)
    a, s = torch.tensor([0.7, 0.7, 0.9, 0.2, 0.7]), torch.tensor([0.5, 0.05, 2.0, 0.9, 0.5])
    w = torch.rand(300, generator=g) + 0.1
    whole = exact_reference(X, x, a, s, weights=w, temperature=0.8)
    blocks = exact_reference(X, x, a, s, weights=w, temperature=0.8, block_bytes=8 * 48 * 7)  # blocks of 7 rows
    assert float(((blocks - whole).norm(dim=1) / whole.norm(dim=1)).max()) < 1e-12
    one = torch.stack([exact_reference(X, x[i:i + 1], float(a[i]), float(s[i]), weights=w, temperature=0.8)[0]
                       for i in range(5)])
    assert float(((whole - one).norm(dim=1) / one.norm(dim=1)).max()) < 1e-12


def test_original_faces_are_the_bundled_faces_repeated():
    pytest.importorskip("skimage")
    F = bench.original_faces(250, 8)
    assert F.shape == (250, 3, 8, 8) and float(F.abs().max()) <= 1
    assert torch.equal(F[0, 0], F[0, 2]) and torch.equal(F[:50], F[100:150]) and not torch.equal(F[0], F[1])


def test_smalldiffusion_side_by_side_computes_the_posterior_mean():
    found = bench.smalldiffusion_ideal()
    if found is None:
        pytest.skip("smalldiffusion is not installed")
    X = bench.synthetic_images(200, (3, 4, 4), seed=4)
    a, s = bench._coeffs(0.5)
    x = a * X[:6] + s * torch.randn(6, 3, 4, 4, generator=torch.Generator().manual_seed(5))
    ref = exact_reference(X.flatten(1), x.flatten(1), a, s)
    y = bench.smalldiffusion_x0(found[0](X), x, a, s).flatten(1)
    assert float(((y.double() - ref).norm(dim=1) / ref.norm(dim=1)).max()) < 1e-4


def test_original_preset_on_tiny_shapes(tmp_path, capsys):
    pytest.importorskip("skimage")
    args = ["bench", "--preset", "original", "--rows", "120", "--size", "4", "--batches", "1", "3",
            "--timed-steps", "4", "--steps", "20", "--repeats", "1", "--threads", "1", "--out", str(tmp_path)]
    assert main(args) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    assert "## synthetic" in (tmp_path / "bench.md").read_text()
    assert [d["data"] for d in report["datasets"]] == ["synthetic", "faces"]
    sd = report["smalldiffusion"] is not None
    for d in report["datasets"]:
        assert (d["N"], d["D"], d["steps"], d["timed_steps"]) == (120, 48, 20, 4)
        assert set(d["construction_s"]) == ({"boneless", "smalldiffusion"} if sd else {"boneless"})
        assert [r["B"] for r in d["batches"]] == [1, 3]
        for r in d["batches"]:
            assert len(r["steps"]) == 4
            for k in ("exact", "limit") + (("smalldiffusion",) if sd else ()):
                # the run's time per sample is the timed steps' sum, scaled to all steps, over B
                assert abs(r[f"{k}_per_sample_s"] - 5 / r["B"] * sum(st[k] for st in r["steps"])) < 1e-12
                assert r["peak_bytes"][k] >= -1
            assert abs(r["fraction_of_limit"] - r["limit_per_sample_s"] / r["exact_per_sample_s"]) < 1e-12
        assert [e["ratio"] for e in d["sweep"]] == list(bench.ORIGINAL["sweep"])
        assert max(e["exact_error"] for e in d["sweep"]) < 1e-4  # the exactness contract at every swept level
        ps = d["per_sample"]
        assert abs(ps["per_sample_s"] - 20 * ps["call_s"] * 120 / ps["rows_timed"]) < 1e-12
    assert "seconds per sample for 20 steps" in capsys.readouterr().out


def test_original_preset_options_are_checked(capsys):
    assert main(["bench", "--rows", "100", "--out", "/tmp/never"]) == 2
    assert main(["bench", "--preset", "original", "--faiss", "--out", "/tmp/never"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(e.startswith("boneless: error:") for e in err)
