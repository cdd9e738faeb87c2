"""The bank's fast paths against the float64 reference: every tier, storage types, screening formats, merges of
partial statistics, and the FAISS back-end. (The core exactness tests of the denoiser are in test_denoisers.py.)"""

import math
import pytest
import torch

import boneless.bank as bank_mod
from boneless import EmpiricalDenoiser
from boneless.bank import Bank, merge
from boneless.rows import StoredRows
from boneless.denoisers import exact_reference

RATIOS = (1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0, 1e3)  # sigma / alpha: the contract's range


def images(n, d, seed=0):
    """Correlated data in [-1, 1] with a non-zero mean (like images)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d // 4, generator=g).repeat_interleave(4, 1) + 0.3 * torch.randn(n, d, generator=g)
    return torch.tanh(z + torch.linspace(-0.5, 0.8, d))


def queries(X, ratio, seed=1, ties=4):
    """Forward-noised rows of X, the first ``ties`` exactly between two rows (alpha x = midpoint), at sigma/alpha."""
    g = torch.Generator().manual_seed(seed)
    n = len(X)
    B = 12
    x0 = X[torch.randint(0, n, (B,), generator=g)]
    x0[:ties] = 0.5 * (X[:ties] + X[ties:2 * ties])
    alpha, sigma = 1 / (1 + ratio), ratio / (1 + ratio)
    x = alpha * x0 + sigma * torch.randn(x0.shape, generator=g)
    x[:ties] = alpha * x0[:ties]
    return x, alpha, sigma


def reduce_x0(bank, x, alpha, sigma, **kw):
    B = len(x)
    st = bank.reduce(x, torch.full((B,), alpha, dtype=torch.float64), torch.full((B,), sigma, dtype=torch.float64),
                     **kw)
    return st, (st.acc.double() / st.s[:, None])


def rel_err(y, ref):
    return float(((y.double() - ref).norm(dim=1) / ref.norm(dim=1)).max())


@pytest.fixture(scope="module")
def X():
    return images(700, 64)


@pytest.mark.parametrize("screen", ["float32", "tf32", "bfloat16"])
@pytest.mark.parametrize("storage", ["float32", "float16", "bfloat16", "uint8"])
def test_storage_and_screen_exact_against_float64(X, storage, screen):
    bank = Bank(X, chunk_size=256, storage=storage, screen=screen)
    ref_rows = X if storage == "float32" else bank.X.dequantised()
    for ratio in RATIOS:
        x, a, s = queries(X, ratio)
        _, y = reduce_x0(bank, x, a, s)
        assert rel_err(y, exact_reference(ref_rows, x, a, s)) < 1e-4, (storage, screen, ratio)


class Spy:
    """Counts the calls of one Bank method."""

    def __init__(self, monkeypatch, name):
        self.calls, orig = 0, getattr(Bank, name)

        def wrapped(bank, *a, **k):
            self.calls += 1
            return orig(bank, *a, **k)
        monkeypatch.setattr(Bank, name, wrapped)


@pytest.mark.parametrize("tier", ["fast", "candidates", "union", "dense"])
def test_each_tier_is_taken_and_exact(X, monkeypatch, tier):
    """Force one tier with the module's thresholds (the fast tier: where its bound allows it, broad posteriors;
    candidates pair by pair; candidates by float64 products over their union; the pilot's dense tier);
    near-ties included, weights and a temperature too."""
    fast_delta = bank_mod.FAST_DELTA if tier == "fast" else 1e-300  # every query slow: screened
    if tier != "fast":
        monkeypatch.setattr(bank_mod, "DENSE_FRACTION", 2.0 if tier == "candidates" else 0.0)
        monkeypatch.setattr(bank_mod, "PILOT_FRACTION", 0.0 if tier == "dense" else 2.0)
        monkeypatch.setattr(bank_mod, "UNION_DELTA", math.inf)
    exact, union = Spy(monkeypatch, "_exact_logits"), Spy(monkeypatch, "_union_logits")
    dense = Spy(monkeypatch, "_dense_logits")
    w = torch.rand(len(X), generator=torch.Generator().manual_seed(3)) + 0.1
    for T in (1.0, 0.7):
        bank = Bank(X, chunk_size=200, log_weights=torch.log(w / w.sum()), fast_delta=fast_delta)
        for ratio in (1e2, 1e3) if tier == "fast" else RATIOS:
            x, a, s = queries(X, ratio)
            _, y = reduce_x0(bank, x, a, s, temperature=T)
            ref = exact_reference(X, x, a, s, weights=w / w.sum(), temperature=T)
            assert rel_err(y, ref) < 1e-4, (tier, ratio, T)
    assert (exact.calls > 0) == (tier == "candidates")
    assert (union.calls > 0) == (tier == "union")
    assert (dense.calls > 0) == (tier in ("union", "dense"))


def test_mass_rule_keeps_the_top_row_when_its_bound_allows_none(X, monkeypatch):
    """Every query slow (a tiny ``fast_delta``) at noise levels whose logit error bound is far below the mass rule's
    tolerance: the rule would allow no candidate at all, yet the top row must stay one (its exact logit is the
    shift of the sums)."""
    monkeypatch.setattr(bank_mod, "DENSE_FRACTION", 0.0)
    bank = Bank(X, chunk_size=200, fast_delta=1e-300)
    for ratio in (1e2, 1e3, 1e4):
        x, a, s = queries(X, ratio)
        _, y = reduce_x0(bank, x, a, s)
        assert rel_err(y, exact_reference(X, x, a, s)) < 1e-4, ratio


def test_merge_of_partial_statistics_equals_one_pass(X):
    """Chunks, row ranges (as devices or ranks hold them) and their merge in either order give one answer."""
    x, a, s = queries(X, 0.3)
    B = len(x)
    al, sg = torch.full((B,), a, dtype=torch.float64), torch.full((B,), s, dtype=torch.float64)
    whole = Bank(X, chunk_size=4096).reduce(x, al, sg, k=5)
    bank = Bank(X, chunk_size=97)
    parts = [bank.reduce(x, al, sg, k=5, start=i, stop=j) for i, j in ((0, 150), (150, 151), (151, len(X)))]
    for merged in (merge(merge(parts[0], parts[1]), parts[2]), merge(parts[2], merge(parts[1], parts[0]))):
        assert torch.allclose(merged.acc.double() / merged.s[:, None], whole.acc.double() / whole.s[:, None],
                              rtol=0, atol=1e-6)
        # global row indices of the examples that carry weight (rows screened out of sharp posteriors are tied
        # at the clamp, in any order)
        heavy = torch.exp(whole.top_l - whole.m[:, None]) / whole.s[:, None] > 1e-9
        assert torch.equal(merged.top_i[heavy], whole.top_i[heavy])
        assert torch.allclose((merged.top_l - merged.m[:, None])[heavy], (whole.top_l - whole.m[:, None])[heavy],
                              atol=1e-9)
        for f in ("u", "q"):  # entropy and effective size sums, relative to s
            assert torch.allclose(getattr(merged, f) / merged.s, getattr(whole, f) / whole.s, atol=1e-6)


def test_uint8_storage_round_trips_8bit_images_and_is_never_copied():
    g = torch.Generator().manual_seed(5)
    q = torch.randint(0, 256, (300, 3, 4, 4), generator=g, dtype=torch.uint8)
    X = q.float() / 127.5 - 1  # how load_dataset reads 8-bit images
    den = EmpiricalDenoiser(X, storage="uint8", chunk_size=64)
    assert torch.equal(den.data, X)
    stored = den.bank.X
    assert isinstance(stored, StoredRows) and stored.data.dtype == torch.uint8
    assert stored.data.untyped_storage().nbytes() == X.numel()  # held once, one byte per value
    ptr = stored.data.data_ptr()
    x = 0.8 * X[:5] + 0.2 * torch.randn(5, 3, 4, 4, generator=g)
    y = den(x, 0.8, 0.2)
    assert den.bank.X.data.data_ptr() == ptr and not hasattr(den.bank, "_cache")
    assert rel_err(y.flatten(1), exact_reference(X, x, 0.8, 0.2).flatten(1)) < 1e-4


def test_half_storage_is_exact_for_the_rounded_data(X):
    for storage, dtype in (("float16", torch.float16), ("bfloat16", torch.bfloat16)):
        den = EmpiricalDenoiser(X, storage=storage)
        assert torch.equal(den.data, X.to(dtype).float())
        assert den.bank.X.data.dtype == dtype


def test_bad_options_are_one_line_errors(X):
    for kw in (dict(storage="int4"), dict(screen="fp8"), dict(bank="annoy")):
        with pytest.raises(ValueError) as e:
            EmpiricalDenoiser(X, **kw)
        assert "\n" not in str(e.value)


def test_screen_error_bound_grows_with_the_format(X):
    x, a, s = queries(X, 0.3)
    B = len(x)
    deltas = []
    for screen in ("float32", "tf32", "bfloat16"):
        q = bank_mod._Queries(Bank(X, screen=screen), x, torch.full((B,), a, dtype=torch.float64),
                              torch.full((B,), s, dtype=torch.float64), 1.0, n_rows=len(X))
        deltas.append(q.delta)
    assert bool((deltas[0] < deltas[1]).all()) and bool((deltas[1] < deltas[2]).all())


# ---------------------------------------------------------------- FAISS back-end

def test_faiss_back_end(X):
    pytest.importorskip("faiss")
    den = EmpiricalDenoiser(X, bank="faiss-flat", neighbours=64, tail_samples=0)
    exact = EmpiricalDenoiser(X)
    B = 12
    for ratio in (1e-2, 0.1, 1.0):
        x, a, s = queries(X, ratio, ties=0)
        al, sg = torch.full((B,), a, dtype=torch.float64), torch.full((B,), s, dtype=torch.float64)
        err = den.bank.check(x, al, sg)
        est = den.bank.estimate(x, al, sg)
        # exact neighbours and no tail: the error is within the bound that the neglected mass implies
        assert bool((err <= est.x0_bound + 1e-6).all()), ratio
        st = exact.bank.reduce(x, al, sg, k=64)
        in_top = (torch.exp(st.top_l - st.m[:, None]) / st.s[:, None]).sum(1)
        assert bool((1 - in_top <= est.tail_bound + 1e-9).all())  # the bound on the tail mass holds
    x, a, s = queries(X, 1e-2, ties=0)
    assert rel_err(den(x, a, s), exact_reference(X, x, a, s)) < 1e-4  # sharp: the neighbours are all that matter
    # alpha = 0 (the prior) is computed exactly; the tail estimate is unbiased: broad posteriors come close
    assert rel_err(den(x, 0.0, 1.0), exact_reference(X, x, 0.0, 1.0)) < 1e-5
    wide = EmpiricalDenoiser(X, bank="faiss", neighbours=32, tail_samples=400, seed=1)
    x, a, s = queries(X, 100.0, ties=0)
    assert rel_err(wide(x, a, s), exact_reference(X, x, a, s)) < 0.05
    with pytest.raises(ValueError, match="prior weights"):
        EmpiricalDenoiser(X, bank="faiss", weights=torch.ones(len(X)))


def test_faiss_missing_is_a_clear_error(X, monkeypatch):
    import builtins
    real = builtins.__import__

    def no_faiss(name, *a, **k):
        if name == "faiss":
            raise ImportError("no faiss")
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", no_faiss)
    with pytest.raises(ValueError, match="pip install"):
        EmpiricalDenoiser(X, bank="faiss")


def test_spans_pilot_and_dense_carry_over(X, monkeypatch):
    """Rows in several spans (screened logits kept per span), the pilot chunk and the dense tier carried into
    later spans give the float64 answer."""
    B = 12
    monkeypatch.setattr(bank_mod, "SPAN_BYTES", 4 * B * 200)  # spans of 200 rows, chunks of 100
    dense = Spy(monkeypatch, "_dense_logits")
    bank = Bank(X, chunk_size=100)
    for ratio in RATIOS:
        x, a, s = queries(X, ratio)
        _, y = reduce_x0(bank, x, a, s)
        assert rel_err(y, exact_reference(X, x, a, s)) < 1e-4, ratio
    monkeypatch.setattr(bank_mod, "PILOT_FRACTION", 0.0)  # every slow query dense from the pilot on
    bank = Bank(X, chunk_size=100, fast_delta=1e-300)
    x, a, s = queries(X, 0.1)
    _, y = reduce_x0(bank, x, a, s)
    assert rel_err(y, exact_reference(X, x, a, s)) < 1e-4 and dense.calls > 0


def test_means_that_cancel_are_exact_relative_to_themselves():
    """Symmetric data (each row and its negative) and a tie between opposite rows: the posterior mean is far
    smaller than the rows, and float32 sums would be off by up to 97 % of it (measured before the fallback); the
    means that cancel are recomputed in float64 (Bank.cancelling, Bank.float64_sums)."""
    g = torch.Generator().manual_seed(0)
    half = torch.randn(200, 3, generator=g)
    X = torch.cat([half, -half])
    x = 1e-3 * torch.randn(4, 3, generator=g)
    den = EmpiricalDenoiser(X)
    stored = EmpiricalDenoiser(X, storage="bfloat16", rescore=400)  # every row rescored: the reference is X
    for sigma in (0.3, 3.0, 300.0):
        ref = exact_reference(X, x, 1.0, sigma)
        for out in (den(x, 1.0, sigma), den.posterior(x, 1.0, sigma, k=2).x0_hat, stored(x, 1.0, sigma)):
            err = (out.double() - ref).norm(dim=1) / ref.norm(dim=1)
            assert float(err.max()) < 1e-6, (sigma, err)
    X = torch.tensor([[-1.0], [1.0 + 2 ** -20], [5.0], [-7.0]])  # a tie between opposite rows
    x = torch.tensor([[2 ** -21]])
    ref = exact_reference(X, x, 1.0, 1.0)
    assert abs(float(EmpiricalDenoiser(X)(x, 1.0, 1.0)) / float(ref) - 1) < 1e-6
