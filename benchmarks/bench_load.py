"""What loading a model costs (issue 65: a self-training round loads the teacher and each step's
student): ``load_tokenizer`` on the model's folder, ``load_encoder`` three times in one process
(a run loads many folders holding copies of one tokenizer), and the non-finite check over every
loaded tensor. Runs against whichever ``xlt_engine`` is on the path, so two checkouts compare
side by side:

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/bench_load.py --model models/e5-small
    OMP_NUM_THREADS=1 PYTHONPATH=$PWD/../wt_before python benchmarks/bench_load.py ...

(run as a file, not ``-m``: ``-m`` puts the current folder first on the path, before PYTHONPATH)
"""

import argparse
import hashlib
import time
from pathlib import Path

import torch

import xlt_engine
from xlt_engine.data.tokenizer import load_tokenizer
from xlt_engine.model.checkpoint import NonFiniteWeights, load_encoder


def seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="models/e5-small")
    args = p.parse_args()
    torch.set_num_threads(1)
    print(f"xlt_engine from {xlt_engine.__file__}")
    print(f"load_tokenizer: {seconds(lambda: load_tokenizer(args.model)):.2f} s")
    files = [
        f
        for f in sorted(Path(args.model).iterdir())
        if f.name.startswith(("tokenizer", "vocab", "special"))
    ]
    took = seconds(lambda: hashlib.blake2b(b"".join(f.read_bytes() for f in files)).hexdigest())
    print(f"blake2b of its files ({sum(f.stat().st_size for f in files):,} bytes): {took:.3f} s")
    for k in range(3):
        print(f"load_encoder #{k + 1}: {seconds(lambda: load_encoder(args.model)):.2f} s")
    tensors = [t.detach() for t in load_encoder(args.model).state_dict().values()]
    n = sum(t.numel() for t in tensors)
    took = seconds(lambda: [NonFiniteWeights.count(t) for t in tensors])
    print(f"non-finite check of {n:,} values: {took:.2f} s")


if __name__ == "__main__":
    main()
