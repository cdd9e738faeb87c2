"""One denoiser call at the finest scale of a 256 x 256 single-image run (astronaut, patch 7, stride 3), the exact
posterior over all 62,500 source patches against the inverted lists, side by side, single thread (docs/SINGLE_IMAGE.md):

    OMP_NUM_THREADS=1 python benchmarks/single_image_call.py
"""
import json, time, torch, sys
sys.path.insert(0, "benchmarks")
from single_image import source_image, timed
from pathlib import Path
Path("/tmp/single_image_sources").mkdir(exist_ok=True)
from boneless.single_image import PatchPosteriorDenoiser, load_source, standardise
torch.set_num_threads(1)
src, _ = load_source(source_image("astronaut", 256, Path("/tmp/single_image_sources")))
z, _, _ = standardise(src)
g = torch.Generator().manual_seed(0)
out = {}
for t in (0.35, 0.1):
    x = (1 - t) * z[None] + t * torch.randn(z[None].shape, generator=g)
    calls = {}
    for search in ("ivf", "exact"):
        den = PatchPosteriorDenoiser(z, patch_size=7, stride=3, search=search)
        y, wall, cpu = timed(lambda: den(x, 1 - t, t))
        calls[search] = (y, wall, cpu)
    ref = calls["exact"][0].double()
    rel = float((calls["ivf"][0].double() - ref).norm() / ref.norm())
    out[str(t)] = {"exact": {"wall_s": calls["exact"][1], "cpu_s": calls["exact"][2]},
                   "ivf": {"wall_s": calls["ivf"][1], "cpu_s": calls["ivf"][2]},
                   "relative_l2_error_of_x0_hat": rel}
    print(json.dumps(out[str(t)]), flush=True)
json.dump(out, open("docs/single_image/finest_call_256.json", "w"), indent=2)
