"""Kernel benchmark: the same code as ``xlt-engine bench kernels`` (see xlt_engine/kernels/bench.py).

PYTHONPATH=. python benchmarks/bench_kernels.py                     # all ops, all providers
PYTHONPATH=. python benchmarks/bench_kernels.py --op mlm --provider triton --provider torch
"""

import sys

from xlt_engine.cli import main

if __name__ == "__main__":
    main(["bench", "kernels", *sys.argv[1:]], prog_name="bench_kernels.py")
