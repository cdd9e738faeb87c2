"""Property-based exactness of the empirical denoiser against the float64 reference (Hypothesis).

The contract: in float32, ``EmpiricalDenoiser`` agrees with plain float64 arithmetic to a relative L2 error of
1e-4 for every query, near-ties included, for sigma / alpha from 1e-3 to 1e3 times the data's per-coordinate
RMS, on data of any finite range, at any N, D, batch, chunk size and storage. Hypothesis draws all of these,
and also the bank's internal block sizes (float64 buffer blocks, spans, tier thresholds), so that every path
of the streaming loop (ragged last chunks, several spans, pilot and late dense tiers) is exercised at sizes
that run in CI. ``tests/conftest.py`` reports the number of cases and the worst error of the run.
"""

import math
from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from boneless import EmpiricalDenoiser
from boneless import bank as bank_module
from boneless.bank import STORAGES
from boneless.denoisers import exact_reference
from conftest import record

CONTRACT = 1e-4

DATA_KINDS = ("uniform", "latent", "tiny", "any-scale", "clustered", "repeated", "symmetric")


def make_data(kind: str, n: int, d: int, g: torch.Generator, log_scale: float) -> torch.Tensor:
    """Data of the kinds users bring: images in [-1, 1], VAE-like latents (``randn * 5 + 3``), data of tiny
    scale (1e-3), Gaussian data of any scale and offset, tight clusters (many near-ties), rows repeated many
    times (exact ties, held once by the denoiser), and symmetric data (each row and its negative: posterior means
    near 0 cancel, where float32 sums lose their relative accuracy)."""
    if kind == "uniform":
        return torch.rand(n, d, generator=g) * 2 - 1
    if kind == "latent":
        return torch.randn(n, d, generator=g) * 5 + 3
    if kind == "tiny":
        return torch.randn(n, d, generator=g) * 1e-3
    scale = 10.0 ** log_scale
    if kind == "symmetric":
        half = torch.randn((n + 1) // 2, d, generator=g) * scale
        return torch.cat([half, -half])[:n]
    if kind == "repeated":
        base = (torch.randn(max(1, n // 4), d, generator=g) + torch.randn(1, d, generator=g)) * scale
        return base[torch.randint(len(base), (n,), generator=g)]
    if kind == "any-scale":
        return (torch.randn(n, d, generator=g) + 3 * torch.randn(1, d, generator=g)) * scale
    centres = torch.randn(max(1, n // 8), d, generator=g)
    X = centres[torch.randint(len(centres), (n,), generator=g)]
    return (X + 1e-3 * torch.randn(n, d, generator=g) * (torch.rand(n, 1, generator=g) < 0.7)) * scale


def make_queries(kind: str, X: torch.Tensor, alpha: float, sigma: float, b: int, g: torch.Generator):
    """Forward-noised training examples, points (nearly) equidistant from two examples: the midpoint of an
    example and its nearest other example (``tie``), nudged by about sigma / 100 (``near-tie``), or points near
    the origin (``origin``)."""
    n, d = X.shape
    i = torch.randint(n, (b,), generator=g)
    if kind == "origin":  # near 0 (on symmetric data, the point where the posterior mean cancels)
        return 1e-3 * sigma * torch.randn(b, d, generator=g) / math.sqrt(d)
    if kind == "forward" or n == 1:
        return alpha * X[i] + sigma * torch.randn(b, d, generator=g)
    dist = torch.cdist(X[i].double(), X.double())
    dist[torch.arange(b), i] = math.inf
    j = dist.argmin(1)
    mid = alpha * (X[i].double() + X[j].double()) / 2
    if kind == "near-tie":
        mid += 0.01 * sigma * torch.randn(b, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    return mid.float()


def rel_err(out: torch.Tensor, ref: torch.Tensor, floor: float = 1e-300) -> torch.Tensor:
    """Relative L2 error per query; ``floor``: the smallest reference norm it is relative to (a mean at float64's
    own rounding of the data's scale, e.g. exactly 0 by symmetry, has no meaningful relative error)."""
    out, ref = out.reshape(len(out), -1).double(), ref.reshape(len(ref), -1).double()
    return (out - ref).norm(dim=1) / ref.norm(dim=1).clamp(min=floor)


@st.composite
def problems(draw, *, n=st.integers(1, 300), d=st.sampled_from([1, 2, 3, 5, 16, 33, 100, 257]),
             log_ratio=st.floats(-3, 3)):
    N = draw(n)
    return dict(
        N=N, D=draw(d), B=draw(st.integers(1, 6)), chunk=draw(st.integers(1, N + 8)),
        storage=draw(st.sampled_from(STORAGES)), kind=draw(st.sampled_from(DATA_KINDS)),
        log_scale=draw(st.floats(-3, 3)), seed=draw(st.integers(0, 2 ** 31 - 1)),
        alpha=draw(st.sampled_from([1.0, 0.3, 0.0]) | st.floats(0.01, 1.0)),
        log_ratio=draw(log_ratio), query=draw(st.sampled_from(["forward", "near-tie", "tie", "origin"])),
        temperature=draw(st.sampled_from([1.0, 0.5, 3.0])), weighted=draw(st.booleans()),
        dedupe=draw(st.booleans()),
        # the bank's internal sizes: float64 buffer blocks, spans of rows, tier thresholds
        dense_block=draw(st.sampled_from([64, 1024, 1 << 14, 1 << 21])),
        dense_min_rows=draw(st.sampled_from([1, 7, 192])), dense_wide=draw(st.sampled_from([1, 3, 16])),
        union_delta=draw(st.sampled_from([0.0, 0.5, 50.0])),
        span_bytes=draw(st.sampled_from([64, 2048, 1 << 16, 1 << 27])),
        dense_fraction=draw(st.sampled_from([0.0, 0.02, 0.5])),
        pilot_fraction=draw(st.sampled_from([0.0, 0.2, 1.0])),
    )


def check(p: dict, name: str) -> None:
    g = torch.Generator().manual_seed(p["seed"])
    X = make_data(p["kind"], p["N"], p["D"], g, p["log_scale"])
    rms = float(X.double().pow(2).mean().sqrt()) or 1.0
    alpha = p["alpha"]
    sigma = 10.0 ** p["log_ratio"] * rms * (alpha if alpha > 0 else 1.0)  # sigma / alpha in units of the RMS
    weights = torch.rand(p["N"], generator=g) + 0.05 if p["weighted"] else None
    if weights is not None and p["kind"] == "repeated" and p["N"] > 1:  # equal weights for some of the repeats
        weights[torch.rand(p["N"], generator=g) < 0.5] = 0.5
    with mock.patch.multiple(bank_module, DENSE_BLOCK=p["dense_block"], SPAN_BYTES=p["span_bytes"],
                             DENSE_FRACTION=p["dense_fraction"], PILOT_FRACTION=p["pilot_fraction"],
                             DENSE_MIN_ROWS=p["dense_min_rows"], UNION_DELTA=p["union_delta"],
                             DENSE_WIDE=p["dense_wide"]):
        den = EmpiricalDenoiser(X, weights=weights, temperature=p["temperature"], chunk_size=p["chunk"],
                                storage=p["storage"], dedupe=p["dedupe"])
        data = den.data  # the dequantised rows (the exact reference of a stored bank)
        x = make_queries(p["query"], data, alpha, sigma, p["B"], g)
        post = den.posterior(x, alpha, sigma, k=3)
        again = den(x, alpha, sigma)
    ref = exact_reference(data, x, alpha, sigma, weights=weights, temperature=p["temperature"])
    r = float(data.reshape(p["N"], -1).double().norm(dim=1).max())
    err = rel_err(post.x0_hat, ref, floor=1e-10 * r)  # float64's own rounding is ~1e-16 r
    record(name, err.tolist(), p)
    assert torch.equal(post.x0_hat, again), "two identical calls gave different answers"
    assert float(err.max()) <= CONTRACT, f"relative L2 error {float(err.max()):.3g} > {CONTRACT} for {p}"
    # the top-k weights are the reference posterior's probabilities of those examples, and the largest ones
    X64, x64 = data.reshape(p["N"], -1).double(), x.double()
    logits = -torch.cdist(x64, alpha * X64) ** 2 / (2 * sigma ** 2)
    if weights is not None:
        logits = logits + torch.log(weights.double())
    prob = torch.softmax(logits / p["temperature"], dim=1)
    k = post.indices.shape[1]
    got = prob.gather(1, post.indices)
    assert torch.allclose(post.weights.double(), got, atol=CONTRACT, rtol=0)
    assert bool((got[:, -1] >= prob.topk(k, dim=1).values[:, -1] - CONTRACT).all())
    assert all(len(set(row.tolist()) - {-1}) == int((row >= 0).sum()) for row in post.indices)  # distinct rows
    # entropy and effective size of the posterior over the rows given (repeats held once or not)
    entropy = -(prob * torch.log(prob.clamp(min=1e-300))).sum(1)
    assert torch.allclose(post.entropy.double(), entropy, atol=1e-4, rtol=1e-4), (post.entropy, entropy)
    assert torch.allclose(post.n_eff.double(), 1 / (prob * prob).sum(1), rtol=1e-4), (post.n_eff, prob)


@given(problems())
def test_empirical_denoiser_matches_float64_reference(p):
    """Any N, D, B, chunk size, storage, data kind and scale, noise level, query kind, temperature, weights."""
    check(p, "small D")


@settings(max_examples=max(6, settings.default.max_examples // 60))  # 6 in CI, 33 in the thorough profile
@given(problems(n=st.integers(1500, 5000), d=st.sampled_from([3072]), log_ratio=st.floats(-3, 3)))
def test_exactness_at_image_dimension(p):
    """D = 3072 (32 x 32 x 3) with ragged chunks at the default internal sizes: the combination that once left
    columns of the broad-posterior tier's float64 logits unwritten."""
    p.update(dense_block=1 << 21, dense_min_rows=192, union_delta=0.5, span_bytes=1 << 27, dense_fraction=0.02,
             pilot_fraction=0.2, B=min(p["B"], 3),  # dense_wide as drawn: both block rules at the default sizes
             chunk=p["chunk"] % 2500 + 500)
    check(p, "D = 3072")


@settings(max_examples=max(4, settings.default.max_examples // 100))  # 4 in CI, 20 in the thorough profile
@given(problems(n=st.integers(150, 400), d=st.sampled_from([49152]), log_ratio=st.floats(-1.5, 3)))
def test_exactness_at_the_original_workloads_dimension(p):
    """D = 49152 (128 x 128 x 3, the original notebook's images), over the noise levels where the bank's tiers
    change (sharp, many candidates, broad), with small chunks so that the pilot and ragged chunks are reached."""
    p.update(B=min(p["B"], 3), chunk=p["chunk"] % 150 + 50)
    check(p, "D = 49152")


@pytest.mark.parametrize("n", [3616, 20000 // 8 + 7])
def test_broad_posterior_with_ragged_last_chunk_at_d3072(n):
    """The reported failure: uniform data at D = 3072, N not a multiple of the chunk size, sigma = 80 (the
    broad-posterior float64 tier), two identical calls: both within the contract and identical."""
    g = torch.Generator().manual_seed(0)
    X = torch.rand(n, 3072, generator=g) * 2 - 1
    den = EmpiricalDenoiser(X)
    x = X[:4] + 80 * torch.randn(4, 3072, generator=g)
    ref = exact_reference(X, x, 1.0, 80.0)
    first, second = den(x, 1.0, 80.0), den(x, 1.0, 80.0)
    assert torch.equal(first, second)
    assert float(rel_err(first, ref).max()) <= CONTRACT


@pytest.mark.parametrize("kind", ["latent", "tiny"])
def test_latents_and_tiny_data_with_near_ties(kind):
    """VAE-like latents ``randn(N, 4, 16, 16) * 5 + 3`` and data of scale 1e-3, as [N, C, h, w] tensors, with
    near-tie and forward-noised queries at sigma / alpha from 1e-3 to 1e3 times the data's RMS."""
    g = torch.Generator().manual_seed(1)
    X = torch.randn(300, 4, 16, 16, generator=g) * 5 + 3 if kind == "latent" else \
        torch.randn(300, 4, 16, 16, generator=g) * 1e-3
    den = EmpiricalDenoiser(X, chunk_size=128)
    rms = float(X.double().pow(2).mean().sqrt())
    flat = X.reshape(300, -1)
    worst = []
    for alpha in (1.0, 0.3):
        for ratio in (1e-3, 1e-2, 0.1, 1.0, 10.0, 1e2, 1e3):
            sigma = ratio * rms * alpha
            x = torch.cat([make_queries("near-tie", flat, alpha, sigma, 3, g),
                           make_queries("forward", flat, alpha, sigma, 2, g)]).reshape(5, 4, 16, 16)
            err = rel_err(den(x, alpha, sigma), exact_reference(X, x, alpha, sigma))
            worst.extend(err.tolist())
    record(f"{kind} [N, 4, 16, 16]", worst)
    assert max(worst) <= CONTRACT
