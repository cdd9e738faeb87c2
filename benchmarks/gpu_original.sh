#!/bin/bash
# One prepared run for a machine with a CUDA GPU (on the project's device machine: its image's python3 holds a CUDA
# torch; nothing is installed). From the repository root:
#     OUT=runs/gpu bash benchmarks/gpu_original.sh
# 1. exactness on CUDA: the exact denoiser with float32, TF32 and bf16 screens, and bf16 storage with rescoring,
#    against the float64 reference at D = 49152 over the noise levels (the same code path as on the CPU);
# 2. the original workload (N = 20000, D = 49152, 100 rectified-flow Euler steps) on the GPU: boneless bench
#    --preset original --device cuda (seconds per sample per batch size, fraction of the two-product limit, peak
#    memory, smalldiffusion beside it when importable).
# Figures go to docs/PERFORMANCE.md ("GPU"). About 5 minutes on one H200.
set -euo pipefail
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 - <<'PY' 2>&1 | tee "$OUT/cuda_exactness.txt"
import torch
from boneless import EmpiricalDenoiser
from boneless.bench import _coeffs, synthetic_images
from boneless.denoisers import exact_reference
X = synthetic_images(2000, (3, 128, 128), seed=0)
g = torch.Generator().manual_seed(1)
print("torch", torch.__version__, torch.cuda.get_device_name())
for screen in ("float32", "tf32", "bfloat16"):
    for storage, rescore in (("float32", 0), ("bfloat16", 64)):
        den = EmpiricalDenoiser(X, device="cuda", screen=screen, storage=storage, rescore=rescore)
        worst = 0.0
        for r in (0.01, 0.1, 0.43, 3.0, 19.0, 199.0):
            a, s = _coeffs(r)
            x0 = X[torch.randint(0, len(X), (8,), generator=g)].clone()
            x0[:2] = 0.5 * (X[:2] + X[2:4])  # near-ties
            x = a * x0 + s * torch.randn(x0.shape, generator=g)
            x[:2] = a * x0[:2]
            ref = exact_reference(X, x, a, s).double().flatten(1)
            y = den(x.cuda(), a, s).double().cpu().flatten(1)
            err = float(((y - ref).norm(dim=1) / ref.norm(dim=1)).max())
            worst = max(worst, err)
            print(f"screen {screen:8s} storage {storage:8s} rescore {rescore:3d} sigma/alpha {r:6g}: max rel err {err:.2e}")
        print(f"screen {screen} storage {storage}: worst {worst:.2e} (contract 1e-4)")
PY
python3 -m boneless bench --preset original --device cuda --data synthetic --batches 1 16 64 --out "$OUT/original" \
    2>&1 | tee "$OUT/original.txt"
