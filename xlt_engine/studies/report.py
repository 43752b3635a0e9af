"""``xlt-engine report``: one self-contained HTML file for run folders (images embedded as data
URIs, no script, no network; it opens from disk in any browser).

A folder may be an experiment's folder (``all*.json`` tables, ``ablation.json``, the studies'
``threshold-study.json`` / ``rounds-study.json``, paper 003's ``cotrain-ablation.json``, pair
folders ``<source>-<target>``, seed
folders ``seed-<s>``) or one pair's run folder (its stage folders). Several folders are reported
one after the other, so runs can be read side by side. Sections:

- results: every ``all*.json`` table (per target: direct transfer, + BTF, + self-training, and
  the gap self-training closes); ablation and study tables with mean +- std and a bar chart
  with error bars;
- per stage with a ``metrics.jsonl``: loss, learning rate, tokens/s and the gradient norm
  against step (self-training: each soft and hard step in turn, the boundaries marked), the dev
  score, the wall time (``run.json``) and mean throughput;
- per co-training stage (``cotrain``, ``cotrain-self``): an iteration a row, each view's
  labeled set, the rows each view gave (chosen of its candidates, their classes), dev accuracy;
- per self-training round: the threshold curve (accuracy, recall, coverage) with alpha
  marked, the pseudo-label counts and classes beside the source gold classes, the source rows
  kept, the share of target rows whose voters agree;
- per evaluation: the score per language, for NER the F1 per entity type, and the confusion of
  entity types (exact spans; missed and spurious entities) or of labels;
- the resolved config and ``run.json`` of every stage, folded.

Plots need matplotlib (``pip install 'xlt-engine[report]'``); without it the report holds every
table and says how to get the plots. The numbers in a table are the files' numbers, formatted.
"""

from __future__ import annotations

import html
import math
import os
import statistics
from pathlib import Path

from xlt_engine.engine.experiment import registry
from xlt_engine.engine.experiment.execute import load_plugins
from xlt_engine.engine.experiment.pipeline import COLUMNS, HEADINGS  # all.json's, as written
from xlt_engine.engine.experiment.runs import FINGERPRINT
from xlt_engine.engine.method.rules import PseudoRule
from xlt_engine.engine.method.selftrain.wall import wall_shares
from xlt_engine.fileio import atomic_write_text
from xlt_engine.inputs import read_json, read_jsonl, read_text
from xlt_engine.outputs import claim_output, record_output
from xlt_engine.studies.figures import NO_PLOTS, Figures
from xlt_engine.studies.tables import mean_std
from xlt_engine.studies.threshold_view import threshold_criterion

STUDIES = ("ablation", "threshold-study", "rounds-study", "cotrain-ablation")
CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.6em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; }
.note { color: #666; } details { margin: 0.4em 0; } pre { background: #f6f6f6; padding: 0.6em; }
"""


def _read_json(path: Path):
    try:
        return read_json(path)
    except (OSError, ValueError) as err:
        raise ValueError(
            str(err) if str(path) in str(err) else f"{path}: cannot read: {err}"
        ) from None


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def _share(x) -> str:
    """A share in [0, 1] as a percentage; anything else as ``_num`` shows it."""
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return f"{100 * x:.1f}"
    return _num(x)


def _num(x, spec: str = "g") -> str:
    """A number as ``spec`` formats it; anything else (a hostile or damaged file) as its text,
    so the page still builds (escape it like any value)."""
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return format(x, spec)
    return "–" if x is None else str(x)


def _table(head: list[str], rows: list[list]) -> str:
    out = ["<table><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in head) + "</tr>"]
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>")
    return "\n".join(out) + "</table>"


# ---------------------------------------------------------------------------------------------
# sections


def _of(path: Path, make):
    """``make()``, a section built from ``path``'s data: a file whose entries have the wrong
    type or shape (a damaged or hand-edited file) is one error naming it, not a traceback."""
    try:
        return make()
    except (AttributeError, TypeError, KeyError, IndexError, ValueError) as err:
        if isinstance(err, ValueError) and str(err).startswith(str(path)):
            raise
        raise ValueError(
            f"{path}: cannot be reported: an entry has the wrong type or shape "
            f"({type(err).__name__}: {err}); is the file damaged? Move it aside and report again"
        ) from None


def _finite(values) -> list[float]:
    """The finite numbers among ``values`` (a log may hold inf or NaN: a diverged step)."""
    return [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


def results_section(folder: Path) -> str:
    """Every ``all*.json`` table in ``folder``: per target the three columns and the gap
    self-training closes (self-training minus + BTF, in points)."""
    return "\n".join(
        _of(path, lambda path=path: _results_table(path))
        for path in sorted(folder.glob("all*.json"))
    )


def _results_table(path: Path) -> str:
    """One ``all*.json`` table (``results_section``)."""
    res = _read_json(path)
    metric = "entity F1" if res.get("metric") == "entity_f1" else "accuracy"
    rows = []
    for t, row in res.get("targets", {}).items():
        gain = None
        if row.get("selftrain") is not None and row.get("btf") is not None:
            gain = f"{100 * (row['selftrain'] - row['btf']):+.2f}"
        rows.append([t, *(_pct(row.get(c)) for c in COLUMNS), gain or "–"])
    targets = list(res.get("targets", {}).values())
    if targets and targets[0].get("source"):
        src = targets[0]["source"]
        rows.append([f"{res.get('source')} (source)", *(_pct(src.get(c)) for c in COLUMNS), "–"])
    head = ["language", *(HEADINGS[c] for c in COLUMNS), "self-training gain"]
    title = f"{path.name}: {metric} (%)"
    return f"<h3>{html.escape(title)}</h3>" + _table(head, rows)


def studies_section(folder: Path, figs: Figures) -> str:
    parts = []
    for stem in (*STUDIES, *(f"{s}-dev" for s in STUDIES)):  # the dev tables (evaluate.split)
        path = folder / f"{stem}.json"
        if not path.is_file():
            continue
        parts.append(_of(path, lambda path=path, stem=stem: _study_table(path, stem, figs)))
    return "\n".join(parts)


def _study_table(path: Path, stem: str, figs: Figures) -> str:
    res = _read_json(path)
    targets = sorted({t for row in res["scores"].values() for t in row})
    rows = []
    for row, per_target in res["scores"].items():
        rows.append([row, *(mean_std(_finite(per_target.get(t, []))) for t in targets)])
    seeds = res.get("seeds")
    return (
        f"<h3>{html.escape(stem)}: mean ± std over seeds {html.escape(str(seeds))}</h3>"
        + _table(["row", *targets], rows)
        + figs.bars(res, stem)
    )


def _loop_records(folder: Path) -> list[dict]:
    path = folder / "metrics.jsonl"
    return read_jsonl(path) if path.is_file() else []


def stage_section(folder: Path, figs: Figures) -> str:
    """One training stage folder (btf, finetune*, selftrain*): curves, dev score, time."""
    name = folder.name
    info = _read_json(folder / "run.json") if (folder / "run.json").is_file() else {}
    records, bounds = [], []
    if name.startswith("selftrain"):
        offset = 0
        for step_dir in sorted(folder.glob("round-*/*"), key=_round_order):
            recs = _loop_records(step_dir)
            if not recs:
                continue
            label = f"{step_dir.parent.name} {step_dir.name}"
            bounds.append((offset, label))
            records += [{**r, "x": offset + r["step"]} for r in recs]
            offset += recs[-1]["step"]
    else:
        records = [{**r, "x": r["step"]} for r in _loop_records(folder)]
    if not records and not info:
        return ""
    lines = []
    if "seconds" in info:
        lines.append(f"wall time {info['seconds']:.1f} s")
    rates = _finite(r.get("tokens_per_s") for r in records)
    if rates:
        lines.append(f"mean {statistics.fmean(rates):,.0f} tokens/s over {len(rates)} log points")
    if records:
        lines.append(f"last loss {records[-1].get('loss', float('nan')):.4g}")
    dev = folder / "dev.json"
    if dev.is_file():
        d = _read_json(dev)
        lines.append(f"dev {d['metric']} {100 * d['score']:.2f}")
    out = [f"<h4>{html.escape(name)}</h4><p>{html.escape('; '.join(lines))}</p>"]
    out.append(figs.training(records, bounds, name))
    if name.startswith("selftrain"):
        out.append(checks_section(folder, figs))
        out.append(wall_section(folder))
        out.append(rounds_section(folder, figs))
    elif isinstance(info.get("wall"), dict):  # btf, finetune: the loop's parts and the rest
        out.append(_wall_table(wall_shares(info["wall"], list(info["wall"])), ""))
    return "\n".join(out)


def checks_section(folder: Path, figs: Figures) -> str:
    """Self-training's check after every step (``selftrain.jsonl``'s ``check`` records): how
    the step's student follows its teacher, on all target rows and on the teacher's entity
    rows (where a lost class shows), and its dev scores."""
    log = folder / "selftrain.jsonl"
    checks = [r for r in read_jsonl(log) if r.get("step") == "check"] if log.is_file() else []
    if not checks:
        return ""
    devs = sorted({lang for c in checks for lang in c.get("dev", {})})
    classes = list(checks[0].get("class_agreement", {}))
    head = ["step", "all rows", "entity rows", *classes, *(f"dev {lang}" for lang in devs)]
    rows = []
    for c in checks:
        per = c.get("class_agreement", {})
        rows.append(
            [
                f"round {c.get('round')} {c.get('of')}",
                _share(c.get("teacher_agreement")),
                _share(c.get("entity_agreement")),
                *(_share(per.get(k)) for k in classes),
                *(_share(c.get("dev", {}).get(lang, {}).get("score")) for lang in devs),
            ]
        )
    caption = (
        "<p>Each step's student against the round's teacher on the target rows (% of the "
        "teacher's rows of each kind where the student's argmax agrees) and on the dev files "
        "(a diagnostic: nothing is chosen by it)</p>"
    )
    return caption + _table(head, rows) + figs.checks(checks, folder.name)


def wall_section(folder: Path) -> str:
    """Where a self-training run's time went (summary.json's ``wall``: training steps, the
    forward-only passes, the threshold's arithmetic, what no record covers)."""
    path = folder / "summary.json"
    summary = _read_json(path) if path.is_file() else None
    wall = summary.get("wall") if isinstance(summary, dict) else None
    if not isinstance(wall, dict):
        return ""
    forward = wall.get("forward")
    note = f"; the passes' model forwards: {_num(forward, '.1f')} s" if forward is not None else ""
    return _wall_table(wall_shares(wall), note)


def _wall_table(shares: list[tuple[str, float, float]], note: str) -> str:
    """A stage's time by part (``wall_shares``: part, seconds, share of their sum)."""
    rows = [[k, _num(v, ".1f"), f"{100 * share:.0f}%"] for k, v, share in shares]
    return f"<p>Where the time went (seconds{html.escape(note)})</p>" + _table(
        ["part", "s", "share"], rows
    )


def _round_order(path: Path) -> tuple[int, int]:
    r = int(path.parent.name.split("-")[1])
    return r, {"soft": 0, "hard": 1}.get(path.name, 2)


def rounds_section(folder: Path, figs: Figures) -> str:
    """Per round: alpha and the threshold curve, the filter's counts and classes."""
    out = []
    rounds = sorted(folder.glob("round-*"), key=lambda p: int(p.name.split("-")[1]))
    for rdir in rounds:
        th_path, f_path = rdir / "threshold.json", rdir / "filter.json"
        if th_path.is_file():
            th = _read_json(th_path)
            rule = th.get("rule", "paper")
            line = (
                f"alpha = {_num(th.get('alpha'))} ({th.get('method')}"
                + (f"; {th['fallback']}" if th.get("fallback") else "")
                + f"); pseudo-label rule {rule}; source rows {_num(th.get('rows'), ',')}"
            )
            out.append(f"<h5>{html.escape(rdir.name)}</h5><p>{html.escape(line)}</p>")
            if th.get("classes"):
                out.append(_class_thresholds(th["classes"]))
            criterion = threshold_criterion(th)
            if criterion is not None:
                out.append(f"<p>{html.escape(criterion['text'])}</p>")
            out.append(figs.threshold(th, f"{folder.name} {rdir.name}", criterion))
        if f_path.is_file():
            f = _read_json(f_path)
            if f.get("collapse"):
                items = "".join(f"<li>{html.escape(str(x))}</li>" for x in f["collapse"])
                out.append(
                    f"<p class='warn'><b>collapsed</b> (on_collapse = "
                    f"{html.escape(str(f.get('on_collapse')))}):</p><ul>{items}</ul>"
                )
            if f.get("classes") and f.get("pseudo_rule") not in (
                None,
                PseudoRule.name,
            ):  # per class
                out.append(_class_thresholds(f["classes"]))
            counts = [
                ["source rows kept", f"{f['source_rows_kept']} / {f['source_rows']}"],
                ["source rows removed this round", f["source_rows_removed"]],
                ["pseudo-labeled target rows", f"{f['pseudo_rows']} / {f['target_rows']}"],
                ["pseudo-labeled target units", f"{f['pseudo_units']} / {f['target_units']}"],
            ]
            if f.get("voter_agreement") is not None:
                counts.append(
                    ["target rows whose voters agree", f"{100 * f['voter_agreement']:.1f}%"]
                )
            out.append(_table(["filter", "count"], counts))
            dist, gold = f.get("pseudo_distribution", {}), f.get("source_distribution", {})
            n, m = sum(dist.values()), sum(gold.values())
            rows = [
                [
                    k,
                    v,
                    f"{100 * v / n:.1f}" if n else "–",
                    f"{100 * gold[k] / m:.1f}" if m and k in gold else "–",
                ]
                for k, v in dist.items()
            ]
            out.append(_table(["class", "pseudo labels", "% of them", "% of source gold"], rows))
    return "\n".join(out)


def _class_thresholds(classes: list[dict]) -> str:
    """Each class's threshold, how it was reached, and the source rows it leaves (precision)."""

    rows = [
        [
            c.get("class"),
            _num(c.get("threshold")),
            c.get("how"),
            _num(c.get("source_rows"), ","),
            _num(c.get("source_precision"), ".3f"),
        ]
        for c in classes
    ]
    return _table(["class", "threshold", "chosen by", "source rows above", "their precision"], rows)


def evaluation_section(folder: Path) -> str:
    res = _read_json(folder / "results.json")
    metric = res["metric"]
    rows = []
    types: set[str] = set()
    for lang, s in res["languages"].items():
        gap = res.get("transfer_gap", {}).get(lang)
        rows.append([lang, _pct(s["score"]), "–" if gap is None else f"{100 * gap:.2f}"])
        types |= set(s.get("per_type", {}))
    out = [
        f"<h4>{html.escape(folder.name)}</h4><p>model {html.escape(res['model'])}</p>",
        _table(["language", f"{metric} (%)", "transfer gap"], rows),
    ]
    info = _read_json(folder / "run.json") if (folder / "run.json").is_file() else {}
    if isinstance(info, dict) and isinstance(info.get("wall"), dict):  # its parts and the rest
        out.append(_wall_table(wall_shares(info["wall"], list(info["wall"])), ""))
    if types:
        per = [
            [lang, *(_pct(s.get("per_type", {}).get(t)) for t in sorted(types))]
            for lang, s in res["languages"].items()
        ]
        out.append("<p>F1 (%) per entity type</p>" + _table(["language", *sorted(types)], per))
        prf = []
        for lang, s in res["languages"].items():
            for t, x in sorted(s.get("per_type_scores", {}).items()):
                prf.append(
                    [
                        f"{lang} {t}",
                        _pct(x["precision"]),
                        _pct(x["recall"]),
                        _pct(x["f1"]),
                        x["support"],
                    ]
                )
        if prf:
            out.append(
                "<p>precision, recall and F1 (%) per language and entity type</p>"
                + _table(["language, type", "precision", "recall", "F1", "gold entities"], prf)
            )
    for lang, s in res["languages"].items():
        if s.get("confusion"):
            what = "entity types (exact spans)" if types else "labels"
            out.append(
                f"<p>{html.escape(lang)}: confusion of {what}, gold (rows) by "
                "predicted (columns)</p>" + confusion_table(s["confusion"])
            )
    return "\n".join(out)


def confusion_table(confusion: dict[str, dict[str, int]]) -> str:
    rows = sorted(confusion, key=lambda k: (k.startswith("("), k))
    cols = sorted({c for r in confusion.values() for c in r}, key=lambda k: (k.startswith("("), k))
    body = [[r, *(confusion[r].get(c, 0) for c in cols)] for r in rows]
    return _table(["gold \\ predicted", *cols], body)


def _folded(title: str, path: Path) -> str:
    text = read_text(path)
    return (
        f"<details><summary>{html.escape(title)}</summary><pre>{html.escape(text)}</pre></details>"
    )


def is_pair_folder(folder: Path) -> bool:
    """A pair's run folder: it holds a stage folder (one with a fingerprint.json, or named
    after a stage: ``finetune-direct-linear``...)."""
    stages = set(registry.names())
    return any(folder.glob(f"*/{FINGERPRINT}")) or any(
        p.is_dir() and p.name.split("-")[0] in stages for p in folder.iterdir()
    )


def stages_table(folder: Path) -> str:
    """Every stage folder of a pair's run folder, a row each: its stage, whether it finished,
    its wall time, and the columns its stage reports of it (``Stage.table``)."""
    rows, columns = [], []
    for path in sorted(folder.glob(f"*/{FINGERPRINT}")):
        stage_folder = path.parent
        recorded = _read_json(path)
        name = recorded.get("stage") if isinstance(recorded, dict) else None
        if name not in registry.names():  # a plug-in's: the run's saved config names it
            load_plugins(stage_folder)
        try:
            spec = registry.get(name)
        except ValueError:  # its plug-in cannot be imported here: a row without its columns
            spec = None
        done = spec is not None and (stage_folder / spec.output).exists()
        run = stage_folder / "run.json"
        seconds = _read_json(run).get("seconds") if run.is_file() else None
        extra = spec.table(stage_folder) if spec is not None and spec.table and done else {}
        columns += [c for c in extra if c not in columns]
        rows.append((stage_folder.name, name, done, seconds, extra))
    if not rows:
        return ""
    body = [
        [
            f,
            s,
            "yes" if d else "no",
            "–" if t is None else f"{t:.1f}",
            *(_num(x.get(c)) for c in columns),
        ]
        for f, s, d, t, x in rows
    ]
    head = ["folder", "stage", "finished", "seconds", *columns]
    return "<h3>stages</h3>" + _table(head, body)


def cotrain_section(folder: Path) -> str:
    """A co-training stage, an iteration a row: each view's labeled set, the rows each view
    gave (of its candidates above the threshold) and their classes, dev accuracy."""
    rows = []
    for it in sorted(folder.glob("iter-*/exchange.json"), key=lambda p: int(p.parent.name[5:])):
        rec = _read_json(it)
        moved = "; ".join(
            f"{k}: {x['chosen']} of {x['candidates']} ({', '.join(f'{c} {n}' for c, n in x['distribution'].items())})"
            for k, x in rec.get("exchange", {}).items()
        )
        dev = rec.get("dev_accuracy") or {}
        rows.append(
            [
                rec["iteration"],
                rec["labeled"]["lm"],
                rec["labeled"]["emb"],
                moved or "– (last iteration)",
                *(_pct(dev.get(k)) for k in ("lm", "emb", "mean")),
            ]
        )
    if not rows:
        return ""
    head = ["iteration", "labeled (lm)", "labeled (emb)", "rows given: chosen of candidates"]
    head += ["dev lm (%)", "dev emb (%)", "dev mean (%)"]
    return f"<h3>{html.escape(folder.name)}</h3>" + _table(head, rows)


def _plugin_stage(folder: Path) -> bool:
    """The folder holds a stage of a plug-in (its fingerprint names a stage whose runner is
    not the engine's; ``stages_table`` has imported the run's plug-ins)."""
    path = folder / FINGERPRINT
    recorded = _read_json(path) if path.is_file() else None
    name = recorded.get("stage") if isinstance(recorded, dict) else None
    if name not in registry.names():
        return False
    module = getattr(registry.get(name).run, "__module__", "") or ""
    return module.split(".")[0] != "xlt_engine"


def pair_section(folder: Path, figs: Figures) -> str:
    stages = [p for p in sorted(folder.iterdir()) if p.is_dir()]
    out = [f"<h2>{html.escape(folder.name)}</h2>", _of(folder, lambda: stages_table(folder))]
    trained = [p for p in stages if p.name.split("-")[0] in ("btf", "finetune", "selftrain")]
    order = {"btf": 0, "finetune": 1, "selftrain": 2}
    trained = sorted(trained, key=lambda p: (order[p.name.split("-")[0]], p.name))
    trained += [p for p in stages if _plugin_stage(p) and (p / "metrics.jsonl").is_file()]
    for p in trained:  # a plug-in stage that trains with the loop: its curve, like btf's
        out.append(_of(p, lambda p=p: stage_section(p, figs)))
    out += [cotrain_section(p) for p in stages if p.name.split("-")[0] == "cotrain"]
    evals = [p for p in stages if p.name.startswith("evaluate-") and (p / "results.json").is_file()]
    if evals:
        out.append("<h3>evaluations</h3>")
        out += [evaluation_section(p) for p in evals]
    folded = [
        _folded(f"{p.name}/{f}", p / f)
        for p in stages
        for f in ("config.json", "run.json")
        if (p / f).is_file()
    ]
    if folded:
        out.append("<h3>configs and provenance</h3>" + "\n".join(folded))
    return "\n".join(x for x in out if x)


def folder_section(folder: Path, figs: Figures) -> str:
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such folder")
    out = [f"<h1>{html.escape(str(folder))}</h1>"]
    head = results_section(folder) + studies_section(folder, figs)
    if head:
        out.append("<h2>results</h2>" + head)
    if is_pair_folder(folder):
        out.append(pair_section(folder, figs))
    else:
        subs = [p for p in sorted(folder.iterdir()) if p.is_dir()]
        for p in subs:
            if is_pair_folder(p):
                out.append(pair_section(p, figs))
            elif p.name.startswith("seed-"):
                out.append(
                    folder_section(p, figs).replace("<h1>", "<h2>", 1).replace("</h1>", "</h2>", 1)
                )
    if len(out) == 1:
        raise ValueError(
            f"{folder}: no run found (no all*.json, ablation or study table, and no stage folders)"
        )
    return "\n".join(out)


def build_report(folders: list[Path]) -> tuple[str, int]:
    """The HTML page for ``folders`` and the number of images in it."""
    from xlt_engine import __version__

    figs = Figures()
    body = [folder_section(Path(f), figs) for f in folders]
    note = "" if figs.plt is not None else f'<p class="note">{html.escape(NO_PLOTS)}</p>'
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>xlt-engine report</title><style>{CSS}</style></head><body>"
        f'<p class="note">xlt-engine {html.escape(__version__)} report of '
        + html.escape(", ".join(str(f) for f in folders))
        + f"</p>{note}"
        + "\n".join(body)
        + "</body></html>\n"
    )
    return page, figs.count


READ_SUFFIXES = (".json", ".jsonl", ".md", ".txt", ".toml")  # what a report reads in a run


def report_inputs(folders: list[Path]) -> list[Path]:
    """Every file a report of ``folders`` may read (tables, records, logs, configs): ``--out``
    is never one of them, not even with ``--overwrite``. A report written inside a run folder
    under a new name is fine."""
    found = []
    for folder in folders:
        for dirpath, _dirs, files in os.walk(folder):
            found += [Path(dirpath, n) for n in files if n.endswith(READ_SUFFIXES)]
    return found


def write_report(folders: list[Path], out: Path, overwrite: bool = False) -> tuple[Path, int]:
    """The report of ``folders`` into ``out``: a new file or an earlier report
    (``outputs.claim_output``; ``overwrite``: any file but one the report reads)."""
    reads = report_inputs(folders)
    claim_output(out, "--out", "report", reads=reads, overwrite=overwrite)
    page, images = build_report(folders)
    claim_output(out, "--out", "report", reads=reads, overwrite=overwrite)  # nothing new since
    atomic_write_text(out, page)
    record_output(out, "report")
    return out, images
