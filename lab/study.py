"""The paper's ablation on real data (issue 17): the rows of its tables 5-6 (Ours, -AT, -VM,
-BTF, -ST, direct transfer) over seeds, run by ``run_ablate``, written with every seed's score,
mean +- std and each row's wall time to ``lab/results/study_<name>_<date>.md`` and
``.json``.

A row's wall time is what it takes to make that row from nothing: the sum, over seeds and
target pairs, of the ``seconds`` in the ``run.json`` of every stage it needs (btf, the
fine-tuned model, self-training, its evaluation), a stage made once and linked into the other
pairs counted once (``row_seconds``), so stages shared between rows count in each, and so does
a round 1 one self-training row took from another (``registry.Partial``: the shared round 1 is
laid down in its folder). The whole study's wall time is measured around the call. The report
also says what each row ran, so that ``lab.tables`` joins only like with like: the settings
(``resolved``: the resolved config less the where) and per row the engine stages its folders
belong to (``stages``). ``--jobs N`` runs the rows and seeds side by side first, as
``xlt-engine ablate --jobs N`` does (one process a core, threads divided, or one a GPU); the
tables are then the serial run's. ``--merge A.json B.json`` writes one study from studies of
the same settings on other seeds or with other rows (a study extended by a later run).

    python -m lab.study --config configs/e5-small-conll.toml --name conll_e5small_cpu \\
        --seeds 1,2,3 --out runs/study-conll --set data.max_train=600 ...
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shlex
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch

from lab.tables import learning_part, settings_differ
from xlt_engine import provenance
from xlt_engine.engine.experiment.ablations import fixed_threshold, soft_only, without_btf
from xlt_engine.engine.experiment.config import load_config, to_dict
from xlt_engine.engine.experiment.pipeline import pair_configs
from xlt_engine.engine.experiment.runs import (
    FINGERPRINT,
    model_stage,
    stage_dir,
    with_linear_head,
    with_section,
)
from xlt_engine.engine.experiment.stages.selftrain import teacher_models
from xlt_engine.inputs import read_jsonl
from xlt_engine.studies.ablate import ABLATION_ROWS, method_rows, run_ablate, with_changes
from xlt_engine.studies.tables import ablation_table

ROOT = Path(__file__).resolve().parents[1]


def row_stages(pc, fixed_alpha: float) -> dict[str, list[Path]]:
    """The stage folders each ablation row of one seed's pair needs (``run_ablate``'s runs),
    with several sources also each source's rows alone (``ablation_rows``)."""

    def ev(c, model):
        return stage_dir(with_section(c, "evaluate", model=model), "evaluate")

    def teachers(c):  # round 1's teacher, or one per source
        return [stage_dir(*model_stage(t, name)) for t, name in teacher_models(c).values()]

    def method(c):  # Ours, -ST and direct transfer of one config
        btf = stage_dir(c, "btf")
        plus_btf = [btf, stage_dir(c, "finetune")]
        direct = with_linear_head(with_section(c, "finetune", init="pretrained"))
        return {
            "Ours": [btf, *teachers(c), stage_dir(c, "selftrain"), ev(c, "selftrain")],
            "- ST": [*plus_btf, ev(c, "finetune")],
            "direct transfer": [
                stage_dir(direct, "finetune"),
                ev(with_linear_head(c), "finetune-direct"),
            ],
        }

    fixed = fixed_threshold(pc, fixed_alpha)
    linear = with_linear_head(pc)
    nobtf = without_btf(pc)
    soft = soft_only(pc)
    btf = stage_dir(pc, "btf")
    ours = method(pc)
    rows = {
        "Ours": ours["Ours"],
        "- AT": [btf, *teachers(fixed), stage_dir(fixed, "selftrain"), ev(fixed, "selftrain")],
        "- VM": [btf, *teachers(linear), stage_dir(linear, "selftrain"), ev(linear, "selftrain")],
        "- BTF": [*teachers(nobtf), stage_dir(nobtf, "selftrain"), ev(nobtf, "selftrain")],
        "- ST": ours["- ST"],
        "direct transfer": ours["direct transfer"],
        "soft only": [btf, *teachers(soft), stage_dir(soft, "selftrain"), ev(soft, "selftrain")],
    }
    for row, changes in method_rows(pc).items():  # Ours with another rule or start
        other = with_changes(pc, changes)
        rows[row] = [btf, *teachers(other), stage_dir(other, "selftrain"), ev(other, "selftrain")]
    if len(pc.source_languages) > 1:
        for lang in pc.source_languages:
            alone = dataclasses.replace(pc, source=lang, sources=())
            rows |= {f"{row} ({lang} only)": f for row, f in method(alone).items()}
    return {row: list(dict.fromkeys(folders)) for row, folders in rows.items()}


def row_folders(run: Path, stages: dict[str, list[Path]]) -> dict[str, list[str]]:
    """``{row: [stage folder, ...]}``: the folders of the pair's run ``run`` each row's score
    read, by name (``row_stages``'), so that a round's records map to their rows without
    reading the row from the folder's name (``lab.tables.rows_of``)."""
    return {
        row: sorted(f.name for f in folders if f.parent == run) for row, folders in stages.items()
    }


def pair_details(run: Path) -> dict:
    """The source dev score of every fine-tuned model, and per self-training run and round:
    alpha, the source rows kept, the pseudo labels (count, classes) and, where the run recorded
    them, the classes of the teacher's and the soft student's argmax on the target rows."""
    dev = {}
    for f in sorted(run.glob("finetune*/dev.json")):
        d = json.loads(f.read_text(encoding="utf-8"))
        dev[f.parent.name] = d["score"]
    rounds = {}
    for f in sorted(run.glob("selftrain*/round-*/filter.json")):
        c = json.loads(f.read_text(encoding="utf-8"))
        rounds[f"{f.parent.parent.name}/{f.parent.name}"] = {
            k: c[k]
            for k in (
                "alpha",
                "source_rows",
                "source_rows_kept",
                "target_rows",
                "pseudo_rows",
                "pseudo_distribution",
                "teacher_distribution",
                "student_distribution",
                "teacher_agreement",
                "class_alpha",
                "collapse",
            )
            if k in c  # the last three: runs made since 2026-11-23's fidelity record
        }
    checks = {}  # each step's student against its teacher, and on the dev files
    for log in sorted(run.glob("selftrain*/selftrain.jsonl")):
        for c in read_jsonl(log):
            if c.get("step") == "check":
                checks[f"{log.parent.name}/round-{c['round']}/{c['of']}"] = {
                    k: c.get(k)
                    for k in ("teacher_agreement", "entity_agreement", "class_agreement", "dev")
                }
    return {"dev": dev, "rounds": rounds, "checks": checks, "precision": precisions(run)}


def precisions(run: Path) -> dict[str, str]:
    """``{stage folder: "bf16" | "fp32" | "bf16, fp32"}``: what each stage's steps and passes
    ran in, as its records say (training logs, self-training's records, an evaluation's
    results). precision "auto" follows the machine (bf16 on CUDA and on a CPU with native bf16),
    so a study spread over machines says which of its cells ran in which."""
    found: dict[str, set[str]] = {}
    for stage in sorted(p for p in run.iterdir() if p.is_dir()):
        logs = [*stage.rglob("metrics.jsonl"), *stage.glob("selftrain.jsonl")]
        said = {r["precision"] for f in logs for r in read_jsonl(f) if r.get("precision")}
        results = stage / "results.json"
        if results.is_file():
            said.add(json.loads(results.read_text(encoding="utf-8")).get("precision"))
        said.discard(None)
        if said:
            found[stage.name] = ", ".join(sorted(said))
    return found


def class_alphas(c: dict) -> str:
    """A round's alpha, or its per-class thresholds where they differ (``O 0.995, B-PER 0.7``)."""
    per = c.get("class_alpha") or {}
    if len(set(per.values())) <= 1:
        return f"{c['alpha']:g}"
    return ", ".join(f"{n} {a:g}" for n, a in per.items())


def classes(distribution: dict[str, int]) -> str:
    """``{"O": 5, "B-PER": 0, ...}`` -> ``"O 5"`` (the classes with a row; "–" for none)."""
    return ", ".join(f"{n} {v:,}" for n, v in distribution.items() if v) or "–"


def seconds_of(folder: Path) -> float:
    """The stage's wall time (every run of it, a resumed one's earlier runs included, where
    run.json records them), plus what the steps it took from another folder (a round 1
    shared between self-training rows) took there."""
    info = json.loads((folder / "run.json").read_text(encoding="utf-8"))
    if "seconds" not in info:
        raise ValueError(f"{folder / 'run.json'}: no seconds (the stage never finished?)")
    if info.get("seconds_all_runs") is not None and "shared_from" not in info:
        info["seconds"] = info["seconds_all_runs"]
    log = folder / "selftrain.jsonl"
    shared = [r["seconds"] for r in read_jsonl(log) if "shared_from" in r] if log.is_file() else []
    return float(info["seconds"]) + sum(shared)


def stage_of(folder: Path) -> str:
    """The engine stage that made ``folder`` (its fingerprint says)."""
    return json.loads((folder / FINGERPRINT).read_text(encoding="utf-8"))["stage"]


def made_in(folder: Path) -> Path:
    """The folder whose run made the stage in ``folder``: its pair twin's (``shared_from`` in
    run.json: another pair's folder, linked; followed while the twin is itself linked), else
    ``folder`` itself; resolved."""
    seen = {folder.resolve()}
    while True:
        info = json.loads((folder / "run.json").read_text(encoding="utf-8"))
        twin = info.get("shared_from")
        if not twin or Path(twin).resolve() in seen:
            return folder.resolve()
        folder = Path(twin)
        seen.add(folder.resolve())


def row_seconds(rows: dict[str, list[Path]]) -> dict[str, float]:
    """Each row's wall time from the stage folders it needs (over seeds and pairs): a stage
    made once and linked into the other pairs (direct transfer's fine-tuning, an evaluation of
    every target) counts once, where summing per pair counted it once a target."""
    return {
        row: sum(seconds_of(f) for f in {made_in(f): f for f in folders}.values())
        for row, folders in rows.items()
    }


def pct(x) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def spread_out(cfg, args, seeds: list[int], chosen: list[str] | None) -> None:
    """``xlt-engine ablate --jobs``'s processes for the study's rows and seeds (one job a seed
    when there are at least as many seeds as jobs, else one a row and seed; each after the
    jobs whose stages it reads): the serial ``run_ablate`` that follows finds every stage
    finished and writes the tables, with the serial run's scores and models."""
    from xlt_engine.studies import jobs as spread
    from xlt_engine.studies.ablate import row_jobs

    whole = args.jobs <= len(seeds)
    work = row_jobs(cfg, seeds, args.fixed_threshold, chosen, whole_seeds=whole)
    if len(work) > 1:
        overrides = [*args.overrides, f"out={args.out!r}"]
        shared = spread.ablate_args(args.config, overrides, args.fixed_threshold, args.out, True)
        spread.run_or_say(shared, work, args.jobs, print, cfg, whole)


def run_study(args, argv: list[str]) -> dict:
    """Run (or reuse) every row over the seeds; the report: per-seed scores, mean +- std, each
    row's wall time, the per-pair details."""
    seeds = [int(s) for s in args.seeds.split(",")]
    cfg = load_config(args.config, [*args.overrides, f"out={args.out!r}"])
    start = time.perf_counter()
    chosen = [r.strip() for r in args.rows.split(",")] if args.rows else None
    if args.jobs > 1:  # the rows and seeds side by side (ablate --jobs); below, the tables
        spread_out(cfg, args, seeds, chosen)
    result = run_ablate(cfg, seeds, args.fixed_threshold, resume=True, echo=print, rows=chosen)
    total = time.perf_counter() - start

    needs: dict[str, list[Path]] = {}  # each row's stage folders, over seeds and pairs
    details = []  # per seed and pair: dev scores of the fine-tuned models, the rounds' filters
    for seed in seeds:
        seeded = dataclasses.replace(cfg, seed=seed, out=str(Path(args.out) / f"seed-{seed}"))
        for pc in pair_configs(seeded):
            made = {
                row: folders
                for row, folders in row_stages(pc, args.fixed_threshold).items()
                if row in result["scores"]
            }
            for row, folders in made.items():
                needs.setdefault(row, []).extend(folders)
            details.append(
                {
                    "seed": seed,
                    "pair": pc.run_dir().name,
                    **pair_details(pc.run_dir()),
                    "row_folders": row_folders(pc.run_dir(), made),
                }
            )
    seconds = row_seconds(needs)
    rows = {
        row: {
            "scores": per_target,
            "seconds": round(seconds[row], 1),
            "stages": sorted({stage_of(f) for f in needs[row]}),  # what its scores read
        }
        for row, per_target in result["scores"].items()
    }
    env = provenance.environment(torch.device("cpu"))
    return with_statistics(
        {
            "name": args.name,
            "date": date.today().isoformat(),
            "command": shlex.join(["python", "-m", "lab.study", *argv]),
            "command_resolved": resolved_command(args),
            "config": args.config,
            "resolved": learning_part(to_dict(cfg)),
            "overrides": args.overrides,
            "how": args.how,
            "metric": result["metric"],
            "seeds": seeds,
            "fixed_alpha": args.fixed_threshold,
            "rows": rows,
            "details": details,
            "study_seconds": round(total, 1),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
            "cpu": provenance.cpu_info(),
            "environment": env,
        }
    )


def with_statistics(report: dict) -> dict:
    """Each row's mean +- std per target, its per-seed average over targets and that
    average's mean +- std, from its per-seed ``scores``."""
    for info in report["rows"].values():
        per_target = info["scores"]
        targets = sorted(per_target)
        n = min(len(per_target[t]) for t in targets)
        average = [statistics.fmean(per_target[t][i] for t in targets) for i in range(n)]
        info |= {
            "mean_std": {t: mean_std(v) for t, v in per_target.items()},
            "average": average,
            "average_mean_std": mean_std(average),
        }
    return report


SAME_IN_MERGED = ("config", "overrides", "how", "metric", "fixed_alpha", "machine")


def _sources(path: Path, report: dict) -> list[dict]:
    """What a merged report keeps of a study it merges: its file, seeds, rows, command, commit
    and wall time; a study that is itself a merge gives its own sources (merging is flat)."""
    if "merged_from" in report:
        return report["merged_from"]
    return [
        {
            "file": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path),
            "seeds": report["seeds"],
            "rows": list(report["rows"]),
            "command": report["command"],
            "study_seconds": report["study_seconds"],
            "environment": report["environment"],
            **({"note": report["note"]} if report.get("note") else {}),
        }
    ]


def merge_studies(paths: list[Path], name: str, how: str | None = None) -> dict:
    """One report from studies of the same settings that extend each other: other seeds of the
    same rows (a study continued by a later run), other rows on the same seeds (rows added
    later), or both. Every row must end up with every seed; a (row, seed) in two studies must
    give the same scores (the same model: a reproducibility check, not an average). Each row's
    wall time sums the studies that added seeds to it; every source's command, commit and wall
    time is kept (``merged_from``). ``how`` replaces the sources' data descriptions, which then
    need not match word for word (a later run's text may mention its own rows). A merged report
    merges again (rows or seeds run after the merge), keeping the first studies as its sources."""
    reports = [json.loads(p.read_text(encoding="utf-8")) for p in paths]
    first = reports[0]
    for path, r in zip(paths[1:], reports[1:], strict=True):
        for key in SAME_IN_MERGED:
            if key == "how" and how is not None:
                continue
            if r.get(key) != first.get(key):
                raise ValueError(
                    f"{path}: {key} is {r.get(key)!r}, {paths[0]} has {first.get(key)!r}: "
                    "only studies of the same settings merge"
                )
        if differ := settings_differ(first, r):  # the settings each ran, where recorded
            raise ValueError(
                f"{path}: other settings than {paths[0]} ({'; '.join(differ)}): only studies of "
                "the same settings merge"
            )
    cells: dict[tuple[str, int], tuple[dict, Path]] = {}  # (row, seed) -> scores per target
    seconds: dict[str, float] = {}
    for path, r in zip(paths, reports, strict=True):
        for row, info in r["rows"].items():
            targets = sorted(info["scores"])
            new = []
            for i, seed in enumerate(r["seeds"]):
                scores = {t: info["scores"][t][i] for t in targets}
                if (row, seed) not in cells:
                    cells[row, seed] = scores, path
                    new.append(seed)
                    continue
                had, where = cells[row, seed]
                if sorted(had) != targets or any(abs(had[t] - scores[t]) > 1e-9 for t in targets):
                    raise ValueError(
                        f"row {row!r}, seed {seed}: {where} gives {had}, {path} gives {scores}: "
                        "not the same model, so the studies do not extend each other"
                    )
            if new and len(new) != len(r["seeds"]):
                raise ValueError(
                    f"{path}: row {row!r} repeats some of its seeds from an earlier study and "
                    f"adds {new}; its wall time cannot be split between them"
                )
            if new:
                seconds[row] = seconds.get(row, 0.0) + r["rows"][row]["seconds"]
    order = sorted({seed for _, seed in cells})
    known = {row: i for i, row in enumerate(ABLATION_ROWS)}
    seen = list(dict.fromkeys(row for r in reports for row in r["rows"]))
    names = sorted(seen, key=lambda row: (known.get(row, len(known)), seen.index(row)))
    rows = {}
    for row in names:
        missing = [s for s in order if (row, s) not in cells]
        if missing:
            raise ValueError(
                f"row {row!r} has no score for seed(s) {missing} in any of the studies; "
                "a row's mean +- std must be over the same seeds as the others'"
            )
        targets = sorted(cells[row, order[0]][0])
        rows[row] = {
            "scores": {t: [cells[row, s][0][t] for s in order] for t in targets},
            "seconds": round(seconds[row], 1),
        }
        stages = {tuple(r["rows"][row].get("stages", ())) for r in reports if row in r["rows"]}
        if len(stages) == 1 and () not in stages:  # every study says the same
            rows[row]["stages"] = list(stages.pop())
    details: dict[tuple[int, str], dict] = {}  # one per seed and pair, each study's folders
    for r in reports:
        for d in r["details"]:
            into = details.setdefault(
                (d["seed"], d["pair"]),
                {**d, "dev": {}, "rounds": {}, "precision": {}, "row_folders": {}},
            )
            for key in ("dev", "rounds", "precision", "row_folders"):
                into[key] = {**d.get(key, {}), **into[key]}
    return with_statistics(
        {
            "name": name,
            "date": date.today().isoformat(),
            **{key: first.get(key) for key in SAME_IN_MERGED},
            **({"resolved": first["resolved"]} if first.get("resolved") else {}),
            **({"how": how} if how is not None else {}),
            "seeds": order,
            "rows": rows,
            "details": [details[k] for k in sorted(details)],
            "study_seconds": round(sum(r["study_seconds"] for r in reports), 1),
            "merged_from": [
                m for path, r in zip(paths, reports, strict=True) for m in _sources(path, r)
            ],
            "environment": reports[-1]["environment"],
        }
    )


def render(report: dict) -> str:
    """The study's Markdown: the table, per-seed scores and wall times, every pair's details."""
    seeds = report["seeds"]
    result = {
        "metric": report["metric"],
        "seeds": seeds,
        "fixed_alpha": report["fixed_alpha"],
        "scores": {row: info["scores"] for row, info in report["rows"].items()},
    }
    merged = report.get("merged_from")
    if merged:
        made = ["Merged from studies of the same settings (other seeds or other rows):", ""] + [
            f"- `{m['file']}` (seeds {m['seeds']}"
            + (f", rows {', '.join(m['rows'])}" if "rows" in m else "")
            + "; xlt-engine "
            f"{m['environment'].get('git_sha', '')[:10]}, {m['study_seconds'] / 60:.1f} min): "
            f"`{m['command']}`" + (f" Note: {m['note']}" if m.get("note") else "")
            for m in merged
        ]
    else:
        made = [f"Command: `{report['command']}`"]
        resolved = report.get("command_resolved")
        if resolved and resolved != report["command"]:
            made += ["", f"The same, each option once as it took effect: `{resolved}`"]
    lines = [
        f"# Ablation study: {report['name']}, {report['date']}",
        "",
        *made,
        "",
        f"Data: {report['how']}" if report["how"] else "",
        "",
        ablation_table(result),
        "Per seed (%) and wall time of each row (all seeds and targets, every stage it needs):",
        "",
        "| model | " + " | ".join(f"seed {s}" for s in seeds) + " | wall time |",
        "|---|" + "---|" * (len(seeds) + 1),
    ]
    for row, info in report["rows"].items():
        cells = [f"{100 * x:.2f}" for x in info["average"]]
        lines.append(f"| {row} | " + " | ".join(cells) + f" | {info['seconds'] / 60:.1f} min |")
    for d in report["details"]:
        if d["dev"]:
            lines += [
                "",
                f"Seed {d['seed']}, {d['pair']}: source dev score of each fine-tuned model (%)",
                "",
            ]
            lines += ["| model | dev |", "|---|---|"]
            lines += [f"| {k} | {100 * v:.2f} |" for k, v in d["dev"].items()]
        else:
            lines += ["", f"Seed {d['seed']}, {d['pair']} (no source dev file: no dev scores)"]
        if d.get("precision"):  # reports made since 2026-11-29
            ran = ", ".join(f"{k} {v}" for k, v in d["precision"].items())
            lines += ["", f"Precision (what each stage's records say): {ran}"]
        if d["rounds"]:  # rows without self-training (- ST, direct transfer) have none
            lines += ["", "| self-training round | alpha | source rows kept | pseudo-labeled rows "
                      "| classes | collapsed |", "|---|---|---|---|---|---|"]  # fmt: skip
        for k, c in d["rounds"].items():
            lines.append(
                f"| {k} | {class_alphas(c)} | {c['source_rows_kept']:,} / {c['source_rows']:,} | "
                f"{c['pseudo_rows']:,} / {c['target_rows']:,} | "
                f"{classes(c['pseudo_distribution'])} | {'; '.join(c.get('collapse') or []) or 'no'} |"
            )
        fitted = {k: c for k, c in d["rounds"].items() if "teacher_distribution" in c}
        if fitted:
            lines += ["", "What the soft step's student learned of its teacher (argmax classes on "
                      "the target rows):", "",
                      "| self-training round | teacher | soft student | agreement |",
                      "|---|---|---|---|"]  # fmt: skip
            for k, c in fitted.items():
                lines.append(
                    f"| {k} | {classes(c['teacher_distribution'])} | "
                    f"{classes(c['student_distribution'])} | {100 * c['teacher_agreement']:.1f}% |"
                )
        if d.get("checks"):
            langs = sorted({lang for c in d["checks"].values() for lang in c.get("dev") or {}})
            head = ["step", "all rows", "entity rows", *(f"dev {lang}" for lang in langs)]
            lines += ["", "Each step's student: its agreement with the round's teacher on the "
                      "target rows (all, the teacher's entity rows)"
                      + (" and its dev score (%)" if langs else ", %"), "",
                      "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]  # fmt: skip
            for k, c in d["checks"].items():
                dev = c.get("dev") or {}
                cells = [pct(c.get("teacher_agreement")), pct(c.get("entity_agreement"))]
                cells += [pct(dev[lang]["score"]) if lang in dev else "–" for lang in langs]
                lines.append(f"| {k} | " + " | ".join(cells) + " |")
    env = report["environment"]
    what = "Whole study (the merged runs' sum)" if merged else "Whole study"
    lines += [
        "",
        f"{what}: {report['study_seconds'] / 60:.1f} min on {report['machine']}; torch "
        f"{env.get('torch')}, xlt-engine {env.get('xlt_engine')} ({env.get('git_sha', '')[:10]}).",
        "",
    ]
    if report.get("note"):
        lines += [report["note"], ""]
    return "\n".join(lines)


def write_report(folder: Path, name: str, report: dict, markdown: str) -> None:
    """``<folder>/<name>_<date>.json`` and ``.md``."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / f"{name}_{date.today().strftime('%Y%m%d')}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    stem.with_suffix(".md").write_text(markdown, encoding="utf-8")
    print(f"wrote {stem}.md and .json")


def resolved_command(args) -> str:
    """The study's command with each option once, as it took effect: a wrapper such as
    ``study_conll_e5small.sh`` puts its own --name, --seeds, --out and --set before the
    caller's, and the later ones win (a --set only over the same key)."""
    out = ["python", "-m", "lab.study", "--config", args.config, "--name", args.name]
    out += ["--seeds", args.seeds, "--out", args.out]
    if args.rows:
        out += ["--rows", args.rows]
    if args.fixed_threshold != 0.9:
        out += ["--fixed-threshold", f"{args.fixed_threshold:g}"]
    last = {s.split("=", 1)[0].strip(): i for i, s in enumerate(args.overrides)}
    for i, s in enumerate(args.overrides):
        if last[s.split("=", 1)[0].strip()] == i:
            out += ["--set", s]
    if args.how:
        out += ["--how", args.how]
    return shlex.join(out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="the experiment config (not with --merge)")
    p.add_argument("--name", required=True, help="e.g. conll_e5small_cpu")
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--fixed-threshold", type=float, default=0.9)
    p.add_argument("--out", help="folder for the runs (not with --merge)")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--rows", help="only these ablation rows, comma-separated (ablate --rows)")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="run the rows and seeds as N processes side by side (ablate --jobs: one a core "
        "with the threads divided, or one a GPU); the tables are the serial run's",
    )
    p.add_argument(
        "--how",
        default="",
        help="how the data was subsampled, for the table (with --merge: replaces the studies' own)",
    )
    p.add_argument("--note", default="", help="what a reader must know of how it ran, last")
    p.add_argument("--results", default=str(ROOT / "lab" / "results"))
    p.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        metavar="STUDY_JSON",
        help="write one study from these study files (same settings; other seeds or other "
        "rows) instead of running",
    )
    return p


def main(argv: list[str] | None = None) -> None:
    p = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.merge:
        report = merge_studies(args.merge, args.name, how=args.how or None)
    elif args.config and args.out:
        report = run_study(args, argv)
    else:
        p.error("give --config and --out (a study to run) or --merge (studies to merge)")
    if args.note:
        report["note"] = args.note
    write_report(Path(args.results), f"study_{args.name}", report, render(report))


if __name__ == "__main__":
    main()
