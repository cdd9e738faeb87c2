#!/usr/bin/env bash
# Sample from a packed image folder LARGER than the memory given to the process (issue 6).
#
#   bash benchmarks/mmap_limit.sh            # defaults: 6500 RGB images 256x256 (1.19 GiB packed), limit 1 GiB
#   N=2000 LIMIT_MB=900 bash benchmarks/mmap_limit.sh     # smaller and quicker
#
# Steps: (1) make a folder of N synthetic PNG images (smooth shapes, so they compress like photos); (2) `boneless
# pack` it into one uint8 .npy; (3) under `prlimit --as` (an address-space limit: the whole process, torch
# included, must fit, so even mapping the file at once would fail), show that the data cannot be loaded in memory
# and that `boneless sample --mmap` still runs (its samples land exactly on training images); (4) on the first
# COMPARE_ROWS rows, check that the memory-mapped run under the limit and the in-memory run without one give
# identical samples (the full set as float32 plus the bank's float64 work does not fit this 23 GB machine).
#
# MALLOC_MMAP_THRESHOLD_ fixes glibc's mmap threshold: with its default dynamic threshold, freed chunk buffers
# stay in the heap, which an address-space limit counts (RSS does not). MALLOC_ARENA_MAX bounds per-thread arenas.
set -euo pipefail

N=${N:-6500}
SIZE=${SIZE:-256}
LIMIT_MB=${LIMIT_MB:-1024}
STEPS=${STEPS:-10}
CHUNK=${CHUNK:-32}
WORK=${WORK:-/tmp/boneless-mmap-limit}
COMPARE_ROWS=${COMPARE_ROWS:-1000}
LIMIT=$((LIMIT_MB * 1024 * 1024))
export MALLOC_MMAP_THRESHOLD_=131072 MALLOC_ARENA_MAX=2
mkdir -p "$WORK"
command -v prlimit >/dev/null || { echo "prlimit (util-linux) is needed" >&2; exit 1; }

echo "== 1. $N synthetic ${SIZE}x${SIZE} RGB images in $WORK/images"
python - "$WORK/images" "$N" "$SIZE" <<'EOF'
import sys
from pathlib import Path
import numpy as np
from PIL import Image

folder, n, size = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
folder.mkdir(exist_ok=True)
have = len(list(folder.glob("*.png")))
yy, xx = np.mgrid[0:size, 0:size] / size
g = np.random.default_rng(0)
for i in range(have, n):  # a colour gradient with two discs; reruns reuse what exists
    c = g.random((3, 3))
    img = c[0][:, None, None] * xx + c[1][:, None, None] * yy
    for _ in range(2):
        cx, cy, r = g.random(3) * [1, 1, 0.3] + [0, 0, 0.05]
        img = np.where(((xx - cx) ** 2 + (yy - cy) ** 2 < r * r)[None], g.random((3, 1, 1)), img)
    Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0)).save(folder / f"{i:06d}.png")
print(f"{n} images ({sum(p.stat().st_size for p in folder.glob('*.png')) / 2**20:.0f} MiB of PNG)")
EOF

echo "== 2. boneless pack"
if [ ! -f "$WORK/packed.npy" ]; then
  /usr/bin/env time -f "pack: %e s wall, max RSS %M KiB" boneless pack "$WORK/images" --out "$WORK/packed.npy" --size "$SIZE" --no-progress
fi
BYTES=$(stat -c %s "$WORK/packed.npy")
echo "packed file: $BYTES bytes ($((BYTES / 1048576)) MiB); address-space limit: $LIMIT bytes ($LIMIT_MB MiB)"
[ "$BYTES" -gt "$LIMIT" ] || { echo "the packed file is not larger than the limit: raise N" >&2; exit 1; }

echo "== 3a. under the limit, loading the data in memory fails (control)"
if prlimit --as=$LIMIT python -c "import boneless, sys; boneless.load_dataset(sys.argv[1], mmap=False)" "$WORK/packed.npy" 2>"$WORK/inmem.err"; then
  echo "unexpected: the in-memory load fit under the limit" >&2; exit 1
fi
echo "in-memory load failed as expected: $(tail -n 1 "$WORK/inmem.err")"

echo "== 3b. under the limit, boneless sample --mmap"
rm -rf "$WORK/limited"
/usr/bin/env time -f "limited run: %e s wall, max RSS %M KiB" prlimit --as=$LIMIT \
  boneless sample --data "$WORK/packed.npy" --mmap -n 4 --steps "$STEPS" --chunk-size "$CHUNK" --seed 0 \
  --out "$WORK/limited" --no-progress

python - "$WORK/limited/report.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print("samples vs training set: nearest distance", r["nearest_distance"], "final n_eff", r["final_n_eff"])
EOF

if [ "$COMPARE_ROWS" -gt 0 ]; then
  # The in-memory path needs the data as float32 (4x the file) plus the bank's float64 work on it, which does not
  # fit this machine at full size: compare on the first COMPARE_ROWS rows, limited + memory-mapped vs in memory.
  echo "== 4. first $COMPARE_ROWS rows: under the limit memory-mapped, and without a limit in memory"
  rm -rf "$WORK/limited-part" "$WORK/inmemory-part"
  prlimit --as=$LIMIT boneless sample --data "$WORK/packed.npy" --mmap --limit "$COMPARE_ROWS" -n 4 --steps "$STEPS" \
    --chunk-size "$CHUNK" --seed 0 --out "$WORK/limited-part" --no-progress
  boneless sample --data "$WORK/packed.npy" --no-mmap --limit "$COMPARE_ROWS" -n 4 --steps "$STEPS" \
    --chunk-size "$CHUNK" --seed 0 --out "$WORK/inmemory-part" --no-progress
  python - "$WORK" <<'EOF'
import json, sys
import numpy as np
w = sys.argv[1]
a, b = np.load(f"{w}/limited-part/samples.npz"), np.load(f"{w}/inmemory-part/samples.npz")
ra, rb = (json.load(open(f"{w}/{d}/report.json")) for d in ("limited-part", "inmemory-part"))
diff = float(np.abs(a["samples"] - b["samples"]).max())
print(f"max |memory-mapped under the limit - in memory| = {diff:.3g}; nearest {a['nearest'].tolist()} vs "
      f"{b['nearest'].tolist()}; memory_mapped {ra['memory_mapped']} vs {rb['memory_mapped']}")
sys.exit(0 if diff == 0 and (a["nearest"] == b["nearest"]).all() else 1)
EOF
fi
echo "OK"
