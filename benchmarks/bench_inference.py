"""The forward-only passes of a self-training round against its training step, side by side in
one process (issue 65): the same model, sentences and threads.

- ``train finetune`` / ``train soft``: the hard (fine-tune) and soft steps through ``loop.train``
  at the studies' settings (batch 16, 3 voters, embeddings and bottom 3 layers frozen;
  ``bench_cpu_step.ours``), tokens/s of real tokens;
- ``forward``: ``inference.predict_logits``, the one pass the teacher's probabilities, the checks,
  the threshold step's source pass, the filter, ``evaluate`` and ``predict`` all run (length
  buckets of padded tokens, ``inference_mode``), at each ``--max-tokens`` size as asked (the CPU
  cap lifted), then the engine's own path: ``EVAL_MAX_TOKENS`` capped at ``CPU_MAX_TOKENS`` on a
  CPU;
- ``threshold arithmetic``: what the threshold step does to the source rows' voter logits once
  the pass has produced them (``voter_filter`` at alpha 0, then ``thresholds_from`` with the
  paper's rule), against the time to read those logits once at this machine's copy bandwidth
  (the memory bound of that arithmetic).

Every precision runs in the same process; the ratio ``forward / train`` is the issue's goal
(at least 3x on CPU, e5-small, bf16 and fp32).

    OMP_NUM_THREADS=1 python -m benchmarks.bench_inference --model models/e5-small \\
        --data ../shared/data --sentences 800
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from benchmarks.bench_cpu_step import LABELS, ours, step_inputs
from benchmarks.record import append, environment
from xlt_engine.engine.method.pseudo_labels import thresholds_from
from xlt_engine.engine.train import inference
from xlt_engine.engine.train.inference import EVAL_MAX_TOKENS, predict_logits
from xlt_engine.engine.train.optim import cpu_has_native_bf16
from xlt_engine.kernels.voter_filter import voter_filter
from xlt_engine.model.checkpoint import load_encoder
from xlt_engine.model.task import new_task_model

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="a converted e5-small (or any BERT)")
    p.add_argument("--data", type=Path, required=True, help="the shared data folder")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=16, help="the training batch (sentences)")
    p.add_argument("--max-len", type=int, default=64)
    p.add_argument("--freeze", type=int, default=3)
    p.add_argument("--sentences", type=int, default=800, help="eng.train sentences read")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=20, help="training steps timed")
    p.add_argument("--repeats", type=int, default=3, help="forward passes timed (the best)")
    p.add_argument(
        "--precisions",
        default=None,
        help="by commas (fp32, bf16); default: fp32, and bf16 where the CPU has native bf16 "
        "(without it a bf16 GEMM ran at 1.3 GFLOP/s against fp32's 84 on our 2026-11-27 CPU)",
    )
    p.add_argument(
        "--max-tokens",
        default="1024,4096,16384",
        help="the forward pass's padded tokens per batch, by commas (1024: the training batch's "
        "16 x 64; 16384: the engine's default, EVAL_MAX_TOKENS)",
    )
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args(argv)
    args.profile = 0  # bench_cpu_step.ours reads it
    return args


def forward_rate(model, enc, pad_id: int, amp, max_tokens: int, repeats: int) -> dict:
    """The best of ``repeats`` whole passes of ``predict_logits`` over ``enc``: seconds,
    tokens/s (real tokens), and the logits it returned."""
    tokens = int(enc.lengths.sum())
    predict_logits(model, enc, pad_id, torch.device("cpu"), max_tokens, amp)  # warm-up
    best, logits = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        logits = predict_logits(model, enc, pad_id, torch.device("cpu"), max_tokens, amp)
        best = min(best, time.perf_counter() - t0)
    return {"seconds": best, "tokens_per_s": tokens / best, "logits": logits}


def copy_bandwidth(nbytes: int, repeats: int = 20) -> float:
    """Bytes/s of a plain tensor copy of ``nbytes`` (read + write counted once each)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    dst.copy_(src)
    t0 = time.perf_counter()
    for _ in range(repeats):
        dst.copy_(src)
    return 2 * src.numel() * 4 * repeats / (time.perf_counter() - t0)


def threshold_arithmetic(logits: torch.Tensor, gold: torch.Tensor, repeats: int) -> dict:
    """The threshold step on logits already made: ``voter_filter`` at alpha 0, then the paper's
    curve and alpha (``thresholds_from``); the best of ``repeats``, against reading the logits
    once at the copy bandwidth."""
    logits = logits.float()
    best = float("inf")
    for _ in range(repeats + 1):  # the first one warms up
        t0 = time.perf_counter()
        agreed, conf, _ = voter_filter(logits, 0.0)
        thresholds_from(agreed, conf, gold, logits.shape[-1], background=0)
        best = min(best, time.perf_counter() - t0)
    nbytes = logits.numel() * logits.element_size()
    bound = nbytes / copy_bandwidth(max(nbytes, 1 << 20))  # reading nbytes once
    return {"seconds": best, "memory_bound_seconds": bound, "rows": logits.shape[1],
            "bytes": nbytes}  # fmt: skip


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    tok, enc, probs, frozen = step_inputs(args)
    rows = int(enc.row_offsets[-1])
    torch.manual_seed(0)
    model = new_task_model(load_encoder(args.model, dtype=torch.float32), "token", LABELS, 3)
    gold = torch.randint(0, len(LABELS), (rows,))  # the arithmetic's time does not read them
    out = {"sentences": len(enc.lengths), "tokens": int(enc.lengths.sum()), "rows": rows,
           "threads": args.threads, "results": []}  # fmt: skip
    print(f"{out['sentences']} sentences, {out['tokens']} tokens, {rows} rows, "
          f"{args.threads} thread(s)")  # fmt: skip
    native = cpu_has_native_bf16()
    names = args.precisions.split(",") if args.precisions else ["fp32", *(["bf16"] * native)]
    if not native:
        print("this CPU has no native bf16: fp32 only (the engine's auto precision on it)")
    out["native_bf16"] = native
    for name in names:
        amp = PRECISIONS[name]
        res = {"precision": name}
        for step in ("finetune", "soft"):
            r = ours(args, enc, tok.pad_id, probs, step, name, 8, frozen)
            res[f"train_{step}_tokens_per_s"] = r["tokens_per_step"] / r["seconds_per_step"]
        train = res["train_finetune_tokens_per_s"]
        print(f"{name}: train finetune {train:,.0f} tokens/s, soft "
              f"{res['train_soft_tokens_per_s']:,.0f}")  # fmt: skip
        res["forward"] = []
        cap = inference.CPU_MAX_TOKENS
        sizes = [(int(m), False) for m in args.max_tokens.split(",")]
        for max_tokens, engine in [*sizes, (EVAL_MAX_TOKENS, True)]:
            # the sizes asked for as they are; then the engine's own path (its CPU cap)
            inference.CPU_MAX_TOKENS = cap if engine else max(max_tokens, cap)
            try:
                f = forward_rate(model, enc, tok.pad_id, amp, max_tokens, args.repeats)
            finally:
                inference.CPU_MAX_TOKENS = cap
            res["forward"].append({"max_tokens": max_tokens, "engine": engine,
                                   "tokens_per_s": f["tokens_per_s"],
                                   "x_finetune": f["tokens_per_s"] / train})  # fmt: skip
            logits = f["logits"]
            how = (
                f"the engine's path (max_tokens {max_tokens}, at most {cap} on a CPU)"
                if engine
                else f"{max_tokens} padded tokens a batch"
            )
            print(f"  forward, {how}: {f['tokens_per_s']:,.0f} tokens/s = "
                  f"{f['tokens_per_s'] / train:.2f}x the finetune step")  # fmt: skip
        res["threshold"] = threshold_arithmetic(logits, gold, args.repeats)
        th = res["threshold"]
        print(f"  threshold arithmetic on {th['rows']:,} rows ({th['bytes'] / 2**20:.1f} MiB of "
              f"logits): {1e3 * th['seconds']:.1f} ms; reading them once at the copy bandwidth: "
              f"{1e3 * th['memory_bound_seconds']:.2f} ms "
              f"({th['seconds'] / th['memory_bound_seconds']:.0f}x the bound)")  # fmt: skip
        out["results"].append(res)
    record = {
        **environment(torch.device("cpu"), "bench_inference.py", argv),
        "settings": {k: str(v) for k, v in vars(args).items()},
        **out,
    }
    if not args.no_save:
        append("inference", torch.device("cpu"), record)
    return record


if __name__ == "__main__":
    main()
