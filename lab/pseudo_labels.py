"""The pseudo labels of a self-training run checked against the hidden gold labels of its
unlabeled file (a study's diagnosis, never read by the training), for tasks whose unlabeled file
carries labels (CLS-10, MARC, XNLI train files; CoNLL train files, whose tags the run never
reads): per round, the rows given a pseudo label (of the pool), their classes, the share that is
right overall and per class (the precision of each class's pseudo labels), and the gold classes
of the pool and of the rows given a label.

``--alphas 0.5,0.7,0.9`` adds, per round, what other thresholds would have given from the same
teacher: a row gets a label at alpha when its voters agree and their smallest top probability is
above alpha (the engine's ``voter_filter``), read from the round's ``filter.safetensors``
(``agreed``, ``confidence``); the run's own labels are rebuilt that way first, and a round whose
labels do not come out the same fails, naming its file.

``--rules paper,per_class_precision,class_quota:quota=0.4`` adds, per round, what each
pseudo-label rule would have labeled from the same soft student: the rule's thresholds chosen as
the engine chooses them, from the voters' outputs the round kept on the source rows
(``source-ok.safetensors``) and, for ``class_quota``, on the target rows (``filter``); the run's
own rule is replayed first and must give its recorded thresholds and labels. No model runs.

The pool is the run's own target store (``<stage>/cache/<file>.<key>/``): its ``lines.npy`` names
the file line of every unit (a text; a sentence, whose words are its rows in order), and the file
is read again with its labels. A row whose gold label is unknown (a MARC 3-star review, which the
binary task leaves out and an unlabeled pool keeps) counts as unrated.

    python -m lab.pseudo_labels runs/study-cls/seed-*/en-de/selftrain*
    python -m lab.pseudo_labels runs/study-cls/seed-1/en-de/selftrain-rounds2 \\
        --rules per_class_precision,class_quota
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file

from xlt_engine.data.packed import StoreFile, iter_examples, open_store
from xlt_engine.engine.experiment.from_toml import build_table
from xlt_engine.engine.method.pseudo_labels import background_class, thresholds_from
from xlt_engine.engine.method.rules import make_rule, rule_class, switch_rule
from xlt_engine.engine.method.selftrain.filter import labels_at
from xlt_engine.engine.method.selftrain.store import drop_failed_units
from xlt_engine.inputs import read_json


def target_store(stage: Path) -> tuple[Path, dict]:
    """The folder and meta of the stage's unlabeled store (the one whose files are unlabeled)."""
    found = []
    for meta_path in sorted((stage / "cache").glob("*/meta.json")):
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if all(f["unlabeled"] for f in meta["files"]):
            found.append((meta_path.parent, meta))
    if len(found) != 1:
        raise ValueError(f"{stage / 'cache'}: {len(found)} unlabeled stores, expected 1")
    folder, meta = found[0]
    if len(meta["files"]) != 1:
        raise ValueError(f"{folder}: {len(meta['files'])} files, expected 1")
    return folder, meta


def gold_of(stage: Path) -> tuple[list[str], list[int | None]]:
    """The labels, and per store row the index of its gold label (None: unknown)."""
    folder, meta = target_store(stage)
    f = meta["files"][0]
    path = Path(f["path"])
    fmt = f["format"]
    if fmt == "text":
        raise ValueError(f"{path}: a plain-text pool has no labels to check against")
    kind = meta["kind"]
    by_line = {
        line: label for line, _, _, label in iter_examples(StoreFile(str(path), fmt, False), kind)
    }
    labels = list(meta["labels"])
    lines = np.load(folder / "lines.npy")
    if kind == "token":  # a sentence's rows are its words, in order
        gold = [tag for n in lines for tag in by_line[int(n)]]
    else:
        gold = [by_line.get(int(n)) for n in lines]
    return labels, [labels.index(g) if g in labels else None for g in gold]


def rounds(stage: Path) -> list[dict]:
    """One record per finished round of ``stage``."""
    labels, gold = gold_of(stage)
    pool = Counter(labels[g] for g in gold if g is not None)
    out = []
    for folder in sorted(stage.glob("round-*"), key=lambda p: int(p.name.split("-")[1])):
        if not (folder / "filter.safetensors").is_file():
            continue
        pseudo = load_file(str(folder / "filter.safetensors"))["pseudo"]
        if len(pseudo) != len(gold):
            raise ValueError(
                f"{folder / 'filter.safetensors'}: {len(pseudo)} rows, the pool {len(gold)}"
            )
        record = json.loads((folder / "filter.json").read_text(encoding="utf-8"))
        alpha = record["alpha"]
        per_class = record.get("class_alpha") or {}  # the class-aware rules' thresholds
        given = [i for i, y in enumerate(pseudo) if y >= 0]
        rated = [i for i in given if gold[i] is not None]
        right = sum(int(pseudo[i]) == gold[i] for i in rated)
        by_class = {}
        for c, name in enumerate(labels):
            mine = [i for i in rated if int(pseudo[i]) == c]
            hits = sum(gold[i] == c for i in mine)
            by_class[name] = {"given": len(mine), "right": hits,
                              "precision": hits / len(mine) if mine else None}  # fmt: skip
        out.append(
            {
                "stage": str(stage),
                "round": int(folder.name.split("-")[1]),
                "alpha": alpha if len(set(per_class.values())) <= 1 else per_class,
                "pool": len(gold),
                "given": len(given),
                "classes": {c: sum(labels[int(pseudo[i])] == c for i in given) for c in labels},
                "right_of_rated": right / len(rated) if rated else None,
                "precision_by_class": by_class,
                "gold_of_given": dict(Counter(labels[gold[i]] for i in rated)),
                "gold_of_pool": dict(pool),
            }
        )
    return out


def voter_outputs(path: Path, pseudo: bool = False) -> tuple[np.ndarray, ...]:
    """A round's kept voter outputs (``filter.safetensors``, ``source-ok.safetensors``): each
    row's agreed class (or -1) and confidence, and with ``pseudo`` its pseudo label. A file
    without them (a run older than these keys) is named."""
    f = load_file(str(path))
    keys = ["agreed", "confidence", *(["pseudo"] if pseudo else [])]
    if missing := [k for k in keys if k not in f]:
        raise ValueError(f"{path}: no {' / '.join(map(repr, missing))} (it has {sorted(f)})")
    return (f["agreed"].astype(np.int64), *(f[k] for k in keys[1:]))


def sweep(stage: Path, alphas: list[float]) -> list[dict]:
    """Per finished round of ``stage`` and alpha: the rows the round's teacher would label at
    that one threshold, how many are right, and each class's count and precision."""
    labels, gold = gold_of(stage)
    out = []
    for folder in sorted(stage.glob("round-*"), key=lambda p: int(p.name.split("-")[1])):
        path = folder / "filter.safetensors"
        if not path.is_file():
            continue
        agreed, conf, pseudo = voter_outputs(path, pseudo=True)
        if len(agreed) != len(gold):
            raise ValueError(f"{path}: {len(agreed)} rows, the pool {len(gold)}")
        record = json.loads((folder / "filter.json").read_text(encoding="utf-8"))
        per = record.get("class_alpha") or dict.fromkeys(labels, record["alpha"])
        own = np.array([per[c] for c in labels], dtype=np.float32)
        rebuilt = np.where((agreed >= 0) & (conf > own[agreed.clip(min=0)]), agreed, -1)
        if (rebuilt != pseudo).any():
            raise ValueError(
                f"{path}: {(rebuilt != pseudo).sum()} rows' pseudo labels are not the voters' "
                "agreed label above the round's thresholds; the sweep would not be this filter"
            )
        g = gold_array(gold)
        for alpha in alphas:
            given = np.where((agreed >= 0) & (conf > np.float32(alpha)), agreed, -1)
            out.append(
                {
                    "stage": str(stage),
                    "round": int(folder.name.split("-")[1]),
                    "alpha": alpha,
                    "run_alpha": record["alpha"],
                    **score(given, g, labels),
                }
            )
    return out


def source_gold(stage: Path, rows: int) -> np.ndarray:
    """The gold label of each source row the threshold step read: the targets of the stage's
    one labeled store of ``rows`` rows under ``cache/``."""
    found = []
    for meta_path in sorted((stage / "cache").glob("*/meta.json")):
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        labeled = meta["files"] and not any(f["unlabeled"] for f in meta["files"])
        if labeled and int(np.load(meta_path.parent / "rows.npy", mmap_mode="r")[-1]) == rows:
            found.append(meta_path.parent)
    if len(found) != 1:
        raise ValueError(
            f"{stage / 'cache'}: {len(found)} labeled stores of {rows} rows, expected 1"
        )
    return open_store(found[0]).flat_targets()


def parse_rules(text: str) -> list[tuple[str, dict]]:
    """``--rules``: comma-separated ``name`` or ``name:key=value:key=value`` (values read as
    JSON where they parse, else as text). Each rule is built once here, its settings checked as
    the config's ``[selftrain.rule]`` table is, so that a bad one fails before any round is
    read."""
    out = []
    for item in text.split(","):
        name, *pairs = item.strip().split(":")
        settings = {}
        for pair in pairs:
            key, eq, value = pair.partition("=")
            if not (key and eq and value):
                raise ValueError(f"--rules {item!r}: {pair!r} is not key=value")
            try:
                settings[key] = json.loads(value)
            except json.JSONDecodeError:
                settings[key] = value
        cls = rule_class(name)  # an unknown name fails here, naming the known ones
        if "name" in settings:
            raise ValueError(f"--rules {item!r}: the rule's name comes before the first ':'")
        problems: list[str] = []
        built = build_table(cls, settings, f"--rules {name}.", problems, make_rule(name))
        if problems:
            raise ValueError("; ".join(problems))
        out.append((name, {k: getattr(built, k) for k in settings}))
    return out


def rule_labels(rule, src: tuple, tgt: tuple, labels: list[str], background, units=None):
    """``rule``'s class thresholds (``thresholds_from``) from the source rows' (agreed, confidence,
    gold) ``src`` and the target rows' (agreed, confidence) ``tgt``, and the target rows' pseudo
    labels at them (``labels_at``; with ``units``, the target store, ``filter_unit =
    "sequence"``'s whole sentences). Returns (thresholds, labels)."""
    s_agreed, s_conf, gold = (torch.from_numpy(np.asarray(x)) for x in src)
    t_agreed, t_conf = tgt
    target = (torch.from_numpy(t_agreed), torch.from_numpy(t_conf))
    th = thresholds_from(s_agreed, s_conf, gold, len(labels), rule, background, target, labels)
    given = labels_at(t_agreed, t_conf, np.asarray(th.alpha))
    if units is not None:
        drop_failed_units(units, given)
    return th.alpha, given


def replay(stage: Path, rules: list[tuple[str, dict]]) -> list[dict]:
    """Per finished round of ``stage``: what each of ``rules`` would have labeled from that
    round's soft student, whose voters' outputs on the source rows (``source-ok.safetensors``)
    and the target rows (``filter.safetensors``) the run kept. Each rule takes the run's own
    alpha settings (threshold method, grid) with its own parameters (``rules``' settings, else
    its defaults), chooses its thresholds as the engine does (``thresholds_from``) and labels
    the target rows (``labels_at``). The run's own rule is replayed first and must give the
    recorded thresholds and pseudo labels, else the file is named. Round 1 compares rules on
    the same student; a later round's student learned from the run's own earlier labels."""
    labels, gold = gold_of(stage)
    g = gold_array(gold)
    background = background_class(labels)
    out = []
    for folder in sorted(stage.glob("round-*"), key=lambda p: int(p.name.split("-")[1])):
        files = [folder / n for n in ("threshold.json", "source-ok.safetensors", "filter.json")]
        if not all(f.is_file() for f in files) or not (folder / "filter.safetensors").is_file():
            continue
        settings = read_json(folder / "threshold.json").get("rule_settings")
        if settings is None:
            raise ValueError(f"{folder / 'threshold.json'}: no rule_settings (an older run)")
        if isinstance(settings.get("grid"), list):
            settings["grid"] = tuple(settings["grid"])
        run_rule = make_rule(**settings)
        s_agreed, s_conf = voter_outputs(folder / "source-ok.safetensors")
        sg = source_gold(stage, len(s_agreed))
        t_agreed, t_conf, pseudo = voter_outputs(folder / "filter.safetensors", pseudo=True)
        if len(t_agreed) != len(g):
            raise ValueError(
                f"{folder / 'filter.safetensors'}: {len(t_agreed)} rows, the pool {len(g)}"
            )
        record = read_json(folder / "filter.json")
        sequence = record.get("filter_unit") == "sequence"
        units = open_store(target_store(stage)[0]) if sequence else None
        outputs = ((s_agreed, s_conf, sg), (t_agreed, t_conf), labels, background, units)
        alpha, given = rule_labels(run_rule, *outputs)
        recorded = [record["class_alpha"][c] for c in labels]
        if alpha != recorded:
            raise ValueError(
                f"{folder / 'filter.json'}: the run's rule ({run_rule.name}) gives thresholds "
                f"{alpha} from the round's files, the run recorded {recorded}"
            )
        if (given != pseudo).any():
            raise ValueError(
                f"{folder / 'filter.safetensors'}: {(given != pseudo).sum()} rows' pseudo labels "
                f"are not what the run's rule ({run_rule.name}) gives from the round's files"
            )
        for i, (name, own) in enumerate([(run_rule.name, {}), *rules]):
            if i:
                alpha, given = rule_labels(switch_rule(run_rule, name, **own), *outputs)
            spec = ":".join([name, *(f"{k}={v}" for k, v in own.items())])
            out.append(
                {
                    "stage": str(stage),
                    "round": int(folder.name.split("-")[1]),
                    "rule": spec + (" (the run's)" if i == 0 else ""),
                    "thresholds": dict(zip(labels, alpha, strict=True)),
                    **score(given, g, labels),
                }
            )
    return out


def gold_array(gold: list[int | None]) -> np.ndarray:
    """``gold`` as int64, -2 where the gold label is unknown."""
    return np.array([-2 if x is None else x for x in gold], dtype=np.int64)


def score(pseudo: np.ndarray, g: np.ndarray, labels: list[str]) -> dict:
    """Pseudo labels (-1: none) against gold (``gold_array``): the pool, the rows given a
    label, the share right of those whose gold is known, and each class's count and
    precision."""
    given = pseudo >= 0
    rated = given & (g >= 0)
    by_class = {}
    for c, name in enumerate(labels):
        mine = rated & (pseudo == c)
        hits = int((mine & (g == c)).sum())
        n = int(mine.sum())
        by_class[name] = {"given": n, "right": hits, "precision": hits / n if n else None}
    right = int((rated & (pseudo == g)).sum())
    return {
        "pool": len(g),
        "given": int(given.sum()),
        "right_of_rated": right / int(rated.sum()) if rated.any() else None,
        "precision_by_class": by_class,
    }


def _right(r: dict) -> str:
    return "–" if r["right_of_rated"] is None else f"{100 * r['right_of_rated']:.1f}%"


def _by_class(r: dict) -> str:
    return ", ".join(
        f"{k} {100 * v['precision']:.1f}% of {v['given']}"
        for k, v in r["precision_by_class"].items()
        if v["given"]
    )


def _table(rows: list[dict], columns: list[str], cells) -> None:
    """A table of scored rows (``score``'s keys): stage, round, ``columns`` (``cells(row)``),
    given / pool, right, right by class; nothing when there are no rows."""
    if not rows:
        return
    print("\n| " + " | ".join(["stage", "round", *columns, "given / pool", "right"]), end="")
    print(" | right by class |\n" + "|---" * (len(columns) + 5) + "|")
    for r in rows:
        stage = "/".join(Path(r["stage"]).parts[-3:])
        mid = " | ".join(cells(r))
        print(
            f"| {stage} | {r['round']} | {mid} | {r['given']} / {r['pool']} | {_right(r)} | "
            f"{_by_class(r) or '–'} |"
        )


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("stages", nargs="+", type=Path, help="selftrain stage folders")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    p.add_argument(
        "--alphas",
        default=None,
        metavar="A1,A2",
        help="also what each of these thresholds would have labeled, per round",
    )
    p.add_argument(
        "--rules",
        default=None,
        metavar="NAME[:K=V],...",
        help="also what each of these pseudo-label rules would have labeled, per round",
    )
    args = p.parse_args(argv)
    try:
        rules = parse_rules(args.rules) if args.rules else []
    except ValueError as err:
        p.error(str(err))
    alphas = []
    if args.alphas:
        try:
            alphas = [float(a) for a in args.alphas.split(",")]
        except ValueError:
            p.error(f"--alphas {args.alphas!r}: expected numbers like 0.5,0.9")
        if any(not 0.0 <= a < 1.0 for a in alphas):
            p.error(f"--alphas {args.alphas!r}: each must be in [0, 1)")
    rows = [r for stage in args.stages for r in rounds(stage)]
    print(
        "| stage | round | alpha | given / pool | classes given | right | right by class "
        "| gold of given |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        right = _right(r)
        classes = ", ".join(f"{k} {v}" for k, v in r["classes"].items())
        gold = ", ".join(f"{k} {v}" for k, v in sorted(r["gold_of_given"].items()))
        by_class = _by_class(r)
        stage = "/".join(Path(r["stage"]).parts[-3:])
        alpha = r["alpha"]
        if isinstance(alpha, dict):
            alpha = ", ".join(f"{k} {v:g}" for k, v in alpha.items())
        print(
            f"| {stage} | {r['round']} | {alpha} | {r['given']} / {r['pool']} | {classes} | "
            f"{right} | {by_class or '–'} | {gold} |"
        )
    swept = [r for stage in args.stages for r in sweep(stage, alphas)] if alphas else []
    _table(swept, ["alpha (the run's)"], lambda r: [f"{r['alpha']:g} ({r['run_alpha']:g})"])
    replayed = [r for stage in args.stages for r in replay(stage, rules)] if rules else []
    _table(
        replayed,
        ["rule", "thresholds"],
        lambda r: [r["rule"], ", ".join(f"{k} {v:.4g}" for k, v in r["thresholds"].items())],
    )
    if args.json:
        extra = {"sweep": swept} if swept else {}
        extra |= {"rules": replayed} if replayed else {}
        args.json.write_text(
            json.dumps({"rounds": rows} | extra if extra else rows, indent=1) + "\n"
        )


if __name__ == "__main__":
    main()
