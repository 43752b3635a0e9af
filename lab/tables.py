"""The paper's Table 6 (CoNLL) or Table 5 (CLS-10 books) from lab/study.py reports that each
hold some targets, seeds and rows (the per-job reports of lab/gpu_tables.sh: one process per
target and seed), as one Markdown table: each row's mean +- std per target over the seeds it
has, the average over targets, Ours minus - ST beside the paper's margin, and per row the
self-training runs whose round-1 pseudo labels tripped the collapse guard. Reports of different
settings must not be mixed: their ``config`` and learning overrides must match (data sizes,
targets, paths and the device aside), or, where a report records the settings it ran
(``resolved``, since 2026-11-29), those settings must (``settings_differ``: a preset changed by a
decision is not the preset its earlier reports ran), in the stages both rows ran where the
reports say them (a row's ``stages``: direct transfer runs no btf), else it fails naming the file.

``--models LABEL RESULTS...`` (repeatable, no reports) prints instead a table of models evaluated
apart, one row per label over its ``results.json`` files (one per seed): each language's
accuracy mean +- std, and each target's recall per class (its lean).

A model the study made but did not evaluate (a stage stopped before the study's evaluation)
and that was evaluated apart with ``xlt-engine run --stage evaluate`` joins the table with
``--evaluated "ROW,TARGET,SEED=<folder>/results.json"``; the table names those cells under it.

    python -m lab.tables lab/results/gpu_h200_20261126/study_gpu_tables_full_*.json
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The paper's Table 6 (CoNLL, entity F1 %: deu, esp, ned) and Table 5's books columns (CLS-10,
# accuracy %: de, fr, and JA as the data's jp), mBERT, seed 001's text; "MBERT" is direct transfer
PAPER = {
    "Ours": {"deu": 76.88, "esp": 78.38, "ned": 82.08, "de": 87.65, "fr": 86.80, "jp": 83.29},
    "- AT": {"deu": 76.23, "esp": 78.08, "ned": 81.54, "de": 88.10, "fr": 85.65, "jp": 81.79},
    "- VM": {"deu": 76.76, "esp": 77.51, "ned": 81.39, "de": 81.10, "fr": 85.15, "jp": 80.75},
    "- BTF": {"deu": 74.26, "esp": 78.12, "ned": 81.23, "de": 81.65, "fr": 82.25, "jp": 81.45},
    "- ST": {"deu": 72.73, "esp": 76.62, "ned": 80.28, "de": 87.65, "fr": 85.55, "jp": 82.69},
    "direct transfer": {
        "deu": 72.24,
        "esp": 74.96,
        "ned": 79.31,
        "de": 76.35,
        "fr": 81.05,
        "jp": 72.44,
    },
}
# The where of a run as dotted keys (a key, or a prefix where it ends in "." or "_"): which
# languages and files, how much of them, the model's folder, the device, the run's folder, seed
# and name. A study sets each; the rest is how it learned and what it scored. The one list, read
# for a report's --sets and for the settings it records (``resolved``), and by lab/tests.
WHERE = (
    "targets",
    "sources",
    "languages.",
    "data.root",
    "data.max_",
    "model.path",
    "device",
    "out",
    "seed",
    "name",
)
ORDER = ("Ours", "- AT", "- VM", "- BTF", "- ST", "direct transfer", "soft only")


def is_learning(key: str) -> bool:
    """Whether a dotted key, or a ``--set key=value``, says how a run learned or what it scored:
    not where (``WHERE``), not how often it logs."""
    key = key.split("=", 1)[0]
    where = any(key == w or (w[-1] in "._" and key.startswith(w)) for w in WHERE)
    return not (where or key.endswith("log_every"))


def learning_part(resolved: dict, prefix: str = "") -> dict:
    """A resolved config (``config.to_dict``) less the where (``WHERE``) and logging, as plain
    JSON (as a report stores it)."""
    out = {}
    for k, v in resolved.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            if part := learning_part(v, f"{key}."):  # a table all where is left out
                out[k] = part
        elif is_learning(key):
            out[k] = v
    return json.loads(json.dumps(out, default=str)) if not prefix else out


def rebuilt(report: dict) -> dict | None:
    """The learning part of the settings a report written before reports recorded them
    (``resolved``, since 2026-11-29) ran: its preset as committed at the report's commit
    (``environment.git_sha``) with its learning overrides, read by today's engine (its defaults
    fill what the preset did not say). None when the commit was dirty (the tree that ran was not
    that commit: a lent GPU's copy of the working tree reports a stale commit), when that commit
    or file is not in this repository, or when today's engine refuses the preset (a renamed key)."""
    from xlt_engine.engine.experiment.config import ConfigError, load_config, to_dict

    env = report.get("environment") or (report.get("merged_from") or [{}])[0].get("environment")
    sha = (env or {}).get("git_sha", "") if isinstance(env, dict) else ""
    if not sha or not all(c in "0123456789abcdef" for c in sha):  # none, or "+dirty"
        return None
    try:
        shown = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{sha}:{report['config']}"],
            capture_output=True,
            text=True,
        )
    except OSError:  # no git here
        return None
    if shown.returncode != 0:
        return None
    learning = [o for o in report["overrides"] if is_learning(o)]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return learning_part(
                to_dict(load_config(ROOT / report["config"], learning, shown.stdout))
            )
    except ConfigError:
        return None


def learning_settings(report: dict) -> tuple:
    """The settings a report's scores depend on as its command said them, the where (targets,
    paths, device, sizes) aside: its config and its learning overrides."""
    return (report["config"], tuple(o for o in report["overrides"] if is_learning(o)))


def _dotted(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            flat |= _dotted(v, f"{prefix}{k}.")
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def settings_differ(
    a: dict, b: dict, stages: set[str] | None = None, memo: dict | None = None
) -> list[str] | None:
    """None when the reports ``a`` and ``b`` ran the same learning settings, else what differs.
    Two reports that do not record what they ran (``resolved``, since 2026-11-29) are the same
    when their configs and learning overrides are, as their commands say. Otherwise the
    settings each ran are compared: recorded, or rebuilt from its commit (``rebuilt``), key by
    key where both have the key (a setting added to the engine later is absent from earlier
    records). A preset whose settings changed between the runs differs; the preset and a
    ``--set`` it adopted later do not. ``stages``: the engine stages both rows compared ran (a
    row's ``stages``); the sections of the others are not read (direct transfer runs no btf, so
    a changed btf leaves it the same). ``memo``: rebuilt settings by report, for a caller that
    compares many."""
    if not a.get("resolved") and not b.get("resolved"):
        la, lb = learning_settings(a), learning_settings(b)
        if la == lb:
            return None
        if la[0] != lb[0]:
            return [f"config {la[0]} / {lb[0]}"]
        return [f"learning overrides {list(la[1])} / {list(lb[1])}"]
    if a["config"] != b["config"]:
        return [f"config {a['config']} / {b['config']}"]
    ra, rb = (_ran(r, memo) for r in (a, b))
    if ra is None or rb is None:
        return ["the settings of a report written before 2026-11-29 could not be read back "
                "(its commit or preset is not readable here)"]  # fmt: skip
    unread = set() if stages is None else set(_stage_names()) - set(stages)
    fa, fb = _dotted(ra), _dotted(rb)
    diff = [
        f"{k}: {fa[k]!r} / {fb[k]!r}"
        for k in sorted(fa.keys() & fb.keys())
        if fa[k] != fb[k] and k.split(".")[0] not in unread
    ]
    return diff or None


def _ran(report: dict, memo: dict | None) -> dict | None:
    if report.get("resolved"):
        return report["resolved"]
    if memo is None:
        return rebuilt(report)
    if id(report) not in memo:
        memo[id(report)] = rebuilt(report)
    return memo[id(report)]


def _stage_names() -> tuple[str, ...]:
    from xlt_engine.engine.experiment import registry

    return registry.names()


def stages_of(report: dict, row: str) -> set[str] | None:
    """The engine stages a report's row ran (lab.study records them since 2026-11-29), or
    None: not recorded, so every setting counts."""
    stages = report["rows"][row].get("stages")
    return set(stages) if stages else None


def collect(paths: list[Path], commits: dict | None = None) -> tuple[dict, dict, dict]:
    """``scores[row][target][seed]``, ``collapsed[row]`` (a set of (target, seed)) and
    ``seconds[row]`` over the reports; a (row, target, seed) given twice must agree, and its wall
    counts once (the first report's). Every row must have run the settings of every other
    report's rows, in the stages both ran (``settings_differ``). ``commits``: the commit the
    reports under a path (a file or a folder) ran at, where their record is stale (``ran_at``)."""
    scores: dict = {}
    collapsed: dict = {}
    seconds: dict = {}
    seen: list[tuple[Path, dict, str, set[str] | None]] = []
    memo: dict = {}
    reports = []  # held, so that the memo's ids stay theirs
    for path in paths:
        report = ran_at(json.loads(path.read_text(encoding="utf-8")), path, commits or {})
        reports.append(report)
        for row in report["rows"]:
            mine = stages_of(report, row)
            for other, theirs, their_row, stages in seen:
                if theirs is report:
                    continue
                both = None if mine is None or stages is None else mine & stages
                if diff := settings_differ(theirs, report, both, memo):
                    raise ValueError(
                        f"{path}: other settings than {other}: {'; '.join(diff)} "
                        f"(rows {their_row} / {row})"
                    )
            seen.append((path, report, row, mine))
        for row, info in report["rows"].items():
            cells = new = 0
            for target, values in info["scores"].items():
                for seed, value in zip(report["seeds"], values, strict=True):
                    had = scores.setdefault(row, {}).setdefault(target, {}).get(seed)
                    if had is not None and abs(had - value) > 1e-9:
                        raise ValueError(
                            f"{path}: {row} {target} seed {seed} is {value}, before {had}"
                        )
                    scores[row][target][seed] = value
                    cells, new = cells + 1, new + (had is None)
            # a cell run again (a later loan reran Ours beside soft only) is one cell's wall
            seconds[row] = seconds.get(row, 0.0) + info["seconds"] * (new / cells if cells else 1)
        for d in report["details"]:
            target = d["pair"].split("-")[-1]
            for name, rnd in d["rounds"].items():
                if rnd.get("collapse") and name.endswith("round-1"):
                    for row in rows_of(name, d, report["rows"]):
                        collapsed.setdefault(row, set()).add((target, d["seed"]))
    return scores, collapsed, seconds


def ran_at(report: dict, path: Path, commits: dict) -> dict:
    """``report`` with the commit of the first of ``commits`` (path -> sha) whose path is
    ``path`` or a folder above it, in place of the one it records. On the H200 loans of
    2026-11-26 and -27 a lent GPU's copy of the working tree recorded a "+dirty" commit
    (lab/results/gpu_h200_20261126 ran 467c949 and records fef5ddd+dirty), so their settings
    could not be rebuilt (``rebuilt``); the commit that ran is in each folder's README."""
    here = Path(path).resolve()
    for where, sha in commits.items():
        there = Path(where).resolve()
        if here == there or there in here.parents:
            env = dict(report.get("environment") or {}, git_sha=sha)
            return dict(report, environment=env)
    return report


def rows_of(name: str, detail: dict, rows: dict) -> list[str]:
    """The rows, among the report's ``rows``, whose scores read the stage folder of ``name``
    (``<folder>/round-<k>...``, a key of a pair's ``rounds`` or ``checks``): for a row the pair's
    ``detail`` records (``row_folders``, lab.study since 2026-11-29), its recorded folders; for
    a row of a report written before, the folder's name (``row_of``)."""
    folder = name.split("/")[0]
    recorded = detail.get("row_folders", {})
    by_name = row_of(folder, {r: rows[r] for r in rows if r not in recorded})
    return [r for r in rows if folder in recorded.get(r, ()) or r == by_name]


def row_of(folder: str, rows: dict) -> str | None:
    """The self-training row a round folder belongs to (``selftrain/`` is Ours; an ablation
    variant's folder carries its change: ``selftrain-alpha0.9``, ``-linear``, ``-direct``),
    among the report's rows. What every row of a preset shares in the name (``-rounds<N>``,
    ``-src<filter>``: CLS's two rounds) names no row and is read past."""
    stage = re.sub(r"-(rounds|src)[^-/]+", "", folder.split("/")[0])
    kinds = {
        "selftrain": "Ours",
        "selftrain-linear": "- VM",
        "selftrain-direct": "- BTF",
        "selftrain-softonly": "soft only",
    }
    changes = sorted(stage.split("-")[1:])  # the engine names a rule before a start
    for row in rows:  # Ours with another start or rule (method_rows): "init = teacher; rule = x"
        parts = [p.split(" = ") for p in row.split("; ") if " = " in p]
        if parts and changes == sorted(f"init_{v}" if k == "init" else v for k, v in parts):
            return row
    row = "- AT" if stage.startswith("selftrain-alpha") else kinds.get(stage)
    return row if row in rows else None


def paper_cell(row: str, target: str) -> str:
    value = PAPER[row].get(target)
    return "–" if value is None else f"{value:.2f}"


def mean_std(values: list[float]) -> str:
    """``mean ± std (n)`` in %; one seed has no spread to show: ``value (1)``."""
    if len(values) == 1:
        return f"{100 * values[0]:.2f} (1)"
    return f"{100 * statistics.fmean(values):.2f} ± {100 * statistics.stdev(values):.2f} ({len(values)})"


def wall_cell(seconds: float | None) -> str:
    """Minutes of a row's reports; "–" for a row whose cells were all evaluated apart (no report
    timed them)."""
    return "–" if seconds is None else f"{seconds / 60:.1f}"


# each component's share: Ours less the row without it, over the seeds both have (soft only
# lacks the hard steps: Ours less it is the hard step's share; the paper has no such row)
SHARES = ("- AT", "- VM", "- BTF", "- ST", "soft only")


def share_line(scores: dict, row: str, targets: list[str], width: int) -> str:
    """``| Ours − (− X), same seeds | +d (n; paper +p) | ... | average |``: per target the mean
    of Ours' score less ``row``'s over the seeds both have (n of them), beside the paper's; the
    average over the targets where every target has a seed."""
    cells, means = [], []
    for t in targets:
        seeds = sorted(set(scores["Ours"].get(t, {})) & set(scores[row].get(t, {})))
        diffs = [scores["Ours"][t][s] - scores[row][t][s] for s in seeds]
        paper = PAPER["Ours"][t] - PAPER[row][t] if t in PAPER.get(row, {}) else None
        said = [f"{len(diffs)}"] if diffs else []
        said += [f"paper {paper:+.2f}"] if paper is not None else []
        if diffs:
            means.append(statistics.fmean(diffs))
        mean = f"{100 * means[-1]:+.2f}" if diffs else "–"
        cells.append(mean + (f" ({'; '.join(said)})" if said else ""))
    average = f"{100 * statistics.fmean(means):+.2f}" if len(means) == len(targets) else "–"
    label = "Ours − soft only (the hard step)" if row == "soft only" else f"Ours − ({row})"
    label = label.replace("(- ", "(− ")
    return (
        f"| {label}, same seeds | "
        + " | ".join([*cells, average])
        + " |"
        + " |" * (width - 2 - len(targets))
    )


def table(scores: dict, collapsed: dict, seconds: dict, wall: bool = True) -> str:
    targets = sorted({t for per in scores.values() for t in per})
    rows = sorted(scores, key=lambda r: ORDER.index(r) if r in ORDER else len(ORDER))
    head = [
        "row",
        *targets,
        "average",
        "paper (mBERT) " + " / ".join(targets),
        "round-1 collapse flags",
        *(["wall (min, all seeds)"] if wall else []),
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
            f"{' / '.join(paper_cell(row, t) for t in targets) if row in PAPER else '–'} | "
            f"{flags} |" + (f" {wall_cell(seconds.get(row))} |" if wall else "")
        )
    for row in SHARES:
        if "Ours" in scores and row in scores:
            lines.append(share_line(scores, row, targets, len(head)))
    return "\n".join(lines)


def evaluated_apart(spec: str) -> tuple[str, str, int, float]:
    """``ROW,TARGET,SEED=<folder>/results.json`` (an ``xlt-engine run --stage evaluate`` record)
    -> (row, target, seed, the target's score), failing with the spec and file named."""
    head, sep, path = spec.partition("=")
    parts = [p.strip() for p in head.split(",")]
    if not sep or len(parts) != 3 or not parts[2].isdigit():
        raise ValueError(f"--evaluated {spec!r}: expected ROW,TARGET,SEED=<folder>/results.json")
    row, target, seed = parts[0], parts[1], int(parts[2])
    record = json.loads(Path(path).read_text(encoding="utf-8"))
    languages = record.get("languages", {})
    if target not in languages:
        raise ValueError(f"{path}: no score for {target!r} (it has {sorted(languages)})")
    return row, target, seed, languages[target]["score"]


def add_evaluated(scores: dict, specs: list[str]) -> list[str]:
    """Join the cells of models evaluated apart to ``scores`` (a cell a report has already must
    agree); returns their labels for the table's note."""
    labels = []
    for spec in specs:
        row, target, seed, value = evaluated_apart(spec)
        had = scores.setdefault(row, {}).setdefault(target, {}).get(seed)
        if had is not None and abs(had - value) > 1e-9:
            raise ValueError(f"--evaluated {spec!r}: {value}, a report has {had}")
        scores[row][target][seed] = value
        labels.append(f"{row} {target} seed {seed}")
    return labels


def model_table(groups: list[list[str]], only: list[str] | None = None) -> str:
    """``--models``: per group ``[label, results.json, ...]`` (an evaluation per seed of the
    same kind of model), the source's and each target's accuracy mean ± std over the files,
    and each target's recall per class in % (the mean over the files), classes in order."""
    rows = []
    for label, *paths in groups:
        if not paths:
            raise ValueError(f"--models {label!r}: no results.json named")
        records = []
        for path in paths:
            record = json.loads(Path(path).read_text(encoding="utf-8"))
            if "languages" not in record or "source" not in record:
                raise ValueError(f"{path}: not an evaluation's results.json (no 'languages')")
            if records and record["source"] != records[0][1]["source"]:
                raise ValueError(
                    f"{path}: source {record['source']!r}, not {records[0][1]['source']!r}"
                )
            records.append((path, record))
        rows.append((label, records))
    first = rows[0][1][0][1]
    source = first["source"]
    targets = sorted({t for _, recs in rows for _, r in recs for t in r["languages"]} - {source})
    if only:
        unknown = sorted(set(only) - set(targets))
        if unknown:
            raise ValueError(f"--targets: {unknown} in none of the files (they have {targets})")
        targets = [t for t in targets if t in only]
    classes = {}
    for t in targets:
        found = {
            c
            for _, recs in rows
            for _, r in recs
            for c in r["languages"].get(t, {}).get("confusion", {})
        }
        classes[t] = sorted(found)
    head = [
        "model",
        source,
        *targets,
        *(f"{t} recall % ({' / '.join(classes[t])})" for t in targets),
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, records in rows:
        cells = []
        for lang in (source, *targets):
            have = [r["languages"][lang]["score"] for _, r in records if lang in r["languages"]]
            if have and len(have) != len(records):
                missing = [p for p, r in records if lang not in r["languages"]]
                raise ValueError(
                    f"{missing[0]}: no score for {lang!r}; the other files of {label!r} have one"
                )
            cells.append(mean_std(have) if have else "–")
        for t in targets:
            recall = []
            for c in classes[t]:
                per = []
                for path, r in records:
                    row = r["languages"].get(t, {}).get("confusion", {}).get(c)
                    if row is None:
                        raise ValueError(f"{path}: no confusion row for {t} class {c!r}")
                    per.append(row.get(c, 0) / sum(row.values()))
                recall.append(f"{100 * statistics.fmean(per):.1f}")
            cells.append(" / ".join(recall))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("reports", nargs="*", type=Path, help="lab/study.py .json reports")
    p.add_argument(
        "--models",
        action="append",
        nargs="+",
        default=[],
        metavar="LABEL RESULTS",
        help="instead of reports: a row of models evaluated apart, its label then one "
        "results.json per seed; repeatable",
    )
    p.add_argument(
        "--evaluated",
        action="append",
        default=[],
        metavar="ROW,TARGET,SEED=RESULTS",
        help="a cell from a model evaluated apart (its results.json); repeatable",
    )
    p.add_argument(
        "--commit",
        action="append",
        default=[],
        metavar="PATH=SHA",
        help="the reports under PATH (a file or folder) ran at commit SHA, where they record a "
        "stale one (a lent GPU's copy of the working tree, the 2026-11-26 / -27 loans); "
        "repeatable",
    )
    p.add_argument(
        "--no-wall",
        action="store_true",
        help="leave out the wall column (reports run on differently shared cores, or cells "
        "evaluated apart, whose training time no report holds)",
    )
    p.add_argument(
        "--targets",
        metavar="T1,T2",
        help="with --models: only these targets (an evaluation may hold others)",
    )
    args = p.parse_args(argv)
    if args.models:
        if args.reports or args.evaluated:
            p.error("--models takes no reports and no --evaluated")
        print(model_table(args.models, args.targets.split(",") if args.targets else None))
        return
    if not args.reports:
        p.error("name lab/study.py reports, or --models")
    if args.targets:
        p.error("--targets goes with --models")
    commits = {}
    for given in args.commit:
        where, eq, sha = given.partition("=")
        if not eq or not where or not re.fullmatch(r"[0-9a-f]{7,40}", sha):
            p.error(f"--commit {given!r}: expected PATH=SHA (7 to 40 hex digits)")
        commits[where] = sha
    scores, collapsed, seconds = collect(args.reports, commits)
    apart = add_evaluated(scores, args.evaluated)
    print(table(scores, collapsed, seconds, wall=not args.no_wall))
    if apart:
        print(f"\nEvaluated apart (not in a report): {'; '.join(apart)}.")


if __name__ == "__main__":
    main()
