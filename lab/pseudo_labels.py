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

The pool is the run's own target store (``<stage>/cache/<file>.<key>/``): its ``lines.npy`` names
the file line of every unit (a text; a sentence, whose words are its rows in order), and the file
is read again with its labels. A row whose gold label is unknown (a MARC 3-star review, which the
binary task leaves out and an unlabeled pool keeps) counts as unrated.

    python -m lab.pseudo_labels runs/study-cls/seed-*/en-de/selftrain*
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from xlt_engine.data.packed import StoreFile, iter_examples


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


def sweep(stage: Path, alphas: list[float]) -> list[dict]:
    """Per finished round of ``stage`` and alpha: the rows the round's teacher would label at
    that one threshold, how many are right, and each class's count and precision."""
    labels, gold = gold_of(stage)
    out = []
    for folder in sorted(stage.glob("round-*"), key=lambda p: int(p.name.split("-")[1])):
        path = folder / "filter.safetensors"
        if not path.is_file():
            continue
        f = load_file(str(path))
        if "agreed" not in f or "confidence" not in f:
            raise ValueError(f"{path}: no 'agreed' / 'confidence' (it has {sorted(f)})")
        agreed, conf, pseudo = f["agreed"].astype(np.int64), f["confidence"], f["pseudo"]
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
        g = np.array([-2 if x is None else x for x in gold])
        for alpha in alphas:
            given = (agreed >= 0) & (conf > np.float32(alpha))
            rated = given & (g >= 0)
            by_class = {}
            for c, name in enumerate(labels):
                mine = rated & (agreed == c)
                hits = int((mine & (g == c)).sum())
                n = int(mine.sum())
                by_class[name] = {"given": n, "right": hits, "precision": hits / n if n else None}
            right = int((rated & (agreed == g)).sum())
            out.append(
                {
                    "stage": str(stage),
                    "round": int(folder.name.split("-")[1]),
                    "alpha": alpha,
                    "run_alpha": record["alpha"],
                    "pool": len(gold),
                    "given": int(given.sum()),
                    "right_of_rated": right / int(rated.sum()) if rated.any() else None,
                    "precision_by_class": by_class,
                }
            )
    return out


def _right(r: dict) -> str:
    return "–" if r["right_of_rated"] is None else f"{100 * r['right_of_rated']:.1f}%"


def _by_class(r: dict) -> str:
    return ", ".join(
        f"{k} {100 * v['precision']:.1f}% of {v['given']}"
        for k, v in r["precision_by_class"].items()
        if v["given"]
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
    args = p.parse_args(argv)
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
    if swept:
        print("\n| stage | round | alpha (the run's) | given / pool | right | right by class |")
        print("|---|---|---|---|---|---|")
        for r in swept:
            stage = "/".join(Path(r["stage"]).parts[-3:])
            print(
                f"| {stage} | {r['round']} | {r['alpha']:g} ({r['run_alpha']:g}) | "
                f"{r['given']} / {r['pool']} | {_right(r)} | {_by_class(r) or '–'} |"
            )
    if args.json:
        args.json.write_text(
            json.dumps({"rounds": rows, "sweep": swept} if swept else rows, indent=1) + "\n"
        )


if __name__ == "__main__":
    main()
