"""`parzen-local` whose Parzen components keep only their R widest directions: docs/EVAL.md, "Fourteenth push".
Exploration only; score the samples with dev.py and parts.py, never against the eval's test images.

    python rank.py N SEED R[:SCALE] ...    # R: directions kept per component, of the 32 (32: the shipped
                                           # denoiser); SCALE: parzen's scale (shipped 1.5)

Each Parzen component spreads along the K = 32 principal directions of its neighbours' deviations. The narrow ones
carry the neighbours' fine differences (texture); here their variance is set to 0, so the component is the ridge's
isotropic Gaussian there (the rest of the mixture is computed as `ParzenDenoiser` computes it; its attribute is
replaced after the build). N samples from SEED (the noise of `boneless eval --seed SEED`) go down `heun-split` with
Heun, and are kept in R-N-SEED-rR.npy (R-N-SEED-rR-sSCALE.npy with a SCALE).
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from prototypes import pool, sample  # noqa: E402  (the pool, heun-split, the eval's start noise)

from boneless.composites import ParzenLocalDenoiser  # noqa: E402

n, seed = int(sys.argv[1]), int(sys.argv[2])
for spec in sys.argv[3:]:
    t0 = time.perf_counter()
    r, _, scale = spec.partition(":")
    r = int(r)
    # built by its class, outside boneless.memo.sharing(): its own members
    den = ParzenLocalDenoiser(pool, parzen={"scale": float(scale)} if scale else None)
    var = den.parzen.var  # [N, K], each row ascending (torch.linalg.eigh)
    var[:, :max(var.shape[1] - r, 0)] = 0.0
    sample(den, n, seed, f"R-{n}-{seed}-r{r}" + (f"-s{scale}" if scale else "") + ".npy", f"rank {spec}", t0)
