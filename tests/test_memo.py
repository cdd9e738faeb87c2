"""Sharing within one run (boneless.memo): one object per class, data and options, each answer computed once,
and every answer the same as without sharing."""

import json

import pytest
import torch

from boneless import memo
from boneless.cli import main
from boneless.composites import BlendDenoiser, CoarseToFineDenoiser
from boneless.experts import SUREExpertsDenoiser
from boneless.registry import make_denoiser


def images(n, seed, shape=(1, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, *shape, generator=g) * 2 - 1).round(decimals=1)  # repeated values, as in real images


class Counting:
    """A denoiser that counts its calls (the posterior mean of a Gaussian with the data's mean and unit variance)."""

    calls = 0

    def __init__(self, X, *, scale: float = 1.0):
        self.shape, self.mean, self.scale = tuple(X.shape[1:]), X.mean(0), scale

    def __call__(self, x, alpha, sigma):
        Counting.calls += 1
        a = torch.as_tensor(alpha, dtype=torch.float64).reshape(-1, 1, 1, 1).float()
        s = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1, 1, 1).float()
        return self.scale * (self.mean + a * (x - a * self.mean) / (a * a + s * s))


def test_outside_a_sharing_block_nothing_is_shared():
    X = images(20, 0)
    assert memo.build(Counting, X) is not memo.build(Counting, X)
    assert make_denoiser("gaussian", X) is not make_denoiser("gaussian", X)


def test_one_object_per_class_data_and_options():
    X = images(20, 0)
    with memo.sharing():
        a = memo.build(Counting, X)
        assert memo.build(Counting, X.clone()) is a  # equal content, another tensor
        assert memo.build(Counting, X, scale=1.0) is a  # a default given is the default left out
        assert memo.build(Counting, X, scale=2.0) is not a
        assert memo.build(Counting, images(20, 1)) is not a
        assert make_denoiser("gaussian", X) is make_denoiser("gaussian", X)
        assert make_denoiser("gmm", X, components=2) is not make_denoiser("gmm", X, components=3)
    with memo.sharing():  # a new block starts empty
        assert memo.build(Counting, X) is not a


def test_a_shared_denoiser_cannot_be_changed_but_an_unshared_one_can():
    """Setting a member of a shared denoiser would reach its other holders and leave its kept answers stale, and a
    proxy that took the assignment itself would leave the denoiser unchanged: both would be silent, so it is an
    error. Outside sharing the object is the denoiser itself."""
    X = images(20, 0)
    with memo.sharing():
        a = memo.build(Counting, X)
        with pytest.raises(AttributeError, match="cannot set 'scale': this Counting is shared inside"):
            a.scale = 3.0
        assert a.scale == 1.0 and memo.build(Counting, X).scale == 1.0
    b = memo.build(Counting, X)
    b.scale = 3.0
    assert b.scale == 3.0


def test_an_answer_is_computed_once_and_equals_the_unshared_one():
    X, x = images(20, 0), images(5, 2)
    want = Counting(X)(x, 1.0, 0.3)
    with memo.sharing() as m:
        den = memo.build(Counting, X)
        Counting.calls = 0
        first = den(x, 1.0, 0.3)
        assert torch.equal(first, want)
        first.zero_()  # the caller's copy: the memory keeps its own
        again = den(x.clone(), torch.ones(5, dtype=torch.float64), torch.full((5,), 0.3, dtype=torch.float64))
        assert Counting.calls == 1 and m.hits == 1  # float and per-query coefficients of equal value: one query
        assert torch.equal(again, want)
        x2 = x.clone()
        x2[0, 0, 0, 0] += 1e-6  # another query: computed
        den(x2, 1.0, 0.3)
        den(x, 1.0, 0.31)
        den(x[:4], 1.0, 0.3)
        assert Counting.calls == 4 and m.misses == 4


def test_answers_kept_are_bounded_in_bytes():
    X, x = images(20, 0), images(5, 2)
    one = 2 * x.numel() * 4  # a query and its answer, float32
    with memo.sharing(max_bytes=2 * one) as m:
        den = memo.build(Counting, X)
        Counting.calls = 0
        for s in (0.1, 0.2, 0.3):
            den(x, 1.0, s)
        assert m.bytes <= 2 * one
        den(x, 1.0, 0.3)  # kept
        den(x, 1.0, 0.1)  # the oldest, dropped: computed again
        assert Counting.calls == 4


def test_coarse_to_fine_shares_the_blend_and_its_answers():
    X = images(60, 3)
    x = images(6, 4) + 0.5 * torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    kw = {"local_gaussian": {"schedule": 3, "neighbours": 8}, "local": {"schedule": 3}, "components": 2}
    plain_blend = BlendDenoiser(X, **kw)
    plain_cf = CoarseToFineDenoiser(X, blend=kw)
    with memo.sharing() as m:
        blend = make_denoiser("blend", X, **kw)
        y_blend = blend(x, 1.0, 0.5)
        cf = make_denoiser("coarse-to-fine", X, blend=kw)
        assert cf.blend is blend  # built once: the calibration ran once
        hits = m.hits
        y_cf = cf(x, 1.0, 0.5)  # below the switch: the blend's answer, from memory
        assert m.hits == hits + 1
        y_high = cf(x, 1.0, 5.0)  # above it: the exact posterior mean
    assert torch.equal(blend.weights, plain_blend.weights)
    assert torch.equal(y_blend, plain_blend(x, 1.0, 0.5))
    assert torch.equal(y_cf, plain_cf(x, 1.0, 0.5)) and torch.equal(y_cf, y_blend)
    assert torch.equal(y_high, plain_cf(x, 1.0, 5.0))


def test_blend_members_are_the_rows_denoisers_and_answer_from_memory():
    """After its fit the blend holds the rows' own denoisers (built on the whole pool), so in one run its answer
    to a batch the rows have answered calls no member again."""
    X = images(60, 3)
    x = images(6, 4) + 0.5 * torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    kw = {"local_gaussian": {"schedule": 3, "neighbours": 8}, "local": {"schedule": 3}, "components": 2}
    plain = BlendDenoiser(X, **kw)(x, 1.0, 0.5)
    with memo.sharing() as m:
        rows = [make_denoiser("local-gaussian", X, schedule=3, neighbours=8), make_denoiser("patch-composite", X),
                make_denoiser("local-wiener", X, schedule=3), make_denoiser("gmm", X, components=2),
                make_denoiser("gaussian", X)]
        for den in rows:
            den(x, 1.0, 0.5)
        blend = make_denoiser("blend", X, **kw)
        assert all(a is b for a, b in zip([blend.local_gaussian, blend.composite, blend.local, blend.gmm,
                                            blend.gauss], rows))
        hits, misses = m.hits, m.misses
        shared = blend(x, 1.0, 0.5)
        assert (m.hits, m.misses) == (hits + 5, misses + 1)  # five members from memory; the blend's own answer
    assert torch.equal(shared, plain)


def test_sure_experts_share_the_rows_experts():
    X = images(40, 6)
    x = images(4, 7) + 0.3 * torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(8))
    opts = {"patch-composite": {"schedule": 3}, "gmm": {"components": 2}}
    plain = SUREExpertsDenoiser(X, options=opts)
    with memo.sharing() as m:
        pc = make_denoiser("patch-composite", X, schedule=3)
        pc(x, 1.0, 0.3)
        sure = make_denoiser("sure-experts", X, options=opts)
        assert sure.experts[0] is pc
        hits = m.hits
        y = sure(x, 1.0, 0.3)
        assert m.hits == hits + 1  # the expert's answer at the query; the probe's is new
    assert torch.equal(y, plain(x, 1.0, 0.3))


def test_an_eval_run_gives_the_same_numbers_with_and_without_sharing(tmp_path, monkeypatch):
    """The whole protocol on a tiny pool, composites included: sharing changes no number, only the times."""
    args = ["eval", "--data", "digits", "--pool", "150", "--test", "12", "--in-sample", "8", "--samples", "4",
            "--steps", "4", "--sigmas", "0.1,1", "--consistency", "2", "--classifier", "off", "--no-progress",
            "--denoisers", "gaussian,patch-composite,blend,coarse-to-fine,sure-experts"]
    assert main(args + ["--out", str(tmp_path / "shared")]) == 0
    monkeypatch.setattr("boneless.evaluate.sharing", _no_sharing)
    assert main(args + ["--out", str(tmp_path / "plain")]) == 0
    shared, plain = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("shared", "plain"))
    assert set(shared["denoisers"]) == set(plain["denoisers"])
    for name, rec in plain["denoisers"].items():
        other = shared["denoisers"][name]
        assert rec["status"] == other["status"] == "ok", name
        for key in ("heldout", "in_sample", "samples", "consistency"):
            assert other[key] == rec[key], (name, key)


class _no_sharing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


class Recording:
    """Records the batch size and noise level of every call; the Wiener filter's answer."""

    calls: list = []

    def __init__(self, X):
        from boneless.metrics import WienerFilter
        self.shape, self.wiener = tuple(X.shape[1:]), WienerFilter(X)

    def __call__(self, x, alpha, sigma):
        Recording.calls.append((len(x), float(torch.as_tensor(sigma, dtype=torch.float64).reshape(-1)[0])))
        return self.wiener(x, alpha, sigma)


def test_eval_takes_the_held_out_batch_of_its_probe_from_memory(tmp_path, monkeypatch):
    from boneless import DENOISERS
    monkeypatch.setitem(DENOISERS, "recording-test", Recording)
    Recording.calls = []
    assert main(["eval", "--data", "digits", "--pool", "100", "--test", "12", "--batch-size", "12", "--in-sample", "8",
                 "--samples", "4", "--steps", "3", "--sigmas", "0.1,1", "--consistency", "0", "--classifier", "off",
                 "--no-progress", "--denoisers", "recording-test", "--out", str(tmp_path / "run")]) == 0
    # the probe: one image, then the first held-out batch at the middle level (sigma 1); the held-out stage asks
    # it again and gets it from memory
    assert Recording.calls[:2] == [(1, 1.0), (12, 1.0)]
    assert Recording.calls.count((12, 1.0)) == 1 and Recording.calls.count((12, 0.1)) == 1
