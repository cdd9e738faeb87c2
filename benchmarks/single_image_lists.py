"""Inverted lists: time against error for one 256 x 256 sample (astronaut), single thread, side by side in one
process: about sqrt(N) lists probed 8 at a time (the default), sqrt(N) / 2 lists by 4, sqrt(N) / 4 by 2, and the
default again (docs/SINGLE_IMAGE.md):

    OMP_NUM_THREADS=1 python benchmarks/single_image_lists.py
"""
import time, torch, math
import boneless.single_image as si
import sys
from pathlib import Path
sys.path.insert(0, 'benchmarks')
from single_image import source_image
Path('/tmp/single_image_sources').mkdir(exist_ok=True)
src,_=si.load_source(source_image('astronaut', 256, Path('/tmp/single_image_sources')))
orig = si.PatchLists.__init__
def run(div, nprobe):
    def init(self, rows, *, lists, **kw):
        orig(self, rows, lists=max(1, round(lists / div)), **kw)
    si.PatchLists.__init__ = init
    c=time.process_time(); w=time.perf_counter()
    r=si.generate(src, n=1, seed=0, nprobe=nprobe)
    err=[(float(e.max()), float(e.mean())) for e in r.errors if e is not None]
    print(div, nprobe, 'cpu', round(time.process_time()-c,2), 'wall', round(time.perf_counter()-w,1), 'finest err', err[-1], flush=True)
for div, npb in ((1, 8), (2, 4), (4, 2), (1, 8)):
    run(div, npb)
