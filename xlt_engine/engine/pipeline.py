"""The whole method in one call, and its ablations.

``run_all``: for every target language (or the config's ``target``): btf -> finetune (from the
Base Model) and finetune-direct (from the pretrained model: direct transfer) -> selftrain ->
evaluate, then one table per target: direct transfer, + BTF, + self-training. Every stage
folder of the whole run is checked against its fingerprint (``engine.runs``) before anything
runs: a finished stage made with the same settings and inputs is reused (so variants share
their common stages and a re-run picks up where an earlier one stopped; a stage killed
half-way continues with ``resume``), and one made otherwise stops the run, naming each change.
Switches give the paper's ablation rows: ``btf=False`` (-BTF: fine-tuning and self-training
start from the pretrained model), ``selftrain=False`` (-ST), ``selftrain.threshold = "fixed"``
(-AT), ``model.head = "linear"`` (-VM), ``selftrain.pseudo_rule`` (the class-aware rules). The
direct-transfer column is always the pretrained model fine-tuned with a plain linear head
(``finetune-direct-linear``), standard mBERT fine-tuning as in the paper's baseline; without btf the teacher is the pretrained model
fine-tuned with the configured head (``finetune-direct``).

``run_ablate``: every row of the paper's tables 5 and 6 (Ours, -AT, -VM, -BTF, -ST, direct
transfer), and on request Ours under each other pseudo-label rule (``rule = <name>``), for
every seed, and a table of mean +- std over seeds per target and on average;
with several source languages also the method, -ST and direct transfer from each source alone
(its runs in ``<s>-<target>`` beside the multi-source ``<s1>+<s2>-<target>``); ``rows`` makes
only some rows, running only the stages they read.
With several sources (``sources``) btf reads every source's text and the target's; the
+ BTF and direct-transfer columns fine-tune on the union of the sources' training data; with
``multi_source = "teachers"`` self-training starts from one teacher per source
(``finetune-<lang>``), the mean of their probabilities.
The paper's two studies, tables alike: ``run_threshold_study`` (self-training at each fixed
alpha of a list, beside the automatic threshold) and ``run_rounds_study`` (the student after
every soft and hard step up to N rounds).
Every table is scored on the test files, or with ``evaluate.split = "dev"`` on the dev files
(``data.max_dev`` of them) into tables of their own (``all-dev``, ``ablation-dev``...): choices
such as a learning rate are made on those, the test tables reported.

``run_cotrain_ablation``: paper 003's rows (``cotrain_rows``: fine-tune only, self-training of
each view, co-training, Label and Semantic Alignment, translate-train) for every seed, as a
table of mean +- std over seeds.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from pathlib import Path

from xlt_engine.engine import distributed
from xlt_engine.engine.config import TEST_SPLIT, ExperimentConfig, check_files
from xlt_engine.engine.distributed import rank_world
from xlt_engine.engine.experiment import format_seconds, run_stage
from xlt_engine.engine.pseudo_labels import RULES as PSEUDO_RULES
from xlt_engine.engine.runs import (
    NAMED_MODELS,
    check_plans,
    model_stage,
    plan_stage,
    split_suffix,
    stage_dir,
    teacher_models,
    with_linear_head,
    with_section,
)
from xlt_engine.fileio import folder_bytes, write_results

COLUMNS = ("direct", "btf", "selftrain")
HEADINGS = {"direct": "direct transfer", "btf": "+ BTF", "selftrain": "+ self-training"}
ABLATION_ROWS = ("Ours", "- AT", "- VM", "- BTF", "- ST", "direct transfer")
SINGLE_SOURCE_ROWS = ("Ours", "- ST", "direct transfer")  # per source, with several sources


def _evaluate_row(pc: ExperimentConfig, model: str, resume: bool, echo) -> dict | None:
    """Source and pair-target scores of the model ``model`` names (rank 0; the others None)."""
    ec = with_section(pc, "evaluate", model=model)
    res = run_stage(ec, "evaluate", echo=None, reuse=True)
    if res is None:
        return None
    if echo:  # named by what was scored (evaluate-<what>), e.g. cotrain-self-emb
        s, name = res["languages"], stage_dir(ec, "evaluate").name.removeprefix("evaluate-")
        echo(
            f"[{pc.source}-{pc.pair_target}] {name}: {res['metric']} {pc.source} "
            f"{100 * s[pc.source]['score']:.2f}, {pc.pair_target} "
            f"{100 * s[pc.pair_target]['score']:.2f}"
        )
    return res


def pair_configs(cfg: ExperimentConfig) -> list[ExperimentConfig]:
    """One config per target (``target`` set; its run folder is ``run_dir()``)."""
    targets = [cfg.target] if cfg.target else list(cfg.targets)
    return [dataclasses.replace(cfg, target=t) for t in targets]


def table_dir(cfg: ExperimentConfig) -> Path:
    """Where the tables over all pairs go: ``out`` when given, else ``runs/<config name>``."""
    return cfg.out_root()


def plan_all(
    cfg: ExperimentConfig,
    btf: bool = True,
    selftrain: bool = True,
    direct: bool = True,
    finetuned: bool = True,
) -> list[tuple[ExperimentConfig, str]]:
    """The (config, stage) steps ``run_all`` takes, in order: per pair btf, finetune-direct,
    finetune, selftrain, then the evaluation of each model (``evaluate.model`` set).
    ``finetuned=False``: no + BTF column (the model fine-tuned from the Base Model is made only
    where it is round 1's teacher, and not evaluated)."""
    if not btf:
        cfg = with_section(cfg, "selftrain", base="pretrained", teacher="finetune-direct")
    steps = []
    for pc in pair_configs(cfg):
        models = []  # (config, model name) to evaluate
        if btf:
            steps.append((pc, "btf"))
        if direct:  # the baseline: a plain linear head on the pretrained model
            dc = with_linear_head(pc)
            steps.append((with_section(dc, "finetune", init="pretrained"), "finetune"))
            models.append((dc, "finetune-direct"))
        if selftrain and not btf and not pc.teachers_per_source:  # the teacher, pretrained
            step = (with_section(pc, "finetune", init="pretrained"), "finetune")
            if step not in steps:
                steps.append(step)
        if btf and (finetuned or (selftrain and not pc.teachers_per_source)):
            steps.append((with_section(pc, "finetune", init="btf"), "finetune"))
        if btf and finetuned:
            models.append((pc, "finetune"))
        if selftrain:  # several sources, one teacher each: each fine-tuned on its source
            for key, (c, name) in teacher_models(pc).items():
                if key != "selftrain.teacher":
                    steps.append(model_stage(c, name))
            steps.append((pc, "selftrain"))
            models.append((pc, "selftrain"))
        steps += [(with_section(c, "evaluate", model=m), "evaluate") for c, m in models]
    return steps


def check_all(
    cfg: ExperimentConfig,
    btf: bool = True,
    selftrain: bool = True,
    direct: bool = True,
    finetuned: bool = True,
) -> list[tuple[ExperimentConfig, str]]:
    """Every file problem and every stale stage folder of the whole run, before anything runs;
    returns the steps (``plan_all``)."""
    steps = plan_all(cfg, btf, selftrain, direct, finetuned)
    for pc, stage in steps:
        check_files(pc, stage)
    check_plans([plan_stage(pc, stage) for pc, stage in steps])
    return steps


def run_all(
    cfg: ExperimentConfig,
    btf: bool = True,
    selftrain: bool = True,
    resume: bool = False,
    echo=print,
    progress=None,
    direct: bool = True,
    table_name: str = "all",
    finetuned: bool = True,
) -> dict:
    """Run the pipeline for every pair; returns ``{"metric", "source", "targets": {target:
    {"direct", "btf", "selftrain" (scores or None), "source": {...}}}}`` and writes
    ``all.json`` and ``all.md`` into ``table_dir(cfg)``. ``direct=False`` skips the direct
    transfer model when btf runs (an ablation variant that does not need it), ``finetuned=False``
    the + BTF column (``plan_all``); ``table_name`` names the two files."""
    distributed.init(cfg.device)
    steps = check_all(cfg, btf, selftrain, direct, finetuned)
    start = time.perf_counter()
    timings: list[tuple[str, float | None]] = []  # (pair and stage, seconds; None: reused)
    results: dict = {
        "metric": None,
        "source": cfg.source,
        "split": cfg.evaluate.split,
        "targets": {},
    }
    column = {"finetune-direct": "direct", "finetune": "btf", "selftrain": "selftrain"}
    for pc, stage in steps:
        where = f"[{pc.source}-{pc.pair_target}]"
        row = results["targets"].setdefault(
            pc.pair_target, {**dict.fromkeys(COLUMNS), "source": dict.fromkeys(COLUMNS)}
        )
        if stage == "evaluate":
            t0 = time.perf_counter()
            res = _evaluate_row(pc, pc.evaluate.model, resume, echo)
            timings.append((f"{where} evaluate {pc.evaluate.model}", time.perf_counter() - t0))
            if res is not None:
                col = column[pc.evaluate.model]
                results["metric"] = res["metric"]
                row[col] = res["languages"][pc.pair_target]["score"]
                row["source"][col] = res["languages"][pc.source]["score"]
            continue
        timings.append(_run_step(pc, stage, resume, echo, progress))
    if rank_world()[0] == 0:
        name = write_table(cfg, table_name, results, all_table(results), echo)
        if echo:
            echo(run_summary(timings, time.perf_counter() - start, table_dir(cfg), name))
    return results


def _run_step(
    pc: ExperimentConfig, stage: str, resume: bool, echo, progress
) -> tuple[str, float | None]:
    """Run one training stage of a checked plan, or reuse its finished output; returns (its
    name for the summary, seconds or None when reused)."""
    where = f"[{pc.source}-{pc.pair_target}]"
    plan = plan_stage(pc, stage)
    if plan.output.exists():
        if echo:
            echo(f"{where} {stage}: {plan.output} exists, same fingerprint, not run again")
        return f"{where} {plan.folder.name}", None
    if echo:
        echo(f"{where} {stage} -> {plan.folder}")
    t0 = time.perf_counter()
    run_stage(pc, stage, resume=resume and plan.started(), echo=echo, progress=progress)
    distributed.barrier()
    return f"{where} {plan.folder.name}", time.perf_counter() - t0


def run_summary(timings, seconds: float, folder: Path, table_name: str) -> str:
    """What ``run --stage all`` did: time per stage (or reused), the tables, the disk used."""
    lines = ["summary:"]
    for name, secs in timings:
        lines.append(f"  {name:<40} {'reused' if secs is None else format_seconds(secs)}")
    size = folder_bytes(folder)
    lines.append(
        f"  all in {format_seconds(seconds)}; tables {folder / (table_name + '.md')} and .json; "
        f"{folder} holds {size / 2**20:,.1f} MiB"
    )
    return "\n".join(lines)


def write_table(cfg: ExperimentConfig, name: str, result: dict, table: str, echo) -> str:
    """``<name>.json`` and ``.md`` in ``table_dir(cfg)``, ``<name>-dev`` when scored on the dev
    files (``evaluate.split``, so a dev table never replaces a test one); returns the name."""
    name += split_suffix(cfg)
    write_results(table_dir(cfg), name, result, table, echo)
    return name


def _scored_on(result: dict) -> str:
    """`` on the dev files`` in a table's caption when it was not scored on the test files."""
    split = result.get("split", TEST_SPLIT)
    return "" if split == TEST_SPLIT else f" on the {split} files"


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def all_table(results: dict) -> str:
    """Markdown: one row per target (its score under each model), then the source language."""
    metric = "entity F1" if results["metric"] == "entity_f1" else "accuracy"
    head = ["language"] + [HEADINGS[c] for c in COLUMNS]
    rows = [
        f"{metric} (%){_scored_on(results)}\n",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    targets = results["targets"]
    for t, row in targets.items():
        rows.append("| " + " | ".join([t] + [_pct(row[c]) for c in COLUMNS]) + " |")
    if len(targets) > 1:
        means = []
        for c in COLUMNS:
            vals = [row[c] for row in targets.values() if row[c] is not None]
            means.append(_pct(sum(vals) / len(vals)) if len(vals) == len(targets) else "–")
        rows.append("| " + " | ".join(["mean (targets)", *means]) + " |")
    src = next(iter(targets.values()))["source"] if targets else {}
    if src:
        rows.append(
            "| "
            + " | ".join([f"{results['source']} (source)"] + [_pct(src[c]) for c in COLUMNS])
            + " |"
        )
    return "\n".join(rows) + "\n"


def rule_rows(cfg: ExperimentConfig) -> dict[str, str]:
    """``{row: pseudo_rule}``: Ours with each pseudo-label rule other than the config's own
    (``"rule = per_class_precision"``...), the rows that compare the rules."""
    return {f"rule = {r}": r for r in PSEUDO_RULES if r != cfg.selftrain.pseudo_rule}


def ablation_rows(cfg: ExperimentConfig) -> tuple[str, ...]:
    """The rows ``run_ablate`` can make for ``cfg``: ``ABLATION_ROWS``, Ours with each other
    pseudo-label rule (``rule_rows``), and with several sources per source alone its Ours, - ST
    and direct-transfer rows (``"Ours (eng only)"``...)."""
    alone = _alone_sources(cfg)
    return (
        *ABLATION_ROWS,
        *rule_rows(cfg),
        *(f"{r} ({lang} only)" for lang in alone for r in SINGLE_SOURCE_ROWS),
    )


def _alone_sources(cfg: ExperimentConfig) -> tuple[str, ...]:
    """The sources the ablation also runs alone: every one when there are several."""
    return cfg.source_languages if len(cfg.source_languages) > 1 else ()


def run_ablate(
    cfg: ExperimentConfig,
    seeds: list[int],
    fixed_alpha: float = 0.9,
    resume: bool = False,
    echo=print,
    progress=None,
    rows: list[str] | None = None,
) -> dict:
    """The paper's ablation rows (or only ``rows``, in the order of ``ablation_rows``, which
    may also name Ours under another pseudo-label rule, ``rule = <name>``; a variant runs only
    when a chosen row needs it) for every seed (each seed in ``<table_dir>/seed-<s>``),
    then ``ablation.json`` and ``ablation.md`` (mean +- std over seeds) in ``table_dir(cfg)``."""
    if not seeds:
        raise ValueError("seeds: give at least one seed")
    every = ablation_rows(cfg)
    unknown = [r for r in rows or () if r not in every]
    if unknown or rows == []:
        got = f"no row {unknown[0]!r} for this config" if unknown else "give at least one row"
        raise ValueError(f"rows: {got}; the rows are {list(every)}")
    # by default the paper's rows; the other pseudo-label rules' rows only when asked for
    chosen = [r for r in every if (r in rows if rows is not None else r not in rule_rows(cfg))]
    root = table_dir(cfg)
    scores: dict[str, dict[str, list[float]]] = {row: {} for row in chosen}
    picks = {  # row: (variant, column of its run_all results)
        "Ours": ("full", "selftrain"),
        "- AT": ("fixed", "selftrain"),
        "- VM": ("linear", "selftrain"),
        "- BTF": ("nobtf", "selftrain"),
        "- ST": ("full", "btf"),
        "direct transfer": ("full", "direct"),
    }
    variants = {  # variant: (config, run_all switches)
        "full": (cfg, {}),
        "fixed": (with_section(cfg, "selftrain", threshold="fixed", alpha=fixed_alpha),
                  {"table_name": f"all-alpha{fixed_alpha:g}"}),
        "linear": (with_linear_head(cfg), {"table_name": "all-linear-head"}),
        "nobtf": (cfg, {"table_name": "all-no-btf"}),
    }  # fmt: skip
    for row, rule in rule_rows(cfg).items():  # Ours with another pseudo-label rule
        variants[rule] = (with_section(cfg, "selftrain", pseudo_rule=rule),
                          {"table_name": f"all-{rule}"})  # fmt: skip
        picks[row] = (rule, "selftrain")
    single = _alone_sources(cfg)
    for lang in single:  # several sources: the method from each one alone
        alone = dataclasses.replace(cfg, source=lang, sources=())
        variants[lang] = (alone, {"table_name": f"all-{lang}-only"})
        picks.update({f"{r} ({lang} only)": (lang, picks[r][1]) for r in SINGLE_SOURCE_ROWS})
    for name, (_, switches) in variants.items():  # no model that no chosen row reads
        cols = {picks[r][1] for r in chosen if picks[r][0] == name}
        switches.update(
            btf=name != "nobtf" and bool(cols & {"btf", "selftrain"}),
            direct="direct" in cols,
            finetuned="btf" in cols,
            selftrain="selftrain" in cols,
        )
    needed = {picks[r][0] for r in chosen}
    for seed in seeds:
        if echo:
            echo(f"=== seed {seed}")
        runs = {
            name: run_all(
                dataclasses.replace(c, seed=seed, out=str(root / f"seed-{seed}")),
                resume=resume, echo=echo, progress=progress, **switches,
            )
            for name, (c, switches) in variants.items()
            if name in needed
        }  # fmt: skip
        for row in chosen:
            run, col = picks[row]
            for t, r in runs[run]["targets"].items():
                if r[col] is not None:
                    scores[row].setdefault(t, []).append(r[col])
    result = {
        "metric": next(iter(runs.values()))["metric"],
        "seeds": list(seeds),
        "fixed_alpha": fixed_alpha,
        "split": cfg.evaluate.split,
        "scores": scores,
    }
    if rank_world()[0] == 0:
        table = with_earlier_rows(root / f"ablation{split_suffix(cfg)}", result, list(every))
        write_table(cfg, "ablation", table, ablation_table(table), echo)
    return result


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
        old = json.loads(path.read_text(encoding="utf-8"))
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


def _threshold_union(old: dict, merged: dict) -> dict:
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


def _rounds_union(old: dict, merged: dict) -> dict:
    """Two rounds studies in one table: the longer one's rounds, rows in order of N."""
    longest = max(old.get("max_rounds", 0), merged["max_rounds"])
    rows = ["N = 0 (teacher)"] + [f"N = {n:g}" for n in _halves(longest)]
    return {
        "max_rounds": longest,
        "scores": {r: merged["scores"][r] for r in rows if r in merged["scores"]},
    }


def seed_config(cfg: ExperimentConfig, seed: int) -> ExperimentConfig:
    """``cfg`` for one seed of a study: its runs in ``<table_dir>/seed-<s>`` (shared with the
    ablation's, so every stage they have in common is reused)."""
    return dataclasses.replace(cfg, seed=seed, out=str(table_dir(cfg) / f"seed-{seed}"))


def _check_seeds(seeds: list[int]) -> None:
    if not seeds:
        raise ValueError("seeds: give at least one seed")


def run_threshold_study(
    cfg: ExperimentConfig,
    seeds: list[int],
    alphas: list[float],
    resume: bool = False,
    echo=print,
    progress=None,
) -> dict:
    """The paper's threshold table: self-training with alpha fixed at each of ``alphas`` (one
    row each) and with the automatic threshold (``cfg.selftrain.threshold``), for every seed;
    ``threshold-study.json`` and ``.md`` (mean +- std over seeds) in ``table_dir(cfg)``. The
    chosen alphas of the automatic rows are in the json, per target and seed."""
    _check_seeds(seeds)
    if not alphas or any(not 0 <= a < 1 for a in alphas):
        raise ValueError(f"alphas: give thresholds in [0, 1), got {alphas}")
    auto = f"automatic ({cfg.selftrain.threshold})"
    rows = {f"alpha = {a:g}": a for a in alphas}
    scores: dict[str, dict[str, list[float]]] = {row: {} for row in (*rows, auto)}
    chosen: dict[str, list[list[float]]] = {}
    metric = None
    for seed in seeds:
        if echo:
            echo(f"=== seed {seed}")
        variants = {auto: (cfg, "all")}
        for row, a in rows.items():
            fixed = with_section(cfg, "selftrain", threshold="fixed", alpha=a)
            variants[row] = (fixed, f"all-alpha{a:g}")
        for row, (c, table) in variants.items():
            res = run_all(seed_config(c, seed), resume=resume, echo=echo, progress=progress,
                          table_name=table)  # fmt: skip
            metric = res["metric"]
            for t, r in res["targets"].items():
                if r["selftrain"] is not None:
                    scores[row].setdefault(t, []).append(r["selftrain"])
        for pc in pair_configs(seed_config(cfg, seed)):
            summary = stage_dir(pc, "selftrain") / "summary.json"
            if summary.is_file():
                log = json.loads(summary.read_text(encoding="utf-8"))["log"]
                alphas_used = [x["alpha"] for x in log if x["step"] == "threshold"]
                chosen.setdefault(pc.pair_target, []).append(alphas_used)
    result = {
        "study": "threshold",
        "metric": metric,
        "seeds": list(seeds),
        "alphas": list(alphas),
        "split": cfg.evaluate.split,
        "scores": scores,
        "automatic_alphas": chosen,  # per target, per seed: alpha of each round
    }
    if rank_world()[0] == 0:
        caption = (
            f"self-training with a fixed threshold alpha, and the automatic one "
            f"({cfg.selftrain.threshold}; the alphas it chose are in threshold-study.json)"
        )
        stem = table_dir(cfg) / f"threshold-study{split_suffix(cfg)}"
        table = with_earlier_rows(stem, result, list(scores), STUDY_SAME, _threshold_union)
        write_table(cfg, "threshold-study", table, study_table(table, caption), echo)
    return result


def run_rounds_study(
    cfg: ExperimentConfig,
    seeds: list[int],
    max_rounds: float,
    resume: bool = False,
    echo=print,
    progress=None,
) -> dict:
    """The paper's rounds table: one self-training run of ``max_rounds`` rounds per seed, and
    the student evaluated after every step (N = 0.5: round 1's soft step, N = 1: its hard step,
    ...); N = 0 is the teacher (+ BTF). ``rounds-study.json`` and ``.md`` in
    ``table_dir(cfg)``."""
    _check_seeds(seeds)
    long = with_section(cfg, "selftrain", rounds=max_rounds)  # checks max_rounds
    rows = ["N = 0 (teacher)"] + [f"N = {n:g}" for n in _halves(long.selftrain.rounds)]
    scores: dict[str, dict[str, list[float]]] = {row: {} for row in rows}
    metric = None
    for seed in seeds:
        if echo:
            echo(f"=== seed {seed}")
        seeded = seed_config(long, seed)
        res = run_all(seeded, resume=resume, echo=echo, progress=progress,
                      table_name=f"all-rounds{max_rounds:g}")  # fmt: skip
        metric = res["metric"]
        for pc in pair_configs(seeded):
            t = pc.pair_target
            if res["targets"][t]["btf"] is not None:
                scores[rows[0]].setdefault(t, []).append(res["targets"][t]["btf"])
            folder = stage_dir(pc, "selftrain")
            *middle, last = zip(rows[1:], pc.selftrain.steps, strict=True)
            for row, (r, which) in middle:
                model = str(folder / f"round-{r}" / which / "model")
                got = _evaluate_row(pc, model, resume, echo)
                if got is not None:
                    scores[row].setdefault(t, []).append(got["languages"][t]["score"])
            if res["targets"][t]["selftrain"] is not None:  # the last step: run_all scored it
                scores[last[0]].setdefault(t, []).append(res["targets"][t]["selftrain"])
    result = {
        "study": "rounds",
        "metric": metric,
        "seeds": list(seeds),
        "max_rounds": max_rounds,
        "split": cfg.evaluate.split,
        "scores": scores,
    }
    if rank_world()[0] == 0:
        caption = (
            "the student after N rounds of self-training (N = r - 0.5: round r's soft step, "
            "N = r: its hard step); N = 0: the fine-tuned teacher (+ BTF)"
        )
        stem = table_dir(cfg) / f"rounds-study{split_suffix(cfg)}"
        table = with_earlier_rows(stem, result, rows, STUDY_SAME, _rounds_union)
        write_table(cfg, "rounds-study", table, study_table(table, caption), echo)
    return result


def _halves(n: float) -> list[float]:
    """0.5, 1, 1.5, ..., n."""
    return [k / 2 for k in range(1, int(2 * n) + 1)]


def _mean_std(vals: list[float]) -> str:
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
        f"{metric} (%){_scored_on(result)}, mean ± std over seeds {result['seeds']}; {caption}\n",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for row, per_target in result["scores"].items():
        cells = [_mean_std(per_target.get(t, [])) for t in targets]
        n = min((len(per_target.get(t, [])) for t in targets), default=0)
        avg = [statistics.fmean(per_target[t][i] for t in targets) for i in range(n)]
        lines.append("| " + " | ".join([row, *cells, _mean_std(avg)]) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# paper 003: co-training and contrastive language adaptation

PARALLEL_ROWS = ("+ SA", "+ LA + SA", "translate-train")


def cotrain_rows(cfg: ExperimentConfig) -> dict[str, tuple[ExperimentConfig, str]]:
    """Paper 003's rows for one pair: ``{row: (config, the model it evaluates)}``. The
    language-adaptation rows fine-tune the LM view (``model.path``, a plain linear head, from
    the pretrained model) with the ``[finetune]`` settings; the co-training rows come from two
    ``cotrain`` runs, one exchanging rows between the views (``cotrain/``) and one where each
    view keeps its own (``cotrain-self/``: self-training of each view alone). The embedding
    view fine-tuned on the source alone is co-training's first iteration. The rows that read
    translations (``PARALLEL_ROWS``) are there only when ``finetune.parallel_file`` is set."""
    plain = with_section(
        with_linear_head(cfg),
        "finetune",
        init="pretrained",
        label_alignment=False,
        parallel_file=None,
        semantic_alignment=False,
    )
    cross = with_section(cfg, "cotrain", exchange="cross")
    own = with_section(cfg, "cotrain", exchange="self")
    first = stage_dir(cross, "cotrain") / "iter-1" / "emb" / "model"
    rows = {
        "fine-tune only": (plain, "finetune-direct"),
        "fine-tune only (embedding view)": (cross, str(first)),
        "+ self-training (LM view)": (own, "cotrain-lm"),
        "+ self-training (embedding view)": (own, "cotrain-emb"),
        "+ co-training (LM view)": (cross, "cotrain-lm"),
        "+ co-training (embedding view)": (cross, "cotrain-emb"),
        "+ co-training (mean of views)": (cross, "cotrain-mean"),
        "+ LA": (with_section(plain, "finetune", label_alignment=True), "finetune-direct"),
    }
    par = cfg.finetune.parallel_file
    if par:
        sa = dict(parallel_file=par, semantic_alignment=True)
        rows["+ SA"] = (with_section(plain, "finetune", **sa), "finetune-direct")
        both = with_section(plain, "finetune", label_alignment=True, **sa)
        rows["+ LA + SA"] = (both, "finetune-direct")
        tt = with_section(plain, "finetune", parallel_file=par)
        rows["translate-train"] = (tt, "finetune-direct")
    return rows


def _cotrain_steps(cfg: ExperimentConfig) -> list[tuple[ExperimentConfig, str]]:
    """The training stages of ``cotrain_rows`` for every pair, each once, in order."""
    steps: list[tuple[ExperimentConfig, str]] = []
    for pc in pair_configs(cfg):
        for c, name in cotrain_rows(pc).values():
            step = model_stage(c, name) if name in NAMED_MODELS else (c, "cotrain")
            if step not in steps:
                steps.append(step)
    return steps


def run_cotrain_ablation(
    cfg: ExperimentConfig, seeds: list[int], resume: bool = False, echo=print, progress=None
) -> dict:
    """Paper 003's rows (``cotrain_rows``) for every seed and pair, each seed in
    ``<table_dir>/seed-<s>``; ``cotrain-ablation.json`` and ``.md`` (mean +- std over seeds, and
    the wall time of every stage) in ``table_dir(cfg)``. Every stage of every seed is checked
    (files, stale folders) before any runs."""
    _check_seeds(seeds)
    distributed.init(cfg.device)
    for seed in seeds:  # everything checked first: a bad file or stale folder costs nothing
        seeded = seed_config(cfg, seed)
        steps = _cotrain_steps(seeded)
        evals = [
            (with_section(c, "evaluate", model=m), "evaluate")
            for pc in pair_configs(seeded)
            for c, m in cotrain_rows(pc).values()
        ]
        for pc, stage in steps + evals:
            check_files(pc, stage)
        check_plans([plan_stage(pc, stage) for pc, stage in steps + evals])
    rows = list(cotrain_rows(pair_configs(cfg)[0]))
    scores: dict[str, dict[str, list[float]]] = {row: {} for row in rows}
    source: dict[str, list[float]] = {row: [] for row in rows}
    seconds: dict[str, list[float | None]] = {}
    metric = None
    for seed in seeds:
        if echo:
            echo(f"=== seed {seed}")
        seeded = seed_config(cfg, seed)
        for pc, stage in _cotrain_steps(seeded):
            name, secs = _run_step(pc, stage, resume, echo, progress)
            seconds.setdefault(name, []).append(secs)
        for pc in pair_configs(seeded):
            for row, (c, model) in cotrain_rows(pc).items():
                res = _evaluate_row(c, model, resume, echo)
                if res is None:
                    continue
                metric = res["metric"]
                scores[row].setdefault(pc.pair_target, []).append(
                    res["languages"][pc.pair_target]["score"]
                )
                if pc.pair_target == pair_configs(seeded)[0].pair_target:
                    source[row].append(res["languages"][pc.source]["score"])
    left_out = [] if cfg.finetune.parallel_file else list(PARALLEL_ROWS)
    result = {
        "study": "cotrain",
        "metric": metric,
        "seeds": list(seeds),
        "predict_with": cfg.cotrain.predict_with,
        "split": cfg.evaluate.split,
        "scores": scores,
        "source_scores": source,  # each row's score on the source language's test (dev) file
        "seconds": seconds,  # per stage folder (pair and name), per seed; None: reused
        "left_out": left_out,
    }
    if rank_world()[0] == 0:
        caption = (
            "paper 003's rows: the LM view fine-tuned (+ LA, SA: language adaptation), "
            "self-training of each view alone, co-training"
        )
        if left_out:
            caption += f"; {', '.join(left_out)} need finetune.parallel_file (not set)"
        write_table(cfg, "cotrain-ablation", result, study_table(result, caption), echo)
    return result
