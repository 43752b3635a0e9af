"""What each reading of the paper's automatic threshold picks on the curves our runs recorded
(issue 64, item 3). Every ``threshold.json`` below the given folders holds the soft student's
accuracy on the source rows at each grid point; this applies each criterion to that curve, with
no model and no run, and says where it lands and what share of the source rows passes there.
A curve recorded twice (a soft only row shares round 1 with Ours) counts once.

Criteria (``xlt_engine.engine.method.threshold``): ``curvature`` on the recorded grid (the
engine's default: 0.50 to 0.99 by 0.01, then 0.995 and 0.999), the same without the tail
(``grid = "even"``), the same on every fifth point (0.50, 0.55, ..., 0.95: a second difference
over a step five times as long, so 25x less amplified sampling noise), and
``max_second_difference`` (the paper's equation read literally).

    python -m lab.threshold_criteria lab/results --md lab/results/threshold_criteria_<date>.md
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import statistics
import sys
from pathlib import Path

import numpy as np

from xlt_engine.engine.method.threshold import EVEN_GRID, choose
from xlt_engine.inputs import read_json

COARSE = tuple(round(0.50 + 0.05 * i, 2) for i in range(10))  # 0.50 .. 0.95 by 0.05


def _on(points: tuple[float, ...]):
    keep = {round(p, 4) for p in points}
    return lambda t: np.array([round(float(x), 4) in keep for x in t])


CRITERIA = {  # name: (method, which grid points it reads)
    "curvature": ("curvature", lambda t: np.ones(len(t), dtype=bool)),
    "curvature, no tail": ("curvature", _on(EVEN_GRID)),
    "curvature, 0.05 steps": ("curvature", _on(COARSE)),
    "second difference": ("max_second_difference", lambda t: np.ones(len(t), dtype=bool)),
}


def picks(th: dict) -> dict[str, tuple[float, float | None]] | None:
    """Per criterion, (alpha, the share of source rows at or above it: the coverage the
    record holds at that point); None for a record without a usable curve."""
    t = np.asarray(th.get("thresholds", []), dtype=np.float64)
    acc = np.asarray([np.nan if a is None else a for a in th.get("accuracy", [])], np.float64)
    cov = th.get("coverage", [])
    if len(t) < 3 or len(acc) != len(t) or len(cov) != len(t):
        return None
    out = {}
    for name, (method, which) in CRITERIA.items():
        sel = which(t) & ~np.isnan(acc)
        if sel.sum() < 3:
            continue
        alpha = choose(t[sel], acc[sel], method)[0]
        out[name] = (alpha, cov[int(np.flatnonzero(np.isclose(t, alpha))[0])])
    return out


def collect(folders: list[Path]) -> list[dict]:
    """One row per distinct recorded curve: where it is, its source rows, the alpha the run
    used (and how), and every criterion's pick."""
    rows, seen = [], set()
    for folder in folders:
        for path in sorted(folder.rglob("threshold.json")):
            th = read_json(path)
            key = hashlib.sha256(json.dumps([th.get("thresholds"), th.get("accuracy")]).encode())
            got = picks(th)
            if got is None or key.hexdigest() in seen:
                continue
            seen.add(key.hexdigest())
            task = "CLS" if "cls" in str(path).lower() else "CoNLL"
            rows.append({"curve": str(path.parent.relative_to(folder)), "task": task, "rows": th.get("rows"),
                         "used": (th.get("alpha"), th.get("method")), "picks": got})  # fmt: skip
    return rows


def markdown(rows: list[dict], command: str) -> str:
    names = list(CRITERIA)
    out = ["# What each reading of the automatic threshold picks on the recorded curves", "",
           f"Command: `{command}`", "",
           "Per distinct recorded curve (a soft only row's round 1 is Ours' and counts once): the "
           "alpha each criterion picks and, in brackets, the share of the source rows whose "
           "confidence passes it.", "",
           "| curve | source rows | used | " + " | ".join(names) + " |",
           "|---|---|---|" + "---|" * len(names)]  # fmt: skip
    for r in rows:
        cells = []
        for n in names:
            p = r["picks"].get(n)
            cells.append("–" if p is None else f"{p[0]:g} ({100 * p[1]:.0f}%)")
        alpha, how = r["used"]
        out.append(
            f"| {r['curve']} | {r['rows']:,} | {alpha:g} ({how}) | " + " | ".join(cells) + " |"
        )
    out += ["", "Range of each criterion's pick per task (min - max, median; curves):", "",
            "| task | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]  # fmt: skip
    for task in sorted({r["task"] for r in rows}):
        cells = []
        for n in names:
            got = [r["picks"][n][0] for r in rows if r["task"] == task and n in r["picks"]]
            cells.append(f"{min(got):g} - {max(got):g}, {statistics.median(got):g}; {len(got)}")
        out.append(f"| {task} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--md", type=Path, help="write the table here too")
    args = ap.parse_args(argv)
    rows = collect(args.folders)
    if not rows:
        sys.exit(f"no threshold.json with a curve below {', '.join(map(str, args.folders))}")
    command = shlex.join(["python", "-m", "lab.threshold_criteria", *(argv or sys.argv[1:])])
    text = markdown(rows, command)
    print(text, end="")
    if args.md:
        args.md.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
