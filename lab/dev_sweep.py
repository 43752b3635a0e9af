"""Choose one setting on dev data only (issue 17): the rounds study (``run_rounds_study``: the
student after every self-training step up to ``--max-rounds``; N = 0 is the fine-tuned teacher)
scored on the dev files (``evaluate.split = "dev"``, ``data.max_dev`` sentences a language), once
per value of the setting, over seeds. Writes ``lab/results/dev_sweep_<name>_<date>.md``
and ``.json``: per value and seed the dev scores after each step, mean +- std, the soft
students' fit (loss, classes of their argmax) and the self-training wall time.

Each value's runs go to ``<out>/<key>=<value>/seed-<s>``. Into them are hard-linked the finished
training stages (btf, finetune*, selftrain*) of ``--reuse FOLDER`` (an earlier study of the same
layout, e.g. the test study's ``runs/study-conll``) and of the values run before, except where
the study plans that folder with another fingerprint or (a folder it does not plan) it was made
with another value of the setting: what the setting does not touch is trained once (a
self-training folder that differs only after round 1's soft step gives its round 1:
``runs.partial_twin``), and a value's folder holds nothing of another value's.

    python -m lab.dev_sweep --config configs/e5-small-conll.toml --name soft_lr \\
        --sweep selftrain.soft.lr=3e-4,1e-4,3e-5 --max-rounds 0.5 --seeds 1,2,3 \\
        --out runs/sweep-conll --reuse runs/study-conll --set data.root=../shared/data ...
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from datetime import date
from pathlib import Path

import torch

from lab.study import classes, mean_std, seconds_of, write_report
from xlt_engine import provenance
from xlt_engine.engine.experiment.config import load_config
from xlt_engine.engine.experiment.pipeline import pair_configs, plan_all, seed_config
from xlt_engine.engine.experiment.runs import (
    plan_stage,
    recorded_fingerprint,
    stage_dir,
    with_section,
)
from xlt_engine.fileio import link_tree
from xlt_engine.inputs import read_jsonl
from xlt_engine.studies.sweeps import run_rounds_study

ROOT = Path(__file__).resolve().parents[1]

TRAINED = ("btf", "finetune", "selftrain")  # stage folders --reuse links (name prefixes)
FINISHED = ("model", "base-model")  # what a finished training stage holds


def planned_digests(cfg, seeds: list[int], max_rounds: float) -> dict[Path, str]:
    """Every stage folder the rounds study of ``cfg`` would make: its fingerprint digest."""
    long = with_section(cfg, "selftrain", rounds=max_rounds)
    digests = {}
    for seed in seeds:
        for pc, stage in plan_all(seed_config(long, seed)):
            plan = plan_stage(pc, stage)
            digests[plan.folder] = plan.fingerprint()["digest"]
    return digests


def link_finished(
    sources: list[Path],
    out: Path,
    seeds: list[int],
    planned: dict[Path, str],
    setting: tuple[str, object],
) -> list[str]:
    """Hard-link into ``out/seed-<s>/<pair>`` every finished training stage folder of
    ``<source>/seed-<s>/<pair>`` it lacks (the first source that has one wins), unless the
    study plans that folder with another fingerprint, or (a folder it does not plan: a round-1
    twin, another row's run) the folder was made with another value of the swept ``setting``
    (key, value): this value trains its own, and no folder of another value is left where a
    later run in ``out`` would take it for its own (and stop, stale). Returns what it linked
    (``seed-<s>/<pair>/<folder>``)."""
    key, value = setting
    value = json.loads(json.dumps(value))  # as a fingerprint records it
    linked = []
    for source in sources:
        for seed in seeds:
            for pair in sorted((source / f"seed-{seed}").glob("*-*")):
                if not pair.is_dir():  # the seed's tables (all-dev.json...)
                    continue
                for folder in sorted(pair.iterdir()):
                    done = any((folder / f).is_dir() for f in FINISHED)
                    if not (folder.is_dir() and folder.name.startswith(TRAINED) and done):
                        continue
                    dst = out / f"seed-{seed}" / pair.name / folder.name
                    theirs = recorded_fingerprint(folder) or {}
                    want = planned.get(dst)
                    if want is not None:
                        ok = want == theirs.get("digest")
                    else:
                        ok = theirs.get("settings", {}).get(key, value) == value
                    if dst.exists() or not ok:
                        continue
                    link_tree(folder, dst)
                    linked.append(str(dst.relative_to(out)))
    return linked


def selftrain_folders(cfg, seeds: list[int], max_rounds: float) -> list[tuple[int, Path]]:
    """(seed, folder) of each self-training run the rounds study made (one per seed and
    pair)."""
    long = with_section(cfg, "selftrain", rounds=max_rounds)
    return [
        (seed, stage_dir(pc, "selftrain"))
        for seed in seeds
        for pc in pair_configs(seed_config(long, seed))
    ]


def soft_fit(folders: list[tuple[int, Path]]) -> list[dict]:
    """Per seed, pair and self-training round: the soft step's final loss, and the classes of
    the teacher's and the soft student's argmax on the target rows (``filter.json``)."""
    fits = []
    for seed, st in folders:
        rounds = [r for r in read_jsonl(st / "selftrain.jsonl") if r.get("step") == "soft"]
        for rec in rounds:
            r = rec["round"]
            fit = {"seed": seed, "pair": st.parent.name, "round": r, "loss": rec["loss"]}
            f = st / f"round-{r}" / "filter.json"
            if f.is_file():
                c = json.loads(f.read_text(encoding="utf-8"))
                for k in ("teacher_distribution", "student_distribution", "teacher_agreement"):
                    if k in c:
                        fit[k] = c[k]
            fits.append(fit)
    return fits


def selftrain_seconds(folders: list[tuple[int, Path]]) -> float:
    """The self-training runs' wall time over seeds and pairs (a round 1 taken from another
    folder counts what it took there: ``lab/study.py``'s ``seconds_of``)."""
    return sum(seconds_of(st) for _, st in folders)


def parse_sweep(text: str) -> tuple[str, list[str]]:
    key, sep, values = text.partition("=")
    vals = [v.strip() for v in values.split(",") if v.strip()]
    if not sep or not key.strip() or not vals:
        raise SystemExit(f"--sweep: expected KEY=V1,V2,..., got {text!r}")
    return key.strip(), vals


def run_sweep(args, argv: list[str]) -> dict:
    key, values = parse_sweep(args.sweep)
    seeds = [int(s) for s in args.seeds.split(",")]
    start = time.perf_counter()
    runs = {}
    sources = [Path(args.reuse)] if args.reuse else []
    for value in values:
        out = Path(args.out) / f"{key}={value}"
        sets = [*args.overrides, f"{key}={value}", "evaluate.split=dev", f"out={str(out)!r}"]
        cfg = load_config(args.config, sets)
        planned = planned_digests(cfg, seeds, args.max_rounds)
        now = cfg.value_at(key)  # the value as the config reads it
        linked = link_finished(sources, out, seeds, planned, (key, now))
        print(f"=== {key} = {value}: {len(linked)} finished stage folders linked")
        sources.append(out)  # a later value links what this one made and it leaves alone
        t0 = time.perf_counter()
        result = run_rounds_study(cfg, seeds, args.max_rounds, resume=True, echo=print)
        folders = selftrain_folders(cfg, seeds, args.max_rounds)
        runs[value] = {
            "scores": result["scores"],
            "mean_std": {
                row: {t: mean_std(v) for t, v in per_target.items()}
                for row, per_target in result["scores"].items()
            },
            "soft_fit": soft_fit(folders),
            "selftrain_seconds": round(selftrain_seconds(folders), 1),
            "sweep_seconds": round(time.perf_counter() - t0, 1),
            "linked": linked,
            "metric": result["metric"],
        }
    return {
        "name": args.name,
        "date": date.today().isoformat(),
        "command": shlex.join(["python", "-m", "lab.dev_sweep", *argv]),
        "config": args.config,
        "overrides": args.overrides,
        "how": args.how,
        "key": key,
        "values": values,
        "seeds": seeds,
        "max_rounds": args.max_rounds,
        "runs": runs,
        "seconds": round(time.perf_counter() - start, 1),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "environment": provenance.environment(torch.device("cpu")),
    }


def render(report: dict) -> str:
    key, seeds = report["key"], report["seeds"]
    first = next(iter(report["runs"].values()))
    metric = "entity F1" if first["metric"] == "entity_f1" else "accuracy"
    steps = list(first["scores"])
    targets = sorted({t for row in first["scores"].values() for t in row})
    lines = [
        f"# Dev sweep: {report['name']}, {report['date']}",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Data: {report['how']}" if report["how"] else "",
        "",
        f"Target dev {metric} (%), mean ± std over seeds {seeds}, per value of `{key}` (rows) "
        f"after each self-training step (columns; N = 0: the fine-tuned teacher):",
        "",
    ]
    for t in targets:
        lines += [f"Target {t}:", "", f"| {key} | " + " | ".join(steps) + " | self-training time |",
                  "|---|" + "---|" * (len(steps) + 1)]  # fmt: skip
        for value, run in report["runs"].items():
            cells = []
            for step in steps:
                m, sd = run["mean_std"][step].get(t, (None, None))
                cells.append("–" if m is None else f"{100 * m:.2f} ± {100 * sd:.2f}")
            minutes = run["selftrain_seconds"] / 60
            lines.append(f"| {value} | " + " | ".join(cells) + f" | {minutes:.1f} min |")
        lines += ["", "Per seed (%):", "", f"| {key} | step | " + " | ".join(f"seed {s}" for s in seeds) + " |",
                  "|---|---|" + "---|" * len(seeds)]  # fmt: skip
        for value, run in report["runs"].items():
            for step in steps:
                vals = run["scores"][step].get(t, [])
                lines.append(
                    f"| {value} | {step} | " + " | ".join(f"{100 * v:.2f}" for v in vals) + " |"
                )
        lines.append("")
    # the argmax classes are recorded by the filter after a soft step (none after the last, N = r - 0.5)
    fits = [f for run in report["runs"].values() for f in run["soft_fit"]]
    seen = any("student_distribution" in f for f in fits)
    more = " | soft student's classes | agreement with teacher" if seen else ""
    lines += ["The soft steps' final loss" + (" and the student's argmax on the target rows" if seen else "") + ":",
              "", f"| {key} | seed | pair | round | loss{more} |",
              "|---|---|---|---|---|" + ("---|---|" if seen else "")]  # fmt: skip
    for value, run in report["runs"].items():
        for f in run["soft_fit"]:
            cells = [value, f["seed"], f["pair"], f["round"], f"{f['loss']:.4f}"]
            if seen:
                cells.append(
                    classes(f["student_distribution"]) if "student_distribution" in f else "–"
                )
                cells.append(
                    f"{100 * f['teacher_agreement']:.1f}%" if "teacher_agreement" in f else "–"
                )
            lines.append("| " + " | ".join(map(str, cells)) + " |")
    env = report["environment"]
    lines += [
        "",
        f"Whole sweep: {report['seconds'] / 60:.1f} min on {report['machine']}; torch "
        f"{env.get('torch')}, xlt-engine {env.get('xlt_engine')} ({env.get('git_sha', '')[:10]}).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="the experiment config")
    p.add_argument("--name", required=True, help="e.g. conll_e5small_soft_lr_cpu")
    p.add_argument("--sweep", required=True, help="KEY=V1,V2,...: the setting and its values")
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--max-rounds", type=float, default=0.5)
    p.add_argument("--out", required=True, help="folder for the runs")
    p.add_argument("--reuse", help="an earlier study's folder: link its finished stages")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--how", default="", help="how the data was subsampled, for the table")
    p.add_argument("--results", default=str(ROOT / "lab" / "results"))
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    report = run_sweep(args, argv)
    write_report(Path(args.results), f"dev_sweep_{args.name}", report, render(report))


if __name__ == "__main__":
    main()
