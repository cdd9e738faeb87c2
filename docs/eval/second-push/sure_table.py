# Exploration script of docs/EVAL.md, "Second push" (not part of the package). Run from the repository root.
import torch, boneless, sys
from boneless.metrics import noise_draw
from boneless.experts import simplex_quadratic
T = boneless.load_dataset("fashion-mnist", split="test")[:200].double()
SIG = [0.05, 0.1, 0.2, 0.5, 1.0]
z = noise_draw(tuple(T.shape), seed=0).double()
eps = torch.randn(T.shape, generator=torch.Generator().manual_seed(123)).double()
d = {}
for f in sys.argv[1].split(","):
    d.update(torch.load(f"runs/sure_{f}.pt"))
names = sys.argv[2].split(",")
n, D = len(T), T[0].numel()
def blocks(r):
    if r is None: return torch.ones(1, D, dtype=torch.float64)
    ids = ((torch.arange(28) // r)[:, None] * ((28 + r - 1) // r) + (torch.arange(28) // r)[None]).reshape(-1)
    return torch.nn.functional.one_hot(ids).T.double()
res = {}
for si, s in enumerate(SIG):
    x = T.reshape(n, -1); y = (T + s * z).reshape(n, -1); tau = 0.05 * s; e = eps.reshape(n, -1)
    F = torch.stack([d[m][0][si].double().reshape(n, -1) if m != "identity" else y for m in names])
    G = torch.stack([e * (d[m][1][si].double().reshape(n, -1) - d[m][0][si].double().reshape(n, -1)) / tau if m != "identity" else e * e for m in names])
    wien = ((d["gaussian"][0][si].double().reshape(n, -1) - x) ** 2).mean()
    row = [float(((F[i] - x) ** 2).mean() / wien) for i in range(len(names))]
    E = F.permute(1, 2, 0).reshape(-1, len(names)); w = torch.linalg.lstsq(E, x.reshape(-1, 1)).solution[:, 0]
    row.append(float(((E @ w - x.reshape(-1)) ** 2).mean() / wien))
    Rm = (F - y[None]).permute(1, 0, 2)
    for r in (None, 14, 7, 4):
        Bk = blocks(r)
        A = torch.einsum("bmd,rd,bnd->brmn", Rm, Bk, Rm); bv = s * s * torch.einsum("mbd,rd->brm", G, Bk)
        W = simplex_quadratic(A, bv); pp = torch.einsum("brm,rd->bmd", W, Bk)
        est = torch.einsum("bmd,mbd->bd", pp, F); row.append(float(((est - x) ** 2).mean() / wien))
    print(f"s={s}", " ".join(f"{v:.3f}" for v in row))
print("cols:", names, "oracle-fixed, SURE img, SURE r14, r7, r4")
