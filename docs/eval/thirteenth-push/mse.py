"""Five patch-posterior variants measured on held-out MSE / Wiener: docs/EVAL.md, "Thirteenth push". Exploration
only (not the package): plain torch, float32 softmax, on validation images (training images 10000-...), never test
images. Pool: training images 0-9999. One noise draw (seed 1), the same for every row of one sigma.

    python mse.py NVAL SIGMA IDEA SPEC...

IDEA and SPEC:
  fovea  "core,rings"      the local score machine (Kamb & Ganguli) on a foveated footprint: the pixels of a
                           core x core square around the pixel, then `rings` rings of 8 block means, each ring's
                           blocks 3 times the side of the last (core 3, rings 2: 9 pixels + 8 means of 3 x 3 + 8
                           of 9 x 9, 27 x 27 in all). Blocks are disjoint, each mean scaled by sqrt(pixels), so the
                           footprint is an orthonormal projection and the posterior is exact given it. rings 0: the
                           plain k x k machine. Output: the pixel's posterior mean.
  soft   "prec,resp,win"   patch posteriors with a query precision and response weights (Niedoba, Zwartsenberg
                           and Wood's FPMC axes) inside a win x win window centred on each pixel, clipped at the
                           image's edges: "hK" a hard K x K square, "gS" a Gaussian of sd S pixels, "1" the
                           centre alone. h11,h11,11 is PSPC-Square with centred squares.
  spin   "k;shifts"        PSPC (centred hard squares of side k) on the query shifted by each (di:dj) of
                           `shifts` (";" between them, e.g. 0:0;1:0), shifted back, averaged (cycle spinning)
  dc     "k,mode"          PSPC (squares inside the image, as the package's) with the square's prior split into
                           its mean and its mean-free shape: mode "joint" (the plain posterior), "fact" (mean and
                           shape from two independent posteriors over the same training squares)
  gknn   "k,K"             for each query the K training images nearest its Wiener estimate; for each k x k
                           square inside the image, the mean and covariance (+1e-4 I) of those K images' squares
                           and the square's posterior mean under that Gaussian; squares averaged per pixel
"""
import sys
import time

import torch

import boneless
from boneless.metrics import WienerFilter

N, H, W = 10000, 28, 28


def fovea(y, pool, sigma, spec):
    core, rings = map(int, spec.split(","))
    r = core // 2
    blocks, side = [(di, dj, 1) for di in range(-r, r + 1) for dj in range(-r, r + 1)], core
    for _ in range(rings):
        blocks += [(u * side - side // 2, v * side - side // 2, side) for u in (-1, 0, 1) for v in (-1, 0, 1)
                   if (u, v) != (0, 0)]
        side *= 3
    ii, jj = [t.reshape(-1) for t in torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")]

    def features(x):  # [n, H W, F]: each block's sum / sqrt(its pixels inside the image), per centre pixel
        P = torch.nn.functional.pad(x.double(), (1, 0, 1, 0)).cumsum(1).cumsum(2)
        cols = []
        for di, dj, s in blocks:
            i0, i1 = (ii + di).clamp(0, H), (ii + di + s).clamp(0, H)
            j0, j1 = (jj + dj).clamp(0, W), (jj + dj + s).clamp(0, W)
            c = ((i1 - i0) * (j1 - j0)).double()
            S = P[:, i1, j1] - P[:, i0, j1] - P[:, i1, j0] + P[:, i0, j0]
            cols.append(torch.where(c > 0, S / c.clamp(min=1).sqrt(), torch.zeros_like(S)))
        return torch.stack(cols, -1)

    Fq, Ft = features(y).permute(1, 0, 2), features(pool).permute(1, 0, 2).contiguous()  # [H W, n, F]
    Xt, sq = pool.reshape(len(pool), -1).double(), (Ft ** 2).sum(-1)
    out = torch.empty(len(y), H * W, dtype=torch.float64)
    for p0 in range(0, H * W, 64):
        p = slice(p0, min(H * W, p0 + 64))
        lg = (2 * torch.bmm(Fq[p], Ft[p].transpose(1, 2)) - sq[p, None]) / (2 * sigma ** 2)
        out[:, p] = torch.einsum("lbn,nl->bl", torch.softmax(lg, -1), Xt[:, p])
    return out.reshape(y.shape).float()


def _profile(spec, win):
    d = torch.arange(-(win // 2), win // 2 + 1, dtype=torch.float32)
    d2 = d[:, None] ** 2 + d[None, :] ** 2
    if spec == "1":
        return (d2 == 0).float()
    if spec[0] == "h":
        m = (d.abs() <= int(spec[1:]) // 2).float()
        return m[:, None] * m[None, :]
    return torch.exp(-d2 / (2 * float(spec[1:]) ** 2))


def soft(y, pool, sigma, spec):
    prec, resp, win = spec.split(",")
    win = int(win)
    r, B, n = win // 2, len(y), len(pool)
    wp, wr = _profile(prec, win).reshape(-1), _profile(resp, win).reshape(-1)
    pad = lambda t: torch.nn.functional.pad(t, (r, r, r, r))  # noqa: E731
    inside, Xp, Yp = pad(torch.ones(1, H, W))[0], pad(pool), pad(y)
    out, norm = torch.zeros(B, H + 2 * r, W + 2 * r), torch.zeros(H + 2 * r, W + 2 * r)
    for i in range(H):
        for j in range(W):
            m = inside[i:i + win, j:j + win].reshape(-1)
            sp = (wp * m).sqrt()
            kq, rw = sp > 0, wr * m
            kr = rw > 0
            Xw = Xp[:, i:i + win, j:j + win].reshape(n, -1)
            q = Yp[:, i:i + win, j:j + win].reshape(B, -1)[:, kq] * sp[kq]
            R = Xw[:, kq] * sp[kq]
            P = torch.softmax((2 * q @ R.T - (R * R).sum(1)) / (2 * sigma ** 2), 1)
            o = out[:, i:i + win, j:j + win].reshape(B, -1)
            o[:, kr] += (P @ Xw[:, kr]) * rw[kr]
            out[:, i:i + win, j:j + win] = o.reshape(B, win, win)
            c = norm[i:i + win, j:j + win].reshape(-1)
            c[kr] += rw[kr]
            norm[i:i + win, j:j + win] = c.reshape(win, win)
    return (out / norm.clamp(min=1e-30))[:, r:r + H, r:r + W]


def spin(y, pool, sigma, spec):
    k, shifts = spec.split(";", 1)
    acc, n = 0, 0
    for s in shifts.split(";"):
        a, b = map(int, s.split(":"))
        acc = acc + torch.roll(soft(torch.roll(y, (a, b), (1, 2)), pool, sigma, f"h{k},h{k},{k}"), (-a, -b), (1, 2))
        n += 1
    return acc / n


def dc(y, pool, sigma, spec):
    k, mode = spec.split(",")
    k = int(k)
    B, n, s2 = len(y), len(pool), 2 * sigma ** 2
    out, cnt = torch.zeros(B, H, W), torch.zeros(H, W)
    for i in range(H - k + 1):
        for j in range(W - k + 1):
            R, q = pool[:, i:i + k, j:j + k].reshape(n, -1), y[:, i:i + k, j:j + k].reshape(B, -1)
            if mode == "joint":
                est = torch.softmax((2 * q @ R.T - (R * R).sum(1)) / s2, 1) @ R
            else:
                mR, mq = R.mean(1, keepdim=True), q.mean(1, keepdim=True)
                Rs, qs = R - mR, q - mq
                shape = torch.softmax((2 * qs @ Rs.T - (Rs * Rs).sum(1)) / s2, 1) @ Rs
                est = shape + torch.softmax(-k * k * (mq - mR.T) ** 2 / s2, 1) @ mR
            out[:, i:i + k, j:j + k] += est.reshape(B, k, k)
            cnt[i:i + k, j:j + k] += 1
    return out / cnt


def gknn(y, pool, sigma, spec, wiener):
    k, K = map(int, spec.split(","))
    B, eye = len(y), torch.eye(k * k, dtype=torch.float64)
    nb = torch.cdist(wiener.reshape(B, -1).double(), pool.reshape(len(pool), -1).double()).topk(K, 1, largest=False).indices
    Xn, yd = pool[nb].double(), y.double()  # [B, K, H, W]
    out, cnt = torch.zeros(B, H, W, dtype=torch.float64), torch.zeros(H, W, dtype=torch.float64)
    for i in range(H - k + 1):
        for j in range(W - k + 1):
            S = Xn[:, :, i:i + k, j:j + k].reshape(B, K, -1)
            mu = S.mean(1)
            D = S - mu[:, None]
            C = D.transpose(1, 2) @ D / K + 1e-4 * eye
            q = yd[:, i:i + k, j:j + k].reshape(B, -1)
            est = mu + (C @ torch.linalg.solve(C + sigma ** 2 * eye, (q - mu)[..., None]))[..., 0]
            out[:, i:i + k, j:j + k] += est.reshape(B, k, k)
            cnt[i:i + k, j:j + k] += 1
    return (out / cnt).float()


if __name__ == "__main__":
    nval, sigma, idea = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
    X = boneless.load_dataset("fashion-mnist", limit=N + nval)[:, 0]
    pool, val = X[:N], X[N:N + nval]
    y = val + sigma * torch.randn(val.shape, generator=torch.Generator().manual_seed(1))
    one = torch.ones(len(y), dtype=torch.float64)
    wiener = WienerFilter(pool[:, None])(y[:, None], one, one * sigma)[:, 0]
    mse_w = ((wiener - val) ** 2).mean().item()
    for spec in sys.argv[4:]:
        t0 = time.perf_counter()
        args = (wiener,) if idea == "gknn" else ()
        d = {"fovea": fovea, "soft": soft, "spin": spin, "dc": dc, "gknn": gknn}[idea](y, pool, sigma, spec, *args)
        print(f"sigma {sigma} {idea} {spec}: {((d - val) ** 2).mean().item() / mse_w:.4f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
