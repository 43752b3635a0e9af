"""One self-training round (soft + threshold + filter + hard), timed by part.

``run_selftrain`` runs one round (N = 1) with random weights at mBERT-base shapes (the real
119,547-token vocabulary) on real data: CoNLL-2003 ``eng.train`` as the labeled source,
CoNLL-2002 ``esp.train`` as the unlabeled target (its tags are never read). The round's own log
(``selftrain.jsonl``) gives the seconds of each part; this script adds the tokens each part
processes and prints where the time goes:

- ``teacher``: the fine-tuned model's probabilities on the target (inference, written as fp16);
- ``soft``: the student fits them (``soft_label_mse``), loop checkpoint and model save included;
- ``threshold``: the soft student on the source, ``voter_filter`` at alpha 0, the curve, alpha;
- ``filter``: the soft student on the target, ``voter_filter`` at alpha (the pseudo labels);
- ``hard``: cross-entropy on the kept source rows plus the pseudo-labeled target rows;
- ``other``: the rest of the round (reading and tokenising the files, loading the models).

``train tokens/s`` is the loop's own rate (optimizer steps only, no checkpoint writes).
bf16 autocast on CUDA, fp32 on CPU. The teacher is a random task model, so its probabilities are
nearly uniform and hardly any pseudo label passes; the source filter is off so that the hard step
still trains on the whole source (a trained teacher adds the pseudo-labeled target rows to it,
at the same tokens/s).

    python -m benchmarks.bench_round --data ../shared/data               # CUDA
    python -m benchmarks.bench_round --data ../shared/data --device cpu --tiny --limit 200
    python -m benchmarks.bench_round --data ../shared/data --device cpu --tiny --host   # CPU goals

``--host`` counts, on any device, what the steps would cost a GPU's host: syncs inside the soft
and hard steps and the distinct batch shapes they stage (``HostCount``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from contextlib import ExitStack, nullcontext
from pathlib import Path
from unittest import mock

import torch

from benchmarks.host_sync import HostSyncs
from benchmarks.record import append, environment
from xlt_engine.data import load_tokenizer, read_conll
from xlt_engine.data.task import encode, read_task_file
from xlt_engine.engine.method.selftrain import SelftrainConfig, run_selftrain
from xlt_engine.engine.train.config import TrainConfig
from xlt_engine.fileio import atomic_write_text, folder_bytes
from xlt_engine.model import BertConfig, BertForMLM, save_pretrained
from xlt_engine.model.checkpoint import load_encoder
from xlt_engine.model.task import new_task_model, save_task_model

PARTS = ("teacher", "soft", "threshold", "filter", "hard")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="the shared data folder")
    p.add_argument("--source", default="conll2003_en/eng.train")
    p.add_argument("--unlabeled", default="conll2002/esp.train")
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="2 layers, hidden 64 (CPU smoke run)")
    p.add_argument("--limit", type=int, default=0, help="sentences per file (0: all)")
    p.add_argument("--epochs", type=float, default=1.0, help="of the soft and the hard step")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--voters", type=int, default=3)
    p.add_argument(
        "--pad-multiple",
        type=int,
        default=None,
        help="sequence lengths padded to a multiple of this (default: SelftrainConfig's)",
    )
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp one)")
    p.add_argument(
        "--loop-checkpoints",
        action="store_true",
        help="each step also writes the loop's final checkpoint (model and AdamW state), as a "
        "stage did before final_checkpoint existed (and as keep_loop_checkpoints does)",
    )
    p.add_argument(
        "--host",
        action="store_true",
        help="also count what a GPU step would cost the host: the host syncs inside the soft and "
        "hard steps (HostSyncs, with the checks that are free only on the host turned off, as on "
        "a GPU) and the distinct batch shapes the two steps stage (each one a warm-up on a GPU)",
    )
    p.add_argument("--no-save", action="store_true")
    p.add_argument("--json", type=Path, default=None, help="also write the record here")
    return p.parse_args(argv)


def _sliced(path: Path, limit: int, out: Path) -> Path:
    """``path`` itself, or its first ``limit`` sentences as a ``word tag`` CoNLL file."""
    if not limit:
        return path
    sents = read_conll(path)[:limit]
    blocks = ("".join(f"{w} {t}\n" for w, t in zip(s.tokens, s.tags, strict=True)) for s in sents)
    atomic_write_text(out, "\n".join(blocks) + "\n")
    return out


def run(args: argparse.Namespace, work: Path) -> dict:
    device = torch.device(args.device)
    tok = load_tokenizer(args.data / "mbert" / "vocab.txt")
    src_file = _sliced(args.data / args.source, args.limit, work / "source.conll")
    tgt_file = _sliced(args.data / args.unlabeled, args.limit, work / "unlabeled.conll")
    src_data = read_task_file(src_file, "conll")
    labels = src_data.label_set()
    shape = (
        dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
        if args.tiny
        else {}
    )
    cfg = BertConfig(vocab_size=tok.vocab_size, **shape)
    torch.manual_seed(0)
    save_pretrained(BertForMLM(cfg), work / "base", tok)
    teacher = new_task_model(load_encoder(work / "base"), "token", labels, args.voters)
    save_task_model(teacher, work / "teacher", tok)
    del teacher

    # tokens each part reads (the inference parts: every real sub-token of the file)
    src_tokens = int(encode(src_data, tok, labels, args.max_len).lengths.sum())
    tgt_data = read_task_file(tgt_file, "conll", unlabeled=True)
    tgt_tokens = int(encode(tgt_data, tok, labels, args.max_len).lengths.sum())

    def train_cfg(lr: float) -> TrainConfig:
        # as an experiment runs it: no loop checkpoint at the last step (the model is saved)
        kw = dict(epochs=args.epochs, lr=lr, log_every=20, seed=1)
        if "final_checkpoint" in TrainConfig.__dataclass_fields__:  # an older xlt_engine (the
            kw["final_checkpoint"] = args.loop_checkpoints  # writes comparison) always wrote it
        return TrainConfig(**kw)

    st = SelftrainConfig(
        base_model=str(work / "base"),
        teacher=str(work / "teacher"),
        source_file=str(src_file),
        unlabeled_file=str(tgt_file),
        out=str(work / "selftrain"),
        rounds=1,
        max_len=args.max_len,
        batch_size=args.batch,
        soft=train_cfg(3e-5),
        hard=train_cfg(1e-6),
        source_filter="off",
        device=args.device,
        **({"pad_multiple": args.pad_multiple} if args.pad_multiple else {}),
    )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    host = HostCount() if args.host else None
    t0, written = time.perf_counter(), bytes_written()
    with host if host is not None else nullcontext():
        result = run_selftrain(st, echo=None)
    total, written = time.perf_counter() - t0, bytes_written() - written
    by_step = {r["step"]: r for r in result.rounds}
    hard_items = by_step["hard"]["items"]
    epochs = args.epochs
    tokens = {
        "teacher": tgt_tokens,
        "soft": round(tgt_tokens * epochs),
        "threshold": src_tokens,
        "filter": tgt_tokens,
        "hard": None,
    }
    rows = []
    for part in PARTS:
        rec = by_step[part]
        secs = rec["seconds"]
        row = {"part": part, "seconds": round(secs, 3), "share": round(secs / total, 4)}
        if tokens[part] is not None:
            row["tokens"] = tokens[part]
            row["tokens_per_s"] = round(tokens[part] / secs)
        if part in ("soft", "hard"):
            row["steps"] = rec["steps"]
            row["train_tokens_per_s"] = round(rec["tokens_per_s"]) if rec["tokens_per_s"] else None
        rows.append(row)
    other = total - sum(r["seconds"] for r in rows)  # reading, tokenising, loading the models
    rows.append({"part": "other", "seconds": round(other, 3), "share": round(other / total, 4)})
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {
        "rows": rows,
        "total_seconds": round(total, 3),
        "source": {"file": args.source, "sentences": len(src_data), "tokens": src_tokens},
        "unlabeled": {"file": args.unlabeled, "sentences": len(tgt_data), "tokens": tgt_tokens},
        "hard_items": hard_items,
        "pseudo_rows": by_step["filter"]["pseudo_rows"],
        "alpha": by_step["threshold"]["alpha"],
        "shape": {
            "layers": cfg.num_hidden_layers,
            "hidden": cfg.hidden_size,
            "vocab": cfg.vocab_size,
            "voters": args.voters,
            "batch": args.batch,
            "max_len": args.max_len,
            "pad_multiple": st.pad_for(device),
            "epochs": epochs,
        },
        "loop_checkpoints": args.loop_checkpoints,
        "peak_mib": round(peak, 1) if peak is not None else None,
        # bytes this process wrote during the round (``wchar`` of /proc/self/io: every write
        # call, files and pipes; None off Linux) and what its folder holds after it
        "written_mib": None if written is None else round(written / 2**20, 1),
        "folder_mib": round(folder_bytes(Path(st.out)) / 2**20, 1),
        **({"host": host.summary()} if host is not None else {}),
    }


class HostCount:
    """What the round's training steps would cost a GPU's host, counted on any device: the host
    syncs made inside ``loop.train``'s steps (``HostSyncs.in_steps``; the free host-side checks
    turned off, as ``free_checks`` turns them off on a GPU) and the distinct ``input_ids`` shapes
    the loop stages, per step (each step is one epoch here; a GPU warms up once per shape)."""

    def __init__(self):
        self.shapes: dict[str, dict[tuple[int, ...], int]] = {"soft": {}, "hard": {}}
        self.stack = ExitStack()

    def __enter__(self) -> HostCount:
        from xlt_engine.engine.train import loop
        from xlt_engine.kernels import mlm_loss

        for module in (loop, mlm_loss):
            self.stack.enter_context(mock.patch.object(module, "free_checks", lambda d: False))
        staged = loop.stage

        def stage(batch, device):
            ids = batch.get("input_ids")
            if isinstance(ids, torch.Tensor):  # the soft step's batches carry the teacher's probs
                seen = self.shapes["soft" if "probs" in batch else "hard"]
                seen[tuple(ids.shape)] = seen.get(tuple(ids.shape), 0) + 1
            return staged(batch, device)

        self.stack.enter_context(mock.patch.object(loop, "stage", stage))
        self.syncs = self.stack.enter_context(HostSyncs())
        return self

    def __exit__(self, *exc) -> None:
        self.stack.__exit__(*exc)

    def summary(self) -> dict:
        in_steps = self.syncs.in_steps()
        return {
            "batches": sum(sum(seen.values()) for seen in self.shapes.values()),
            "syncs_in_steps": len(in_steps),
            "syncs_in_steps_where": sorted({s.where() for s in in_steps}),
            "syncs_elsewhere": len(self.syncs.syncs) - len(in_steps),
            # per step (an epoch each in this benchmark): distinct [B, T] shapes and lengths T
            "shapes": {step: len(seen) for step, seen in self.shapes.items()},
            "lengths": {step: sorted({k[-1] for k in seen}) for step, seen in self.shapes.items()},
        }


def bytes_written() -> int | None:
    """The bytes this process has written so far (``wchar``), or None where /proc has none."""
    try:
        text = Path("/proc/self/io").read_text()
    except OSError:
        return None
    return int(next(line.split()[1] for line in text.splitlines() if line.startswith("wchar:")))


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=False)
        out = run(args, args.work)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            out = run(args, Path(tmp))
    env = environment(device, "bench_round.py", argv)
    gpu = env["device"]
    record = {
        "what": "one self-training round (N = 1): teacher, soft, threshold, filter, hard",
        **env,
        "precision": "bf16 autocast" if device.type == "cuda" else "fp32",
        **out,
    }
    if not args.no_save:
        append("round", device, record)
    if args.json is not None:
        atomic_write_text(args.json, json.dumps(record) + "\n")
    s = out["shape"]
    print(
        f"{gpu}  L={s['layers']} H={s['hidden']} V={s['vocab']} voters={s['voters']} "
        f"batch={s['batch']} max_len={s['max_len']} epochs={s['epochs']} {record['precision']}"
    )
    print(
        f"source {out['source']['sentences']} sentences ({out['source']['tokens']:,} tokens), "
        f"target {out['unlabeled']['sentences']} ({out['unlabeled']['tokens']:,}); "
        f"alpha {out['alpha']}, pseudo rows {out['pseudo_rows']}, hard items {out['hard_items']}"
    )
    print(f"{'part':<11}{'seconds':>9}{'share':>8}{'tokens/s':>11}{'train tok/s':>13}")
    for r in out["rows"]:
        tps = f"{r['tokens_per_s']:,}" if "tokens_per_s" in r else "-"
        train = f"{r['train_tokens_per_s']:,}" if r.get("train_tokens_per_s") else "-"
        print(f"{r['part']:<11}{r['seconds']:>9.2f}{r['share']:>8.1%}{tps:>11}{train:>13}")
    print(f"{'round':<11}{out['total_seconds']:>9.2f}")
    print(f"written {out['written_mib']} MiB; the folder holds {out['folder_mib']} MiB")
    if "host" in out:
        h = out["host"]
        print(
            f"host: {h['syncs_in_steps']} syncs inside the {h['batches']} training steps "
            f"({h['syncs_elsewhere']} at log points, set-up and inference)"
        )
        for step in ("soft", "hard"):
            print(f"  {step} epoch: {h['shapes'][step]} batch shapes, lengths {h['lengths'][step]}")
    return record


if __name__ == "__main__":
    main()
