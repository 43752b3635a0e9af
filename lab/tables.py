"""The paper's Table 6 (CoNLL) from lab/study.py reports that each hold some targets, seeds
and rows (the per-job reports of lab/gpu_tables.sh: one process per target and seed), as one
Markdown table: each row's mean +- std per target over the seeds it has, the average over
targets, Ours minus - ST beside the paper's margin, and per row the self-training runs whose
round-1 pseudo labels tripped the collapse guard. Reports of different settings must not be
mixed: their ``config`` and learning overrides must match (data sizes, targets, paths and the
device aside), else it fails naming the file.

    python -m lab.tables lab/results/gpu_h200_20261126/study_gpu_tables_full_*.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

# Table 6 of the paper (mBERT, entity F1 %; "MBERT" is direct transfer), seed 001's text
PAPER = {
    "Ours": {"deu": 76.88, "esp": 78.38, "ned": 82.08},
    "- AT": {"deu": 76.23, "esp": 78.08, "ned": 81.54},
    "- VM": {"deu": 76.76, "esp": 77.51, "ned": 81.39},
    "- BTF": {"deu": 74.26, "esp": 78.12, "ned": 81.23},
    "- ST": {"deu": 72.73, "esp": 76.62, "ned": 80.28},
    "direct transfer": {"deu": 72.24, "esp": 74.96, "ned": 79.31},
}
# overrides that say where and on what a study ran, not how it learned
PLACE = ("targets=", "data.root=", "model.path=", "device=", "data.max_")
ORDER = ("Ours", "- AT", "- VM", "- BTF", "- ST", "direct transfer", "soft only")


def learning_settings(report: dict) -> tuple:
    """The settings a report's scores depend on, the where (targets, paths, device, sizes) aside."""
    return (report["config"], tuple(o for o in report["overrides"] if not o.startswith(PLACE)))


def collect(paths: list[Path]) -> tuple[dict, dict, dict]:
    """``scores[row][target][seed]``, ``collapsed[row]`` (a set of (target, seed)) and
    ``seconds[row]`` over the reports; a (row, target, seed) given twice must agree."""
    scores: dict = {}
    collapsed: dict = {}
    seconds: dict = {}
    first = None
    for path in paths:
        report = json.loads(path.read_text(encoding="utf-8"))
        settings = learning_settings(report)
        if first is None:
            first = (path, settings)
        elif settings != first[1]:
            raise ValueError(f"{path}: settings {settings} differ from {first[0]}'s {first[1]}")
        for row, info in report["rows"].items():
            for target, values in info["scores"].items():
                for seed, value in zip(report["seeds"], values, strict=True):
                    had = scores.setdefault(row, {}).setdefault(target, {}).get(seed)
                    if had is not None and abs(had - value) > 1e-9:
                        raise ValueError(
                            f"{path}: {row} {target} seed {seed} is {value}, before {had}"
                        )
                    scores[row][target][seed] = value
            seconds[row] = seconds.get(row, 0.0) + info["seconds"]
        for d in report["details"]:
            target = d["pair"].split("-")[-1]
            for name, rnd in d["rounds"].items():
                if rnd.get("collapse") and name.endswith("round-1"):
                    row = _row_of(name, report["rows"])
                    if row:
                        collapsed.setdefault(row, set()).add((target, d["seed"]))
    return scores, collapsed, seconds


def _row_of(folder: str, rows: dict) -> str | None:
    """The self-training row a round folder belongs to (``selftrain/`` is Ours; an ablation
    variant's folder carries its change: ``selftrain-alpha0.9``, ``-linear``, ``-direct``),
    among the report's rows."""
    stage = folder.split("/")[0]
    kinds = {
        "selftrain": "Ours",
        "selftrain-linear": "- VM",
        "selftrain-direct": "- BTF",
        "selftrain-softonly": "soft only",
    }
    for row in rows:  # Ours with another start or rule (method_rows): "init = teacher; rule = x"
        parts = [p.split(" = ") for p in row.split("; ") if " = " in p]
        if parts and stage == "selftrain-" + "-".join(
            f"init_{v}" if k == "init" else v for k, v in parts
        ):
            return row
    row = "- AT" if stage.startswith("selftrain-alpha") else kinds.get(stage)
    return row if row in rows else None


def mean_std(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.fmean(values):.2f} ± {100 * sd:.2f} ({len(values)})"


def table(scores: dict, collapsed: dict, seconds: dict) -> str:
    targets = sorted({t for per in scores.values() for t in per})
    rows = sorted(scores, key=lambda r: ORDER.index(r) if r in ORDER else len(ORDER))
    head = [
        "row",
        *targets,
        "average",
        "paper (mBERT) " + " / ".join(targets),
        "round-1 collapse flags",
        "wall (min, all seeds)",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [
            mean_std(list(scores[row].get(t, {}).values())) if t in scores[row] else "–"
            for t in targets
        ]
        full = all(t in scores[row] for t in targets)
        avg = (
            statistics.fmean(statistics.fmean(scores[row][t].values()) for t in targets)
            if full
            else None
        )
        runs = sum(len(v) for v in scores[row].values())
        flags = (
            f"{len(collapsed.get(row, ()))} / {runs}"
            if row not in ("- ST", "direct transfer")
            else "–"
        )
        lines.append(
            f"| {row} | "
            + " | ".join(cells)
            + f" | {f'{100 * avg:.2f}' if avg is not None else '–'} | "
            f"{' / '.join(f'{PAPER[row][t]:.2f}' for t in targets) if row in PAPER else '–'} | "
            f"{flags} | {seconds[row] / 60:.1f} |"
        )
    if "Ours" in scores and "- ST" in scores:
        margin = []
        for t in targets:
            seeds = sorted(set(scores["Ours"].get(t, {})) & set(scores["- ST"].get(t, {})))
            diffs = [scores["Ours"][t][s] - scores["- ST"][t][s] for s in seeds]
            paper = (
                PAPER["Ours"].get(t, 0) - PAPER["- ST"].get(t, 0) if t in PAPER["Ours"] else None
            )
            ours = f"{100 * statistics.fmean(diffs):+.2f}" if diffs else "–"
            margin.append(f"{ours} (paper {paper:+.2f})" if paper is not None else ours)
        lines.append("| Ours − (− ST), same seeds | " + " | ".join(margin) + " | | | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("reports", nargs="+", type=Path, help="lab/study.py .json reports")
    args = p.parse_args(argv)
    print(table(*collect(args.reports)))


if __name__ == "__main__":
    main()
