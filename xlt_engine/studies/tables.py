"""The studies' tables: mean +- std over seeds (``study_table``, ``ablation_table``) and the
merging of a new study's rows with those an earlier one left in the same folder
(``with_earlier_rows``: only tables that agree on ``STUDY_SAME`` merge).
"""

from __future__ import annotations

import statistics
from pathlib import Path

from xlt_engine.engine.experiment.pipeline import scored_on
from xlt_engine.inputs import read_json


def mean_std(vals: list[float]) -> str:
    if not vals:
        return "–"
    m = 100 * statistics.fmean(vals)
    sd = 100 * statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{m:.2f} ± {sd:.2f}"


def ablation_table(result: dict) -> str:
    """Rows: the ablation rows; columns: targets, then their average (per seed, then mean +-
    std over seeds)."""
    return study_table(result, f"- AT uses alpha = {result['fixed_alpha']}")


def study_table(result: dict, caption: str) -> str:
    """Rows: ``result["scores"]``' rows; columns: targets, then their average (per seed, then
    mean +- std over seeds)."""
    targets = sorted({t for row in result["scores"].values() for t in row})
    metric = "entity F1" if result["metric"] == "entity_f1" else "accuracy"
    head = ["model", *targets, "average"]
    lines = [
        f"{metric} (%){scored_on(result)}, mean ± std over seeds {result['seeds']}; {caption}\n",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for row, per_target in result["scores"].items():
        cells = [mean_std(per_target.get(t, [])) for t in targets]
        n = min((len(per_target.get(t, [])) for t in targets), default=0)
        avg = [statistics.fmean(per_target[t][i] for t in targets) for i in range(n)]
        lines.append("| " + " | ".join([row, *cells, mean_std(avg)]) + " |")
    return "\n".join(lines) + "\n"


def with_earlier_rows(
    stem: Path,
    result: dict,
    order: list[str],
    same: tuple[str, ...] = ("metric", "seeds", "fixed_alpha", "split"),
    combine=None,
) -> dict:
    """The table to write at ``<stem>.json``: ``result``, with the rows and targets of the
    table already there that this run did not score (``ablate --rows``, other ``targets``,
    a threshold study at other alphas), when that table agrees with ``result`` on every key
    of ``same``; rows in ``order``, then the earlier table's others; ``combine(old, merged)``
    gives the keys besides the scores that the two tables make together (the alphas of both
    threshold studies). A table that disagrees is kept as ``<stem>.old-<n>.json`` and ``.md``
    (the first free n) and ``result`` replaces it."""
    path = stem.with_suffix(".json")
    if not path.is_file():
        return result
    try:
        old = read_json(path)
    except (OSError, ValueError):
        old = None
    if not isinstance(old, dict) or any(old.get(k) != result.get(k) for k in same):
        n = 1
        while stem.with_name(f"{stem.name}.old-{n}.json").exists():
            n += 1
        for ext in (".md", ".json"):  # the .json last: it names a whole table
            src = stem.with_suffix(ext)
            if src.is_file():
                src.replace(stem.with_name(f"{stem.name}.old-{n}{ext}"))
        return result
    scores: dict[str, dict[str, list[float]]] = {}
    for row in [*order, *(r for r in old.get("scores", {}) if r not in order)]:
        merged = {**old["scores"].get(row, {}), **result["scores"].get(row, {})}
        if merged:
            scores[row] = dict(sorted(merged.items()))
    merged = {**result, "scores": scores}
    return merged | (combine(old, merged) if combine else {})


STUDY_SAME = ("study", "metric", "seeds", "split")  # what two study tables must share to merge


def threshold_union(old: dict, merged: dict) -> dict:
    """Two threshold studies in one table: the alphas of both (rows by alpha, the automatic
    rows last), and the automatic alphas of each target from the run that scored it last."""
    alphas = sorted({*old.get("alphas", []), *merged["alphas"]})
    fixed = [f"alpha = {a:g}" for a in alphas]
    rows = [r for r in fixed if r in merged["scores"]]
    rows += [r for r in merged["scores"] if r not in fixed]
    return {
        "alphas": alphas,
        "scores": {r: merged["scores"][r] for r in rows},
        "automatic_alphas": {**old.get("automatic_alphas", {}), **merged["automatic_alphas"]},
    }


def rounds_union(old: dict, merged: dict) -> dict:
    """Two rounds studies in one table: the longer one's rounds, rows in order of N."""
    longest = max(old.get("max_rounds", 0), merged["max_rounds"])
    rows = ["N = 0 (teacher)"] + [f"N = {n:g}" for n in halves(longest)]
    return {
        "max_rounds": longest,
        "scores": {r: merged["scores"][r] for r in rows if r in merged["scores"]},
    }


def check_seeds(seeds: list[int]) -> None:
    if not seeds:
        raise ValueError("seeds: give at least one seed")


def halves(n: float) -> list[float]:
    """0.5, 1, 1.5, ..., n."""
    return [k / 2 for k in range(1, int(2 * n) + 1)]
