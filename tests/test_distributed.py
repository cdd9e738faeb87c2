"""Sharding over torch.distributed (gloo, 2 ranks on CPU): equals one process; a failing rank is reported.

Each test starts two processes of this file (``python tests/test_distributed.py MODE OUT``) with the environment
torchrun would give them (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, LOCAL_RANK) on a free localhost port.
"""

import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from boneless import EmpiricalDenoiser, load_dataset, sample
from boneless.metrics import nearest
from boneless.bank import Bank, merge
from boneless.denoisers import exact_reference
from boneless.distributed import shard_bounds

HERE = Path(__file__).resolve()
N, D = 301, 48  # odd N: unequal shards
ALPHA_SIGMA = [(1.0, 2e-3), (0.9, 0.05), (0.7, 0.5), (0.2, 3.0), (0.0, 1.0)]


def data():
    g = torch.Generator().manual_seed(0)
    X = (torch.rand(N, D, generator=g) * 2 - 1).cumsum(1) / math.sqrt(D / 4)
    X = (X - X.mean(1, keepdim=True)).clamp(-1, 1)
    w = torch.rand(N, generator=g) + 0.1
    repeat = torch.arange(N) >= 200  # the last rows repeat earlier ones (with their weights): held once per shard
    X[repeat], w[repeat] = X[torch.arange(N)[repeat] % 40], w[torch.arange(N)[repeat] % 40]
    x = torch.randn(6, D, generator=g)
    x[0] = 0.5 * (X[3] + X[7])  # near-tie: equidistant from two examples
    return X, w, x


def symmetric():
    """Rows and their negatives, queried near 0: posterior means that cancel."""
    g = torch.Generator().manual_seed(1)
    half = torch.randn(150, 5, generator=g)
    return torch.cat([half, -half]), 1e-3 * torch.randn(3, 5, generator=g)


def results(den, x):
    """Everything a sharded denoiser must reproduce, as float64 numpy arrays."""
    out = {"mean": den.mean.double().numpy()}
    for j, (a, s) in enumerate(ALPHA_SIGMA):
        xq = a * x + s * torch.randn(x.shape, generator=torch.Generator().manual_seed(j))
        post = den.posterior(xq, a, s, k=5)
        out[f"x0_{j}"] = den(xq, a, s).double().numpy()
        out[f"post_x0_{j}"] = post.x0_hat.double().numpy()
        out[f"idx_{j}"] = post.indices.numpy()
        out[f"w_{j}"] = post.weights.double().numpy()
        out[f"ent_{j}"] = post.entropy.double().numpy()
        out[f"neff_{j}"] = post.n_eff.double().numpy()
        out[f"query_{j}"] = xq.numpy()
    return out


# ---------------------------------------------------------------- the worker (one rank)

def worker(mode: str, out: str) -> int:
    import boneless.cli
    from boneless import distributed

    if mode in ("cli-die", "cli-stall"):  # rank 1 crashes / hangs while building its denoiser; rank 0 must say so
        if os.environ["RANK"] == "1":
            def broken(*args, **kwargs):
                if mode == "cli-die":
                    os._exit(3)
                time.sleep(120)
            boneless.cli.make_denoiser = broken
        return boneless.cli.main(["sample", "--data", "moons", "-n", "2", "--steps", "3", "--out", out,
                                  "--no-progress", "--dist-timeout", "4"])
    rank, world, _ = distributed.init_distributed(timeout_s=60)
    assert world == 2
    X, w, x = data()
    res = results(EmpiricalDenoiser(X, weights=w, temperature=0.7, chunk_size=64), x)
    path = f"{out}.rank{rank}.npy"  # one file per rank: a rank rewriting a file the other has mapped is SIGBUS
    np.save(path, X.numpy().astype(np.float32))
    from boneless.data import load_dataset
    M = load_dataset(path, mmap=True)
    mapped = results(EmpiricalDenoiser(M, weights=w, temperature=0.7, chunk_size=50), x)
    r = sample(EmpiricalDenoiser(X, chunk_size=64), "rectified-flow", shape=(D,), n=5, steps=12,
               sampler="euler-maruyama", seed=1, noise_strength=(0.5, 0.0))
    Y, q = symmetric()
    cancel = EmpiricalDenoiser(Y)(q, 1.0, 300.0)  # means that cancel: float64 sums on every rank, then merged
    if rank == 0:
        np.savez(out, samples=r.samples.numpy(), cancel=cancel.numpy(), **res,
                 **{"mm_" + k: v for k, v in mapped.items()})
    distributed.close()
    return 0


# ---------------------------------------------------------------- launching

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], *, world: int = 2, script: list[str] | None = None):
    """Start ``world`` ranks; return the Popen objects."""
    port = free_port()
    procs = []
    for rank in range(world):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen(script or [sys.executable, str(HERE), *args], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    return procs


def finish(p: subprocess.Popen, timeout: float):
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        return None, out, err
    return p.returncode, out, err


def test_shard_bounds_partition_the_rows():
    for n in (1, 2, 7, 301):
        for world in range(1, min(n, 5) + 1):
            bounds = [shard_bounds(n, r, world) for r in range(world)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(b[1] == c[0] for b, c in zip(bounds, bounds[1:]))
            assert max(b - a for a, b in bounds) - min(b - a for a, b in bounds) <= 1


def test_merge_of_shards_equals_whole_bank():
    """The maths the all-reduce implements: bank statistics of two slices merged equal those of all rows."""
    X, w, x = data()
    logw = torch.log(w / w.sum())
    bank = Bank(X, log_weights=logw, chunk_size=64)
    a, s = torch.full((len(x),), 0.9, dtype=torch.float64), torch.full((len(x),), 0.05, dtype=torch.float64)
    whole = bank.reduce(x, a, s, k=5)
    lo, hi = shard_bounds(N, 0, 2), shard_bounds(N, 1, 2)
    parts = [Bank(X[i:j], log_weights=logw[i:j], chunk_size=64).reduce(x, a, s, k=5) for i, j in (lo, hi)]
    parts[1] = parts[1]._replace(top_i=parts[1].top_i + hi[0])
    merged = merge(*parts)
    real = whole.top_l > whole.m[:, None] - 70  # below the bank's exp floor (-80) logits tie: order is arbitrary
    assert torch.equal(merged.top_i[real], whole.top_i[real]) and torch.equal(merged.m, whole.m)
    m = torch.maximum(merged.m, whole.m)
    for name in ("s", "u", "q"):
        u, v = getattr(merged, name) * torch.exp(merged.m - m), getattr(whole, name) * torch.exp(whole.m - m)
        # s >= 1 (the top row contributes e^0); the bank's float32 tiers depend on the chunking: ~1e-11 apart
        assert torch.allclose(u, v, rtol=1e-8, atol=1e-8)
    assert torch.allclose(merged.acc, whole.acc, rtol=1e-6, atol=1e-6)


def test_two_ranks_equal_one_process(tmp_path):
    out = str(tmp_path / "rank0")
    procs = launch(["equal", out])
    for rank, p in enumerate(procs):
        code, stdout, stderr = finish(p, 120)
        assert code == 0, f"rank {rank}: {stderr[-2000:]}"
    got = np.load(out + ".npz")
    Y, q = symmetric()
    ref = exact_reference(Y, q, 1.0, 300.0).numpy()
    assert (np.linalg.norm(got["cancel"] - ref, axis=1) / np.linalg.norm(ref, axis=1)).max() < 1e-6
    X, w, x = data()
    one = results(EmpiricalDenoiser(X, weights=w, temperature=0.7, chunk_size=64), x)
    refs = [exact_reference(X, torch.from_numpy(one[f"query_{j}"]), a, s, weights=w, temperature=0.7).numpy()
            for j, (a, s) in enumerate(ALPHA_SIGMA)]
    for prefix in ("", "mm_"):
        assert np.abs(got[prefix + "mean"] - one["mean"]).max() < 1e-6
        for j in range(len(ALPHA_SIGMA)):
            ref = refs[j]
            scale = np.linalg.norm(ref, axis=1)
            for key in ("x0", "post_x0"):
                assert (np.linalg.norm(got[f"{prefix}{key}_{j}"] - one[f"x0_{j}"], axis=1) / scale).max() < 1e-5
                assert (np.linalg.norm(got[f"{prefix}{key}_{j}"] - ref, axis=1) / scale).max() < 1e-4
            # global indices; copies of a repeated row tie exactly (as do weights at the bank's exp floor), and
            # their order is arbitrary: each listed row must carry the weight listed, and each real weight's rows
            # must be the same rows
            real = one[f"w_{j}"] > 1e-25
            assert np.abs(got[f"{prefix}w_{j}"] - one[f"w_{j}"]).max() < 1e-5
            for q in range(len(x)):
                rows_got, rows_one = got[f"{prefix}idx_{j}"][q][real[q]], one[f"idx_{j}"][q][real[q]]
                assert sorted(X[rows_got].sum(1).tolist()) == sorted(X[rows_one].sum(1).tolist())
                last = one[f"w_{j}"][q][real[q]][-1] if real[q].any() else 0.0
                solid = one[f"w_{j}"][q] > last * (1 + 1e-4)  # above the last listed weight: the same rows
                assert set(got[f"{prefix}idx_{j}"][q][solid]) == set(one[f"idx_{j}"][q][solid])
            assert np.abs(got[f"{prefix}ent_{j}"] - one[f"ent_{j}"]).max() < 1e-4
            assert np.allclose(got[f"{prefix}neff_{j}"], one[f"neff_{j}"], rtol=1e-4)
    r = sample(EmpiricalDenoiser(X, chunk_size=64), "rectified-flow", shape=(D,), n=5, steps=12,
               sampler="euler-maruyama", seed=1, noise_strength=(0.5, 0.0))
    assert np.abs(got["samples"] - r.samples.numpy()).max() < 1e-5


@pytest.mark.parametrize("mode", ["cli-die", "cli-stall"])
def test_a_failing_rank_is_reported_not_waited_for(tmp_path, mode):
    """Rank 1 crashes (or hangs) while building its denoiser: rank 0 stops with a one-line error naming itself
    and the failed collective, within the --dist-timeout (4 s) plus start-up, and writes nothing."""
    out = str(tmp_path / "run")
    procs = launch([mode, out])
    start = time.monotonic()
    code, stdout, stderr = finish(procs[0], 90)
    waited = time.monotonic() - start
    for p in procs[1:]:
        p.kill()
        p.communicate()
    assert code == 1, (code, stderr[-2000:])
    lines = [ln for ln in stderr.splitlines() if ln.startswith("boneless: error:")]
    assert len(lines) == 1 and "rank 0 of 2" in lines[0] and "failed" in lines[0], stderr[-2000:]
    assert "Traceback" not in stderr
    assert not (tmp_path / "run" / "report.json").exists()
    assert waited < 90


BONELESS = shutil.which("boneless", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))


@pytest.mark.skipif(BONELESS is None, reason="the boneless command is not installed")
def test_torchrun_sample_equals_one_process(tmp_path):
    """The end-to-end check: torchrun --nproc_per_node 2 --no-python boneless sample == boneless sample."""
    port = str(free_port())
    # python -m torch.distributed.run is the torchrun command
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                          "127.0.0.1", "--master_port", port, "--no-python", BONELESS, "sample", "--data", "digits", "--limit", "600", "-n", "6",
                          "--steps", "15", "--sampler", "ddpm", "--seed", "4", "--no-progress",
                          "--out", str(tmp_path / "two")], capture_output=True, text=True, timeout=240)
    assert two.returncode == 0, two.stderr[-3000:]
    # what `boneless sample` with the same options computes in one process
    one = sample(EmpiricalDenoiser(load_dataset("digits", limit=600)), "rectified-flow", n=6, steps=15,
                 sampler="ddpm", seed=4).samples
    b = np.load(tmp_path / "two" / "samples.npz")
    assert np.abs(one.numpy() - b["samples"]).max() < 1e-5
    assert np.array_equal(nearest(one, load_dataset("digits", limit=600), k=1)[1][:, 0].numpy(), b["nearest"])
    report = json.loads((tmp_path / "two" / "report.json").read_text())
    assert report["world_size"] == 2
    assert two.stdout.count("samples from digits") == 1  # rank 0 alone reports and writes


if __name__ == "__main__":
    sys.exit(worker(sys.argv[1], sys.argv[2]))
