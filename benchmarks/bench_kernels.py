"""Kernel benchmark: the same code as ``xlt-engine bench kernels`` (see xlt_engine/bench/kernels.py).

python -m benchmarks.bench_kernels                     # all ops, all providers
python -m benchmarks.bench_kernels --op mlm --provider triton --provider torch
"""

import sys

from xlt_engine.cli import main

if __name__ == "__main__":
    main(["bench", "kernels", *sys.argv[1:]], prog_name="bench_kernels.py")
