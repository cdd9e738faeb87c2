"""Sharing within one run: a denoiser built once per class, data and options, and each answer computed once.

``boneless eval`` asks the same questions of the same denoisers more than once: ``coarse-to-fine`` holds a
``blend`` built from the same pool with the same options as the ``blend`` row, and below its switch its answer
*is* that blend's answer to the same noisy batch; ``sure-experts`` holds the ``patch-composite``, ``gmm`` and
``gaussian`` of their own rows, and asks them the held-out batches their rows already answered; the cost probe
asks the first held-out batch before the held-out stage does. Inside :func:`sharing`:

- :func:`build` returns one object for a class, data of equal content and equal options (the composites and
  :func:`boneless.registry.make_denoiser` build their members through it), and
- that object answers a query it has answered before (a batch ``x`` of equal content, equal ``alpha`` and
  ``sigma``) from memory, with a copy of the earlier answer.

A denoiser is a function of its query (the protocol), so this changes no result, only how often it is
computed; the answers kept are bounded in bytes (the oldest go first). Outside :func:`sharing`, :func:`build`
is ``cls(X, **options)`` and nothing is kept.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import inspect
from collections import OrderedDict

import torch

from .denoisers import PosteriorDenoiser, per_sample

MAX_BYTES = 2 << 30  # answers (and their queries) kept per sharing block


class Memo:
    """The denoisers built and the answers given within one :func:`sharing` block."""

    def __init__(self, max_bytes: int = MAX_BYTES):
        self.max_bytes = int(max_bytes)
        self.built: dict[tuple, object] = {}
        self.answers: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = 0

    def build(self, cls, X: torch.Tensor, options: dict):
        try:  # the options with every default filled in, so that leaving one out equals giving its default
            bound = inspect.signature(cls).bind(X, **options)
        except (TypeError, ValueError):
            return cls(X, **options)  # let the class itself say what is wrong
        bound.apply_defaults()
        key = _options_key({k: v for k, v in bound.arguments.items() if k != next(iter(bound.arguments))})
        if key is None:  # an option we cannot compare (some object): no sharing
            return cls(X, **options)
        key = (cls, _digest(X), tuple(X.shape), str(X.dtype), str(X.device), key)
        if key not in self.built:
            den = cls(X, **options)
            self.built[key] = (_SharedPosterior if isinstance(den, PosteriorDenoiser) else _Shared)(den, self, key)
        return self.built[key]

    def answer(self, owner: tuple, den, x: torch.Tensor, alpha, sigma) -> torch.Tensor:
        a, s = per_sample(alpha, len(x), "alpha", signed=True), per_sample(sigma, len(x), "sigma", signed=True)
        key = (owner, _digest(x), tuple(x.shape), str(x.dtype), str(x.device), _digest(a), _digest(s))
        kept = self.answers.get(key)
        if kept is not None and torch.equal(kept[0], x):
            self.answers.move_to_end(key)
            self.hits += 1
            return kept[1].clone()
        self.misses += 1
        out = den(x, alpha, sigma)
        size = x.element_size() * x.numel() + out.element_size() * out.numel()
        if size <= self.max_bytes:
            self.answers[key] = (x.detach().clone(), out.detach().clone())
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, (q, o) = self.answers.popitem(last=False)
                self.bytes -= q.element_size() * q.numel() + o.element_size() * o.numel()
        return out


class _Shared:
    """A denoiser built inside :func:`sharing`: its calls go through the memo, everything else to the denoiser."""

    def __init__(self, den, memo: Memo, key: tuple):
        self.__dict__.update(_den=den, _memo=memo, _key=key)

    def __call__(self, x: torch.Tensor, alpha, sigma) -> torch.Tensor:
        return self._memo.answer(self._key, self._den, x, alpha, sigma)

    def __getattr__(self, name):  # options, members and other methods are the denoiser's own
        return getattr(self._den, name)

    def __setattr__(self, name, value):  # a change would reach every holder and the answers kept: refused
        raise AttributeError(f"cannot set {name!r}: this {type(self._den).__name__} is shared inside "
                             "boneless.memo.sharing() (other holders and its kept answers would not see the change); "
                             "build the one to change outside sharing(), or with its class directly")


class _SharedPosterior(_Shared):
    """As :class:`_Shared`, for a denoiser that also reports its posterior (:class:`PosteriorDenoiser`)."""

    def posterior(self, x: torch.Tensor, alpha, sigma, k: int = 5):
        return self._den.posterior(x, alpha, sigma, k=k)


_current: contextvars.ContextVar[Memo | None] = contextvars.ContextVar("boneless_memo", default=None)


@contextlib.contextmanager
def sharing(max_bytes: int = MAX_BYTES):
    """Within this block, :func:`build` shares denoisers and their answers (see the module docstring); yields the
    :class:`Memo` (its ``hits`` and ``misses`` count the answers taken from memory and computed)."""
    memo = Memo(max_bytes)
    token = _current.set(memo)
    try:
        yield memo
    finally:
        _current.reset(token)


def build(cls, X: torch.Tensor, **options):
    """``cls(X, **options)``, or inside :func:`sharing` the one object built from equal data and options."""
    memo = _current.get()
    return cls(X, **options) if memo is None else memo.build(cls, X, options)


def _digest(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().reshape(-1)
    t = torch.empty_like(t, memory_format=torch.contiguous_format).copy_(t)  # dense (an expanded [1] may not be)
    return hashlib.blake2b(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"", digest_size=16).digest()


def _options_key(value):
    """A hashable stand-in for an option value whose equality is the value's, or None if there is none."""
    if value is None or isinstance(value, (bool, int, float, str, torch.device)):
        return (type(value).__name__, str(value) if isinstance(value, torch.device) else value)
    if isinstance(value, torch.Tensor):
        return ("tensor", _digest(value), tuple(value.shape), str(value.dtype))
    if isinstance(value, dict):
        items = [(k, _options_key(v)) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))]
        return None if any(v is None for _, v in items) else ("dict", tuple(items))
    if isinstance(value, (list, tuple)):  # NamedTuples (patch schedules) too: their type is part of the key
        items = [_options_key(v) for v in value]
        return None if any(v is None for v in items) else (type(value).__name__, tuple(items))
    return None
