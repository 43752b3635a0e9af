"""What int8 weights would buy the forward-only passes on a CPU without bf16 (issue 65: the
passes at >= 3x the training step's tokens/s). The engine's encoder at multilingual-e5-small's
shape (12 layers, hidden 384, 12 heads, intermediate 1536; random weights: speed does not depend
on them), one forward over ``--batch`` x ``--seq`` tokens under ``inference_mode``, fp32 against
the same module with every ``nn.Linear`` swapped for PyTorch's dynamically quantized int8 one
(``torch.ao.quantization.quantize_dynamic``: int8 weights, activations quantized per batch).
The two alternate, call by call. Prints the median ms per forward, tokens/s, the speed-up and
the largest absolute difference of the last hidden state; the engine does not use int8 (it would
change the teacher's probabilities, so the accuracy rule of issue 55 would have to hold first).

    OMP_NUM_THREADS=1 python -m benchmarks.bench_int8_forward --out benchmarks/results/int8_forward_cpu_<date>.json
    OMP_NUM_THREADS=1 python -m benchmarks.bench_int8_forward --model <task model folder> \
        --data ../shared/data/cls10/de/books/test.review --format cls10 --examples 200

With ``--model``, a real task model's own pass instead: see ``task_pass``.
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


def timed(fns: dict, warmup: int, iters: int) -> dict[str, float]:
    """Median seconds of each of ``fns``' calls over ``iters`` rounds after ``warmup``; each
    round calls every one once, in turn, so that a busy machine slows them alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(iters):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def quantized(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` with every ``nn.Linear`` int8 (dynamic quantization)."""
    with warnings.catch_warnings():  # quantize_dynamic is deprecated in favour of torchao
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def task_pass(args) -> dict:
    """``--model``: the engine's own forward-only pass (``predict_logits``, as the teacher, the
    checks and evaluation run it) over ``--examples`` of ``--data``, with the task model as
    saved and with its encoder's Linear layers int8 (the voters' heads stay fp32): tokens/s of
    each, and how far the int8 pass moves what the method reads from it (the voters' mean
    probabilities, its argmax per row)."""
    import copy

    from xlt_engine.data.task import encode, read_task_file
    from xlt_engine.data.tokenizer import load_tokenizer
    from xlt_engine.engine.train.inference import predict_logits
    from xlt_engine.model.heads import VotersModule
    from xlt_engine.model.task import load_task_model

    model = load_task_model(args.model)
    tok = load_tokenizer(args.model)
    data = read_task_file(args.data, args.format, False, args.examples, 0)
    enc = encode(data, tok, model.labels, args.max_len)
    int8 = copy.deepcopy(model)
    int8.encoder = quantized(int8.encoder)
    cpu = torch.device("cpu")
    out = {}

    def run(m, name):
        out[name] = predict_logits(m, enc, tok.pad_id, cpu)

    with torch.inference_mode():
        fns = {
            "fp32": lambda: run(model, "fp32"),
            "int8 dynamic": lambda: run(int8, "int8 dynamic"),
        }
        secs = timed(fns, args.warmup, args.iters)
    tokens = int(enc.lengths.sum())
    rows = {
        n: {"ms": round(1000 * s, 1), "tokens_per_s": round(tokens / s)} for n, s in secs.items()
    }
    p32, p8 = (VotersModule.probs(out[n].float()) for n in ("fp32", "int8 dynamic"))
    agree = (p32.argmax(-1) == p8.argmax(-1)).float().mean().item()
    diff = (p32 - p8).abs()
    return {"rows": rows, "examples": len(data), "tokens": tokens, "argmax_agreement": agree,
            "max_abs_prob_diff": diff.max().item(), "mean_abs_prob_diff": diff.mean().item()}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--out", help="write the record here (JSON)")
    p.add_argument("--model", help="a task model folder: time the engine's pass on real data")
    p.add_argument("--data", help="with --model: a labeled task file")
    p.add_argument("--format", default="cls10", help="with --model: the file's format")
    p.add_argument("--examples", type=int, default=200, help="with --model: how many (sampled)")
    p.add_argument("--max-len", type=int, default=256, help="with --model: tokens an input")
    args = p.parse_args(argv)
    if args.model:
        record = task_pass(args)
        for name, r in record["rows"].items():
            print(f"{name:>13}: {r['ms']:8.1f} ms a pass, {r['tokens_per_s']:7,} tokens/s")
        speedup = record["rows"]["fp32"]["ms"] / record["rows"]["int8 dynamic"]["ms"]
        print(f"int8 / fp32 speed-up {speedup:.2f}x over {record['examples']} examples "
              f"({record['tokens']:,} tokens); the voters' mean argmax agrees on "
              f"{100 * record['argmax_agreement']:.2f}% of the rows; |probability difference| "
              f"max {record['max_abs_prob_diff']:.3g}, mean {record['mean_abs_prob_diff']:.3g}")  # fmt: skip
        record.update(speedup=round(speedup, 3),
                      **environment(torch.device("cpu"), "bench_int8_forward.py", argv))  # fmt: skip
        _write(args.out, record)
        return record
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30000, hidden_size=384, num_hidden_layers=args.layers,
                     num_attention_heads=12, intermediate_size=1536)  # fmt: skip
    fp32 = BertEncoder(cfg).eval()
    int8 = quantized(fp32)
    ids = torch.randint(1, cfg.vocab_size, (args.batch, args.seq))
    mask = torch.ones_like(ids)
    tokens = ids.numel()
    models = {"fp32": fp32, "int8 dynamic": int8}
    with torch.inference_mode():
        fns = {name: (lambda m=m: m(ids, mask)) for name, m in models.items()}
        secs = timed(fns, args.warmup, args.iters)
        rows = {
            n: {"ms": round(1000 * s, 1), "tokens_per_s": round(tokens / s)}
            for n, s in secs.items()
        }
        diff = (fp32(ids, mask) - int8(ids, mask)).abs().max().item()
    speedup = rows["fp32"]["ms"] / rows["int8 dynamic"]["ms"]
    for name, r in rows.items():
        print(f"{name:>13}: {r['ms']:8.1f} ms a forward, {r['tokens_per_s']:7,} tokens/s")
    print(f"int8 / fp32 speed-up {speedup:.2f}x; largest |difference| of the last hidden "
          f"state {diff:.3g} ({args.batch} x {args.seq} tokens, {args.layers} layers, "
          f"{torch.get_num_threads()} thread(s))")  # fmt: skip
    record = {"rows": rows, "speedup": round(speedup, 3), "max_abs_diff": diff,
              "shape": {"batch": args.batch, "seq": args.seq, "layers": args.layers},
              **environment(torch.device("cpu"), "bench_int8_forward.py", argv)}  # fmt: skip
    _write(args.out, record)
    return record


def _write(path: str | None, record: dict) -> None:
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
