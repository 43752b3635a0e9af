"""Choose the pseudo-label threshold on dev data, then report it on test (issue 17): the
paper's threshold study (``run_threshold_study``: self-training with alpha fixed at each of
``--alphas``, and the automatic rule) scored on the dev files (``evaluate.split = "dev"``,
``data.max_dev`` sentences a language), then on the test files; the same models, trained once.
The row with the best mean dev score over seeds (averaged over targets; ties: the first) is the
choice, and its test score is the one to quote. Writes
``lab/results/threshold_choice_<name>_<date>.md`` and ``.json``: per row the dev and test
scores per seed, mean +- std, the self-training wall time, and per seed the alpha of round 1
and the classes of its pseudo labels; below the candidates, the two models to measure them
against (+ BTF, which self-training starts from, and direct transfer), on the same files.

    python -m lab.threshold_choice --config configs/e5-small-conll.toml \\
        --name conll_e5small_cpu --alphas 0.5,0.7,0.9 --seeds 1,2,3 --out runs/study-conll \\
        --set data.root=../shared/data ...

Stages already made (by ``xlt-engine ablate --study threshold`` with the same settings, or an
earlier call) are reused, not trained again: a second call only reads and writes the report.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch

from lab.study import classes, mean_std, seconds_of, write_report
from xlt_engine import provenance
from xlt_engine.engine.experiment.ablations import fixed_threshold
from xlt_engine.engine.experiment.config import load_config
from xlt_engine.engine.experiment.pipeline import Parts, pair_configs, run_all, seed_config
from xlt_engine.engine.experiment.runs import stage_dir, with_section
from xlt_engine.engine.experiment.stages.selftrain import SelftrainSection
from xlt_engine.studies.sweeps import run_threshold_study

ROOT = Path(__file__).resolve().parents[1]


def per_seed_average(scores: dict[str, list[float]]) -> list[float]:
    """A row's score per seed, averaged over its targets."""
    targets = sorted(scores)
    n = min(len(scores[t]) for t in targets)
    return [statistics.fmean(scores[t][i] for t in targets) for i in range(n)]


def choose_row(dev: dict[str, dict[str, list[float]]]) -> str:
    """The row of the best mean dev score over seeds (targets averaged); the first on ties."""
    means = {row: statistics.fmean(per_seed_average(s)) for row, s in dev.items() if s}
    if not means:
        raise ValueError("no row has a dev score")
    return max(means, key=lambda row: (means[row], -list(means).index(row)))


#: the rows to measure self-training against, not candidates: run_all's column of each
REFERENCES = {"+ BTF (the teacher; no self-training)": "btf", "direct transfer": "direct"}


def reference_scores(cfg, seeds: list[int]) -> dict[str, dict[str, list[float]]]:
    """The model self-training starts from (+ BTF) and the direct transfer model, scored on
    ``cfg.section(EvaluateSection).split``: the pipeline without self-training, its stages reused (the threshold
    study made them), its table written as ``references.json`` beside each seed's ``all.json``."""
    scores: dict[str, dict[str, list[float]]] = {row: {} for row in REFERENCES}
    for seed in seeds:
        res = run_all(seed_config(cfg, seed), Parts(selftrain=False), resume=True, echo=print,
                      table_name="references")  # fmt: skip
        for target, r in res["targets"].items():
            for row, column in REFERENCES.items():
                if r[column] is not None:
                    scores[row].setdefault(target, []).append(r[column])
    return scores


def row_configs(cfg, alphas: list[float]) -> dict[str, object]:
    """Each row of the threshold study: the config of its self-training run."""
    rows = {f"alpha = {a:g}": fixed_threshold(cfg, a)
            for a in alphas}  # fmt: skip
    return {**rows, f"automatic ({cfg.section(SelftrainSection).rule.threshold})": cfg}


def run_choice(args, argv: list[str]) -> dict:
    seeds = [int(s) for s in args.seeds.split(",")]
    alphas = [float(a) for a in args.alphas.split(",")]
    cfg = load_config(args.config, [*args.overrides, f"out={args.out!r}"])
    test_cfg = with_section(cfg, "evaluate", split="test")
    dev_cfg = with_section(cfg, "evaluate", split="dev")
    start = time.perf_counter()
    dev = run_threshold_study(dev_cfg, seeds, alphas, resume=True, echo=print)
    test = run_threshold_study(test_cfg, seeds, alphas, resume=True, echo=print)
    reference = {"dev": reference_scores(dev_cfg, seeds), "test": reference_scores(test_cfg, seeds)}
    total = time.perf_counter() - start
    chosen = choose_row(dev["scores"])

    rows = {}
    for row, rc in row_configs(test_cfg, alphas).items():
        seconds, runs = 0.0, []
        for seed in seeds:
            for pc in pair_configs(seed_config(rc, seed)):
                folder = stage_dir(pc, "selftrain")
                seconds += seconds_of(folder)
                path = folder / "round-1" / "filter.json"
                if not path.is_file():  # N = 0.5: no pseudo labels
                    continue
                first = json.loads(path.read_text(encoding="utf-8"))
                runs.append(
                    {
                        "seed": seed,
                        "pair": pc.run_dir().name,
                        "folder": str(folder),
                        "alpha": first["alpha"],
                        "pseudo_rows": first["pseudo_rows"],
                        "target_rows": first["target_rows"],
                        "pseudo_distribution": first["pseudo_distribution"],
                    }
                )
        rows[row] = {
            "dev": dev["scores"][row],
            "test": test["scores"][row],
            "selftrain_seconds": round(seconds, 1),
            "round_1": runs,
        }
        for split in ("dev", "test"):
            m, s = mean_std(per_seed_average(rows[row][split]))
            rows[row][f"{split}_mean"], rows[row][f"{split}_std"] = m, s
    references = {}
    for row in REFERENCES:
        references[row] = {split: reference[split][row] for split in ("dev", "test")}
        for split in ("dev", "test"):
            m, s = mean_std(per_seed_average(references[row][split]))
            references[row][f"{split}_mean"], references[row][f"{split}_std"] = m, s
    return {
        "name": args.name,
        "date": date.today().isoformat(),
        "command": shlex.join(["python", "-m", "lab.threshold_choice", *argv]),
        "config": args.config,
        "overrides": args.overrides,
        "how": args.how,
        "metric": test["metric"],
        "seeds": seeds,
        "alphas": alphas,
        "chosen": chosen,
        "rows": rows,
        "references": references,
        "seconds": round(total, 1),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "environment": provenance.environment(torch.device("cpu")),
    }


def render(report: dict) -> str:
    metric = "entity F1" if report["metric"] == "entity_f1" else "accuracy"
    seeds = report["seeds"]
    lines = [
        f"# Threshold chosen on dev data: {report['name']}, {report['date']}\n",
        f"Command: `{report['command']}`\n",
        *([f"Data: {report['how']}\n"] if report["how"] else []),
        f"{metric} (%), mean ± std over seeds {seeds} (targets averaged); the same models scored "
        "on the dev files and on the test files. Chosen on dev: "
        f"**{report['chosen']}**, test {100 * report['rows'][report['chosen']]['test_mean']:.2f} "
        f"± {100 * report['rows'][report['chosen']]['test_std']:.2f}.\n",
        "| row | dev | dev per seed | test | test per seed | self-training time |",
        "|---|---|---|---|---|---|",
    ]
    for row, info in [*report["rows"].items(), *report["references"].items()]:
        cells = []
        for split in ("dev", "test"):
            per = per_seed_average(info[split])
            cells += [
                f"{100 * info[f'{split}_mean']:.2f} ± {100 * info[f'{split}_std']:.2f}",
                " / ".join(f"{100 * x:.2f}" for x in per),
            ]
        name = f"**{row}**" if row == report["chosen"] else row
        took = f"{info['selftrain_seconds'] / 60:.1f} min" if "selftrain_seconds" in info else "-"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {took} |")
    lines += [
        "",
        "The last two rows are references, not candidates: the model self-training starts from "
        "and the direct transfer model. Self-training time: the self-training stages of the row "
        "over all seeds (a round 1 taken from another row counted in each). Round 1's pseudo "
        "labels:\n",
        "| row | seed | pair | alpha | pseudo-labeled rows | classes |",
        "|---|---|---|---|---|---|",
    ]
    for row, info in report["rows"].items():
        for r in info["round_1"]:
            lines.append(
                f"| {row} | {r['seed']} | {r['pair']} | {r['alpha']:g} | "
                f"{r['pseudo_rows']:,} / {r['target_rows']:,} | {classes(r['pseudo_distribution'])} |"
            )
    lines.append(f"\nWhole call: {report['seconds'] / 60:.1f} min on {report['machine']}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="the experiment config")
    p.add_argument("--name", required=True, help="e.g. conll_e5small_cpu")
    p.add_argument("--alphas", default="0.5,0.7,0.9", help="the fixed thresholds, A1,A2,...")
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--out", required=True, help="folder for the runs")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--how", default="", help="how the data was subsampled, for the table")
    p.add_argument("--results", default=str(ROOT / "lab" / "results"))
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    report = run_choice(args, argv)
    write_report(Path(args.results), f"threshold_choice_{args.name}", report, render(report))


if __name__ == "__main__":
    main()
