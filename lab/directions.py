"""The paper's ablation directions (its tables 5-6: self-training, BTF, the automatic threshold and
the Voters Module each help) read off committed study reports (``lab/study.py``), side by
side over tasks and language pairs, so the README's summary is a command, not a hand count.

A direction compares Ours with the row that lacks one part, seed by seed on the same target
(the rows of one study share their seeds, data and settings): the difference's mean +- std over
seeds, on how many seeds Ours is above, and a verdict (``holds``: above on every seed; ``holds
on average``: the mean is above, not every seed; ``does not hold``: the mean is not above; ``no
difference``: equal on every seed). A row a study did not run is ``not run``. Beside it, for
each self-training row, on how many seeds a round's pseudo labels collapsed (none, or 99% or
more of one class: all O on NER, all negative on sentiment): where both rows of a direction
collapsed, it compares two collapses, not the parts the paper ablates. Last, every self-training
run (row, seed, target) minus + BTF on its seed, grouped by whether its pseudo labels collapsed.

    python -m lab.directions --name e5small_cpu \\
        --study "CoNLL eng -> esp=lab/results/study_conll_..._20261124.json" ...

writes ``lab/results/directions_<name>_<date>.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from datetime import date
from pathlib import Path

from lab import tables
from lab.study import mean_std, write_report

ROOT = Path(__file__).resolve().parents[1]

# direction -> (the row with the part, the row without it); the paper's tables 5-6
DIRECTIONS = {
    "ST helps": ("Ours", "- ST"),
    "BTF helps": ("Ours", "- BTF"),
    "AT helps": ("Ours", "- AT"),
    "VM helps": ("Ours", "- VM"),
    "+ BTF over direct transfer": ("- ST", "direct transfer"),
}
ONE_CLASS = 0.99  # share of the pseudo labels in one class that counts as a collapse
SELFTRAIN_ROWS = ("Ours", "- AT", "- VM", "- BTF")  # the rows that self-train


def verdict(diffs: list[float]) -> str:
    if all(d == 0 for d in diffs):
        return "no difference"
    if statistics.fmean(diffs) <= 0:
        return "does not hold"
    return "holds" if all(d > 0 for d in diffs) else "holds on average"


def collapsed_round(distribution: dict[str, int]) -> bool:
    """No pseudo label, or ``ONE_CLASS`` of them in one class: the hard step then teaches the
    target one class (all O on NER, all negative on sentiment) or nothing."""
    total = sum(distribution.values())
    return total == 0 or max(distribution.values()) >= ONE_CLASS * total


def collapses(report: dict, row: str, pair: str) -> list[int | None]:
    """Per seed of ``report``, the first round whose pseudo labels of ``row``'s self-training
    on ``pair`` collapsed (``collapsed_round``); 0 where none did, None where the report holds
    no round of that row (a run without details)."""
    out = []
    for seed in report["seeds"]:
        rounds = {}
        for d in report["details"]:
            if d["seed"] != seed or d["pair"] != pair:
                continue
            for key, c in d["rounds"].items():
                if row in tables.rows_of(key, d, report["rows"]):
                    rounds[int(key.partition("/round-")[2])] = c["pseudo_distribution"]
        if not rounds:
            out.append(None)
            continue
        out.append(next((r for r in sorted(rounds) if collapsed_round(rounds[r])), 0))
    return out


def study_directions(label: str, path: Path) -> dict:
    """Every direction on every target of one study report, and its rows' round-1 labels."""
    report = json.loads(path.read_text(encoding="utf-8"))
    rows = report["rows"]
    targets = sorted({t for info in rows.values() for t in info["scores"]})
    pairs = {d["pair"].rpartition("-")[2]: d["pair"] for d in report["details"]}
    out = []
    for target in targets:
        found = {}
        for name, (with_part, without) in DIRECTIONS.items():
            if with_part not in rows or without not in rows:
                missing = [r for r in (with_part, without) if r not in rows]
                found[name] = {"rows": [with_part, without], "not_run": missing}
                continue
            a = rows[with_part]["scores"][target]
            b = rows[without]["scores"][target]
            if len(a) != len(b):
                raise ValueError(
                    f"{path}: rows {with_part!r} and {without!r} hold {len(a)} and {len(b)} "
                    f"scores on {target!r}; a study's rows share their seeds"
                )
            diffs = [100 * (x - y) for x, y in zip(a, b, strict=True)]
            found[name] = {
                "rows": [with_part, without],
                "diffs": diffs,
                "mean_std": mean_std(diffs),
                "above": sum(d > 0 for d in diffs),
                "verdict": verdict(diffs),
            }
        labels = {
            row: collapses(report, row, pairs[target])
            for row in SELFTRAIN_ROWS
            if row in rows and target in pairs
        }
        versus = []  # each self-training run against + BTF on its seed, and whether it collapsed
        if "- ST" in rows:
            base = rows["- ST"]["scores"][target]
            for row, per_seed in labels.items():
                for i, first in enumerate(per_seed):
                    if first is not None:
                        diff = 100 * (rows[row]["scores"][target][i] - base[i])
                        versus.append({"row": row, "seed": report["seeds"][i], "diff": diff,
                                       "collapsed": first > 0})  # fmt: skip
        out.append(
            {"target": target, "directions": found, "collapses": labels, "versus_st": versus}
        )
    return {
        "label": label,
        "file": str(path),
        "seeds": report["seeds"],
        "metric": report["metric"],
        "targets": out,
    }


def _collapse_cell(rounds: list[int | None]) -> str:
    known = [r for r in rounds if r is not None]
    if not known:
        return "–"
    per_seed = " / ".join("–" if r is None else (f"round {r}" if r else "no") for r in rounds)
    return f"{sum(r > 0 for r in known)} of {len(known)} ({per_seed})"


def render(studies: list[dict], name: str) -> str:
    lines = [
        f"# The paper's ablation directions: {name}, {date.today().isoformat()}",
        "",
        "Each direction: Ours (or + BTF) minus the row without the part, in points of the "
        "study's metric, per seed on the same target; mean ± std over seeds, the seeds where "
        "the part helps, the verdict (`python -m lab.directions`).",
        "",
        "| study | target | direction | mean ± std | per seed | seeds above | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in studies:
        for t in s["targets"]:
            for direction, d in t["directions"].items():
                head = f"| {s['label']} | {t['target']} | {direction} ({d['rows'][0]} vs {d['rows'][1]})"
                if "not_run" in d:
                    lines.append(f"{head} | – | – | – | not run ({', '.join(d['not_run'])}) |")
                    continue
                m, sd = d["mean_std"]
                per_seed = " / ".join(f"{x:+.2f}" for x in d["diffs"])
                n = len(d["diffs"])
                lines.append(
                    f"{head} | {m:+.2f} ± {sd:.2f} | {per_seed} | {d['above']} of {n} | "
                    f"{d['verdict']} |"
                )
    lines += [
        "",
        f"Pseudo labels that collapsed: on how many seeds a round's pseudo labels were none or "
        f"{100 * ONE_CLASS:g}% or more of one class, and the first such round per seed (a "
        f"direction between two rows that both collapsed compares two collapses).",
        "",
        "| study | target | " + " | ".join(SELFTRAIN_ROWS) + " |",
        "|---|---|" + "---|" * len(SELFTRAIN_ROWS),
    ]
    for s in studies:
        for t in s["targets"]:
            cells = [_collapse_cell(t["collapses"][r]) if r in t["collapses"] else "not run"
                     for r in SELFTRAIN_ROWS]  # fmt: skip
            lines.append(f"| {s['label']} | {t['target']} | " + " | ".join(cells) + " |")
    runs = [v for s in studies for t in s["targets"] for v in t["versus_st"]]
    if runs:
        lines += [
            "",
            "Every self-training run (each row, seed and target above) minus + BTF (- ST) on its "
            "seed, by whether its pseudo labels collapsed:",
            "",
            "| pseudo labels | runs | mean ± std | runs above + BTF |",
            "|---|---|---|---|",
        ]
        for collapsed, name in ((False, "kept more than one class"), (True, "collapsed")):
            diffs = [v["diff"] for v in runs if v["collapsed"] == collapsed]
            if diffs:
                m, sd = mean_std(diffs)
                above = sum(d > 0 for d in diffs)
                lines.append(f"| {name} | {len(diffs)} | {m:+.2f} ± {sd:.2f} | {above} |")
    lines += ["", "Studies:", ""]
    lines += [f"- {s['label']}: `{s['file']}` (seeds {s['seeds']})" for s in studies]
    return "\n".join(lines) + "\n"


def parse_study(text: str) -> tuple[str, Path]:
    label, sep, path = text.partition("=")
    if not sep or not label.strip():
        raise argparse.ArgumentTypeError(f"--study {text!r}: give LABEL=PATH")
    if not Path(path).is_file():
        raise argparse.ArgumentTypeError(f"--study {text!r}: no file {path}")
    return label.strip(), Path(path)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--name", required=True, help="e.g. e5small_cpu")
    p.add_argument(
        "--study",
        action="append",
        type=parse_study,
        required=True,
        metavar="LABEL=PATH",
        help="a study report (.json) and its label in the table; repeat, in table order",
    )
    p.add_argument("--results", default=str(ROOT / "lab" / "results"))
    args = p.parse_args(argv)
    studies = [study_directions(label, path) for label, path in args.study]
    report = {"name": args.name, "date": date.today().isoformat(), "studies": studies}
    write_report(Path(args.results), f"directions_{args.name}", report, render(studies, args.name))
    return report


if __name__ == "__main__":
    main()
