"""How firmly the data pick the automatic threshold (issue 17): the round's soft student is run
again on the source rows, as the threshold step ran it, and the curve is rebuilt on bootstrap
resamples of the source sentences (units: a sentence's words stay together). For each criterion
(``curvature``, the default; ``max_second_difference``, the paper's equation read literally) and
grid (the default, and the default without its 0.995 / 0.999 tail) the table gives the alpha
on the data itself and how often each alpha wins over the resamples.

    python -m lab.threshold_stability runs/study-conll/seed-1/eng-esp/selftrain \\
        --resamples 200 --json lab/results/threshold_stability_<name>.json

The folder must hold the round's soft student (``round-<r>/soft/model``) and ``config.json``;
the source data is read as the stage read it (its packed cache, when still there).
"""

from __future__ import annotations

import argparse
import collections
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from xlt_engine import provenance
from xlt_engine.engine.experiment.config import load_config
from xlt_engine.engine.experiment.execute import build_stage
from xlt_engine.engine.method.selftrain.context import SelftrainContext
from xlt_engine.engine.method.threshold import (
    DEFAULT_GRID,
    choose,
    rule_curve_inputs,
    threshold_grid,
)
from xlt_engine.kernels import voter_filter
from xlt_engine.model.task import load_task_model

GRIDS = {"default": DEFAULT_GRID, "0.50-0.99 by 0.01": DEFAULT_GRID[:-2]}
METHODS = ("curvature", "max_second_difference")


def weighted_curve(conf: np.ndarray, correct: np.ndarray, weight: np.ndarray, ts) -> np.ndarray:
    """accuracy(t) = weighted correct rows above t / weighted rows above t (NaN: none above)."""
    above = conf[None, :] > np.asarray(ts)[:, None]  # [T, N]
    covered = above @ weight
    right = above @ (weight * correct)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(covered > 0, right / covered, np.nan)


def source_rule(folder: Path, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(confidence, correct, unit of each row, classes) of the round's soft student on the
    source rows: the inputs of the pseudo-label rule's curve (``rule_curve_inputs``)."""
    cfg = load_config(folder / "config.json")  # the config the stage ran with
    run = SelftrainContext(build_stage(cfg, "selftrain"), torch.device("cpu"), None, False)
    student = load_task_model(folder / f"round-{r}" / "soft" / "model")
    agreed, conf, _ = voter_filter(run.logits(student, run.src), 0.0)
    gold = torch.from_numpy(run.gold)
    rule_conf, rule_correct = rule_curve_inputs(agreed, conf, gold)
    return (
        rule_conf.double().numpy(),
        rule_correct.double().numpy(),
        np.asarray(run.src_units),
        len(run.labels),
    )


def stability(conf, correct, units, classes: int, resamples: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    n_units = int(units.max()) + 1
    ones = np.ones(len(conf))
    draws = [np.bincount(rng.integers(0, n_units, n_units), minlength=n_units)[units]
             for _ in range(resamples)]  # fmt: skip
    out = {}
    for grid_name, grid in GRIDS.items():
        ts = threshold_grid(classes, grid)
        curves = [weighted_curve(conf, correct, w, ts) for w in [ones, *draws]]
        for method in METHODS:
            picks = [choose(ts, c.tolist(), method)[0] for c in curves]
            out[f"{method}, {grid_name}"] = {
                "alpha": picks[0],
                "resampled": sorted(collections.Counter(picks[1:]).items()),  # [alpha, count]
            }
    return out


def render(report: dict, command: str) -> str:
    """The Markdown: per folder, each criterion and grid with its alpha and the resamples'."""
    lines = ["# How firmly the data pick the automatic threshold", "", f"Command: `{command}`", ""]
    for folder, info in report["folders"].items():
        lines += [
            f"{folder}, round {report['round']}: {info['rows']:,} source rows in "
            f"{info['units']:,} sentences, {report['resamples']} resamples of the sentences "
            f"(seed {report['seed']})",
            "",
            "| criterion, grid | alpha | alpha over the resamples (count) |",
            "|---|---|---|",
        ]
        for name, v in info["table"].items():
            spread = ", ".join(f"{a:g}: {c}" for a, c in v["resampled"])
            lines.append(f"| {name} | {v['alpha']:g} | {spread} |")
        lines.append("")
    env = report["environment"]
    lines.append(f"{env['date']}, {env['device']}; torch {env['torch']}, xlt-engine "
                 f"{env['xlt_engine']} ({env.get('git_sha', '')[:10]}).")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", type=Path, help="selftrain stage folders")
    p.add_argument("--round", type=int, default=1)
    p.add_argument("--resamples", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write the report here (and the .md beside it)")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    report = {"round": args.round, "resamples": args.resamples, "seed": args.seed, "folders": {}}
    for folder in args.folders:
        t0 = time.perf_counter()
        conf, correct, units, classes = source_rule(folder, args.round)
        table = stability(conf, correct, units, classes, args.resamples, args.seed)
        n_units = int(units.max()) + 1
        report["folders"][str(folder)] = {"rows": len(conf), "units": n_units, "table": table}
        print(f"{folder}: {time.perf_counter() - t0:.0f} s")
    report["environment"] = provenance.environment(torch.device("cpu"))
    md = render(report, shlex.join(["python", "-m", "lab.threshold_stability", *argv]))
    print(md)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        args.json.with_suffix(".md").write_text(md, encoding="utf-8")


if __name__ == "__main__":
    main()
