# Exploration script of docs/EVAL.md, "Second push" (not part of the package). Run from the repository root.
import math, time, sys, torch
import boneless
from boneless.closed_form import GaussianDenoiser, GMMDenoiser, kmeans, wiener_gain
from boneless.metrics import denoising_error
torch.set_num_threads(1)
POOL, TEST = int(sys.argv[1]), int(sys.argv[2])
X = boneless.load_dataset("fashion-mnist", limit=POOL)
T = boneless.load_dataset("fashion-mnist", split="test")[:TEST]
SIG = [0.05, 0.1, 0.2, 0.5, 1.0]

class PPCAMix:
    def __init__(self, X, K=64, q=50, nu=64.0, flip=False, seed=0):
        if flip:
            X = torch.cat([X, X.flip(-1)])
        X64 = X.reshape(len(X), -1).double()
        N, D = X64.shape
        _, lab = kmeans(X64, K, seed=seed)
        mu_all = X64.mean(0); Xc = X64 - mu_all; cov_all = Xc.T @ Xc / N
        mus, Us, lams, vs, lp = [], [], [], [], []
        for k in range(int(lab.max()) + 1):
            Xk = X64[lab == k]
            if len(Xk) == 0: continue
            mu = Xk.mean(0); Y = Xk - mu
            cov = (Y.T @ Y + nu * cov_all) / (len(Xk) + nu)
            lam, U = torch.linalg.eigh(cov); lam = lam.flip(0).clamp(min=0); U = U.flip(1)
            mus.append(mu); Us.append(U[:, :q]); lams.append(lam[:q]); vs.append(float(lam[q:].mean())); lp.append(math.log(len(Xk) / N))
        self.mu = torch.stack(mus); self.U = torch.stack(Us); self.lam = torch.stack(lams)
        self.v = torch.tensor(vs, dtype=torch.float64); self.lp = torch.tensor(lp, dtype=torch.float64); self.D = D; self.q = q
        self.shape = tuple(X.shape[1:])
    def __call__(self, x, alpha, sigma):
        a, s = float(alpha), float(sigma)
        x64 = x.reshape(len(x), -1).double()
        K = len(self.mu)
        logits = torch.empty(len(x), K, dtype=torch.float64); means = torch.empty(K, len(x), self.D, dtype=torch.float64)
        for k in range(K):
            y = x64 - a * self.mu[k]; z = y @ self.U[k]
            pv = a * a * self.lam[k] + s * s; rv = a * a * self.v[k] + s * s
            r2 = (y * y).sum(1) - (z * z).sum(1)
            logits[:, k] = self.lp[k] - 0.5 * ((z * z / pv).sum(1) + r2 / rv + pv.log().sum() + (self.D - self.q) * math.log(rv))
            g = a * self.lam[k] / pv; gr = a * self.v[k] / rv
            means[k] = self.mu[k] + (z * (g - gr)) @ self.U[k].T + gr * y
        r = torch.softmax(logits, 1)
        return torch.einsum("bk,kbd->bd", r, means).float().reshape(x.shape)

wien = denoising_error(GaussianDenoiser(X), T, SIG, seed=0).mse
def rep(name, den, t0):
    t1 = time.time(); m = denoising_error(den, T, SIG, seed=0).mse
    print(f"{name:40s}", " ".join(f"{float(v):.3f}" for v in m / wien), f"build {t1-t0:.0f}s eval {time.time()-t1:.0f}s", flush=True)
for spec in sys.argv[3:]:
    kw = eval(f"dict({spec})")
    t0 = time.time()
    if kw.pop("gmm", False):
        den = GMMDenoiser(X, **kw)
    else:
        den = PPCAMix(X, **kw)
    rep(spec, den, t0)
