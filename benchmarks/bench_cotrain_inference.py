"""Co-training's inference pass against self-training's, per pool row (issue 18: "the cotrain
inference passes cost no more than selftrain's per row").

One task model (a tiny random encoder made with ``xlt-engine init`` and the real mBERT
vocabulary, a linear head, or ``--model`` for a task model folder of your own) predicts one
unlabeled sequence pool (``--pool``, a MARC / CLS-10 / XNLI / JSONL file read without labels),
in two ways, each in a fresh process (so peak memory is its own):

- ``cotrain``: what ``run_cotrain`` does for a view: ``read_task_file`` and ``encode`` the pool
  in memory (once per run), then per iteration ``cotrain._view_probs`` (load the model, one
  ``predict_logits`` over every row, mean-of-voters probabilities);
- ``selftrain``: what ``run_selftrain``'s teacher step does: ``build_store`` (the packed,
  memory-mapped token store, built chunk by chunk), ``open_store``, then ``CHUNK_ITEMS`` items
  at a time ``predict_logits`` and the probabilities written into a memory-mapped fp16 array,
  the store's pages dropped after each chunk (``SelftrainContext.chunks``, mirrored here).

Reported per way: seconds to prepare the pool (read + encode / build the store), seconds of one
inference pass, both per 1,000 rows, and the peak resident memory of the process (``VmHWM``).
``--repeat`` passes are timed and the fastest is kept.

    python -m benchmarks.bench_cotrain_inference --vocab ../shared/data/mbert \\
        --pool ../shared/data/marc/de.train_pool.csv --format marc --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vocab", type=Path, help="the mBERT folder (vocab.txt) for the tiny model")
    p.add_argument("--model", type=Path, help="a task model folder instead of the tiny one")
    p.add_argument("--pool", type=Path, required=True, help="the unlabeled pool file")
    p.add_argument("--format", required=True, help="its format (marc, cls10, xnli, jsonl, ...)")
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--rows", type=int, default=None, help="at most this many pool rows")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", type=Path, default=None, help="folder for the JSON result")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def make_model(vocab: Path, work: Path) -> Path:
    """A tiny random encoder (2 layers, hidden 64) with a linear head, saved as a task model."""
    from click.testing import CliRunner

    from xlt_engine.cli import main
    from xlt_engine.data.tokenizer import load_tokenizer
    from xlt_engine.model.checkpoint import load_encoder
    from xlt_engine.model.task import new_task_model, save_task_model

    enc_dir = work / "encoder"
    args = ["init", str(enc_dir), "--vocab", str(vocab / "vocab.txt"), "--layers", "2",
            "--hidden", "64", "--heads", "2", "--intermediate", "128", "--seed", "1"]  # fmt: skip
    res = CliRunner().invoke(main, args)
    if res.exit_code != 0:
        raise SystemExit(res.output)
    model = new_task_model(load_encoder(enc_dir), "sequence", ["negative", "positive"], 1, (0,))
    return save_task_model(model, work / "task-model", load_tokenizer(enc_dir))


def worker(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    from xlt_engine.data.packed import StoreFile, StoreSpec, build_store, open_store, release
    from xlt_engine.data.task import encode, read_task_file
    from xlt_engine.data.tokenizer import load_tokenizer
    from xlt_engine.engine.method.cotrain import _view_probs
    from xlt_engine.engine.method.selftrain.store import CHUNK_ITEMS
    from xlt_engine.engine.train.inference import EVAL_MAX_TOKENS, items_of, predict_logits
    from xlt_engine.model.heads import VotersModule
    from xlt_engine.model.task import load_task_model

    device = torch.device("cpu")
    tok = load_tokenizer(args.model)
    labels = load_task_model(args.model).labels
    t0 = time.perf_counter()
    if args.worker == "cotrain":
        data = read_task_file(args.pool, args.format, True, args.rows, 0)
        enc = encode(data, tok, labels, args.max_len)
    else:
        files = [StoreFile(str(args.pool), args.format, True)]
        folder = build_store(
            files, StoreSpec("sequence", tok, labels, args.max_len), args.work, args.rows, 0
        )
        enc = open_store(folder)
    prepare = time.perf_counter() - t0
    rows = len(enc)
    passes = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        if args.worker == "cotrain":
            cfg = argparse.Namespace(eval_max_tokens=EVAL_MAX_TOKENS)
            probs = _view_probs(args.model, enc, tok.pad_id, cfg, device)
        else:  # self-training's teacher step: chunks of the store into an fp16 array
            model = load_task_model(args.model, device=device)
            out = np.lib.format.open_memmap(
                args.work / "probs.npy", mode="w+", dtype=np.float16, shape=(rows, len(labels))
            )
            offsets = enc.row_offsets
            for a in range(0, rows, CHUNK_ITEMS):
                b = min(a + CHUNK_ITEMS, rows)
                logits = predict_logits(model, items_of(enc, a, b), tok.pad_id, device)
                p = VotersModule.probs(logits).float().cpu().numpy()
                out[int(offsets[a]) : int(offsets[a]) + len(p)] = p.astype(np.float16)
                release(enc, out)
            out.flush()
            probs = out
        passes.append(time.perf_counter() - t0)
        assert len(probs) == rows
    return {
        "way": args.worker,
        "rows": rows,
        "prepare_s": prepare,
        "pass_s": min(passes),
        "passes_s": passes,
        "peak_rss_mib": peak_rss_mib(),
        # the same rows predicted by the same model: the two ways' sums agree (fp16 vs fp32)
        "last_label_prob_sum": float(np.asarray(probs, dtype=np.float64)[:, -1].sum()),
    }


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return
    if args.model is None and args.vocab is None:
        raise SystemExit("give --vocab (a tiny random model is made) or --model")
    import torch

    import xlt_engine

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = args.model or make_model(args.vocab, work)
        results = []
        for way in ("cotrain", "selftrain"):
            cmd = [sys.executable, __file__, "--worker", way, "--model", str(model),
                   "--pool", str(args.pool), "--format", args.format, "--max-len",
                   str(args.max_len), "--repeat", str(args.repeat), "--work", str(work)]  # fmt: skip
            if args.rows:
                cmd += ["--rows", str(args.rows)]
            env = {"PYTHONPATH": str(ROOT)}
            done = subprocess.run(cmd, capture_output=True, text=True, env=env | _env())
            if done.returncode != 0:
                raise SystemExit(done.stderr)
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    record = {
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "xlt_engine": xlt_engine.__version__,
        "threads": torch.get_num_threads(),
        "pool": str(args.pool),
        "format": args.format,
        "max_len": args.max_len,
        "model": str(args.model) if args.model else "tiny random (2 layers, hidden 64)",
        "command": " ".join(sys.argv),
        "results": results,
    }
    print(f"{'way':<10} {'rows':>7} {'prepare s/1k':>13} {'pass s/1k':>10} {'peak RSS MiB':>13}")
    for r in results:
        k = r["rows"] / 1000
        print(
            f"{r['way']:<10} {r['rows']:>7} {r['prepare_s'] / k:>13.3f} {r['pass_s'] / k:>10.3f} "
            f"{r['peak_rss_mib']:>13.0f}"
        )
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"cotrain_inference_cpu_{time.strftime('%Y%m%d')}.json"
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        print(f"appended to {path}")


def _env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


if __name__ == "__main__":
    main()
