"""Local linear stacking of the `blend` members, fitted by least squares, scored on other images.

    python stack.py MEMBERS.pt [MEMBERS2.pt ...]

The files are members.py's (six estimates per level), or pilot.py's (one or two more). For each noise level: the
first half of the images fits, the second half scores, and the other way round (both figures reported), as MSE / MSE
of the `gaussian` member (the Wiener filter on the pool). Rows, each fitted per level by least squares (float64):
  NAME, alone   one estimate; a later one also in the first one's (`local-gaussian`'s) place in blend-own
  blend-own     `blend`'s own weights at this level (fitted on the pool's last 32 images, interpolated in log sigma)
  global        one weight per estimate (as `blend`), refitted on the fit half
  conv-k        each output pixel a linear combination of every estimate's k x k neighbourhood (k^2 weights per
                estimate, one bias), the same at every position; edges padded by replication
  binned        conv-3 fitted separately in four quantile bins of a per-pixel key (the members' spread, or the
                Wiener estimate): a piecewise-linear gate; also fitted on 32 images of the fit half, as `blend` is,
                and on the scored half itself: no aggregator of this form does better on those images
"""
import sys
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from boneless.composites import BlendDenoiser


def features(M, k):
    """[m, n, C, H, W] -> [n * H * W, m C k^2 + 1]: each pixel's k x k neighbourhood in every estimate, and 1."""
    m, n, c, H, W = M.shape
    r = k // 2
    P = F.pad(M.reshape(m * n, c, H, W), (r, r, r, r), mode="replicate").unfold(2, k, 1).unfold(3, k, 1)
    P = P.reshape(m, n, c, H, W, k * k).permute(1, 3, 4, 0, 2, 5).reshape(n * H * W, m * c * k * k)
    return torch.cat([P, torch.ones(len(P), 1, dtype=P.dtype)], 1)


def spread_key(M):
    """Per pixel: the standard deviation of the five estimates (the noisy input left out)."""
    return M[:5].std(0).reshape(-1)


def wiener_key(M):
    """Per pixel: the Wiener filter's estimate."""
    return M[4].reshape(-1)


def blend_weights(d, s):
    """`blend`'s weights at level ``s`` (its own interpolation, applied to the saved weights and levels)."""
    saved = SimpleNamespace(sigmas=d["sigmas_fit"], weights=d["weights"])
    return BlendDenoiser.weights_at(saved, torch.tensor([s], dtype=torch.float64))[0]


def main(paths):
    rows = {}
    for path in paths:
        d = torch.load(path)
        clean = d["clean"].double()
        n = len(clean)
        halves = [(slice(0, n // 2), slice(n // 2, n)), (slice(n // 2, n), slice(0, n // 2))]
        for s in [k for k in d if isinstance(k, float)]:
            M = d[s].double()
            wiener = [((M[4, b] - clean[b]) ** 2).mean().item() for _, b in halves]
            def score(est, b, j):
                return ((est - clean[b]) ** 2).mean().item() / wiener[j]
            w = blend_weights(d, s)
            r = {f"{d['members'][i]}, alone": [score(M[i, b], b, j) for j, (_, b) in enumerate(halves)]
                 for i in range(5)}
            r["blend-own"] = [score(torch.einsum("m,m...->...", w, M[:6, b]), b, j) for j, (_, b) in enumerate(halves)]
            for i in range(6, len(M)):  # a later estimate alone, and in the first one's place in `blend`
                r[f"{d['members'][i]}, alone"] = [score(M[i, b], b, j) for j, (_, b) in enumerate(halves)]
                r[f"{d['members'][i]}, in blend-own"] = [
                    score(torch.einsum("m,m...->...", w, torch.cat([M[i:i + 1, b], M[1:6, b]])), b, j)
                    for j, (_, b) in enumerate(halves)]
            for name, k in [("global", 0), ("conv-3", 3), ("conv-5", 5)]:
                out = []
                for j, (a, b) in enumerate(halves):
                    if k == 0:
                        A, t = M[:, a].reshape(len(M), -1).T, clean[a].reshape(-1)
                        c = torch.linalg.lstsq(A, t[:, None], driver="gelsd").solution[:, 0]
                        est = torch.einsum("m,m...->...", c, M[:, b])
                    else:
                        A, t = features(M[:, a], k), clean[a].reshape(-1)
                        c = torch.linalg.lstsq(A, t[:, None], driver="gelsd").solution[:, 0]
                        est = (features(M[:, b], k) @ c).reshape(clean[b].shape)
                    out.append(score(est, b, j))
                r[name] = out
            for name, key, n_fit in [("conv-3 x 4 bins of member spread", spread_key, n),
                                     ("conv-3 x 4 bins of Wiener value", wiener_key, n),
                                     ("the same, fitted on 32 images", wiener_key, 32),
                                     ("the same, fitted on the scored half itself (a bound)", wiener_key, 0)]:
                out = []
                for j, (a, b) in enumerate(halves):
                    a = b if n_fit == 0 else slice(a.start, min(a.stop, a.start + n_fit))
                    ka, kb = key(M[:, a]), key(M[:, b])
                    edges = torch.quantile(ka, torch.tensor([0.25, 0.5, 0.75], dtype=ka.dtype))
                    ba, bb = torch.bucketize(ka, edges), torch.bucketize(kb, edges)
                    A, t, Ab = features(M[:, a], 3), clean[a].reshape(-1), features(M[:, b], 3)
                    est = torch.empty(len(Ab), dtype=torch.float64)
                    for q in range(4):
                        c = torch.linalg.lstsq(A[ba == q], t[ba == q][:, None], driver="gelsd").solution[:, 0]
                        est[bb == q] = Ab[bb == q] @ c
                    out.append(score(est.reshape(clean[b].shape), b, j))
                r[name] = out
            rows[s] = r
    names = list(next(iter(rows.values())))
    print("| aggregator | " + " | ".join(f"sigma {s}" for s in sorted(rows)) + " |")
    print("|---|" + "---:|" * len(rows))
    for nm in names:
        print(f"| {nm} | " + " | ".join(f"{rows[s][nm][0]:.3f} / {rows[s][nm][1]:.3f}" for s in sorted(rows)) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
