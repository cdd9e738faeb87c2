"""`boneless eval ARGS` with its clock read as single-thread CPU time: every `time.perf_counter` reading becomes
`time.process_time`, so the stage timings in results.json (and --budget) count this process's CPU seconds, not
the wall time of a shared machine. Run it with OMP_NUM_THREADS=1 (with more threads, CPU time sums them).

    OMP_NUM_THREADS=1 python benchmarks/eval_cputime.py --test 16 --in-sample 16 --samples 4 --consistency 4 \\
        --budget 100000 --denoisers empirical,gaussian,smoothed,gmm,local,patch-composite,local-gaussian,blend,\\
coarse-to-fine,sure-experts --out runs/eval-time
    python benchmarks/eval_stages.py runs/eval-time/results.json
"""

import sys
import time

time.perf_counter = time.process_time

from boneless.cli import main  # noqa: E402

if __name__ == "__main__":
    t0 = time.process_time()
    rc = main(["eval", *sys.argv[1:]])
    print(f"CPU time of the whole run: {time.process_time() - t0:.1f} s", flush=True)
    sys.exit(rc)
