"""What the views of a co-training run gave each other, checked against the pool's hidden gold
labels (a study's diagnosis, never read by the training): per iteration and exchange, the rows
chosen (of the candidates above the threshold), the share whose label was right, their classes,
and for MARC the share of 3-star reviews (which the binary task leaves out and an unlabeled pool
keeps).

The pool is read again exactly as the stage read it (its ``config.json``: file, format,
``max_unlabeled`` and the seed), then with its labels: MARC's stars from the CSV rows the pool's
lines name, any other format's labels by reading the file labeled.

    python -m lab.cotrain_moves RUN/seed-*/en-de/cotrain RUN/seed-*/en-de/cotrain-self
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path

from xlt_engine.data.marc import stars_label
from xlt_engine.data.task import read_task_file


def gold_of(stage_cfg: dict) -> tuple[list[str | None], list[int | None]]:
    """Per pool row (as the stage sampled it): its gold label (None: 3-star) and its stars
    (None when the format has none)."""
    pool = read_task_file(
        stage_cfg["unlabeled_file"],
        stage_cfg["format"],
        True,
        stage_cfg["max_unlabeled"],
        stage_cfg["train"]["seed"],
    )
    if stage_cfg["format"] == "marc":
        text = Path(stage_cfg["unlabeled_file"]).read_text(encoding="utf-8")
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        header = next(reader)
        col = header.index("stars")
        stars_at, start = {}, reader.line_num + 1
        for row in reader:
            stars_at[start] = int(row[col])
            start = reader.line_num + 1
        stars = [stars_at[line] for line in pool.lines]
        return [stars_label(s) for s in stars], stars
    labeled = read_task_file(stage_cfg["unlabeled_file"], stage_cfg["format"], False)
    by_line = dict(zip(labeled.lines, labeled.labels, strict=True))
    return [by_line.get(line) for line in pool.lines], [None] * len(pool)


def moves(folder: Path) -> list[dict]:
    stage_cfg = json.loads((folder / "config.json").read_text())["stage_config"]
    gold, stars = gold_of(stage_cfg)
    out = []
    for path in sorted(folder.glob("iter-*/exchange.json"), key=lambda p: int(p.parent.name[5:])):
        rec = json.loads(path.read_text())
        for name, x in rec["exchange"].items():
            rated = [(r, y) for r, y in zip(x["rows"], x["labels"], strict=True) if gold[r]]
            right = sum(gold[r] == y for r, y in rated)
            three = sum(s == 3 for s in (stars[r] for r in x["rows"]))
            out.append(
                {
                    "stage": str(folder),
                    "iteration": rec["iteration"],
                    "exchange": name,
                    "candidates": x["candidates"],
                    "chosen": x["chosen"],
                    "distribution": x["distribution"],
                    "right_of_rated": right / len(rated) if rated else None,
                    "three_star": three / len(x["rows"]) if x["rows"] else None,
                }
            )
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("stages", nargs="+", type=Path, help="cotrain stage folders")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = p.parse_args(argv)
    rows = [m for folder in args.stages for m in moves(folder)]
    print(
        "| stage | iteration | exchange | chosen / candidates | classes | labels right | 3-star |"
    )
    print("|---|---|---|---|---|---|---|")
    for m in rows:
        right = "–" if m["right_of_rated"] is None else f"{100 * m['right_of_rated']:.1f}%"
        three = "–" if m["three_star"] is None else f"{100 * m['three_star']:.1f}%"
        classes = ", ".join(f"{k} {v}" for k, v in m["distribution"].items())
        stage = "/".join(Path(m["stage"]).parts[-3:])
        print(
            f"| {stage} | {m['iteration']} | {m['exchange']} | {m['chosen']} / "
            f"{m['candidates']} | {classes} | {right} | {three} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
