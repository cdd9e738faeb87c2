"""NL-Bayes' second step with a better pilot: `local-gaussian`'s neighbours searched around the `blend` estimate.

    OMP_NUM_THREADS=1 python pilot.py MEMBERS.pt OUT.pt [blend|self] [OPTIONS]

`local-gaussian` (the registry's, on the pool, training images 0-9999) runs its second pass with the pilot
`blend`'s own estimate (its fitted weights on the saved members) instead of its own first pass; the result is
appended to the members as one more estimate, `local-gaussian, blend pilot`, for stack.py. With `self` the pilot
is `local-gaussian`'s own two-pass estimate (a third pass). OPTIONS: `local-gaussian`'s options for that pass, a
Python dict (e.g. "{'neighbours': 200}"). (Written out the same way, `local-gaussian`'s own two
passes give its answers exactly: 4 images at sigma 0.2.)
"""
import ast
import os
import sys
import time

import torch

from boneless.data import load_dataset
from boneless.registry import make_denoiser

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stack import blend_weights  # noqa: E402

src, out = sys.argv[1], sys.argv[2]
mode = sys.argv[3] if len(sys.argv) > 3 else "blend"
options = ast.literal_eval(sys.argv[4]) if len(sys.argv) > 4 else {}
d = torch.load(src)
pool = load_dataset("fashion-mnist", split="train")[:10000]
lg = make_denoiser("local-gaussian", pool, **options)
z = torch.randn(d["clean"].shape, generator=torch.Generator().manual_seed(0))  # members.py's draw
for s in [k for k in d if isinstance(k, float)]:
    t0 = time.time()
    M = d[s].double()
    pilot = (torch.einsum("m,m...->...", blend_weights(d, s), M[:6]) if mode == "blend"
             else M[0]).float()
    y = d["clean"] + s * z
    k = lg.patch_size(s)
    K = lg.neighbour_count(s)
    parts = []
    for b in range(0, len(y), 64):
        x = y[b:b + 64]
        a = torch.ones(len(x), dtype=torch.float64)
        sg = torch.full((len(x),), s, dtype=torch.float64)
        parts.append(lg._pass(x, x, a, sg, sg, k, K, pilot[b:b + 64]))
    d[s] = torch.cat([d[s], torch.cat(parts)[None].float()])
    print(f"sigma {s}: side {k}, K {K}, {time.time() - t0:.0f} s", flush=True)
name = "local-gaussian, blend pilot" if mode == "blend" else "local-gaussian, third pass"
d["members"] = tuple(d["members"]) + (name + (f", {options}" if options else ""),)
torch.save(d, out + ".tmp")
os.replace(out + ".tmp", out)
