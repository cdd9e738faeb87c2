"""How much could exact pruning save the equivariant local score? The share of a patch bank that matters.

    OMP_NUM_THREADS=1 python els_prune.py

For noisy query patches (200 squares drawn from 20 unseen training images, 20000-20019, noised once, alpha = 1),
the share of the distinct interior training patches of the pool (training images 0-9999, every location) whose
logit lies within T nats of the largest: |q - p|^2 - min |q - p'|^2 < 2 sigma^2 T. A softmax that leaves out every
patch beyond T nats changes the posterior by at most (bank size) x e^-T of its mass: T = 30 keeps float32
exactness at these sizes (4.4M e^-30 = 4e-7), T = 20 keeps 1e-2. Any exact pruning (bounds from projections,
clusters, norms) must still compute at least this share of the logits exactly, and more, since its bounds are
looser than the truth this oracle uses. (The logits here leave out the bank's log count of each repeated patch,
which raises a few heavily repeated patches, such as the flat background, by up to log(count) nats.)
"""
import torch

from boneless.data import load_dataset
from boneless.rows import repeated_rows

X = load_dataset("fashion-mnist", split="train")
pool, imgs = X[:10000].float(), X[20000:20020].float()
gen = torch.Generator().manual_seed(0)
z = torch.randn(imgs.shape, generator=gen)
print("| side | sigma | training patches | distinct | share within 20 nats: mean / median / max | within 30 nats |")
print("|---:|---:|---:|---:|---|---|")
for k, sigmas in [(3, (0.2,)), (7, (0.5, 1.0))]:
    def squares(T):  # [n, 1, 28, 28] -> [n * (28 - k + 1)^2, k^2], the interior squares
        return T.unfold(2, k, 1).unfold(3, k, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, k * k)
    P = squares(pool)
    groups = repeated_rows(P)
    U = (P[groups[0]] if groups is not None else P).double()
    un = (U * U).sum(1)
    for s in sigmas:
        Q = squares(imgs + s * z)
        Q = Q[torch.randperm(len(Q), generator=gen)[:200]].double()
        shares = {T: [] for T in (20, 30)}
        for q in Q:
            d = un - 2 * U @ q + q @ q
            d = d - d.min()
            for T in shares:
                shares[T].append((d < 2 * s * s * T).double().mean().item())
        cells = []
        for T in shares:
            v = torch.tensor(shares[T])
            cells.append(f"{v.mean():.3f} / {v.median():.3f} / {v.max():.3f}")
        print(f"| {k} | {s} | {len(P)} | {len(U)} | " + " | ".join(cells) + " |", flush=True)
