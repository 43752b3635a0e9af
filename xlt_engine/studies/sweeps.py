"""The paper's two studies: ``run_threshold_study`` (self-training at each fixed alpha of a list,
beside the automatic threshold) and ``run_rounds_study`` (the student after every soft and hard
step up to N rounds), for every seed, into tables that keep the rows of an earlier study of the
same folder (``tables.with_earlier_rows``). Scored on the test files, or with
``evaluate.split = "dev"`` on the dev files into tables of their own.
"""

from __future__ import annotations

from xlt_engine.engine.experiment.ablations import fixed_threshold
from xlt_engine.engine.experiment.config import ExperimentConfig
from xlt_engine.engine.experiment.pipeline import (
    claim_table,
    evaluate_row,
    pair_configs,
    run_all,
    seed_config,
    table_dir,
    write_table,
)
from xlt_engine.engine.experiment.runs import stage_dir, with_section
from xlt_engine.engine.experiment.stages.evaluate import EvaluateSection, split_suffix
from xlt_engine.engine.experiment.stages.selftrain import SelftrainSection
from xlt_engine.engine.method.threshold import check_alpha
from xlt_engine.engine.train.distributed import rank_world
from xlt_engine.inputs import read_json
from xlt_engine.studies.tables import (
    STUDY_SAME,
    check_seeds,
    halves,
    rounds_union,
    study_table,
    threshold_union,
    with_earlier_rows,
)


def run_threshold_study(
    cfg: ExperimentConfig,
    seeds: list[int],
    alphas: list[float],
    resume: bool = False,
    echo=print,
    progress=None,
) -> dict:
    """The paper's threshold table: self-training with alpha fixed at each of ``alphas`` (one
    row each) and with the automatic threshold (``cfg.section(SelftrainSection).rule.threshold``), for every seed;
    ``threshold-study.json`` and ``.md`` (mean +- std over seeds) in ``table_dir(cfg)``. The
    chosen alphas of the automatic rows are in the json, per target and seed."""
    check_seeds(seeds)
    if not alphas:
        raise ValueError("alphas: give at least one threshold in [0, 1)")
    for a in alphas:
        check_alpha(a, "alphas: give thresholds")
    claim_table(cfg, "threshold-study")  # before any work: never a file of the user's
    auto = f"automatic ({cfg.section(SelftrainSection).rule.threshold})"
    rows = {f"alpha = {a:g}": a for a in alphas}
    scores: dict[str, dict[str, list[float]]] = {row: {} for row in (*rows, auto)}
    chosen: dict[str, list[list[float]]] = {}
    metric = None
    for seed in seeds:
        if echo:
            echo(f"=== seed {seed}")
        variants = {auto: (cfg, "all")}
        for row, a in rows.items():
            fixed = fixed_threshold(cfg, a)
            variants[row] = (fixed, f"all-alpha{a:g}")
        for row, (c, table) in variants.items():
            res = run_all(
                seed_config(c, seed), resume=resume, echo=echo, progress=progress, table_name=table
            )
            metric = res["metric"]
            for t, r in res["targets"].items():
                if r["selftrain"] is not None:
                    scores[row].setdefault(t, []).append(r["selftrain"])
        for pc in pair_configs(seed_config(cfg, seed)):
            summary = stage_dir(pc, "selftrain") / "summary.json"
            if summary.is_file():
                log = read_json(summary)["log"]
                alphas_used = [x["alpha"] for x in log if x["step"] == "threshold"]
                chosen.setdefault(pc.pair_target, []).append(alphas_used)
    result = {
        "study": "threshold",
        "metric": metric,
        "seeds": list(seeds),
        "alphas": list(alphas),
        "split": cfg.section(EvaluateSection).split,
        "scores": scores,
        "automatic_alphas": chosen,  # per target, per seed: alpha of each round
    }
    if rank_world()[0] == 0:
        caption = (
            f"self-training with a fixed threshold alpha, and the automatic one "
            f"({cfg.section(SelftrainSection).rule.threshold}; the alphas it chose are in threshold-study.json)"
        )
        stem = table_dir(cfg) / f"threshold-study{split_suffix(cfg)}"
        table = with_earlier_rows(stem, result, list(scores), STUDY_SAME, threshold_union)
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
    check_seeds(seeds)
    long = with_section(cfg, "selftrain", rounds=max_rounds)  # checks max_rounds
    claim_table(cfg, "rounds-study")
    rows = ["N = 0 (teacher)"] + [f"N = {n:g}" for n in halves(max_rounds)]
    scores: dict[str, dict[str, list[float]]] = {row: {} for row in rows}
    metric = None
    for seed in seeds:
        if echo:
            echo(f"=== seed {seed}")
        seeded = seed_config(long, seed)
        res = run_all(
            seeded,
            resume=resume,
            echo=echo,
            progress=progress,
            table_name=f"all-rounds{max_rounds:g}",
        )
        metric = res["metric"]
        for pc in pair_configs(seeded):
            t = pc.pair_target
            if res["targets"][t]["btf"] is not None:
                scores[rows[0]].setdefault(t, []).append(res["targets"][t]["btf"])
            folder = stage_dir(pc, "selftrain")
            *middle, last = zip(rows[1:], pc.section(SelftrainSection).steps, strict=True)
            for row, (r, which) in middle:
                model = str(folder / f"round-{r}" / which / "model")
                got = evaluate_row(pc, model, echo)
                if got is not None:
                    scores[row].setdefault(t, []).append(got["languages"][t]["score"])
            if res["targets"][t]["selftrain"] is not None:  # the last step: run_all scored it
                scores[last[0]].setdefault(t, []).append(res["targets"][t]["selftrain"])
    result = {
        "study": "rounds",
        "metric": metric,
        "seeds": list(seeds),
        "max_rounds": max_rounds,
        "split": cfg.section(EvaluateSection).split,
        "scores": scores,
    }
    if rank_world()[0] == 0:
        caption = (
            "the student after N rounds of self-training (N = r - 0.5: round r's soft step, "
            "N = r: its hard step); N = 0: the fine-tuned teacher (+ BTF)"
        )
        stem = table_dir(cfg) / f"rounds-study{split_suffix(cfg)}"
        table = with_earlier_rows(stem, result, rows, STUDY_SAME, rounds_union)
        write_table(cfg, "rounds-study", table, study_table(table, caption), echo)
    return result
