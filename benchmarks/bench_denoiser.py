"""The full benchmark of the exact denoiser: ``boneless bench`` with the same options (see ``--help``).

    python benchmarks/bench_denoiser.py --threads 2 --faiss --out docs/perf     # the figures of docs/PERFORMANCE.md
    python benchmarks/bench_denoiser.py --quick --out /tmp/bench                # a smoke run
"""

import sys

from boneless.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
