# Exploration script of docs/EVAL.md, "Second push" (not part of the package). Run from the repository root.
import math, time, sys, torch
import boneless
from boneless.closed_form import GaussianDenoiser, GMMDenoiser
from boneless.metrics import denoising_error
torch.set_num_threads(1)
POOL, TEST = int(sys.argv[1]), int(sys.argv[2])
X = boneless.load_dataset("fashion-mnist", limit=POOL)
T = boneless.load_dataset("fashion-mnist", split="test")[:TEST]
SIG = [float(v) for v in sys.argv[3].split(",")]

class PatchGMM:
    def __init__(self, X, k=3, K=32, shift=0, nu=64.0, flip=False):
        if flip: X = torch.cat([X, X.flip(-1)])
        N, C, H, W = X.shape
        self.k = k; self.shape = (C, H, W); self.gmms = {}
        for i in range(H - k + 1):
            for j in range(W - k + 1):
                rows = []
                for di in range(-shift, shift + 1):
                    for dj in range(-shift, shift + 1):
                        ii, jj = i + di, j + dj
                        if 0 <= ii <= H - k and 0 <= jj <= W - k:
                            rows.append(X[:, :, ii:ii + k, jj:jj + k].reshape(N, -1))
                self.gmms[i, j] = GMMDenoiser(torch.cat(rows), components=K, shrinkage=nu, iterations=15)
    def __call__(self, x, alpha, sigma):
        B, C, H, W = x.shape; k = self.k
        tot = torch.zeros_like(x, dtype=torch.float64); cnt = torch.zeros(H, W, dtype=torch.float64)
        for (i, j), g in self.gmms.items():
            m = g(x[:, :, i:i + k, j:j + k].reshape(B, -1), alpha, sigma)
            tot[:, :, i:i + k, j:j + k] += m.double().reshape(B, C, k, k); cnt[i:i + k, j:j + k] += 1
        return (tot / cnt).float()

wien = denoising_error(GaussianDenoiser(X), T, SIG, seed=0).mse
for spec in sys.argv[4:]:
    kw = eval(f"dict({spec})"); t0 = time.time(); den = PatchGMM(X, **kw); t1 = time.time()
    m = denoising_error(den, T, SIG, seed=0).mse
    print(f"{spec:30s}", " ".join(f"{float(v):.3f}" for v in m / wien), f"build {t1-t0:.0f}s eval {time.time()-t1:.0f}s", flush=True)
