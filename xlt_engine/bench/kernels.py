"""Kernel benchmarks: every fused op against its eager torch reference, torch.compile of that
reference and, for the MLM loss, the Hugging Face path and Liger's fused linear cross-entropy
(when installed). Shared by ``benchmarks/bench_kernels.py`` and ``xlt-engine bench kernels``.

For each case: median milliseconds (``triton.testing.do_bench`` on CUDA, a wall-clock median on
CPU), achieved TFLOP/s (MLM loss) or GB/s (the others) against the work counted below, peak extra
memory (CUDA only), and measured time over roofline. Two yardsticks are measured in the same run:
a large matmul in the run's dtype (TFLOP/s) and a device copy (GB/s); the roofline of a case is
its counted work at those rates, so "of roof" is the fraction of the machine's own speed reached.

Counted work (what the op must do, whoever does it):
- fused_mlm_loss, N rows: forward 2NVH flops, backward 4NVH, full 6NVH, frozen (full with the
  weight frozen, as in BTF: no dW) 4NVH. The fused op computes the gradients in its forward, so
  its forward time already holds the full work; its backward is a scaling (no rate shown). Its
  roofline (full and frozen) adds 4NV elements moved (the row kernel's two reads and one write
  of the logits, and db's read) at the measured copy bandwidth to the flops at the measured
  matmul rate.
- soft_label_mse and soft_label_kl: forward reads z (M*R*C), p (R*C), mask (R); backward writes
  dz (M*R*C);
  full = both.
- voter_filter: reads M*N*C logits, writes N labels (8 B), N confidences (4 B), N*C means (4 B).
- threshold_curve: reads N confidences and N bools.
- supcon_loss, B rows of width D: forward 2B^2D flops (the scores), backward 4B^2D (ours: the
  scores again and W @ n; eager: the two operands of n @ n.T), full 6B^2D. No roofline: its
  bytes are B^2 either way and the flops run in fp32 / TF32, not at the yardstick's rate.

On a CPU-only machine only the torch providers run, at reduced sizes, and the table says so.
"""

from __future__ import annotations

import csv
import io
import json
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from xlt_engine.bench.cases import (
    MBERT_H,
    MBERT_V,
    MODES,
    OPS,
    PROVIDERS,
    XLMR_V,
    Case,
    mlm_cases,
    mse_cases,
    provider_kernels,
    supcon_cases,
    threshold_cases,
    voter_cases,
)
from xlt_engine.fileio import atomic_write_text
from xlt_engine.inputs import read_json
from xlt_engine.outputs import claim_output, record_output
from xlt_engine.provenance import environment, result_file, version

# --- timing ----------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_case(case: Case, device: torch.device, reps: int) -> None:
    """Median ms and peak extra memory; the provider's dispatch is forced while it runs."""
    with provider_kernels(case.provider):
        try:
            if case.setup:
                case.setup()
            case.run()  # warm-up, and compilation for the compiled providers
            _sync(device)
            if device.type == "cuda":
                import triton.testing

                torch.cuda.empty_cache()
                base = torch.cuda.memory_allocated(device)
                torch.cuda.reset_peak_memory_stats(device)
                if case.setup:
                    case.setup()
                case.run()
                _sync(device)
                peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
                if case.setup:  # backward alone: rebuild the graph before each timed call
                    times = []
                    for _ in range(reps):
                        case.setup()
                        _sync(device)
                        start = torch.cuda.Event(enable_timing=True)
                        end = torch.cuda.Event(enable_timing=True)
                        start.record()
                        case.run()
                        end.record()
                        end.synchronize()
                        times.append(start.elapsed_time(end))
                    ms = statistics.median(times)
                else:
                    ms = triton.testing.do_bench(case.run, return_mode="median")
            else:
                peak = None  # no allocator statistics on CPU: null in the JSON, n/a in the table
                times = []
                for _ in range(reps):
                    if case.setup:
                        case.setup()
                    t0 = time.perf_counter()
                    case.run()
                    times.append((time.perf_counter() - t0) * 1e3)
                ms = statistics.median(times)
        except Exception as err:  # one failing provider must not hide the others' numbers
            case.result = {"error": f"{type(err).__name__}: {err}".splitlines()[0][:200]}
            return
    rate = {}
    if case.flops:
        rate["tflops"] = case.flops / ms / 1e9
    if case.nbytes:
        rate["gbps"] = case.nbytes / ms / 1e6
    case.result = {"ms": ms, "peak_mib": peak, **rate}


def yardsticks(device: torch.device, dtype: torch.dtype, reps: int) -> dict:
    """The machine's own matmul rate (in the run's dtype) and copy bandwidth (bytes read plus
    written), measured now: the roofline of every case is taken against these."""
    n, nbytes = (8192, 1 << 30) if device.type == "cuda" else (1024, 1 << 26)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    src = torch.empty(nbytes, device=device, dtype=torch.uint8)
    dst = torch.empty_like(src)
    if device.type == "cuda":
        import triton.testing

        ms_mm = triton.testing.do_bench(lambda: a @ b, return_mode="median")
        ms_copy = triton.testing.do_bench(lambda: dst.copy_(src), return_mode="median")
    else:
        ms_mm = _cpu_median(lambda: a @ b, reps)
        ms_copy = _cpu_median(lambda: dst.copy_(src), reps)
    return {"matmul_tflops": 2 * n**3 / ms_mm / 1e9, "copy_gbps": 2 * nbytes / ms_copy / 1e6}


def _cpu_median(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(max(reps, 3)):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


# --- the run ---------------------------------------------------------------------------------


def default_shapes(device: torch.device) -> dict:
    if device.type == "cuda":
        mask = 0.15
        return {
            "mlm": [
                (f"{b}x{t} ({int(b * t * mask)} rows)", int(b * t * mask), b * t, MBERT_V, MBERT_H)
                for b, t in ((32, 128), (32, 256))
            ]
            + [(f"N={n // 1024}K", n, None, MBERT_V, MBERT_H) for n in (8192, 32768, 65536)]
            + [
                (f"N={k} V=250K", n, None, XLMR_V, MBERT_H) for k, n in (("614", 614), ("8K", 8192))
            ],
            "mse": [
                (f"M=3 N={_size(n)} C={c}", 3, n, c)
                for c in (2, 9)
                for n in (1 << 16, 1 << 20, 1 << 24)
            ],
            "voters": [
                (f"M=3 N={_size(n)} C={c}", 3, n, c)
                for c in (2, 9)
                for n in (1 << 16, 1 << 20, 1 << 24)
            ],
            "threshold": [(f"N={_size(n)} K=52", n, 52) for n in (1 << 20, 10_000_000)],
            "supcon": [(f"B={b} D={d}", b, d) for b, d in ((1024, 768), (4096, 1024))],
        }
    return {  # CPU: reduced sizes
        "mlm": [("N=256 V=8192 H=256", 256, 32 * 64, 8192, 256)],
        "mse": [(f"M=3 N={_size(n)} C={c}", 3, n, c) for c in (2, 9) for n in (1 << 16,)],
        "voters": [(f"M=3 N={_size(n)} C={c}", 3, n, c) for c in (2, 9) for n in (1 << 16,)],
        "threshold": [(f"N={_size(n)} K=52", n, 52) for n in (1 << 20,)],
        "supcon": [("B=1024 D=768", 1024, 768)],  # the issue's shape: cheap enough on a CPU
    }


def _size(n: int) -> str:
    if n >= 1 << 20 and n % (1 << 20) == 0:
        return f"{n >> 20}M"
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    return f"{n >> 10}K" if n % 1024 == 0 else str(n)


def run(
    ops=OPS,
    providers=None,
    modes=MODES,
    device: str | None = None,
    reps: int | None = None,
    out_dir: Path | None = None,
    echo: Callable[[str], None] = print,
    overwrite: bool = False,
) -> dict:
    """Run the benchmark; print a table; append it to the JSON and CSV in ``out_dir`` (None: no
    files): files that an earlier ``bench`` wrote and nobody changed since, or new ones
    (``outputs.claim_output``, checked before the timing starts; ``overwrite``: any file)."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if out_dir is not None:
        claim_results(Path(out_dir), dev, overwrite)
    on_gpu = dev.type == "cuda"
    if providers is None:
        providers = PROVIDERS if on_gpu else ("torch", "compile")
    providers = tuple(providers)
    if not on_gpu:
        dropped = [p for p in providers if p in ("triton", "liger", "cce")]
        providers = tuple(p for p in providers if p not in dropped)
        echo(
            "No GPU: running the torch providers only, at reduced sizes"
            + (f" (skipping {', '.join(dropped)})" if dropped else "")
        )
    reps = reps or (50 if on_gpu else 3)
    shapes = default_shapes(dev)
    dtype = torch.bfloat16 if on_gpu else torch.float32
    cases: list[Case] = []
    if "mlm" in ops:
        cases += mlm_cases(dev, dtype, shapes["mlm"], providers, modes)
    for op in ("mse", "kl"):
        if op in ops:
            cases += mse_cases(dev, dtype, shapes["mse"], providers, modes, op)
    if "voters" in ops:
        cases += voter_cases(dev, dtype, shapes["voters"], providers)
    if "threshold" in ops:
        cases += threshold_cases(dev, shapes["threshold"], providers)
    if "supcon" in ops:
        cases += supcon_cases(dev, dtype, shapes["supcon"], providers, modes)
    yard = yardsticks(dev, dtype, reps)
    for case in cases:
        time_case(case, dev, reps)
        roof = case.roofline_ms(yard)
        if roof is not None and "ms" in case.result:
            case.result["roofline_ms"] = roof
        if on_gpu:
            torch.cuda.empty_cache()
    record = {
        "what": "kernels",
        **environment(dev),
        "liger_kernel": version("liger_kernel"),
        "cut_cross_entropy": version("cut_cross_entropy"),
        "dtype": str(dtype).replace("torch.", ""),
        "reduced_sizes": not on_gpu,
        "command": " ".join(shlex.quote(a) for a in sys.argv),
        "yardsticks": yard,
        "rows": [
            {"op": c.op, "shape": c.shape, "provider": c.provider, "mode": c.mode, **c.result}
            for c in cases
        ],
    }
    echo(format_table(record))
    if out_dir is not None:
        record["files"] = [str(p) for p in save(record, Path(out_dir), dev, overwrite)]
        echo("wrote " + ", ".join(record["files"]))
    return record


def format_rate(value: float, unit: str) -> str:
    """``value`` (in units of 1e12 for FLOP/s, 1e9 for B/s, as recorded) with the prefix that
    fits: 0.098 TFLOP/s prints as 98.0 GFLOP/s (a fixed unit printed 0.0)."""
    base = value * (1e12 if unit == "FLOP/s" else 1e9)
    for prefix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if base >= scale:
            return f"{base / scale:.1f} {prefix}{unit}"
    return f"{base:.1f} {unit}"


def format_table(record: dict) -> str:
    head = f"{record['device']} | torch {record['torch']} | triton {record['triton']} | {record['dtype']}"
    if record["reduced_sizes"]:
        head += " | CPU: torch providers at reduced sizes"
    lines = [head]
    yard = record["yardsticks"]
    lines.append(
        f"  yardsticks: matmul {format_rate(yard['matmul_tflops'], 'FLOP/s')} "
        f"({record['dtype']}), copy {format_rate(yard['copy_gbps'], 'B/s')}"
    )
    cols = (
        f"{'op':<10}{'shape':<26}{'mode':<9}{'provider':<9}{'ms':>10}{'rate':>16}"
        f"{'roof ms':>9}{'of roof':>8}{'peak MiB':>10}"
    )
    lines += [cols, "-" * len(cols)]
    for r in record["rows"]:
        if "error" in r:
            rest = f"  error: {r['error']}"
        else:
            if "tflops" in r:
                rate = format_rate(r["tflops"], "FLOP/s")
            elif "gbps" in r:
                rate = format_rate(r["gbps"], "B/s")
            else:  # no work counted for this time (the fused MLM op's backward: a scaling)
                rate = "-"
            peak = "n/a" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
            roof = r.get("roofline_ms")
            roofs = f"{roof:>9.3f}{roof / r['ms']:>8.0%}" if roof else f"{'':>17}"
            rest = f"{r['ms']:>10.3f}{rate:>16}{roofs}{peak:>10}"
        lines.append(f"{r['op']:<10}{r['shape']:<26}{r['mode']:<9}{r['provider']:<9}{rest}")
    return "\n".join(lines)


def claim_results(out_dir: Path, device: torch.device, overwrite: bool = False) -> list[Path]:
    """The JSON and CSV a run on ``device`` appends to in ``out_dir``, each new or written by an
    earlier ``bench`` and unchanged since (a CSV the user edited, or a file of the same name
    that the engine did not write, is refused: ``overwrite`` says yes)."""
    json_path = result_file(out_dir, "kernels", device)
    paths = [json_path, json_path.with_suffix(".csv")]
    for path in paths:
        claim_output(path, "--out", "bench", overwrite=overwrite)
    return paths


def save(record: dict, out_dir: Path, device: torch.device, overwrite: bool = False) -> list[Path]:
    """Append this run to ``kernels_<gpu>_<yyyymmdd>.json`` (a list of runs) and its rows to the
    CSV beside it; both rewritten atomically, each recorded in the folder's ledger."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = claim_results(out_dir, device, overwrite)
    runs = read_json(json_path) if json_path.exists() else []
    if not isinstance(runs, list):
        raise ValueError(f"{json_path}: not a list of benchmark runs; choose another --out")
    runs.append(record)
    atomic_write_text(json_path, json.dumps(runs, indent=1, allow_nan=False) + "\n")
    fields = [
        "date",
        "device",
        "git_sha",
        "torch",
        "triton",
        "dtype",
        "op",
        "shape",
        "mode",
        "provider",
        "ms",
        "tflops",
        "gbps",
        "roofline_ms",
        "peak_mib",
        "error",
    ]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    for run_record in runs:
        meta = {
            k: run_record.get(k) for k in ("date", "device", "git_sha", "torch", "triton", "dtype")
        }
        for row in run_record["rows"]:
            writer.writerow({**meta, **row})
    atomic_write_text(csv_path, buf.getvalue())
    record_output(json_path, "bench")
    record_output(csv_path, "bench")
    return [json_path, csv_path]
