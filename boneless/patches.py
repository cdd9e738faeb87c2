"""Patch denoisers: closed-form posteriors over image patches instead of whole images.

The exact denoiser of a finite training set only reproduces training images. Restricting each output pixel's
posterior to a local patch lets the denoiser mix patches from different images (a "patch mosaic"), which is how
convolutional diffusion models generalise (Kamb & Ganguli, arXiv 2412.20292; Niedoba et al., arXiv 2411.19339).
All patch posteriors are softmax-weighted averages over stored patches, with the logits, tiers and error bound
of the project's hot loop, :class:`boneless.bank.Bank`: the same-location posteriors of many locations in one
batched reduction (:func:`_reduce_locations`; the bank itself for the queries past its float32 tier), the
equivariant ones through one bank per boundary class; never a B x N x D tensor.

For a query ``x_t = alpha x0 + sigma eps`` and a patch footprint ``P`` (a set of pixels), the patch posterior
over the stored patches ``{x_i[P]}`` is ``w_i = softmax_i(-|x_t[P] - alpha x_i[P]|^2 / (2 sigma^2))``.

- :class:`LocalDenoiser` (``local``; Kamb & Ganguli eqs. 7-8, the LS machine): each pixel ``p`` is the
  posterior mean of its own value under the posterior over the *same-location* patches ``P_p`` centred at ``p``
  (zero padding outside the image, i.e. the footprint clipped to the image).
- :class:`EquivariantLocalDenoiser` (``local-equivariant``; eqs. 9-10, the ELS machine): the posterior runs over
  the patches of *all* training images at *all* locations; the output is the centre pixel of the posterior mean
  patch. ``boundary="broken"`` (default; our reading of their boundary-broken ELS, eq. 41) compares a patch
  only with patches that meet the image boundary the same way (same clipped footprint, so the interior is fully
  translation-equivariant and each border offset is its own class); ``boundary="zero"`` zero-pads every image
  and compares all padded patches with each other.
- :class:`WienerLocalDenoiser` (``local-wiener``; after Lukoianov et al., arXiv 2509.09672): the LS machine with
  each pixel's square replaced by the ``k^2`` pixels the Wiener filter at that noise level makes it depend on
  most, so the footprint's shape follows the data's pixel correlations.
- :class:`PatchCompositeDenoiser` (``patch-composite``; Niedoba et al., PSPC-Square): every ``k x k`` square
  that fits in the image gets the posterior mean over same-location training squares, and each pixel is the
  average of the posterior means of all squares that cover it.
- :class:`LocalGaussianDenoiser` (``local-gaussian``; this project's): see its docstring.

Patch size follows the noise level ``lam = sigma / alpha`` through a :class:`PatchSchedule`;
:func:`calibrate` picks it per noise level by validation denoising error, with no training. Noise levels in
schedules are stated for data of the spread of the images they were calibrated on (:data:`REFERENCE_SPREAD`):
a denoiser on data of spread ``s`` reads them at ``lam * REFERENCE_SPREAD / s``, so every patch denoiser is
scale-equivariant (data and queries scaled by ``c`` give the estimate scaled by ``c``).
"""

from __future__ import annotations

import concurrent.futures
import functools
import math
from typing import Literal, NamedTuple, Sequence

import torch

from .bank import C_MAX, EXP_FLOOR, U32, Bank
from .checks import non_negative, positive_int
from .closed_form import GaussianDenoiser
from .data import REFERENCE_SPREAD, check_data, spread
from .denoisers import Coef, EmpiricalDenoiser, check_query
from .rows import repeated_rows

Boundary = Literal["broken", "zero"]


class PatchSchedule(NamedTuple):
    """Patch size as a function of the noise level ``lam = sigma / alpha`` (the data-space noise level).

    ``sizes[i]`` is used for the noise levels closest to ``sigmas[i]`` on a log scale (geometric midpoints are
    the switch points); below the first and above the last level the end sizes hold. ``alpha = 0`` uses the
    last size. ``reference`` is the image side the sizes were chosen for: on images of side ``H`` each size is
    rescaled by ``H / reference`` (rounded, odd for centred patches) so a schedule carries over to other sizes;
    ``reference=0`` means absolute sizes, never rescaled.
    """

    sigmas: tuple[float, ...]
    sizes: tuple[int, ...]
    reference: int = 28

    def size(self, lam: float, side: int | None = None, *, odd: bool = False) -> int:
        """The patch side for noise level ``lam`` on images of side ``side`` (default: ``reference``)."""
        if not math.isfinite(lam):
            k = self.sizes[-1]
        else:
            logs = [math.log(s) for s in self.sigmas]
            x = math.log(max(lam, 1e-300))
            k = self.sizes[min(range(len(logs)), key=lambda i: abs(logs[i] - x))]
        if side is not None and self.reference and side != self.reference:
            k = max(1, round(k * side / self.reference))
        if odd and k % 2 == 0:
            k += 1
        return int(k)

    @classmethod
    def constant(cls, size: int) -> "PatchSchedule":
        """The same patch side at every noise level (no rescaling with the image size)."""
        return cls((1.0,), (int(size),), reference=0)


def _as_schedule(schedule, default: PatchSchedule) -> PatchSchedule:
    if schedule is None:
        return default
    if isinstance(schedule, PatchSchedule):
        if len(schedule.sigmas) != len(schedule.sizes) or not schedule.sizes:
            raise ValueError("a PatchSchedule needs as many sizes as noise levels (at least one)")
        if any(not (math.isfinite(s) and s > 0) for s in schedule.sigmas):
            raise ValueError("PatchSchedule noise levels must be positive and finite")
        for k in schedule.sizes:
            positive_int(k, "patch size")
        return schedule
    if isinstance(schedule, int) and not isinstance(schedule, bool):
        positive_int(schedule, "patch size")
        return PatchSchedule.constant(schedule)
    raise ValueError(f"schedule must be a PatchSchedule or a positive integer patch size, got {schedule!r}")


# Defaults measured on Fashion-MNIST (28 x 28) with `calibrate` on a validation split (docs/DENOISERS.md).
LOCAL_SCHEDULE = PatchSchedule((0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0), (1, 1, 1, 3, 5, 9, 15, 15))
COMPOSITE_SCHEDULE = PatchSchedule((0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0), (1, 1, 2, 3, 7, 11, 19, 28))
EQUIVARIANT_SCHEDULE = PatchSchedule((0.05, 0.2, 1.0, 2.0), (1, 3, 7, 7))  # calibrated with a pool of 100
# WienerLocalDenoiser's sides (footprints of k^2 pixels; 28 = every pixel, the exact denoiser), calibrated as LOCAL's
WIENER_LOCAL_SCHEDULE = PatchSchedule((0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0), (1, 1, 2, 2, 4, 9, 19, 28))

# tier-1 threshold of the patch banks on the float32 logit error bound (nats; see boneless.bank): patch
# posteriors use float32 logits up to this bound (weights within e^(2 delta) of exact; measured deviation from
# the exact tiers <= 4e-5 per pixel on Fashion-MNIST, tests/test_patches.py checks 1e-4 against float64) and the
# exact tiers beyond it (very low noise)
PATCH_FAST_DELTA = 1e-2
QUERY_BLOCK = 1 << 21  # queries x rows per block of a bank reduction (bounds the B x chunk scratch memory)
KEPT_FOOTPRINTS = 8  # noise levels whose footprints and rows' norms WienerLocalDenoiser keeps (N x H W x 4 B each)


def _reduce_mean(bank: Bank, q: torch.Tensor, a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Posterior mean rows [Q, D] for queries ``q`` [Q, D] at per-query ``alpha``, ``sigma`` [Q] (float64),
    in blocks of queries so the scratch memory stays O(QUERY_BLOCK)."""
    out = torch.empty(len(q), bank.dim, dtype=torch.float32, device=bank.device)
    step = max(1, QUERY_BLOCK // max(1, min(bank.chunk_size, len(bank))))
    for i in range(0, len(q), step):
        st = bank.reduce(q[i:i + step], a[i:i + step], s[i:i + step], entropy=False)
        out[i:i + step] = st.acc / st.s.to(st.acc.dtype)[:, None]
    return out


LOCATION_BLOCK = 1 << 24  # locations x queries x rows per block of a batched reduction (64 MB of float32 logits)


def _square_rows(x: torch.Tensor, kh: int, kw: int, locs) -> torch.Tensor:
    """The squares ``x[:, :, i:i + kh, j:j + kw]`` of images ``x`` [B, C, H, W] at every corner ``(i, j)`` in
    ``locs``, each flattened in (row, column, channel) order: [L, B, kh kw C]."""
    xl = x.permute(0, 2, 3, 1)
    return torch.stack([xl[:, i:i + kh, j:j + kw].reshape(len(x), -1) for i, j in locs])


def _square_columns(XT: torch.Tensor, kh: int, kw: int, locs) -> torch.Tensor:
    """The training squares at every corner in ``locs`` as columns, from the images held as ``XT`` [H, W, C, N]:
    [L, kh kw C, N] (values in the order of :func:`_square_rows`). Each square is ``kh`` contiguous runs of
    ``XT``, so this costs a few block copies, not ``N`` small ones."""
    C, N = XT.shape[2:]
    out = torch.empty(len(locs), kh * kw * C, N, dtype=XT.dtype, device=XT.device)
    for l, (i, j) in enumerate(locs):
        out[l].view(kh, kw * C * N).copy_(XT[i:i + kh, j:j + kw].reshape(kh, kw * C * N))
    return out


def _square_norms(R: torch.Tensor):
    """Squared norms of the rows ``R[l].T`` (``R`` [L, d, n]): in float64, rounded once to float32 [L, n], and the
    largest norm of each location [L] (float64), as :class:`boneless.bank.Bank` keeps them."""
    sq64 = torch.stack([(col.double() ** 2).sum(0) for col in R])
    return sq64.float(), sq64.max(1).values.sqrt()


def _square(m: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
    """Flattened squares [B, kh kw C] (order of :func:`_square_rows`) as images [B, C, kh, kw]."""
    return m.reshape(len(m), kh, kw, -1).permute(0, 3, 1, 2)


def _location_block(B: int, n: int, d: int) -> int:
    """Locations per block of :func:`_reduce_locations` for ``B`` queries and ``n`` rows of ``d`` values per
    location: their logits and their rows each within ``LOCATION_BLOCK`` values."""
    return max(1, LOCATION_BLOCK // max(1, B * n, n * d))


def _reduce_locations(R: torch.Tensor, q: torch.Tensor, a: torch.Tensor, s: torch.Tensor, *, k: int = 0,
                      mean: bool = True, fast_delta: float, chunk_size: int, norms=None, columns=None):
    """Patch posteriors at ``L`` locations at once: location ``l`` has the stored rows ``R[l].T`` (``R`` [L, d, n]:
    rows as columns) and the queries ``q[l]`` [B, d] at per-query ``alpha``, ``sigma`` ``a``, ``s`` [B] (float64).
    Returns the posterior means [L, B, d] (float32; None unless ``mean``) and the top-``k`` row indices [L, B, k]
    (None if ``k`` = 0). ``norms``: the rows' squared norms ``|x_i|^2`` rounded to float32 [L, n] and each
    location's largest norm ``r`` [L] (float64), when the caller keeps them (:meth:`_PatchDenoiser._norms`).
    ``columns`` [L, c]: only these of each location's ``d`` values are wanted in the means (then [L, B, c]).

    The same computation as one :meth:`boneless.bank.Bank.reduce` per location (with ``fast_delta``), batched
    over the locations: where the bank's bound on the float32 logit error, ``delta``, is within ``fast_delta``
    (its tier 1, nearly every query of a patch posterior) the float32 logits of one batched product are used as
    they are, as the bank uses them; the queries past it go to the bank itself, location by location. The two
    differ only in the order of float32 sums (one product per location here, one per chunk of rows there)."""
    L, d, n = R.shape
    B = q.shape[1]
    step = max(1, LOCATION_BLOCK // max(1, L * n))
    if B > step:  # queries in blocks: the logits of a block stay within LOCATION_BLOCK
        parts = [_reduce_locations(R, q[:, i:i + step], a[i:i + step], s[i:i + step], k=k, mean=mean,
                                   fast_delta=fast_delta, chunk_size=chunk_size, norms=norms, columns=columns)
                 for i in range(0, B, step)]
        return (torch.cat([p[0] for p in parts], 1) if mean else None,
                torch.cat([p[1] for p in parts], 1) if k else None)
    sq32, r = _square_norms(R) if norms is None else norms
    r = r[:, None]  # [L, 1]
    # the bank's per-query constants (boneless.bank._Queries), for every location
    x64 = q.double()
    x_sq = (x64 * x64).sum(-1)  # [L, B]
    cross = 2 * a * x_sq.sqrt() * r
    spread = cross + a ** 2 * r ** 2
    c = torch.minimum(0.5 / s ** 2, C_MAX / (1.0 + spread))
    delta = (2 * math.sqrt(d) + 8) * U32 * c * spread
    slow = delta > fast_delta  # [L, B]
    logits = torch.bmm(q * (2 * a * c).float()[..., None], R)  # [L, B, n]
    logits.addcmul_((a ** 2 * c).float()[..., None], sq32[:, None, :], value=-1.0)
    z = logits.sub_(logits.max(2, keepdim=True).values)
    top = z.topk(min(k, n), dim=2).indices if k else None
    out = None
    if mean:
        p = z.clamp_(min=EXP_FLOOR).exp_()
        Rm = R if columns is None else R.gather(1, columns[..., None].expand(-1, -1, n))
        out = torch.bmm(p, Rm.transpose(1, 2)).div_(p.sum(2, dtype=torch.float64).float()[..., None])
    for l in torch.nonzero(slow.any(1))[:, 0].tolist():  # the bank's exact tiers for the queries past tier 1
        b = torch.nonzero(slow[l])[:, 0]
        st = Bank(R[l].T, chunk_size=chunk_size, device=R.device, fast_delta=fast_delta).reduce(
            q[l, b], a[b], s[b], k=k, entropy=False)
        if mean:
            m = st.acc / st.s.to(st.acc.dtype)[:, None]
            out[l, b] = m if columns is None else m[:, columns[l]]
        if k:
            top[l, b] = st.top_i[:, :top.shape[2]]
    return out, top


class _PatchDenoiser:
    """Shared set-up: data [N, C, H, W], a patch schedule, per-size grouping of a batch, alpha = 0 shortcut."""

    default_schedule = COMPOSITE_SCHEDULE
    odd = False  # centred patches need odd sides

    def __init__(self, X: torch.Tensor, *, schedule: PatchSchedule | int | None = None, chunk_size: int = 8192,
                 fast_delta: float = PATCH_FAST_DELTA, device: torch.device | str | None = None):
        X = check_data(X)
        if not (isinstance(fast_delta, (int, float)) and fast_delta > 0):
            raise ValueError(f"fast_delta must be a positive number, got {fast_delta!r}")
        self.fast_delta = float(fast_delta)
        if X.ndim != 4:
            raise ValueError(f"{type(self).__name__} needs image data [N, C, H, W], got shape {list(X.shape)}")
        self.schedule = _as_schedule(schedule, self.default_schedule)
        self.chunk_size = positive_int(chunk_size, "chunk_size")
        self.device = torch.device(device) if device is not None else X.device
        self.X = X.to(self.device)
        self.XT = self.X.permute(2, 3, 1, 0).contiguous()  # [H, W, C, N]: squares as columns (_square_columns)
        self._kept_norms: dict = {}  # (height, width, corner) -> squared norms of the training squares there
        self.shape = tuple(X.shape[1:])
        self.mean = self.X.double().mean(0).float()
        self.unit = spread(X) / REFERENCE_SPREAD  # the data's scale relative to the calibration images

    def patch_size(self, lam: float) -> int:
        """The patch side used at noise level ``lam = sigma / alpha`` on this data's images."""
        return self.schedule.size(lam / self.unit, self.shape[1], odd=self.odd)

    def __call__(self, x: torch.Tensor, alpha: Coef, sigma: Coef) -> torch.Tensor:
        """``x0_hat`` [B, *shape], the queries grouped by patch size."""
        a, s = check_query(x, self.shape, alpha, sigma)
        xd = x.to(self.device, torch.float32)
        out = torch.empty_like(xd)
        prior = a == 0  # pure noise: the posterior is the prior, its mean the data mean
        out[prior] = self.mean
        lam = torch.where(prior, math.inf, s / a.clamp(min=1e-300))
        sizes = torch.tensor([self.patch_size(float(v)) if not p else 0 for v, p in zip(lam, prior)])
        for k in sorted(set(sizes[~prior].tolist())):
            idx = torch.nonzero(sizes == k)[:, 0].to(self.device)
            out[idx] = self._denoise(xd[idx], a[idx.cpu()], s[idx.cpu()], int(k))
        return out.to(x.device, x.dtype)

    def _denoise(self, x: torch.Tensor, a: torch.Tensor, s: torch.Tensor, k: int) -> torch.Tensor:
        raise NotImplementedError

    def _norms(self, kh: int, kw: int, locs):
        """:func:`_square_norms` of the training squares ``kh x kw`` at the corners ``locs`` ([L, N] float32, [L]
        float64), made at the first call that needs them and kept (4 bytes per square: 3 MB per 100 locations at
        N = 10000)."""
        missing = [ij for ij in locs if (kh, kw, ij) not in self._kept_norms]
        for b0 in range(0, len(missing), 64):
            part = missing[b0:b0 + 64]
            sq32, r = _square_norms(_square_columns(self.XT, kh, kw, part))
            for l, ij in enumerate(part):
                self._kept_norms[(kh, kw, ij)] = (sq32[l], r[l])
        kept = [self._kept_norms[(kh, kw, ij)] for ij in locs]
        return torch.stack([v[0] for v in kept]), torch.stack([v[1] for v in kept])


def _window(i: int, r: int, n: int) -> tuple[int, int]:
    """Rows ``[i - r, i + r]`` clipped to ``[0, n)``, as a half-open range."""
    return max(0, i - r), min(n, i + r + 1)


class LocalDenoiser(_PatchDenoiser):
    """The local score (LS) machine of Kamb & Ganguli (arXiv 2412.20292, eqs. 7-8).

    Pixel ``p`` of ``x0_hat`` is ``sum_i w_i(p) x_i[p]`` with ``w_i(p) = softmax_i(-|x[P_p] - alpha x_i[P_p]|^2
    / (2 sigma^2))``, ``P_p`` the ``k x k`` patch centred at ``p`` clipped to the image (all channels), and
    ``x_i`` the training images: a separate posterior per pixel over same-location patches. A patch of side
    ``>= 2 max(H, W) - 1`` covers the whole image from every pixel, and this is the exact denoiser.

    Args:
        X: training images [N, C, H, W].
        schedule: a :class:`PatchSchedule` or a fixed odd patch side (default: :data:`LOCAL_SCHEDULE`).
        chunk_size: rows per step of the bank loop.
        device: where the data live and the computation runs.
    """

    default_schedule = LOCAL_SCHEDULE
    odd = True

    def _denoise(self, x, a, s, k):
        B, C, H, W = x.shape
        r = k // 2
        out = torch.empty_like(x)
        a, s = a.to(self.device), s.to(self.device)
        shapes: dict[tuple[int, int], list] = {}  # the clipped footprints by their shape: one batch each
        for i in range(H):
            i0, i1 = _window(i, r, H)
            for j in range(W):
                j0, j1 = _window(j, r, W)
                shapes.setdefault((i1 - i0, j1 - j0), []).append((i, j, i0, j0))
        for (ph, pw), places in shapes.items():
            step = _location_block(B, len(self.X), C * ph * pw)
            for b0 in range(0, len(places), step):
                block = places[b0:b0 + step]
                corners = [(i0, j0) for _, _, i0, j0 in block]
                centre = torch.tensor([[((i - i0) * pw + j - j0) * C + c for c in range(C)]
                                       for i, j, i0, j0 in block], device=x.device)  # the patch's own pixel
                m, _ = _reduce_locations(_square_columns(self.XT, ph, pw, corners), _square_rows(x, ph, pw, corners),
                                         a, s, fast_delta=self.fast_delta, chunk_size=self.chunk_size,
                                         norms=self._norms(ph, pw, corners), columns=centre)
                for l, (i, j, _, _) in enumerate(block):
                    out[:, :, i, j] = m[l]
        return out


def wiener_footprints(U: torch.Tensor, ev: torch.Tensor, lam: float, shape: tuple[int, int, int], d: int,
                      *, block: int = 1024) -> torch.Tensor:
    """The ``d`` pixels each pixel of a ``[C, H, W]`` image depends on most under the Wiener filter at noise
    level ``lam``: [H W, d] flat pixel indices (row-major), the pixel itself first.

    The filter's Jacobian is ``J = U diag(ev / (ev + lam^2)) U^T`` (``U`` [C H W, r], ``ev`` [r]: the data
    covariance's eigenpairs, float64); pixel ``p``'s sensitivity to pixel ``q`` is ``sum |J[(c, p), (c', q)]|``
    over the channels. Ties (zero rows: pixels the data never vary) go to the nearer pixel, then the lower index,
    so a diagonal covariance gives the ``k x k`` square for ``d = k^2`` away from the border.
    """
    C, H, W = shape
    P = H * W
    d = min(d, P)
    g = ev / (ev + lam ** 2)
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    pos = torch.stack([yy.reshape(-1), xx.reshape(-1)], 1).to(torch.float64)
    Uc = U.reshape(C, P, -1)
    out = torch.empty(P, d, dtype=torch.long)
    for p0 in range(0, P, block):
        rows = torch.arange(p0, min(P, p0 + block))
        S = torch.zeros(len(rows), P, dtype=torch.float64, device=U.device)
        for c in range(C):
            Jc = (Uc[c, rows] * g) @ U.T  # [rows, C P]: output channel c of these pixels
            S += Jc.abs().reshape(len(rows), C, P).sum(1)
        S = S.cpu()
        S[torch.arange(len(rows)), rows] = math.inf  # the pixel itself first
        dist = torch.cdist(pos[rows], pos)  # ties: nearer first, then lower index (stable sorts)
        by_dist = dist.argsort(dim=1, stable=True)
        order = S.gather(1, by_dist).argsort(dim=1, descending=True, stable=True)
        out[rows] = by_dist.gather(1, order)[:, :d]
    return out


class WienerLocalDenoiser(_PatchDenoiser):
    """Locality from the data's statistics (after Lukoianov, Yuan, Solomon & Sitzmann, arXiv 2509.09672): the LS
    machine (:class:`LocalDenoiser`) with each pixel's square patch replaced by the pixels the Wiener filter at
    that noise level makes it depend on most.

    Pixel ``p`` of ``x0_hat`` is ``sum_i w_i(p) x_i[p]``, ``w_i(p) = softmax_i(-|x[F_p] - alpha x_i[F_p]|^2 /
    (2 sigma^2))``, where the footprint ``F_p`` holds the ``k^2`` pixels (all channels) of largest sensitivity
    ``|J[p, q]|`` of the Wiener filter's Jacobian ``J = U diag(ev / (ev + lam^2)) U^T`` (:func:`wiener_footprints`),
    ``k`` the schedule's side at ``lam = sigma / alpha``. So it differs from ``local`` only in the footprint's
    shape, which follows the data's pixel correlations. The footprints are made at each query's own noise level (a
    few hundredths of a second at 28 x 28) and kept, with their rows' norms, for the last few levels. Their paper
    thresholds the sensitivity; a pixel count (a size, calibrated like ``local``'s) is used here instead.
    Footprints of every pixel are the exact denoiser, and are computed by it (:class:`EmpiricalDenoiser`).

    Args:
        X: training images [N, C, H, W].
        schedule: a :class:`PatchSchedule` or a fixed side ``k`` (``k^2`` pixels; default:
            :data:`WIENER_LOCAL_SCHEDULE`).
        chunk_size: rows per step of the bank loop.
        fast_delta: the float32 tier's bound on the logit error (:data:`PATCH_FAST_DELTA`).
        device: where the data live and the computation runs.
    """

    default_schedule = WIENER_LOCAL_SCHEDULE

    def __init__(self, X: torch.Tensor, *, schedule: PatchSchedule | int | None = None, chunk_size: int = 8192,
                 fast_delta: float = PATCH_FAST_DELTA, device: torch.device | str | None = None):
        super().__init__(X, schedule=schedule, chunk_size=chunk_size, fast_delta=fast_delta, device=device)
        self._wiener = GaussianDenoiser(self.X)
        C, H, W = self.shape
        self._pixels = self.XT.reshape(H * W, C, len(self.X))  # [H W, C, N]: a footprint's rows as columns
        self._pixel_sq = (self._pixels.double() ** 2).sum(1)  # [H W, N] float64
        self._footprints: dict[float, tuple] = {}  # noise level -> footprints [H W, k^2] and their rows' norms
        self._exact = None  # the exact denoiser, for footprints of every pixel (made when first needed)

    def footprints(self, lam: float) -> torch.Tensor:
        """The footprints [H W, k^2] (flat pixel indices, the pixel first) at noise level ``lam = sigma / alpha``,
        ``k`` the schedule's side there."""
        return self._kept(lam)[0]

    def _kept(self, lam: float) -> tuple:
        """The footprints at ``lam`` and the squared norms of every footprint's training rows, as
        :func:`_square_norms` gives them ([H W, N] float32, [H W] float64): made once per noise level (one float64
        product with the footprints' 0/1 matrix) and kept for the last :data:`KEPT_FOOTPRINTS` levels."""
        key = float(lam)
        if key not in self._footprints:
            if len(self._footprints) >= KEPT_FOOTPRINTS:
                self._footprints.pop(next(iter(self._footprints)))
            k = self.patch_size(key)
            fp = wiener_footprints(self._wiener.U, self._wiener.lam, key, self.shape, k * k).to(self.device)
            member = torch.zeros(len(fp), len(fp), dtype=torch.float64, device=self.device)
            member.scatter_(1, fp, 1.0)
            sq64 = member @ self._pixel_sq  # [H W, N]: each footprint's rows' squared norms
            self._footprints[key] = (fp, sq64.float(), sq64.max(1).values.sqrt())
        return self._footprints[key]

    def _denoise(self, x, a, s, k):
        B, C, H, W = x.shape
        if k * k >= H * W:  # every pixel's footprint is the whole image: the exact denoiser, at its cost
            if self._exact is None:
                self._exact = EmpiricalDenoiser(self.X, device=self.device)
            return self._exact(x, a, s)
        out = torch.empty(B, H * W, C, dtype=x.dtype, device=x.device)
        q_all = x.permute(0, 2, 3, 1).reshape(B, H * W, C)
        a, s = a.to(self.device), s.to(self.device)
        groups: dict[float, list[int]] = {}  # queries by noise level: one set of footprints each
        for b, lam in enumerate((s / a).tolist()):
            groups.setdefault(lam, []).append(b)
        for lam, members in groups.items():
            fp, sq32, r = self._kept(lam)
            idx = torch.tensor(members, device=x.device)
            d = fp.shape[1] * C
            step = _location_block(len(members), len(self.X), d)
            centre = torch.arange(C, device=x.device).expand(step, C)  # the pixel is first in its footprint
            for p0 in range(0, H * W, step):
                f = fp[p0:p0 + step]  # [L, k^2]
                R = self._pixels[f].reshape(len(f), d, -1)  # [L, k^2 C, N]
                q = q_all[idx][:, f].permute(1, 0, 2, 3).reshape(len(f), len(members), d)
                m, _ = _reduce_locations(R, q, a[idx], s[idx], fast_delta=self.fast_delta,
                                         chunk_size=self.chunk_size, columns=centre[:len(f)],
                                         norms=(sq32[p0:p0 + step], r[p0:p0 + step]))
                out[idx, p0:p0 + len(f)] = m.transpose(0, 1)
        return out.reshape(B, H, W, C).permute(0, 3, 1, 2)


class PatchCompositeDenoiser(_PatchDenoiser):
    """Patch-set posterior composite with square patches (PSPC-Square; Niedoba et al., arXiv 2411.19339).

    For every ``k x k`` square ``S`` that fits inside the image, ``m_S = sum_i w_i(S) x_i[S]`` with
    ``w_i(S) = softmax_i(-|x[S] - alpha x_i[S]|^2 / (2 sigma^2))`` over the same-location squares of the
    training images; pixel ``p`` of ``x0_hat`` is the average of ``m_S[p]`` over all squares ``S`` covering
    ``p``. With ``k >= max(H, W)`` (one square, the whole image) this is the exact denoiser.

    Args:
        X: training images [N, C, H, W].
        schedule: a :class:`PatchSchedule` or a fixed patch side (default: :data:`COMPOSITE_SCHEDULE`).
        chunk_size: rows per step of the bank loop.
        device: where the data live and the computation runs.
    """

    default_schedule = COMPOSITE_SCHEDULE

    def _denoise(self, x, a, s, k):
        B, C, H, W = x.shape
        kh, kw = min(k, H), min(k, W)
        total = torch.zeros_like(x)
        count = torch.zeros(H, W, dtype=x.dtype, device=x.device)
        a, s = a.to(self.device), s.to(self.device)
        locs = [(i, j) for i in range(H - kh + 1) for j in range(W - kw + 1)]
        step = _location_block(B, len(self.X), C * kh * kw)
        for b0 in range(0, len(locs), step):
            block = locs[b0:b0 + step]
            m, _ = _reduce_locations(_square_columns(self.XT, kh, kw, block), _square_rows(x, kh, kw, block), a, s,
                                     fast_delta=self.fast_delta, chunk_size=self.chunk_size,
                                     norms=self._norms(kh, kw, block))
            for l, (i, j) in enumerate(block):
                total[:, :, i:i + kh, j:j + kw] += _square(m[l], kh, kw)
                count[i:i + kh, j:j + kw] += 1
        return total / count


class EquivariantLocalDenoiser(_PatchDenoiser):
    """The equivariant local score (ELS) machine of Kamb & Ganguli (arXiv 2412.20292, eqs. 9-10, 41).

    Pixel ``p`` of ``x0_hat`` is the centre pixel of the posterior mean over a set of training patches, with
    weights ``softmax(-|x[P_p] - alpha y|^2 / (2 sigma^2))`` over the patches ``y`` of *every* training image at
    *every* location of the same kind:

    - ``boundary="broken"`` (bbELS, default): locations of the same kind are those whose ``k x k`` patch meets
      the image boundary in the same way (same offset from each edge within the patch radius); patches are
      clipped to the image. Interior pixels therefore share one translation-equivariant posterior over all
      interior patches; pixels near an edge compare only with patches at the same offset from that edge.
    - ``boundary="zero"``: every image is zero-padded by the patch radius and all locations are of one kind.

    Scratch memory stays O(batch x chunk); compute is O(B N (H W)^2 k^2) for the interior class, so this machine
    is meant for small pools or small images (see docs/DENOISERS.md for timings). The banks of the training
    patches are made at the first call that needs them and kept (each distinct patch once): up to
    ``N H W C k^2`` floats per patch side in use (about 1 GB at N = 10000, 28 x 28, side 7).

    Args:
        X: training images [N, C, H, W].
        schedule: a :class:`PatchSchedule` or a fixed odd patch side (default: :data:`EQUIVARIANT_SCHEDULE`).
        boundary: ``"broken"`` or ``"zero"`` (see above).
        chunk_size: rows per step of the bank loop.
        device: where the data live and the computation runs.
    """

    default_schedule = EQUIVARIANT_SCHEDULE
    odd = True

    def __init__(self, X: torch.Tensor, *, schedule: PatchSchedule | int | None = None,
                 boundary: Boundary = "broken", chunk_size: int = 8192, fast_delta: float = PATCH_FAST_DELTA,
                 device: torch.device | str | None = None):
        super().__init__(X, schedule=schedule, chunk_size=chunk_size, fast_delta=fast_delta, device=device)
        if boundary not in ("broken", "zero"):
            raise ValueError(f"boundary must be 'broken' or 'zero', got {boundary!r}")
        self.boundary = boundary
        self._banks: dict = {}  # (patch side, location class) -> bank of its distinct training patches

    def _patch_bank(self, key, patches) -> Bank:
        """The bank of the training patches ``patches()`` [n, d] of one location class, made once per patch side
        and class: each distinct patch once, with log weight log(its count), which leaves every posterior
        unchanged (equal rows have equal logits) and shrinks the bank where patches repeat (a constant
        background, and at side 1 the at most 256 grey levels of 8-bit images)."""
        if key not in self._banks:
            rows = patches()
            counts = torch.ones(len(rows), dtype=torch.float64, device=rows.device)
            groups = repeated_rows(rows)  # 3.5x faster than torch.unique(dim=0) on 4.8M patches of 49 values
            if groups is not None:
                rows, counts = rows[groups[0]], torch.bincount(groups[1], minlength=len(groups[0])).double()
            self._banks[key] = Bank(rows, log_weights=counts.log(), chunk_size=self.chunk_size,
                                    device=self.device, fast_delta=self.fast_delta)
        return self._banks[key]

    @staticmethod
    def _classes(n: int, r: int) -> list[list[int]]:
        """Positions ``0..n-1`` grouped by their offsets from the two edges, clipped at the patch radius."""
        groups: dict[tuple[int, int], list[int]] = {}
        for i in range(n):
            groups.setdefault((min(i, r), min(n - 1 - i, r)), []).append(i)
        return list(groups.values())

    def _denoise(self, x, a, s, k):
        B, C, H, W = x.shape
        r = k // 2
        a, s = a.to(self.device), s.to(self.device)
        if self.boundary == "zero":
            pad = torch.nn.functional.pad
            def padded_patches(T):  # [n, C, H, W] -> [n * H * W, C * k * k], every location zero-padded
                P = pad(T, (r, r, r, r)).unfold(2, k, 1).unfold(3, k, 1)  # [n, C, H, W, k, k]
                return P.permute(0, 2, 3, 1, 4, 5).reshape(-1, C * k * k)

            q = padded_patches(x)
            bank = self._patch_bank((k, "zero"), lambda: padded_patches(self.X))
            m = _reduce_mean(bank, q, a.repeat_interleave(H * W), s.repeat_interleave(H * W))
            return m.reshape(B, H, W, C, k, k)[:, :, :, :, r, r].permute(0, 3, 1, 2).contiguous()
        out = torch.empty_like(x)
        for rows_i in self._classes(H, r):
            for cols_j in self._classes(W, r):
                i, j = rows_i[0], cols_j[0]
                # the clipped footprint relative to its pixel: rows i - di0 .. i + di1, columns likewise
                di0, di1 = i - _window(i, r, H)[0], _window(i, r, H)[1] - 1 - i
                dj0, dj1 = j - _window(j, r, W)[0], _window(j, r, W)[1] - 1 - j
                ph, pw = di0 + di1 + 1, dj0 + dj1 + 1
                ii = torch.tensor(rows_i, device=self.device)
                jj = torch.tensor(cols_j, device=self.device)

                def patches(T):  # [n, C, H, W] -> [n * |ii| * |jj|, C * ph * pw] patches of this class
                    cols = [T[:, :, int(p) - di0:int(p) + di1 + 1] for p in ii]  # [n, C, ph, W] each
                    P = torch.stack(cols, 1)  # [n, |ii|, C, ph, W]
                    # -> [n, |ii|, |jj|, C, ph, pw]
                    P = torch.stack([P[..., int(q) - dj0:int(q) + dj1 + 1] for q in jj], 2)
                    return P.reshape(-1, C * ph * pw)

                bank = self._patch_bank((k, i, j), lambda: patches(self.X))
                n_loc = len(ii) * len(jj)
                m = _reduce_mean(bank, patches(x), a.repeat_interleave(n_loc), s.repeat_interleave(n_loc))
                centre = m.reshape(B, len(ii), len(jj), C, ph, pw)[:, :, :, :, di0, dj0]  # [B, |ii|, |jj|, C]
                out[:, :, ii[:, None], jj[None, :]] = centre.permute(0, 3, 1, 2)
        return out


class LocalGaussianDenoiser(_PatchDenoiser):
    """Local Gaussian (NL-Bayes-style) patch denoiser with an external patch bank: this project's design.

    PSPC replaces each noisy square by a posterior mean over training squares: a mixture of Diracs, which cannot
    represent a square between two training squares. Here each ``k x k`` square ``S`` gets its own Gaussian
    prior, fitted to the ``K`` training squares (same location) most likely under the noisy square (the highest
    posterior logits, i.e. the nearest to ``x[S] / alpha``), and the
    square's estimate is that Gaussian's posterior mean (Wiener filter), in the noise-normalised frame
    ``y = x / alpha``, ``lam = sigma / alpha``:

    ``x0_hat[S] = mu_S + C_S (C_S + lam^2 I)^-1 (y[S] - mu_S)``,  ``mu_S, C_S`` = mean and covariance (+ ``ridge I``)
    of the ``K`` neighbours,

    and each pixel averages the estimates of all squares covering it (as PSPC). At high noise the default square is
    the whole image: a Gaussian fitted to the ``K`` training images nearest to the query. With ``passes=2``
    (default) the neighbours are searched again around the first-pass estimate ``x1``, a cleaner query than the
    noisy square (NL-Bayes' second step): the ``K`` training squares nearest to ``x1[S]``. The neighbour search is
    the top-k of the project's bank (:meth:`boneless.bank.Bank.reduce` with ``k=K``). Background squares whose
    neighbours are all identical (e.g. Fashion-MNIST's -1 background) get zero covariance and are restored exactly.

    Args:
        X: training images [N, C, H, W].
        schedule: patch side per noise level (:class:`PatchSchedule` or an int; default
            :data:`LOCAL_GAUSSIAN_SCHEDULE`, capped on small pools: :meth:`patch_size`).
        neighbours: ``K`` per noise level (a :class:`PatchSchedule` whose "sizes" are counts, or an int).
        passes: 1 (neighbours of the noisy square) or 2 (then neighbours of the first-pass estimate).
        ridge: added to the diagonal of each neighbour covariance (for data of the reference spread; scaled
            with the data's variance).
        aggregate: ``"mean"`` (default) averages overlapping squares; ``"precision"`` weights each pixel's
            estimates by the inverse of their posterior variances (measured no better, docs/DENOISERS.md).
        shift: also take the training squares up to ``shift`` pixels away as candidates ((2 shift + 1)^2 times
            the bank; ``shift=1`` measured 0.45 instead of 0.46 x Wiener at sigma 0.1, at 4x the time).
        chunk_size, fast_delta, device: as for the other patch denoisers.
    """

    default_schedule = None  # set below (LOCAL_GAUSSIAN_SCHEDULE)

    def __init__(self, X: torch.Tensor, *, schedule: PatchSchedule | int | None = None,
                 neighbours: PatchSchedule | int | None = None, passes: int = 2, ridge: float = 1e-4,
                 aggregate: Literal["mean", "precision"] = "mean", shift: int = 0, chunk_size: int = 8192,
                 fast_delta: float = PATCH_FAST_DELTA, device: torch.device | str | None = None):
        super().__init__(X, schedule=schedule, chunk_size=chunk_size, fast_delta=fast_delta, device=device)
        self.neighbours = _as_schedule(neighbours, LOCAL_GAUSSIAN_NEIGHBOURS)
        self.capped = schedule is None  # the default sides hold at most MAX_PIXELS_PER_NEIGHBOUR x K pixels
        if passes not in (1, 2):
            raise ValueError(f"passes must be 1 or 2, got {passes!r}")
        self.passes = passes
        self.ridge = non_negative(ridge, "ridge")
        if aggregate not in ("mean", "precision"):
            raise ValueError(f"aggregate must be 'mean' or 'precision', got {aggregate!r}")
        self.aggregate = aggregate
        if isinstance(shift, bool) or not isinstance(shift, int) or shift < 0:
            raise ValueError(f"shift must be an integer >= 0, got {shift!r}")
        self.shift = shift

    def neighbour_count(self, lam: float) -> int:
        """``K`` at noise level ``lam``: the schedule's, or the pool if smaller."""
        return min(self.neighbours.size(lam / self.unit), len(self.X))

    def patch_size(self, lam: float) -> int:
        """The schedule's side; the default schedule's is capped at ``sqrt(4 K)`` (a square of at most ``4 K``
        pixels), the widest the calibration chose (the whole 28 x 28 image with 200 neighbours): on a small pool
        the whole image's Gaussian has too few neighbours for its dimension (and with ``K = N`` it is the Wiener
        filter), while squares still see every image at each location."""
        k = super().patch_size(lam)
        if self.capped and math.isfinite(lam):
            k = min(k, max(1, math.isqrt(MAX_PIXELS_PER_NEIGHBOUR * self.neighbour_count(lam))))
        return k

    def _denoise(self, x, a, s, k):
        lam = float((s / a).max())
        K = self.neighbour_count(lam)
        a, s = a.to(self.device), s.to(self.device)
        y = x / a.to(x.dtype)[:, None, None, None]
        lam_b = (s / a)  # [B] float64
        est = self._pass(x, y, a, s, lam_b, k, K, None)
        if self.passes == 2:
            est = self._pass(x, y, a, s, lam_b, k, K, est)
        return est

    def _candidates(self, i, j, kh, kw):
        """Training squares as columns [d, n] at (i, j) and at the locations up to ``shift`` pixels away."""
        H, W = self.shape[1:]
        locs = [(u, v) for u in range(max(0, i - self.shift), min(H - kh, i + self.shift) + 1)
                for v in range(max(0, j - self.shift), min(W - kw, j + self.shift) + 1)]
        return _square_columns(self.XT, kh, kw, locs).permute(1, 0, 2).reshape(-1, len(locs) * len(self.X))

    def _pass(self, x, y, a, s, lam_b, k, K, pilot):
        B, C, H, W = x.shape
        kh, kw = min(k, H), min(k, W)
        d = C * kh * kw
        total = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
        count = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
        eye = torch.eye(d, dtype=torch.float64, device=x.device)
        # the K neighbours: the posterior top-K of the noisy square, or the training squares nearest to the pilot's
        ones = torch.ones_like(a)
        query, q_alpha, q_sigma = (x, a, s) if pilot is None else (pilot.float(), ones, ones)
        locs = [(i, j) for i in range(H - kh + 1) for j in range(W - kw + 1)]
        # the squares of a block of locations in one batched reduction (shifted candidates: one location at a
        # time, their counts differ), the Wiener steps of a few locations per batched solve
        step = 1 if self.shift else _location_block(B, len(self.X), d)
        per_solve = max(1, WIENER_BLOCK // (B * K * d))
        per_query = min(B, max(1, WIENER_BLOCK // (K * d)))
        for b0 in range(0, len(locs), step):
            block = locs[b0:b0 + step]
            R = self._candidates(*block[0], kh, kw)[None] if self.shift else _square_columns(self.XT, kh, kw, block)
            norms = None if self.shift else self._norms(kh, kw, block)
            _, top = _reduce_locations(R, _square_rows(query, kh, kw, block), q_alpha, q_sigma, k=K, mean=False,
                                       fast_delta=self.fast_delta, chunk_size=self.chunk_size, norms=norms)
            for w0 in range(0, len(block), per_solve):
                part = block[w0:w0 + per_solve]
                nL = len(part)
                for q0 in range(0, B, per_query):  # queries in parts when one location's neighbours are many
                    qs = slice(q0, q0 + per_query)
                    nq = min(per_query, B - q0)
                    idx = top[w0:w0 + nL, qs].clamp(min=0).reshape(nL, 1, nq * K).expand(nL, d, nq * K)
                    nb = R[w0:w0 + nL].gather(2, idx).transpose(1, 2).double().reshape(nL * nq, K, d)
                    mu = nb.mean(1)
                    dev = nb - mu[:, None]
                    yS = _square_rows(y[qs], kh, kw, part).reshape(nL * nq, d).double()
                    lam2 = (lam_b[qs] ** 2).repeat(nL)
                    if self.aggregate == "precision":  # fuse by the posterior variances of each pixel
                        cov = dev.transpose(1, 2) @ dev / K + self.ridge * self.unit ** 2 * eye
                        A = cov + lam2[:, None, None] * eye
                        rhs = torch.cat([(yS - mu)[..., None], cov], 2)  # [nL nq, d, 1 + d]
                        sol = _solve_spd(A, rhs)
                        est = mu + (cov @ sol[..., :1])[..., 0]
                        var = torch.diagonal(cov - cov @ sol[..., 1:], dim1=1, dim2=2).clamp(min=0)
                        wgt = 1.0 / (var + 1e-3 * lam2[:, None] + 1e-10 * self.unit ** 2)
                    else:
                        est = _wiener_mean(dev, yS, yS - mu, lam2, self.ridge * self.unit ** 2)
                        wgt = torch.ones_like(est)
                    est, wgt = (wgt * est).reshape(nL, nq, d), wgt.reshape(nL, nq, d)
                    for l, (i, j) in enumerate(part):
                        total[qs, :, i:i + kh, j:j + kw] += _square(est[l], kh, kw)
                        count[qs, :, i:i + kh, j:j + kw] += _square(wgt[l], kh, kw)
        return (total / count).to(x.dtype)


# neighbour values (float64) per batched Wiener step of a few locations, or of some queries at one location
# (16 MB). Its temporaries then stay below glibc's 32 MB limit for reusing freed memory: larger ones are new pages
# each time, which page-faulted in: measured at sigma 2 (d = 225, K = 200, one location's 250 queries at once,
# 90 MB per temporary): 48M minor faults and 114 s of system time in a 177 s call of 250 images.
WIENER_BLOCK = 1 << 21


def _wiener_mean(dev: torch.Tensor, y: torch.Tensor, v: torch.Tensor, lam2: torch.Tensor,
                 ridge: float) -> torch.Tensor:
    """``mu + C (C + lam2 I)^-1 v`` for ``v = y - mu``, ``C = dev^T dev / K + ridge I`` (dev [B, K, d] the centred
    neighbours, float64), as ``y - lam2 A^-1 v`` with ``A = C + lam2 I`` (the two are equal since
    ``C A^-1 = I - lam2 A^-1``). ``A^-1 v`` in the smaller of the two spaces (:func:`_solve_spd`): the ``d x d``
    system, or, when ``K < d``, the ``K x K`` one of the Woodbury identity ``(U U^T + c I)^-1 = (I - U (c I +
    U^T U)^-1 U^T) / c`` with ``U = dev^T / sqrt(K)``, ``c = ridge + lam2``. A singular system (no ridge and
    ``lam2 = 0``) is solved by least squares."""
    B, K, d = dev.shape
    c = ridge + lam2  # [B]
    if K < d:
        G = dev @ dev.transpose(1, 2) / K
        rhs = (dev @ v[..., None]) / K  # [B, K, 1]
    else:
        G = dev.transpose(1, 2) @ dev / K
        rhs = v[..., None]
    G.diagonal(dim1=1, dim2=2).add_(c[:, None])
    sol = _solve_spd(G, rhs)
    if K < d:  # lam2 A^-1 v = (lam2 / c) (v - U (c I + U^T U)^-1 U^T v); c = 0 only where lam2 = 0
        ratio = torch.where(c > 0, lam2 / torch.where(c > 0, c, 1.0), 0.0)
        return y - ratio[:, None] * (v - (dev.transpose(1, 2) @ sol)[..., 0])
    return y - lam2[:, None] * sol[..., 0]


def _solve_spd(G: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """``G^-1 rhs`` for a batch of symmetric positive semi-definite systems ``G`` [B, n, n], ``rhs`` [B, n, m]:
    Cholesky, and least squares for a system that is singular.

    Not LU: PyTorch's batched LU on the CPU with more than one thread returns wrong solutions, or fails, from
    n = 151 (pytorch/pytorch#142815; measured here with torch 2.13.0 and its MKL: residuals of order 1 without
    an error in one series of calls, an error in others). The CPU factorises a batch one matrix at a time on one
    core, so the batch is split over the threads (measured: 200 x 200 systems, 46 per call, 15.5 ms in one call,
    8.2 ms in two halves side by side)."""
    parts = torch.get_num_threads() if G.device.type == "cpu" else 1
    step = -(-len(G) // max(1, min(parts, len(G) // 8)))  # at least 8 systems per part

    def solve(lo):
        g, r = G[lo:lo + step], rhs[lo:lo + step]
        L, info = torch.linalg.cholesky_ex(g)
        sol = torch.cholesky_solve(r, L)
        bad = info != 0
        if bool(bad.any()):
            sol[bad] = torch.linalg.lstsq(g[bad], r[bad], driver="gelsd").solution
        return sol
    starts = range(0, len(G), step)
    if len(starts) == 1:
        return solve(0)
    return torch.cat(list(_threads(len(starts)).map(solve, starts)))


@functools.cache
def _threads(n: int) -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(n, thread_name_prefix="boneless-solve")


# measured on Fashion-MNIST validation images (docs/DENOISERS.md); swept again on 3 December with the neighbours:
# 40 is within 0.3 % of the best K at lam 0.5 and 1 (the old 80 and 200 were 2 % and 5 % worse there, and slower),
# and from lam 2 the whole image with 200 neighbours (a nearest-neighbour Gaussian of whole images) beats every
# square. On a small pool the sides are capped (MAX_PIXELS_PER_NEIGHBOUR; measured on validation images of the
# 50 faces and of Fashion-MNIST pools of 50-2500, docs/EVAL.md "Sixth push")
LOCAL_GAUSSIAN_SCHEDULE = PatchSchedule((0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0), (3, 3, 3, 5, 11, 28, 28))
LOCAL_GAUSSIAN_NEIGHBOURS = PatchSchedule((0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0), (40, 40, 40, 40, 40, 200, 200),
                                          reference=0)
LocalGaussianDenoiser.default_schedule = LOCAL_GAUSSIAN_SCHEDULE
MAX_PIXELS_PER_NEIGHBOUR = 4  # 784 / 200 = 3.9 at the whole-image levels; pixels, not values (colour unmeasured)


def _default_sizes(den_cls, H: int, W: int) -> tuple[int, ...]:
    side = max(H, W)
    if getattr(den_cls, "odd", False):
        return tuple(k for k in (1, 3, 5, 7, 9, 11, 13, 15, 19, 23, 27) if k < 2 * side - 1) + (2 * side - 1,)
    return tuple(k for k in (2, 3, 4, 5, 7, 9, 11, 13, 15, 19, 23) if k < side) + (side,)


def validation_errors(den_cls, X_train: torch.Tensor, X_val: torch.Tensor, sigmas: Sequence[float], *,
                      sizes: Sequence[int] | None = None, alpha: float = 1.0, seed: int = 0,
                      progress: bool = False, **options) -> tuple[tuple[int, ...], torch.Tensor]:
    """Validation MSE of ``den_cls(X_train, schedule=k, **options)`` for every patch side ``k`` and noise level.

    The validation images get one noise draw ``z`` (from ``seed``) shared by every size and level:
    ``x_t = alpha x + sigma z``. Returns the sizes and a float64 table [len(sigmas), len(sizes)] of
    ``mean((x0_hat - x)^2)``."""
    X_train, X_val = check_data(X_train, name="X_train"), check_data(X_val, name="X_val")
    if X_train.ndim != 4 or X_val.shape[1:] != X_train.shape[1:]:
        raise ValueError(f"X_train and X_val must be images of one shape, got {list(X_train.shape)} and "
                         f"{list(X_val.shape)}")
    sigmas = [float(s) for s in sigmas]
    if not sigmas or any(not (math.isfinite(s) and s > 0) for s in sigmas):
        raise ValueError("sigmas must be a non-empty list of positive numbers")
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a positive number, got {alpha!r}")
    sizes = tuple(sizes) if sizes is not None else _default_sizes(den_cls, *X_train.shape[2:])
    for k in sizes:
        positive_int(k, "patch size")
    z = torch.randn(X_val.shape, generator=torch.Generator().manual_seed(int(seed)))
    table = torch.empty(len(sigmas), len(sizes), dtype=torch.float64)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(sigmas) * len(sizes), desc=f"calibrate {den_cls.__name__}", leave=False)
    for j, k in enumerate(sizes):
        den = den_cls(X_train, schedule=PatchSchedule.constant(k), **options)
        for i, s in enumerate(sigmas):
            x0_hat = den(alpha * X_val + s * z, alpha, s)
            table[i, j] = float(((x0_hat.double() - X_val.double()) ** 2).mean())
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return sizes, table


def calibrate(den_cls, X_train: torch.Tensor, X_val: torch.Tensor, sigmas: Sequence[float], *,
              sizes: Sequence[int] | None = None, alpha: float = 1.0, seed: int = 0, progress: bool = False,
              **options) -> PatchSchedule:
    """Training-free calibration of a patch denoiser's schedule: for each noise level ``sigma / alpha`` in
    ``sigmas`` the patch side with the lowest denoising MSE on the validation images ``X_val`` (never the test
    images), the denoiser built on ``X_train``. Candidate sides ``sizes`` default to a spread from 1 (or 2) up
    to the whole image. Returns a :class:`PatchSchedule` (reference: the images' side)."""
    sizes, table = validation_errors(den_cls, X_train, X_val, sigmas, sizes=sizes, alpha=alpha, seed=seed,
                                     progress=progress, **options)
    best = [sizes[int(j)] for j in table.argmin(1)]
    order = sorted(range(len(sigmas)), key=lambda i: float(sigmas[i]))
    unit = spread(X_train) / REFERENCE_SPREAD  # levels stated for data of the reference spread
    lam = [float(sigmas[i]) / alpha / unit for i in order]
    return PatchSchedule(tuple(lam), tuple(best[i] for i in order), reference=int(X_train.shape[2]))
