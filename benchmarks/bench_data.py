"""Data-layer throughput on this machine's CPU: token cache build, corpus builder, alignment,
masking. Each measurement runs in a fresh subprocess so its peak RSS is its own.

    python -m benchmarks.bench_data --data ../shared/data [--lines 1000000]

The text corpora are built from real CoNLL sentences (German and Dutch, as an unlabeled target
corpus would be), each line made unique by a counter so deduplication does not shortcut work.
Results: a table, and ``benchmarks/results/data_cpu_<yyyymmdd>.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time
import numpy as np, torch
from xlt_engine.data import load_tokenizer, read_conll
task, args = sys.argv[1], json.loads(sys.argv[2])
tok = load_tokenizer(args["vocab"])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
if task == "cache":
    from xlt_engine.data.cache import TokenCache
    c = TokenCache.build(args["text"], tok, args["cache"])
    n, unit, extra = len(c), "lines", {"ids": int(c.meta["ids"])}
elif task == "corpus":
    from xlt_engine.data.corpus import build_corpus, entity_names
    names = entity_names([read_conll(args["source"])])
    s = build_corpus(names, args["text"], args["out"], 100)
    n, unit, extra = s.lines_read, "lines", {"entities": s.entities, "kept": s.lines_kept}
elif task == "align":
    from xlt_engine.data.align import align_words
    f = read_conll(args["source"])
    t0 = time.perf_counter()
    a = align_words(tok, [s.tokens for s in f], None, max_len=128)
    n, unit, extra = len(f), "sentences", {"windows": len(a.windows)}
elif task == "mask":
    from xlt_engine.data.masking import MlmMasker
    m = MlmMasker.from_tokenizer(tok, whole_word=args["whole_word"])
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, tok.vocab_size, (32, 128), generator=g)
    ids[:, 0], ids[:, -1] = tok.cls_id, tok.sep_id
    for _ in range(5):
        m(ids, None, g)
    t0 = time.perf_counter()
    reps = 200
    for _ in range(reps):
        m(ids, None, g)
    n, unit, extra = reps, "batches (32x128)", {}
dt = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"task": task, "items": n, "unit": unit, "seconds": dt, "per_second": n / dt,
                  "peak_rss_mib": peak / 1024, "rss_growth_mib": (peak - base) / 1024, **extra}))
"""


def make_text(data: Path, path: Path, lines: int) -> None:
    from xlt_engine.data import read_conll

    sents = [
        " ".join(s.tokens)
        for f in ("conll2003_de/deu.testa", "conll2003_de/deu.testb", "conll2002/ned.train")
        for s in read_conll(data / f)
    ]
    rng = random.Random(0)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(lines):
            f.write(f"{rng.choice(sents)} {i}\n")


def run(task: str, args: dict) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-c", CHILD, task, json.dumps(args)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"{task} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--no-save", action="store_true")
    a = ap.parse_args()
    vocab = a.data / "mbert" / "vocab.txt"
    source = a.data / "conll2003_en" / "eng.train"
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "target.txt"
        make_text(a.data, text, a.lines)
        size_mib = text.stat().st_size / 2**20
        common = {"vocab": str(vocab), "text": str(text), "source": str(source)}
        rows = [
            run("cache", {**common, "cache": str(Path(tmp) / "cache")}),
            run("corpus", {**common, "out": str(Path(tmp) / "task.txt")}),
            run("align", common),
            run("mask", {**common, "whole_word": False}),
            run("mask", {**common, "whole_word": True}),
        ]
    rows[-1]["task"] = "mask (whole word)"
    import numpy
    import tokenizers
    import torch

    result = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "tokenizers": tokenizers.__version__,
        "numpy": numpy.__version__,
        "command": "PYTHONPATH=. python " + " ".join(sys.argv),
        "input": f"{a.lines} lines, {size_mib:.0f} MiB of CoNLL de/nl sentences; mBERT vocab",
        "rows": rows,
    }
    print(
        f"{'task':<20}{'items':>10}  {'unit':<18}{'seconds':>9}{'per second':>13}{'peak MiB':>10}"
    )
    for r in rows:
        print(
            f"{r['task']:<20}{r['items']:>10}  {r['unit']:<18}{r['seconds']:>9.2f}"
            f"{r['per_second']:>13,.0f}{r['peak_rss_mib']:>10.0f}"
        )
    if not a.no_save:
        a.out.mkdir(parents=True, exist_ok=True)
        path = a.out / f"data_cpu_{datetime.date.today():%Y%m%d}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


if __name__ == "__main__":
    main()
