"""New images from one picture, with no training: coarse-to-fine sampling where the dataset of each scale is the
set of patches of the source image at that scale (the approach of Qiu, Kutulakos & Lindell, "Efficient and
Training-Free Single-Image Diffusion Models", CVPR 2026; the multi-scale set-up of SinGAN, Shaham et al. 2019, and
SinDDM, Kulikov et al. 2023).

At each scale the denoiser is closed-form. For a query ``x_t = alpha x0 + sigma eps`` every ``k x k`` patch ``y`` of
``x_t`` (on a grid of step ``stride``) gets the exact posterior mean over the source's patches ``{p_i}``,

    E[p | y] = sum_i softmax_i(-|y - alpha p_i|^2 / (2 sigma^2)) p_i,

computed by the project's streaming log-sum-exp bank (:class:`boneless.bank.Bank`), and each pixel of ``x0_hat`` is
the average of the posterior means of the patches that cover it (the aggregation of patch-based restoration, e.g.
non-local means and Niedoba et al.'s patch composites). With one patch covering the whole image this is the exact
empirical denoiser of the source image.

Sampling runs the rectified flow (``alpha = 1 - t``, ``sigma = t``) from pure noise at the coarsest scale; every finer
scale starts from the previous result, upsampled and noised to ``t = start_noise``, and runs down to ``t = 0``.
Output sizes are free (retargeting): the output pyramid keeps the source pyramid's scale factors.

Everything runs in a standardised space ``(x - mean_c) / std`` of the source (per-channel mean, one std), so images
in [-1, 1] and arrays of any range (autoencoder latents ``[4, h, w]``) share the defaults.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
from pathlib import Path
from typing import Literal, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .bank import EXP_FLOOR, Bank
from .patches import PATCH_FAST_DELTA, _reduce_mean
from .samplers import SAMPLERS
from .schedules import get_schedule, time_grid

PATCH_SIZE = 7  # default patch side
FACTOR = 4 / 3  # ratio of the sides of consecutive scales (SinGAN's 0.75)
COARSEST = 24  # default: scales are added until the coarsest source's short side is about this many pixels
START_NOISE = 0.35  # default t at which every scale after the coarsest starts
STEPS = 10  # Euler steps for a full run from t = 1; a scale starting at t takes ceil(STEPS t)
MIN_SIDE = 8  # a smaller source is refused
FEATURE_SEED = 0  # the seed of the fixed random feature network of :func:`sifid`
IVF_ROWS = 4096  # search="auto": inverted lists for source scales with more patches than this
NPROBE = 8  # lists searched per query patch
PROBE_ROWS = 2048  # ... and at least enough lists for this many rows (small scales: a larger share of the lists)
WINDOW = 1.0  # default: Gaussian weights of std 1 px around each patch's centre when overlapping patches are averaged
SAMPLER = "euler-maruyama"  # default sampler (fresh noise at every step but the last)
PAIR_BLOCK = 1 << 16  # (query, list) pairs per block of PatchLists.mean
FIT_ROWS_PER_LIST = 64  # k-means fits its centroids on at most this many random rows per list
C_MAX = 1e20  # cap on 1 / (2 sigma^2): float32 logits stay finite as sigma -> 0
CHECK_QUERIES = 32  # query patches per call whose inverted-list posterior mean is checked against the exact one
Sampler = Literal["euler", "heun", "ddim", "ddpm", "euler-maruyama"]
Search = Literal["auto", "exact", "ivf"]


# ---------------------------------------------------------------- loading

def load_source(path: str | os.PathLike) -> tuple[torch.Tensor, str]:
    """The source as float32 ``[C, H, W]`` and its kind: ``"image"`` (any format Pillow reads, mapped to [-1, 1],
    RGB or grey) or ``"array"`` (a ``.npy`` file holding ``[C, H, W]`` or ``[H, W]`` finite values of any range,
    e.g. autoencoder latents). Raises a one-line ``ValueError`` for a missing, corrupt, empty or tiny file."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such file")
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give one image file")
    if path.suffix.lower() == ".npy":
        try:
            a = np.load(path, allow_pickle=False)
        except Exception as e:  # numpy raises ValueError, OSError, EOFError, ... for a damaged file
            raise ValueError(f"{path}: not a readable .npy array ({type(e).__name__})") from None
        if a.ndim == 2:
            a = a[None]
        if a.ndim != 3 or not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
            raise ValueError(f"{path}: expected a real array [C, H, W] or [H, W], got {a.dtype} {list(a.shape)}")
        x, kind = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)), "array"
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{path}: the array holds NaN or inf values")
    else:
        from PIL import Image, UnidentifiedImageError
        try:
            with Image.open(path) as im:
                im.load()
                im = im.convert("L" if im.mode in ("1", "L", "I", "I;16", "F") else "RGB")
                a = np.asarray(im, dtype=np.uint8)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            raise ValueError(f"{path}: not a readable image") from None
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        x, kind = torch.from_numpy(a.astype(np.float32) / 127.5 - 1.0), "image"
    if min(x.shape[1:]) < MIN_SIDE:
        raise ValueError(f"{path}: the image is too small ({x.shape[1]} x {x.shape[2]}); "
                         f"need at least {MIN_SIDE} x {MIN_SIDE} pixels")
    return x, kind


# ---------------------------------------------------------------- patches

def _positions(n: int, k: int, stride: int) -> list[int]:
    """Patch offsets ``0, stride, 2 stride, ...`` along a side of ``n`` pixels, and ``n - k`` so the last pixels are
    covered."""
    pos = list(range(0, n - k + 1, stride))
    if pos[-1] != n - k:
        pos.append(n - k)
    return pos


def patch_index(h: int, w: int, k: int, stride: int, device=None) -> torch.Tensor:
    """Flat pixel indices [L, k * k] of the ``k x k`` patches of an ``h x w`` image on the grid of step ``stride``
    (row-major within the patch, as ``torch.nn.functional.unfold``)."""
    ys = torch.tensor(_positions(h, k, stride), device=device)
    xs = torch.tensor(_positions(w, k, stride), device=device)
    d = torch.arange(k, device=device)
    rows = (ys[:, None, None, None] + d[None, None, :, None]) * w  # [Ly, 1, k, 1]
    cols = xs[None, :, None, None] + d[None, None, None, :]  # [1, Lx, 1, k]
    return (rows + cols).reshape(len(ys) * len(xs), k * k)


def extract(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Patches [B, L, C * k * k] of images ``x`` [B, C, h, w] at the indices ``idx`` [L, k * k] (channel-major)."""
    B, C = x.shape[:2]
    p = x.reshape(B, C, -1)[:, :, idx]  # [B, C, L, kk]
    return p.permute(0, 2, 1, 3).reshape(B, idx.shape[0], C * idx.shape[1])


def aggregate(patches: torch.Tensor, idx: torch.Tensor, shape: tuple[int, int, int],
              weights: torch.Tensor | None = None) -> torch.Tensor:
    """Images [B, C, h, w] whose pixels average the values ``patches`` [B, L, C * k * k] give them (the inverse of
    :func:`extract` where patches agree), weighted by ``weights`` [k * k] over the positions in a patch (None:
    equal weights)."""
    C, h, w = shape
    B, L = patches.shape[:2]
    vals = patches.reshape(B, L, C, -1)
    if weights is not None:
        vals = vals * weights.to(vals.dtype)
    vals = vals.permute(0, 2, 1, 3).reshape(B, C, -1)
    flat = idx.reshape(-1)
    total = torch.zeros(B, C, h * w, dtype=patches.dtype, device=patches.device).index_add_(2, flat, vals)
    if weights is None:
        count = torch.bincount(flat, minlength=h * w).to(patches.dtype)
    else:
        count = torch.bincount(flat, weights=weights.to(torch.float64).repeat(L), minlength=h * w).to(patches.dtype)
    return (total / count).reshape(B, C, h, w)


def gaussian_window(k: int, width: float | None) -> torch.Tensor | None:
    """Gaussian weights [k * k] of the positions of a ``k x k`` patch around its centre, standard deviation
    ``width`` pixels (None or 0: equal weights)."""
    if not width:
        return None
    d = torch.arange(k, dtype=torch.float64) - (k - 1) / 2
    g = torch.exp(-d ** 2 / (2 * width ** 2))
    return (g[:, None] * g[None, :]).reshape(-1)


class PatchLists:
    """Inverted lists over the source patches, for large scales. k-means (Lloyd, ``iterations`` rounds from
    ``lists`` random rows, fitted on at most ``FIT_ROWS_PER_LIST`` random rows per list, then every row assigned to
    its nearest centroid ``mu_c``) splits the rows into lists. A query ``y``'s posterior is computed exactly over
    the rows of its ``nprobe`` lists whose centroids are nearest to it in the posterior's own metric
    (``|y - alpha mu_c|``); the other lists' posterior mass is dropped, so this is an approximation, and
    :class:`PatchPosteriorDenoiser` measures its error on every call.

    Each list holds its rows ``p = mu_c + r`` as residuals ``r`` from its centroid, and a (query, list) pair's
    logits are ``-c |y' - alpha r|^2`` with ``y' = y - alpha mu_c`` and ``c = 1 / (2 sigma^2)``: expanded into one
    float32 matrix product per list, ``c (2 alpha y'.r - alpha^2 |r|^2)``, plus ``-c |y'|^2`` once per pair. The
    residuals are short (a list's rows are close to its centroid), so the float32 rounding of the product, of
    order ``u sqrt(D) c (|y'| + alpha |r|)^2``, is far below that of the uncentred form. Every pair keeps its
    own softmax statistics (maximum, sum, weighted sum of rows; Milakov & Gimelshein 2018's online softmax), and
    the ``nprobe`` pairs of each query merge in one vectorised step.
    """

    def __init__(self, rows: torch.Tensor, *, lists: int, iterations: int = 6, seed: int = 0):
        N, device = len(rows), rows.device
        lists = max(1, min(lists, N))
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(N, generator=g).to(device)
        fit = rows[perm[:min(N, FIT_ROWS_PER_LIST * lists)]]
        mu = fit[:lists].clone()
        for _ in range(iterations):
            assign = _nearest_centroid(fit, mu)
            count = torch.bincount(assign, minlength=lists)
            total = torch.zeros_like(mu).index_add_(0, assign, fit)
            keep = count > 0
            mu[keep] = total[keep] / count[keep, None].to(mu.dtype)
        assign = _nearest_centroid(rows, mu)
        count = torch.bincount(assign, minlength=lists)
        keep = count > 0
        mu, count = mu[keep], count[keep]
        assign = (torch.cumsum(keep.long(), 0) - 1)[assign]  # renumbered without the empty lists
        order = torch.argsort(assign, stable=True)
        # [N, D + 1], list by list, with a column of ones: one product gives a pair's weighted sum and its normaliser
        self.rows = torch.cat([rows[order], rows.new_ones(N, 1)], 1)
        self.mu = mu.contiguous()  # [lists, D]
        self.mu_sq = (mu * mu).sum(1)
        self.residuals = (rows[order] - mu[assign[order]]).contiguous()
        self.res_sq = (self.residuals.double() ** 2).sum(1).float()
        self.bounds = [0] + torch.cumsum(count, 0).tolist()
        self.dim = rows.shape[1]

    def __len__(self) -> int:
        return len(self.residuals)

    @property
    def n_lists(self) -> int:
        return len(self.mu)

    def mean(self, q: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, *, nprobe: int = NPROBE) -> torch.Tensor:
        """Posterior means [Q, D] over the ``nprobe`` nearest lists of each query ``q`` [Q, D] at per-query
        ``alpha``, ``sigma`` [Q] (in blocks of about ``PAIR_BLOCK`` (query, list) pairs)."""
        nprobe = min(nprobe, self.n_lists)
        a = alpha.to(q.device, torch.float64)
        c = (0.5 / sigma.to(q.device, torch.float64) ** 2).clamp(max=C_MAX)  # sigma -> 0: the nearest rows
        step = max(1, PAIR_BLOCK // nprobe)
        return torch.cat([self._mean(q[i:i + step], a[i:i + step], c[i:i + step], nprobe)
                          for i in range(0, len(q), step)])

    def _mean(self, q: torch.Tensor, a: torch.Tensor, c: torch.Tensor, nprobe: int) -> torch.Tensor:
        Q, D, device = len(q), self.dim, q.device
        a32 = a.float()[:, None]
        d = -2 * a32 * (q @ self.mu.T) + a32 ** 2 * self.mu_sq[None]  # |q - alpha mu|^2 - |q|^2
        probe = d.topk(nprobe, dim=1, largest=False).indices.reshape(-1)  # [Q * nprobe], query-major
        order = torch.argsort(probe, stable=True)  # the pairs (query, list), list by list
        pair_q, probe = torch.div(order, nprobe, rounding_mode="floor"), probe[order]
        counts = torch.bincount(probe, minlength=self.n_lists).tolist()
        # per pair: y' = y - alpha mu_c, scaled by 2 alpha c for the product; -c |y'|^2, the pair's own term
        a_p, c_p = a[pair_q], c[pair_q]
        y = q[pair_q].sub_(a32[pair_q] * self.mu[probe])
        base = -c_p * (y * y).sum(1, dtype=torch.float64)
        y.mul_((2 * a_p * c_p).float()[:, None])
        aac = (a_p * a_p * c_p).float()[:, None]
        top = torch.empty(len(order), device=device)
        acc = torch.empty(len(order), D + 1, device=device)  # weighted sums of rows, and of the weights
        pos = 0
        for ci, n_c in enumerate(counts):
            if not n_c:
                continue
            sl, r0, r1 = slice(pos, pos + n_c), self.bounds[ci], self.bounds[ci + 1]
            pos += n_c
            l = torch.mm(y[sl], self.residuals[r0:r1].T)  # 2 alpha c y'.r
            l.addcmul_(aac[sl], self.res_sq[r0:r1][None], value=-1.0)  # - alpha^2 c |r|^2
            torch.amax(l, 1, out=top[sl])
            w = torch.exp_(l.sub_(top[sl, None]).clamp_(min=EXP_FLOOR))
            torch.mm(w, self.rows[r0:r1], out=acc[sl])
        # the merge of the pairs of each query: weights relative to the query's largest logit
        m_pair = top.double() + base
        m = torch.full((Q,), -math.inf, dtype=torch.float64, device=device).scatter_reduce_(0, pair_q, m_pair, "amax")
        acc.mul_(torch.exp(m_pair - m[pair_q]).float()[:, None])
        total = torch.zeros(Q, D + 1, device=device).index_add_(0, pair_q, acc)
        return total[:, :D] / total[:, D:]


def _nearest_centroid(rows: torch.Tensor, mu: torch.Tensor, *, block: int = 8192) -> torch.Tensor:
    """Index [N] of the nearest centroid ``mu`` [K, D] of each row [N, D] (float32 products, in blocks)."""
    mu_sq = (mu * mu).sum(1)[None]
    return torch.cat([torch.addmm(mu_sq, rows[i:i + block], mu.T, alpha=-2).argmin(1)
                      for i in range(0, len(rows), block)])


class PatchPosteriorDenoiser:
    """The exact posterior over the patches of one source image, aggregated over overlapping patches.

    ``x0_hat(x)[q] = mean over patches P covering pixel q of E[p | x[P]][q]``, where ``E[p | y] = sum_i w_i p_i``,
    ``w = softmax(-|y - alpha p_i|^2 / (2 sigma^2))`` over the ``k x k`` patches ``p_i`` of ``source`` (every
    ``source_stride``-th position). Queries ``x`` [B, C, h, w] may have any ``h, w >= k`` (the output size is free).
    With ``window`` the mean over the covering patches is weighted by a Gaussian of the pixel's distance to each
    patch's centre (:func:`gaussian_window`), so that a pixel takes its value mostly from the patches centred near
    it (less averaging of patches that disagree: sharper samples).

    Args:
        source: [C, H, W] with ``H, W >= patch_size``.
        patch_size: ``k``.
        stride: step of the grid of query patches (1: every patch; larger: fewer posteriors, each pixel still
            covered at least once).
        source_stride: step of the grid of source patches (the dataset; 1: all patches).
        chunk_size: rows per step of the bank loop.
        fast_delta: the bank's tier-1 threshold on the float32 logit error bound (nats; weights within
            ``e^(2 fast_delta)`` of exact; :data:`boneless.patches.PATCH_FAST_DELTA` as for the other patch
            denoisers).
        search: ``"exact"`` (every source patch), ``"ivf"`` (:class:`PatchLists`: the ``nprobe`` nearest of about
            ``sqrt(N)`` inverted lists, an approximation whose error on ``CHECK_QUERIES`` random query patches
            per call, against the exact posterior, is kept in :attr:`errors`) or ``"auto"`` (``ivf`` above
            ``IVF_ROWS`` source patches).
        nprobe: lists searched per query patch (``ivf``; at least enough lists for ``PROBE_ROWS`` rows).
        window: standard deviation in pixels of the Gaussian weights of the aggregation (None or 0: the plain
            mean over the covering patches).
        device: where the bank lives and the posteriors are computed.
    """

    def __init__(self, source: torch.Tensor, *, patch_size: int = PATCH_SIZE, stride: int = 1,
                 source_stride: int = 1, chunk_size: int = 4096, fast_delta: float = PATCH_FAST_DELTA,
                 search: Search = "exact", nprobe: int = NPROBE, window: float | None = None,
                 device: torch.device | str | None = None):
        if source.ndim != 3:
            raise ValueError(f"source must be [C, H, W], got shape {list(source.shape)}")
        for name, v in (("patch_size", patch_size), ("stride", stride), ("source_stride", source_stride)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        C, H, W = source.shape
        if patch_size > min(H, W):
            raise ValueError(f"patch size {patch_size} exceeds the source ({H} x {W})")
        self.device = torch.device(device) if device is not None else source.device
        self.k, self.stride, self.channels = patch_size, stride, C
        self.source = source.to(self.device, torch.float32)
        rows = extract(self.source[None], patch_index(H, W, patch_size, source_stride, self.device))[0]
        self.bank = Bank(rows, chunk_size=chunk_size, device=self.device, fast_delta=fast_delta)
        if search not in ("auto", "exact", "ivf"):
            raise ValueError(f"search must be 'auto', 'exact' or 'ivf', got {search!r}")
        if isinstance(nprobe, bool) or not isinstance(nprobe, int) or nprobe < 1:
            raise ValueError(f"nprobe must be a positive integer, got {nprobe!r}")
        self.nprobe = nprobe
        self.lists = None
        if search == "ivf" or (search == "auto" and len(rows) > IVF_ROWS):
            self.lists = PatchLists(rows, lists=max(1, round(math.sqrt(len(rows)))))
        self.weights = gaussian_window(patch_size, window)
        self.errors: list[torch.Tensor] = []  # per call (ivf): relative L2 errors of checked posterior means
        self._check = torch.Generator().manual_seed(0)
        self._index = {}

    def index(self, h: int, w: int) -> torch.Tensor:
        if (h, w) not in self._index:
            self._index[(h, w)] = patch_index(h, w, self.k, self.stride, self.device)
        return self._index[(h, w)]

    def __call__(self, x: torch.Tensor, alpha, sigma) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.channels or min(x.shape[2:]) < self.k:
            raise ValueError(f"x must be [B, {self.channels}, h, w] with h, w >= {self.k}, got {list(x.shape)}")
        B, C, h, w = x.shape
        idx = self.index(h, w)
        a = torch.as_tensor(alpha, dtype=torch.float64).expand(B).to(self.device)
        s = torch.as_tensor(sigma, dtype=torch.float64).expand(B).to(self.device)
        q = extract(x.to(self.device, torch.float32), idx)  # [B, L, D]
        L = q.shape[1]
        q, a, s = q.reshape(B * L, -1), a.repeat_interleave(L), s.repeat_interleave(L)
        if self.lists is None:
            m = _reduce_mean(self.bank, q, a, s)
        else:
            nprobe = max(self.nprobe, math.ceil(PROBE_ROWS * self.lists.n_lists / len(self.lists)))
            m = self.lists.mean(q, a, s, nprobe=nprobe)
            pick = torch.randperm(len(q), generator=self._check)[:CHECK_QUERIES].to(self.device)
            exact = _reduce_mean(self.bank, q[pick], a[pick], s[pick]).double()
            err = (m[pick].double() - exact).norm(dim=1) / exact.norm(dim=1).clamp(min=1e-12)
            self.errors.append(err.cpu())
        return aggregate(m.reshape(B, L, -1), idx, (C, h, w), self.weights).to(x.device, x.dtype)

    def nearest(self, x: torch.Tensor) -> torch.Tensor:
        """The aggregated nearest source patch of every query patch (the ``sigma -> 0`` limit of the posterior
        mean; classical patch nearest-neighbour reshuffling, e.g. GPNN, Granot et al. 2022)."""
        B, C, h, w = x.shape
        idx = self.index(h, w)
        q = extract(x.to(self.device, torch.float32), idx).reshape(-1, self.bank.dim)
        j = nearest_rows(q, self.bank)
        return aggregate(self.bank.X[j].reshape(B, len(idx), -1), idx, (C, h, w)).to(x.device, x.dtype)


def nearest_rows(q: torch.Tensor, bank: Bank, *, block: int = 1 << 24) -> torch.Tensor:
    """Index [Q] of the nearest row of ``bank`` to each query row ``q`` [Q, D] (Euclidean; float32 products)."""
    best_d = torch.full((len(q),), math.inf, device=bank.device)
    best_i = torch.zeros(len(q), dtype=torch.long, device=bank.device)
    step = max(1, block // max(1, min(bank.chunk_size, len(bank))))
    for i in range(0, len(q), step):
        qi = q[i:i + step]
        for j0 in range(0, len(bank), bank.chunk_size):
            rows = bank.rows(j0, j0 + bank.chunk_size)
            d = bank.sq_norms[j0:j0 + len(rows)][None] - 2 * qi @ rows.T  # |q - x|^2 - |q|^2
            v, j = d.min(1)
            better = v < best_d[i:i + step]
            best_d[i:i + step] = torch.where(better, v, best_d[i:i + step])
            best_i[i:i + step] = torch.where(better, j + j0, best_i[i:i + step])
    return best_i


# ---------------------------------------------------------------- pyramid and sampling

def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of [B, C, h, w] to ``size`` (antialiased when shrinking)."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    shrink = size[0] < x.shape[2] or size[1] < x.shape[3]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)


def default_scales(H: int, W: int, *, patch_size: int = PATCH_SIZE, factor: float = FACTOR,
                   coarsest: int = COARSEST) -> int:
    """Scales such that the coarsest source's short side is about ``max(coarsest, patch_size + 2)`` pixels."""
    side = max(coarsest, patch_size + 2)
    return 1 + max(0, math.floor(math.log(min(H, W) / side) / math.log(factor) + 0.5))


def pyramid(H: int, W: int, scales: int, factor: float) -> list[tuple[int, int]]:
    """Sizes coarsest -> finest: ``(H, W) / factor^(scales - 1 - s)``, rounded (the finest is ``(H, W)``)."""
    return [(max(1, round(H / factor ** (scales - 1 - s))), max(1, round(W / factor ** (scales - 1 - s))))
            for s in range(scales)]


class Result(NamedTuple):
    """``samples`` [n, C, h, w] in the source's units; ``seconds`` per scale; ``sizes`` of the source and output
    pyramids; ``start_noise`` and ``steps`` per scale; ``errors`` per scale: the relative L2 errors of the checked
    patch posterior means where inverted lists were searched (None where the search was exact)."""

    samples: torch.Tensor
    seconds: list
    source_sizes: list
    output_sizes: list
    start_noise: list
    steps: list
    errors: list


def _check_settings(source, size, patch_size, scales, factor, start_noise, steps, stride, source_stride):
    C, H, W = source.shape
    for name, v in (("patch_size", patch_size), ("steps", steps), ("stride", stride),
                    ("source_stride", source_stride)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor > 1):
        raise ValueError(f"the scale factor must be a number > 1, got {factor!r}")
    if patch_size > min(H, W):
        raise ValueError(f"patch size {patch_size} exceeds the source ({H} x {W})")
    if scales is None:
        scales = default_scales(H, W, patch_size=patch_size, factor=factor)
    if isinstance(scales, bool) or not isinstance(scales, int) or scales < 1:
        raise ValueError(f"scales must be a positive integer, got {scales!r}")
    size = (H, W) if size is None else tuple(int(v) for v in size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be two positive integers (height, width), got {size!r}")
    src = pyramid(H, W, scales, factor)
    out = [(max(1, round(size[0] * h / H)), max(1, round(size[1] * w / W))) for h, w in src]
    if min(src[0]) < patch_size:
        raise ValueError(f"{scales} scales make the coarsest source {src[0][0]} x {src[0][1]}, smaller than the "
                         f"{patch_size} x {patch_size} patch: use fewer scales or a smaller patch")
    if min(out[0]) < patch_size:
        raise ValueError(f"the output {size[0]} x {size[1]} is {out[0][0]} x {out[0][1]} at the coarsest scale, "
                         f"smaller than the {patch_size} x {patch_size} patch: use fewer scales or a larger size")
    if isinstance(start_noise, (int, float)):
        start_noise = [1.0] + [float(start_noise)] * (scales - 1)
    else:
        start_noise = [float(v) for v in start_noise]
        if len(start_noise) == scales - 1:
            start_noise = [1.0] + start_noise
        if len(start_noise) != scales:
            raise ValueError(f"give one start noise for every scale after the coarsest ({scales - 1}), one for every "
                             f"scale ({scales}), or a single number; got {len(start_noise)}")
    if any(not (math.isfinite(t) and 0 < t <= 1) for t in start_noise):
        raise ValueError(f"start noise levels must lie in (0, 1], got {start_noise}")
    return scales, size, src, out, start_noise


def standardise(source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(source - mean_c) / std``, the per-channel means [C, 1, 1] and the std (1 for a constant source)."""
    mean = source.double().mean((1, 2), keepdim=True)
    std = float((source.double() - mean).pow(2).mean().sqrt())
    std = std if std > 0 else 1.0
    return ((source.double() - mean) / std).float(), mean.float(), std


def generate(source: torch.Tensor, *, size: Sequence[int] | None = None, n: int = 4, patch_size: int = PATCH_SIZE,
             scales: int | None = None, factor: float = FACTOR, start_noise: float | Sequence[float] = START_NOISE,
             steps: int = STEPS, stride: int = 3, source_stride: int = 1, search: Search = "auto",
             nprobe: int = NPROBE, window: float | None = WINDOW, sampler: Sampler = SAMPLER, seed: int = 0,
             device: torch.device | str = "cpu",
             progress: bool = False) -> Result:
    """``n`` samples of size ``size`` (default: the source's) from the patches of ``source`` [C, H, W].

    Coarse to fine over ``scales`` scales (default :func:`default_scales`) of ratio ``factor``: the coarsest scale
    runs ``sampler`` on the rectified flow from pure noise (t = 1) with :class:`PatchPosteriorDenoiser` over the
    coarsest source; scale ``s`` upsamples the previous result ``u`` to its size, sets ``x = (1 - t_s) u + t_s eps``
    with ``t_s = start_noise[s]`` and runs from ``t_s`` to 0 over the source's patches at that scale, in
    ``ceil(steps t_s)`` steps. ``start_noise``: one ``t`` for all scales after the coarsest, or a list for them (or
    for all scales, the first being the coarsest's). ``window``: the Gaussian aggregation weights of
    :class:`PatchPosteriorDenoiser`. Randomness comes from ``seed`` only."""
    if source.ndim != 3 or not source.is_floating_point() or not bool(torch.isfinite(source).all()):
        raise ValueError("source must be a finite floating-point tensor [C, H, W]")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}: choose one of {', '.join(SAMPLERS)}")
    if window is not None and not (isinstance(window, (int, float)) and math.isfinite(window) and window >= 0):
        raise ValueError(f"window must be a number >= 0 (pixels) or None, got {window!r}")
    scales, size, src, out, start_noise = _check_settings(source, size, patch_size, scales, factor, start_noise,
                                                          steps, stride, source_stride)
    device = torch.device(device)
    z_src, mean, std = standardise(source)
    z_src = z_src.to(device)
    schedule = get_schedule("rectified-flow")
    generator = torch.Generator().manual_seed(int(seed))
    n_steps = [max(1, math.ceil(steps * t - 1e-9)) for t in start_noise]
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=sum(n_steps), desc="single-image", unit="step")
    seconds, errors, x = [], [], None
    try:
        for s in range(scales):
            t0 = time.perf_counter()
            ref = resize(z_src[None], src[s])[0]
            den = PatchPosteriorDenoiser(ref, patch_size=patch_size, stride=stride, source_stride=source_stride,
                                         search=search, nprobe=nprobe, window=window, device=device)
            noise = torch.randn((n, z_src.shape[0], *out[s]), generator=generator).to(device)
            t = start_noise[s]
            x = noise if x is None else (1 - t) * resize(x, out[s]) + t * noise
            ts = time_grid(schedule, n_steps[s], t_max=t)
            callback = None if bar is None else (lambda info, s=s: (bar.set_postfix_str(f"scale {s + 1}/{scales}"),
                                                                    bar.update(1)))
            x = SAMPLERS[sampler](den, schedule, x, ts, generator=generator, callback=callback)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds.append(time.perf_counter() - t0)
            errors.append(torch.cat(den.errors) if den.errors else None)
    finally:
        if bar is not None:
            bar.close()
    samples = (x.cpu().double() * std + mean.double()).float()
    return Result(samples, seconds, src, out, start_noise, n_steps, errors)


def nearest_patch_reshuffle(source: torch.Tensor, *, size: Sequence[int] | None = None, n: int = 4,
                            patch_size: int = PATCH_SIZE, scales: int | None = None, factor: float = FACTOR,
                            iterations: int = 3, stride: int = 1, seed: int = 0,
                            device: torch.device | str = "cpu") -> torch.Tensor:
    """The classical baseline: coarse-to-fine patch nearest-neighbour reshuffling in the manner of GPNN (Granot et
    al., "Drop the GAN", CVPR 2022), without a network or a posterior. The coarsest output starts from Gaussian
    noise (standardised units, like our samples; GPNN's own start, the coarse source plus noise, snaps back to the
    source here); at each scale ``iterations`` times every patch is replaced by its nearest source patch and
    overlapping patches are averaged; the result is upsampled to the next scale. Returns samples [n, C, h, w] in
    the source's units."""
    scales, size, src, out, _ = _check_settings(source, size, patch_size, scales, factor, 1.0, 1, stride, 1)
    device = torch.device(device)
    z_src, mean, std = standardise(source)
    z_src = z_src.to(device)
    generator = torch.Generator().manual_seed(int(seed))
    x = torch.randn((n, z_src.shape[0], *out[0]), generator=generator).to(device)
    for s in range(scales):
        den = PatchPosteriorDenoiser(resize(z_src[None], src[s])[0], patch_size=patch_size, stride=stride,
                                     device=device)
        x = resize(x, out[s])
        for _ in range(iterations):
            x = den.nearest(x)
    return (x.cpu().double() * std + mean.double()).float()


def random_shifts(source: torch.Tensor, *, size: Sequence[int] | None = None, n: int = 4,
                  seed: int = 0) -> torch.Tensor:
    """The trivial copy: the source, circularly shifted by a random offset and cropped (or tiled) to ``size``."""
    C, H, W = source.shape
    h, w = (H, W) if size is None else size
    generator = torch.Generator().manual_seed(int(seed))
    out = []
    for _ in range(n):
        dy, dx = (int(v) for v in torch.randint(0, 1 << 30, (2,), generator=generator))
        rows = (torch.arange(h) + dy) % H
        cols = (torch.arange(w) + dx) % W
        out.append(source[:, rows[:, None], cols[None, :]])
    return torch.stack(out)


# ---------------------------------------------------------------- measurements

def copy_share(sample: torch.Tensor, source: torch.Tensor, *, patch_size: int = PATCH_SIZE,
               tolerance: float | None = None, max_patches: int = 4096, seed: int = 0,
               value_range: float | None = None) -> float:
    """Share of the ``k x k`` patches of ``sample`` [C, h, w] that are verbatim copies of a ``k x k`` patch of
    ``source`` [C, H, W]: root-mean-square difference to the nearest source patch at most ``tolerance`` (default:
    one 8-bit grey level, ``value_range / 255``, with ``value_range`` 2 for images in [-1, 1] and the source's
    max - min otherwise). At most ``max_patches`` sample patches, drawn at random positions (``seed``)."""
    C, h, w = sample.shape
    if value_range is None:
        value_range = float(source.max() - source.min()) or 1.0
    tol = value_range / 255 if tolerance is None else tolerance
    k = min(patch_size, h, w, *source.shape[1:])
    bank = Bank(extract(source[None].float(), patch_index(*source.shape[1:], k, 1))[0], chunk_size=4096)
    idx = patch_index(h, w, k, 1)
    if len(idx) > max_patches:
        idx = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(int(seed)))[:max_patches]]
    q = extract(sample[None].float(), idx)[0]
    j = nearest_rows(q, bank)
    rms = (q.double() - bank.X[j].double()).pow(2).mean(1).sqrt()  # exact distance to the chosen neighbour
    return float((rms <= tol).double().mean())


def diversity(samples: torch.Tensor, source: torch.Tensor) -> float:
    """SinGAN's diversity: the per-pixel standard deviation across samples, averaged over pixels and channels,
    divided by the standard deviation of the source's values."""
    if len(samples) < 2:
        return float("nan")
    per_pixel = samples.double().std(0, unbiased=False).mean()
    return float(per_pixel / source.double().std(unbiased=False).clamp(min=1e-12))


class RandomFeatures(torch.nn.Module):
    """A fixed random convolutional feature extractor (no training, no download): 3x3 conv (C -> 32), ReLU,
    3x3 conv (32 -> 64), ReLU, 2x2 average pool, 3x3 conv (64 -> 64), ReLU; He-normal weights from seed
    ``FEATURE_SEED``, zero biases. Each output location (receptive field 10 x 10 pixels) is one 64-d feature."""

    def __init__(self, channels: int, *, seed: int = FEATURE_SEED):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        shapes = [(32, channels), (64, 32), (64, 64)]
        self.weights = [torch.randn(o, i, 3, 3, generator=g, dtype=torch.float64) * math.sqrt(2 / (9 * i))
                        for o, i in shapes]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features [L, 64] of one image [C, h, w]."""
        w0, w1, w2 = (w.to(x.device) for w in self.weights)
        y = F.relu(F.conv2d(x[None].double(), w0))
        y = F.avg_pool2d(F.relu(F.conv2d(y, w1)), 2)
        y = F.relu(F.conv2d(y, w2))
        return y[0].flatten(1).T


def sifid(sample: torch.Tensor, source: torch.Tensor, *, seed: int = FEATURE_SEED) -> float:
    """Single-image FID (Shaham et al. 2019): the Frechet distance between Gaussian fits of the feature vectors of
    all locations of ``sample`` and of ``source`` ([C, h, w], the same units), with :class:`RandomFeatures` in place
    of Inception's first layers (which would need a download)."""
    from .metrics import frechet_distance
    net = RandomFeatures(source.shape[0], seed=seed)
    return frechet_distance(net(sample), net(source))


# ---------------------------------------------------------------- command line

def add_arguments(p: argparse.ArgumentParser) -> None:
    from .options import non_negative_float, positive_float, positive_int
    p.add_argument("image", metavar="IMAGE",
                   help="the source: an image file (PNG, JPEG, ...) or a .npy array [C, H, W] of any range (latents)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--size", type=positive_int, nargs=2, metavar=("H", "W"),
                   help="output height and width (default: the source's; any aspect ratio: retargeting)")
    p.add_argument("-n", "--num-samples", dest="n", type=positive_int, default=4, help="number of samples (default 4)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--patch-size", type=positive_int, default=PATCH_SIZE,
                   help=f"side of the patches whose posterior is computed (default {PATCH_SIZE})")
    p.add_argument("--scales", type=positive_int,
                   help=f"number of scales (default: down to a coarsest short side of about {COARSEST} px)")
    p.add_argument("--factor", type=positive_float, default=FACTOR,
                   help=f"ratio of consecutive scales (default {FACTOR:.4g})")
    p.add_argument("--start-noise", type=positive_float, nargs="+", default=[START_NOISE], metavar="T",
                   help="rectified-flow time t in (0, 1] at which each scale after the coarsest starts: one value for "
                        f"all, or one per scale (the coarsest always starts from noise, t = 1; default {START_NOISE})")
    p.add_argument("--steps", type=positive_int, default=STEPS,
                   help=f"sampler steps for a run from t = 1; a scale starting at t takes ceil(steps t) (default {STEPS})")
    p.add_argument("--stride", type=positive_int, default=3,
                   help="step between the query patches whose posteriors are averaged (1: every patch; default 3)")
    p.add_argument("--source-stride", type=positive_int, default=1,
                   help="step between the source patches that form the dataset (1: every patch, the default)")
    p.add_argument("--search", choices=("auto", "exact", "ivf"), default="auto",
                   help="posterior over every source patch (exact), over the nearest inverted lists (ivf: an "
                        f"approximation whose error is measured and reported), or ivf above {IVF_ROWS} source patches "
                        "(auto, the default)")
    p.add_argument("--nprobe", type=positive_int, default=NPROBE,
                   help=f"inverted lists searched per patch with ivf (default {NPROBE}; more: slower, closer to exact)")
    p.add_argument("--window", type=non_negative_float, default=WINDOW, metavar="PX",
                   help="overlapping patches are averaged with Gaussian weights of this std (pixels) around each "
                        f"patch's centre (0: plain mean, smoother; default {WINDOW:g})")
    p.add_argument("--sampler", choices=list(SAMPLERS), default=SAMPLER,
                   help=f"sampler (default {SAMPLER}: fresh noise at every step but the last)")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _display(x: torch.Tensor, kind: str, lo: float, hi: float) -> torch.Tensor:
    """Values in [-1, 1] for pictures: images as they are; arrays' first three channels (or one) scaled by the
    source's range ``lo, hi``."""
    if kind == "image":
        return x
    x = x[:, :3] if x.shape[1] >= 3 else x[:, :1]
    return (x - lo) / max(hi - lo, 1e-12) * 2 - 1


def run(args) -> int:
    from .options import torch_device
    from .outputs import atomic_path, check_output_dir, write_json
    from .plots import image_grid, samples_grid, save_image
    from . import __version__
    t_all = time.perf_counter()
    source, kind = load_source(args.image)
    out = Path(args.out)
    device = torch_device(args.device)
    start = args.start_noise[0] if len(args.start_noise) == 1 else list(args.start_noise)
    # every setting is checked (and the output folder tried) before the long work starts
    _check_settings(source, args.size, args.patch_size, args.scales, args.factor, start, args.steps, args.stride,
                    args.source_stride)
    check_output_dir(out, files=("samples.png", "report.json"))
    cpu0 = time.process_time()
    res = generate(source, size=args.size, n=args.n, patch_size=args.patch_size, scales=args.scales,
                   factor=args.factor, start_noise=start, steps=args.steps, stride=args.stride,
                   source_stride=args.source_stride, search=args.search, nprobe=args.nprobe, window=args.window,
                   sampler=args.sampler,
                   seed=args.seed, device=device, progress=not args.no_progress)
    t_gen, cpu_gen = sum(res.seconds), time.process_time() - cpu0
    t0 = time.perf_counter()
    value_range = 2.0 if kind == "image" else None
    shares = [copy_share(s, source, patch_size=args.patch_size, value_range=value_range, seed=args.seed)
              for s in res.samples]
    scores = [sifid(s, source) for s in res.samples]
    t_measure = time.perf_counter() - t0
    lo, hi = float(source.min()), float(source.max())
    shown = _display(res.samples, kind, lo, hi)
    src_shown = _display(source[None], kind, lo, hi)
    for i, s in enumerate(res.samples):
        save_image(image_grid([shown[i:i + 1]], min_width=0, pad=0), out / f"sample_{i:03d}.png")
        if kind == "array":
            with atomic_path(out / f"sample_{i:03d}.npy") as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, s.numpy())
    save_image(samples_grid(shown), out / "samples.png")
    save_image(_side_by_side(src_shown[0], shown), out / "side_by_side.png")
    report = {
        "version": __version__,
        "command": "single-image",
        "source": {"path": str(args.image), "kind": kind, "shape": list(source.shape)},
        "settings": {"size": list(res.samples.shape[2:]), "n": args.n, "seed": args.seed,
                     "patch_size": args.patch_size, "scales": len(res.seconds), "factor": args.factor,
                     "start_noise": res.start_noise, "steps": args.steps, "steps_per_scale": res.steps,
                     "stride": args.stride, "source_stride": args.source_stride, "search": args.search,
                     "nprobe": args.nprobe, "window": args.window, "sampler": args.sampler,
                     "schedule": "rectified-flow", "device": str(device),
                     "fast_delta": PATCH_FAST_DELTA},
        "pyramid": {"source": [list(v) for v in res.source_sizes], "output": [list(v) for v in res.output_sizes]},
        "timings": {"generate_s": round(t_gen, 4), "generate_cpu_s": round(cpu_gen, 4), "per_scale_s": [round(v, 4) for v in res.seconds],
                    "measure_s": round(t_measure, 4), "total_s": round(time.perf_counter() - t_all, 4)},
        "posterior_error": [None if e is None else {"checked": len(e), "max": float(e.max()), "mean": float(e.mean())}
                            for e in res.errors],
        "posterior_error_rule": f"per scale: relative L2 error of the inverted-list patch posterior mean against the "
                                f"exact one, on {CHECK_QUERIES} random query patches per step (null: exact search)",
        "diversity": diversity(res.samples, source),
        "diversity_rule": "mean over pixels of the per-pixel std across samples / std of the source (SinGAN)",
        "copy_share": shares,
        "copy_rule": f"share of {args.patch_size}x{args.patch_size} patches (at most 4096 random positions) whose RMS "
                     "difference to the nearest source patch is at most one 8-bit grey level (range / 255)",
        "sifid": scores,
        "sifid_features": f"fixed random conv net (3 layers, 64 features, seed {FEATURE_SEED}); "
                          "Frechet distance of location features, sample vs source",
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "device": str(device)},
    }
    write_json(report, out / "report.json")
    print(f"{args.n} samples of {res.samples.shape[2]} x {res.samples.shape[3]} from {args.image} in {t_gen:.2f} s "
          f"({len(res.seconds)} scales); diversity {report['diversity']:.3f}, copy share "
          f"{sum(shares) / len(shares):.3f}, SIFID {sum(scores) / len(scores):.4g}; wrote {out}/")
    return 0


def _side_by_side(source: torch.Tensor, samples: torch.Tensor):
    """The source beside the samples, one row, each at its own size (values in [-1, 1])."""
    from PIL import Image
    from .plots import to_uint8
    pad = 4
    ims = [to_uint8(source[None])[0]] + list(to_uint8(samples))
    height = max(a.shape[0] for a in ims)
    width = sum(a.shape[1] for a in ims) + pad * (len(ims) + 1)
    C = ims[0].shape[2]
    canvas = np.full((height + 2 * pad, width, C), 255, dtype=np.uint8)
    x0 = pad
    for a in ims:
        canvas[pad:pad + a.shape[0], x0:x0 + a.shape[1]] = a
        x0 += a.shape[1] + pad
    return Image.fromarray(canvas[..., 0] if C == 1 else canvas)
