#!/usr/bin/env bash
# Scaling of the sharded exact denoiser on CPU (gloo): one process vs torchrun with K ranks, side by side.
#
#   bash benchmarks/distributed_scaling.sh                 # fashion-mnist (60000 x 784), n = 64, 20 steps, 3 rounds
#   DATA=digits ROUNDS=1 bash benchmarks/distributed_scaling.sh
#
# Per round, interleaved: 1 process x 1 thread, 1 process x K threads, torchrun K ranks x 1 thread each. The
# figure is report.json's seconds_per_step (sampling only; start-up and data loading excluded); the medians over
# rounds and their ratios are printed, with the largest difference between the samples of the configurations.
set -euo pipefail
DATA=${DATA:-fashion-mnist}
N=${N:-64}
STEPS=${STEPS:-20}
ROUNDS=${ROUNDS:-3}
K=${K:-2}
WORK=${WORK:-/tmp/boneless-scaling}
mkdir -p "$WORK"
COMMON=(sample --data "$DATA" -n "$N" --steps "$STEPS" --seed 0 --no-progress)
for r in $(seq 1 "$ROUNDS"); do
  OMP_NUM_THREADS=1 boneless "${COMMON[@]}" --out "$WORK/r$r-1proc-1thread" >/dev/null
  OMP_NUM_THREADS=$K boneless "${COMMON[@]}" --out "$WORK/r$r-1proc-${K}threads" >/dev/null
  OMP_NUM_THREADS=1 python -m torch.distributed.run --nproc_per_node "$K" --master_addr 127.0.0.1 \
    --master_port $((29500 + RANDOM % 1000)) --no-python boneless "${COMMON[@]}" --out "$WORK/r$r-${K}ranks" \
    >/dev/null 2>"$WORK/torchrun.err"
  echo "round $r done"
done
python - "$WORK" "$ROUNDS" "$K" <<'EOF'
import json, statistics, sys
import numpy as np
work, rounds, k = sys.argv[1], int(sys.argv[2]), sys.argv[3]
configs = ["1proc-1thread", f"1proc-{k}threads", f"{k}ranks"]
sec = {c: statistics.median(json.load(open(f"{work}/r{r}-{c}/report.json"))["seconds_per_step"]
                            for r in range(1, rounds + 1)) for c in configs}
base = sec[configs[0]]
for c in configs:
    print(f"{c:>16}: {sec[c] * 1e3:8.1f} ms/step (median of {rounds}); speed-up over 1 process x 1 thread: "
          f"{base / sec[c]:.2f}x")
s = [np.load(f"{work}/r1-{c}/samples.npz")["samples"] for c in configs]
print("max |difference| between the samples of the configurations:",
      max(float(np.abs(a - s[0]).max()) for a in s[1:]))
EOF
