"""Paper 003's language adaptation on real XNLI data at CPU size: fine-tune, + Label Alignment,
translate-train, + Semantic Alignment, + LA + SA, each scored on a target test sample.

The same n English pairs (XNLI dev, drawn from the seed) train every row; the parallel file holds
k other-or-same English dev pairs with their target translations (``xnli-parallel``, same seed);
every row is scored on the same m pairs of the target's test file. Writes
``<out>.json`` (per-row accuracy and wall seconds, the command) and ``<out>.md``.

    python -m lab.study_adaptation --model /tmp/e5-small \\
        --xnli ../shared/data/xnli --target de --out lab/results/study_xnli_adaptation
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

ROWS = {  # row: (label_alignment, parallel file, semantic_alignment)
    "fine-tune": (False, False, False),
    "+ LA": (True, False, False),
    "translate-train": (False, True, False),
    "translate-train + SA": (False, True, True),
    "+ LA + SA": (True, True, True),
}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="encoder folder (Hugging Face layout)")
    p.add_argument("--xnli", type=Path, required=True)
    p.add_argument("--target", default="de")
    p.add_argument("--train", type=int, default=120, help="English pairs that train (n)")
    p.add_argument("--parallel", type=int, default=60, help="parallel items (k)")
    p.add_argument("--test", type=int, default=300, help="target test pairs scored (m)")
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument(
        "--freeze-layers",
        type=int,
        default=0,
        help="bottom layers (and the embeddings, when > 0) kept fixed: a CPU-sized run",
    )
    p.add_argument("--seeds", default="1")
    p.add_argument("--work", type=Path, default=Path("/tmp/study_adaptation"))
    p.add_argument("--out", type=Path, required=True, help="results stem (.json and .md)")
    args = p.parse_args(argv)

    import torch

    from xlt_engine.data.parallel import build_xnli_parallel
    from xlt_engine.data.task import read_task_file
    from xlt_engine.data.tokenizer import load_tokenizer
    from xlt_engine.engine.method.finetune import FinetuneConfig, run_finetune
    from xlt_engine.engine.train.config import TrainConfig
    from xlt_engine.engine.train.inference import evaluate_model
    from xlt_engine.model.task import load_task_model

    torch.set_num_threads(torch.get_num_threads())
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict = {"rows": {r: {} for r in ROWS}}
    for seed in seeds:
        work = args.work / f"seed-{seed}"
        work.mkdir(parents=True, exist_ok=True)
        par = work / "parallel.jsonl"
        build_xnli_parallel(args.xnli, "en", [args.target], args.parallel, seed, par)
        test = read_task_file(args.xnli / f"test-{args.target}.tsv", "xnli", False, args.test, seed)
        for row, (la, use_par, sa) in ROWS.items():
            out = work / row.replace(" ", "").replace("+", "p")
            t0 = time.perf_counter()
            cfg = FinetuneConfig(
                model=args.model,
                train_file=str(args.xnli / "dev-en.tsv"),
                format="xnli",
                out=str(out),
                max_len=128,
                batch_size=16,
                max_train=args.train,
                head="linear",
                freeze_layers=args.freeze_layers,
                freeze_embeddings=args.freeze_layers > 0,
                label_alignment=la,
                parallel_file=str(par) if use_par else None,
                semantic_alignment=sa,
                device="cpu",
                train=TrainConfig(epochs=args.epochs, lr=5e-5, warmup_ratio=0.0, seed=seed,
                                  weight_decay=0.01, log_every=10),
            )  # fmt: skip
            res = run_finetune(cfg, echo=None)
            model = load_task_model(res.model)
            tok = load_tokenizer(res.model)
            score = evaluate_model(model, test, tok, 128, torch.device("cpu"), 16384)["score"]
            seconds = time.perf_counter() - t0
            results["rows"][row][str(seed)] = {"accuracy": score, "seconds": round(seconds, 1)}
            print(f"seed {seed} {row:22s} accuracy {100 * score:.2f}  {seconds:.0f} s", flush=True)
    results |= {
        "model": args.model,
        "target": args.target,
        "train_pairs": args.train,
        "parallel_items": args.parallel,
        "test_pairs": args.test,
        "epochs": args.epochs,
        "freeze_layers": args.freeze_layers,
        "seeds": seeds,
        "command": "python -m lab.study_adaptation "
        + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
    }
    lines = [
        f"XNLI en -> {args.target}, {Path(args.model).name}: n = {args.train} English dev "
        f"pairs, k = {args.parallel} parallel items, accuracy on {args.test} {args.target} test "
        f"pairs (%), seeds {seeds}\n",
        "| row | " + " | ".join(f"seed {s}" for s in seeds) + " | wall s |",
        "|---|" + "---|" * (len(seeds) + 1),
    ]
    for row, per in results["rows"].items():
        cells = [f"{100 * per[str(s)]['accuracy']:.2f}" for s in seeds]
        wall = sum(per[str(s)]["seconds"] for s in seeds)
        lines.append(f"| {row} | " + " | ".join(cells) + f" | {wall:.0f} |")
    table = "\n".join(lines) + "\n\nCommand: `" + results["command"] + "`\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(table)
    print(table)
    return results


if __name__ == "__main__":
    main()
