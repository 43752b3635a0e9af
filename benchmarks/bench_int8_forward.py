"""What int8 weights would buy the forward-only passes on a CPU without bf16 (issue 65: the
passes at >= 3x the training step's tokens/s). The engine's encoder at multilingual-e5-small's
shape (12 layers, hidden 384, 12 heads, intermediate 1536; random weights: speed does not depend
on them), one forward over ``--batch`` x ``--seq`` tokens under ``inference_mode``, fp32 against
the same module with every ``nn.Linear`` swapped for PyTorch's dynamically quantized int8 one
(``torch.ao.quantization.quantize_dynamic``: int8 weights, activations quantized per batch).
Prints ms per forward, tokens/s, the speed-up and the largest absolute difference of the last
hidden state; the engine does not use int8 (it would change the teacher's probabilities, so the
accuracy rule of issue 55 would have to hold first).

    OMP_NUM_THREADS=1 python -m benchmarks.bench_int8_forward --out benchmarks/results/int8_forward_cpu_<date>.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import torch

from benchmarks.record import environment
from xlt_engine.model import BertConfig
from xlt_engine.model.bert import BertEncoder


def timed(fn, warmup: int, iters: int) -> float:
    """Median seconds of ``fn()`` over ``iters`` calls after ``warmup``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--out", help="write the record here (JSON)")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30000, hidden_size=384, num_hidden_layers=args.layers,
                     num_attention_heads=12, intermediate_size=1536)  # fmt: skip
    fp32 = BertEncoder(cfg).eval()
    with warnings.catch_warnings():  # quantize_dynamic is deprecated in favour of torchao
        warnings.simplefilter("ignore")
        int8 = torch.ao.quantization.quantize_dynamic(fp32, {torch.nn.Linear}, dtype=torch.qint8)
    ids = torch.randint(1, cfg.vocab_size, (args.batch, args.seq))
    mask = torch.ones_like(ids)
    tokens = ids.numel()
    rows = {}
    with torch.inference_mode():
        for name, model in (("fp32", fp32), ("int8 dynamic", int8)):
            s = timed(lambda m=model: m(ids, mask), args.warmup, args.iters)
            rows[name] = {"ms": round(1000 * s, 1), "tokens_per_s": round(tokens / s)}
        diff = (fp32(ids, mask) - int8(ids, mask)).abs().max().item()
    speedup = rows["fp32"]["ms"] / rows["int8 dynamic"]["ms"]
    for name, r in rows.items():
        print(f"{name:>13}: {r['ms']:8.1f} ms a forward, {r['tokens_per_s']:7,} tokens/s")
    print(f"int8 / fp32 speed-up {speedup:.2f}x; largest |difference| of the last hidden "
          f"state {diff:.3g} ({args.batch} x {args.seq} tokens, {args.layers} layers, "
          f"{torch.get_num_threads()} thread(s))")  # fmt: skip
    record = {"rows": rows, "speedup": round(speedup, 3), "max_abs_diff": diff,
              "shape": {"batch": args.batch, "seq": args.seq, "layers": args.layers},
              "threads": torch.get_num_threads(),
              **environment(torch.device("cpu"), "bench_int8_forward.py", argv)}  # fmt: skip
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2)
            f.write("\n")
    return record


if __name__ == "__main__":
    main()
