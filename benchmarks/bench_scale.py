"""Self-training at corpus scale: peak memory and time of ``run_selftrain`` against the size of
the unlabeled target corpus (issue 23).

For each size, a fresh process runs the real ``run_selftrain`` (N = 1.5: soft, hard, soft) with a
tiny random model (1 layer, hidden 32, 3 voters) and the real mBERT vocabulary, on a generated
target corpus of that many sentences (words drawn from the vocabulary's whole words, 5 to 30 per
sentence, seeded) in CoNLL (``word O`` lines) or plain-text form, and a fixed 2,000-sentence
CoNLL source. Soft and hard steps run ``--steps`` optimizer steps each, so training costs the
same at every size and what grows is the rest: reading, encoding, the teacher's probabilities,
the threshold pass, the filter pass, the hard step's data.

Reported per size: wall time, the training steps' time (soft and hard, their checkpoint and
model writes included), the non-training time (the rest), of it the model's forward passes over
the target (``forward_seconds`` of the teacher and filter records: compute, proportional to the
tokens) and the overhead (the rest: reading, encoding, files, filters), the seconds of each
logged part, and
peak memory of the process: ``VmHWM`` (peak resident set: anonymous memory plus the file pages
mapped in, e.g. memory-mapped data being read) and the peak of ``RssAnon`` (anonymous memory
alone: what the kernel cannot drop), sampled every 20 ms.

``--code DIR`` runs another checkout's ``xlt_engine`` (e.g. a ``git worktree`` of an older
commit) for a before / after in one run; the generated files are shared.

    python -m benchmarks.bench_scale --vocab ../shared/data/mbert \\
        --sizes 10000,100000,1000000 --work /tmp/scale
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("teacher", "soft", "threshold", "filter", "hard")
SOURCE_SENTENCES = 2000
TAGS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vocab", type=Path, required=True, help="the mBERT folder (vocab.txt)")
    p.add_argument("--sizes", default="10000,100000,1000000", help="target sentences, by commas")
    p.add_argument("--format", choices=("conll", "text"), default="conll")
    p.add_argument("--work", type=Path, required=True, help="scratch folder (corpora are kept)")
    p.add_argument("--steps", type=int, default=20, help="optimizer steps of each soft/hard step")
    p.add_argument("--code", type=Path, default=ROOT, help="checkout whose xlt_engine runs")
    p.add_argument("--label", default="", help="names the code in the table (e.g. before)")
    p.add_argument("--no-save", action="store_true")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def whole_words(vocab: Path) -> list[str]:
    words = []
    for line in (vocab / "vocab.txt").read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("##") and not line.startswith("[") and line.isalpha():
            words.append(line)
    return words


def write_corpus(path: Path, n: int, fmt: str, words: list[str], seed: int, tagged: bool) -> None:
    """``n`` generated sentences (5-30 whole words each) as CoNLL or plain text, written
    through a temporary file (a generated corpus is reused by later runs)."""
    if path.is_file():
        return
    rng = np.random.default_rng(seed)
    vocab = np.array(words, dtype=object)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "w", encoding="utf-8") as f:
        for lo in range(0, n, 10000):
            m = min(10000, n - lo)
            lengths = rng.integers(5, 31, m)
            picks = vocab[rng.integers(0, len(vocab), int(lengths.sum()))]
            tags = rng.choice(TAGS, int(lengths.sum()), p=[0.8, 0.05, 0.05, 0.05, 0.05])
            starts = np.concatenate([[0], np.cumsum(lengths)])
            out = []
            for i in range(m):
                ws = picks[starts[i] : starts[i + 1]]
                if fmt == "text":
                    out.append(" ".join(ws) + "\n")
                else:
                    ts = tags[starts[i] : starts[i + 1]] if tagged else ["O"] * len(ws)
                    out.append("".join(f"{w} {t}\n" for w, t in zip(ws, ts, strict=True)) + "\n")
            f.write("".join(out))
    os.replace(tmp, path)


def prepare(args: argparse.Namespace) -> dict:
    """The generated source and target corpora and the tiny base / teacher models (made once)."""
    import torch

    from xlt_engine.data import load_tokenizer
    from xlt_engine.model import BertConfig, BertForMLM, save_pretrained
    from xlt_engine.model.checkpoint import load_encoder
    from xlt_engine.model.task import new_task_model, save_task_model

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    words = whole_words(args.vocab)
    write_corpus(work / "source.conll", SOURCE_SENTENCES, "conll", words, 1, tagged=True)
    files = {}
    for n in args.sizes:
        suffix = "conll" if args.format == "conll" else "txt"
        files[n] = work / f"target-{n}.{suffix}"
        write_corpus(files[n], n, args.format, words, 2, tagged=False)
    if not (work / "teacher").is_dir():
        tok = load_tokenizer(args.vocab)
        cfg = BertConfig(
            vocab_size=tok.vocab_size,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
        )
        torch.manual_seed(0)
        save_pretrained(BertForMLM(cfg), work / "base", tok)
        labels = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
        teacher = new_task_model(load_encoder(work / "base"), "token", labels, 3)
        save_task_model(teacher, work / "teacher", tok)
    return files


class Peaks:
    """Peaks of VmRSS and RssAnon of this process, sampled every 20 ms in a thread."""

    def __init__(self):
        self.rss = self.anon = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def sample(self) -> None:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    self.rss = max(self.rss, int(line.split()[1]))
                elif line.startswith("RssAnon:"):
                    self.anon = max(self.anon, int(line.split()[1]))

    def run(self) -> None:
        while not self.stop.wait(0.02):
            self.sample()

    def finish(self) -> dict:
        self.stop.set()
        self.thread.join()
        self.sample()
        hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        return {"peak_rss_mib": round(hwm / 1024, 1), "peak_anon_mib": round(self.anon / 1024, 1)}


def worker(spec: dict) -> dict:
    """One ``run_selftrain`` in this (fresh) process: times and peaks."""
    t_start = time.perf_counter()
    peaks = Peaks()
    import dataclasses

    import torch

    from xlt_engine.engine.method.selftrain import SelftrainConfig, run_selftrain
    from xlt_engine.engine.train.config import TrainConfig

    torch.set_num_threads(int(spec.get("threads", torch.get_num_threads())))
    steps = TrainConfig(max_steps=spec["steps"], lr=3e-5, log_every=10, seed=1, save_minutes=0)
    kwargs = dict(
        base_model=spec["base"],
        teacher=spec["teacher"],
        source_file=spec["source"],
        unlabeled_file=spec["target"],
        out=spec["out"],
        rounds=1.5,
        max_len=128,
        batch_size=32,
        soft=steps,
        hard=dataclasses.replace(steps, lr=1e-6),
        device="cpu",
        source_filter="off",  # a random teacher passes no rule: the hard step gets the source
    )
    if spec["format"] == "text":
        kwargs["unlabeled_format"] = "text"
    t_import = time.perf_counter() - t_start
    t0 = time.perf_counter()
    result = run_selftrain(SelftrainConfig(**kwargs), echo=None)
    total = time.perf_counter() - t0
    parts: dict[str, float] = {}
    for rec in result.rounds:
        parts[rec["step"]] = parts.get(rec["step"], 0.0) + rec.get("seconds", 0.0)
    training = parts.get("soft", 0.0) + parts.get("hard", 0.0)
    forward = sum(r.get("forward_seconds", 0.0) for r in result.rounds)
    filt = [r for r in result.rounds if r["step"] == "filter"][-1]
    return {
        "seconds": round(total, 2),
        "import_seconds": round(t_import, 2),
        "training_seconds": round(training, 2),
        "non_training_seconds": round(total - training, 2),
        "forward_seconds": round(forward, 2),  # inference passes on the target (new code only)
        "overhead_seconds": round(total - training - forward, 2),
        "parts": {k: round(v, 2) for k, v in parts.items()},
        "target_rows": filt["target_rows"],
        "target_units": filt["target_units"],
        **peaks.finish(),
    }


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker))))
        return []
    args.sizes = [int(x) for x in args.sizes.split(",")]
    files = prepare(args)
    label = args.label or str(args.code)
    rows = []
    for n in args.sizes:
        out = args.work / f"run-{label.replace('/', '_')}-{args.format}-{n}"
        if out.exists():
            subprocess.run(["rm", "-rf", str(out)], check=True)
        spec = {
            "base": str(args.work / "base"),
            "teacher": str(args.work / "teacher"),
            "source": str(args.work / "source.conll"),
            "target": str(files[n]),
            "out": str(out),
            "steps": args.steps,
            "format": args.format,
        }
        env = dict(os.environ, PYTHONPATH=str(args.code))
        t0 = time.perf_counter()
        proc = subprocess.run(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--vocab",
                str(args.vocab),
                "--work",
                str(args.work),
                "--worker",
                json.dumps(spec),
            ],
            env=env,
            capture_output=True,
            text=True,
            cwd=str(args.code),
        )
        wall = time.perf_counter() - t0
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not line:
            print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"size {n}: the worker failed (exit {proc.returncode})")
        res = json.loads(line[0][7:])
        rows.append(
            {
                "code": label,
                "format": args.format,
                "sentences": n,
                "process_seconds": round(wall, 2),
                **res,
            }
        )
        subprocess.run(["rm", "-rf", str(out)], check=True)
        r = rows[-1]
        print(
            f"{label:>8} {n:>9,} sentences: {r['seconds']:7.1f} s (training {r['training_seconds']:.1f}, "
            f"other {r['non_training_seconds']:.1f}, of which target forward passes "
            f"{r['forward_seconds']:.1f}), peak RSS {r['peak_rss_mib']:,.0f} MiB, "
            f"anon {r['peak_anon_mib']:,.0f} MiB  {r['parts']}",
            flush=True,
        )
    if not args.no_save:
        import torch

        from benchmarks.record import append, environment

        env = environment(torch.device("cpu"), "bench_scale.py", argv)
        append(
            "scale",
            torch.device("cpu"),
            {"what": "run_selftrain against corpus size", **env, "rows": rows},
        )
    return rows


if __name__ == "__main__":
    main()
