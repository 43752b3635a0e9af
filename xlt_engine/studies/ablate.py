"""The paper's ablations: ``run_ablate`` makes every row of tables 5 and 6 (Ours, -AT, -VM,
-BTF, -ST, direct transfer), soft only (no hard step: what the hard steps add) and, on
request, Ours under each other pseudo-label rule (``rule = <name>``) and student start
(``init = teacher``, ``init = teacher; rule = <name>``), for every seed, with a table of
mean +- std over seeds per target and on average. With several sources also the method, -ST and direct transfer from each source alone
(their runs in ``<s>-<target>`` beside the multi-source ``<s1>+<s2>-<target>``); ``rows`` makes
only some rows, running only the stages they read. Each row is a config switch over
``engine.experiment.pipeline.run_all``'s runs, so rows share their common stages.

``run_cotrain_ablation``: paper 003's rows (``cotrain_rows``: fine-tune only, self-training of
each view, co-training, Label and Semantic Alignment, translate-train) for every seed, as a
table of mean +- std over seeds.
"""

from __future__ import annotations

import dataclasses

from xlt_engine.engine.experiment.ablations import fixed_threshold, linear_head, soft_only
from xlt_engine.engine.experiment.config import ExperimentConfig, check_files
from xlt_engine.engine.experiment.pipeline import (
    Parts,
    claim_table,
    evaluate_row,
    pair_configs,
    plan_all,
    run_all,
    run_step,
    seed_config,
    table_dir,
    write_table,
)
from xlt_engine.engine.experiment.runs import (
    check_plans,
    model_stage,
    named_models,
    plan_stage,
    stage_dir,
    with_linear_head,
    with_section,
)
from xlt_engine.engine.experiment.stages.cotrain import CotrainSection
from xlt_engine.engine.experiment.stages.evaluate import EvaluateSection, split_suffix
from xlt_engine.engine.experiment.stages.finetune import FinetuneSection
from xlt_engine.engine.experiment.stages.selftrain import SelftrainSection, with_rule
from xlt_engine.engine.train import distributed
from xlt_engine.engine.train.distributed import rank_world
from xlt_engine.studies.tables import ablation_table, check_seeds, study_table, with_earlier_rows

ABLATION_ROWS = ("Ours", "- AT", "- VM", "- BTF", "- ST", "direct transfer", "soft only")
SINGLE_SOURCE_ROWS = ("Ours", "- ST", "direct transfer")  # per source, with several sources


def method_rows(cfg: ExperimentConfig) -> dict[str, dict[str, str]]:
    """``{row: selftrain settings}``: Ours with another pseudo-label rule
    (``"rule = class_quota"``: ``{"rule": "class_quota"}``), with students that start
    from another encoder (``"init = teacher"``) and with both (``"init = teacher; rule =
    class_quota"``): the rows that compare the rules and the students' start."""
    s = cfg.section(SelftrainSection)
    rules = [None, *s.rule.alternatives()]
    inits = [None, *s.other_inits()]
    rows = {}
    for init in inits:
        for rule in rules:
            name = "; ".join(
                [*([f"init = {init}"] if init else []), *([f"rule = {rule}"] if rule else [])]
            )
            if name:
                rows[name] = {
                    **({"student_init": init} if init else {}),
                    **({"rule": rule} if rule else {}),
                }
    return rows


def with_changes(cfg: ExperimentConfig, changes: dict[str, str]) -> ExperimentConfig:
    """``cfg`` with a ``method_rows`` row's changes: the rule by name, the student's start."""
    changes = dict(changes)
    if "rule" in changes:
        cfg = with_rule(cfg, changes.pop("rule"))
    return with_section(cfg, "selftrain", **changes) if changes else cfg


def ablation_rows(cfg: ExperimentConfig) -> tuple[str, ...]:
    """The rows ``run_ablate`` can make for ``cfg``: ``ABLATION_ROWS``, Ours with each other
    pseudo-label rule or student start (``method_rows``), and with several sources per source
    alone its Ours, - ST and direct-transfer rows (``"Ours (eng only)"``...)."""
    alone = _alone_sources(cfg)
    return (
        *ABLATION_ROWS,
        *method_rows(cfg),
        *(f"{r} ({lang} only)" for lang in alone for r in SINGLE_SOURCE_ROWS),
    )


def _alone_sources(cfg: ExperimentConfig) -> tuple[str, ...]:
    """The sources the ablation also runs alone: every one when there are several."""
    return cfg.source_languages if len(cfg.source_languages) > 1 else ()


def ablation_variants(cfg: ExperimentConfig, fixed_alpha: float, chosen: list[str]):
    """The runs the chosen rows read (``{variant: (config, run_all switches)}``) and each row's
    ``(variant, column of its run_all results)``; a variant makes no model no chosen row reads."""
    picks = {  # row: (variant, column of its run_all results)
        "Ours": ("full", "selftrain"),
        "- AT": ("fixed", "selftrain"),
        "- VM": ("linear", "selftrain"),
        "- BTF": ("nobtf", "selftrain"),
        "- ST": ("full", "btf"),
        "direct transfer": ("full", "direct"),
        "soft only": ("softonly", "selftrain"),
    }
    variants = {  # variant: (config, run_all switches)
        "full": (cfg, {}),
        "fixed": (fixed_threshold(cfg, fixed_alpha), {"table_name": f"all-alpha{fixed_alpha:g}"}),
        "linear": (linear_head(cfg), {"table_name": "all-linear-head"}),
        "nobtf": (cfg, {"table_name": "all-no-btf"}),
        "softonly": (soft_only(cfg), {"table_name": "all-soft-only"}),
    }
    for row, changes in method_rows(cfg).items():  # Ours with another rule or start
        name = "-".join(f"init_{v}" if k == "student_init" else v for k, v in changes.items())
        variants[name] = (with_changes(cfg, changes), {"table_name": f"all-{name}"})
        picks[row] = (name, "selftrain")
    single = _alone_sources(cfg)
    for lang in single:  # several sources: the method from each one alone
        alone = dataclasses.replace(cfg, source=lang, sources=())
        variants[lang] = (alone, {"table_name": f"all-{lang}-only"})
        picks.update({f"{r} ({lang} only)": (lang, picks[r][1]) for r in SINGLE_SOURCE_ROWS})
    for name, (_, switches) in variants.items():  # no model that no chosen row reads
        cols = {picks[r][1] for r in chosen if picks[r][0] == name}
        switches["parts"] = Parts(
            btf=name != "nobtf" and bool(cols & {"btf", "selftrain"}),
            direct="direct" in cols,
            finetuned="btf" in cols,
            selftrain="selftrain" in cols,
        )
    return variants, picks


def chosen_rows(cfg: ExperimentConfig, rows: list[str] | None) -> list[str]:
    """The rows an ablation makes, in the order of ``ablation_rows``: ``rows`` (each checked),
    or by default the paper's rows (the other pseudo-label rules' rows only when asked for)."""
    every = ablation_rows(cfg)
    unknown = [r for r in rows or () if r not in every]
    if unknown or rows == []:
        got = f"no row {unknown[0]!r} for this config" if unknown else "give at least one row"
        raise ValueError(f"rows: {got}; the rows are {list(every)}")
    return [r for r in every if (r in rows if rows is not None else r not in method_rows(cfg))]


@dataclasses.dataclass(frozen=True)
class RowJob:
    """One process of ``ablate --jobs`` or one line of ``ablate --plan``: rows of one seed (one
    row, or every chosen row of the seed), to start after the jobs (indices into the list) that
    make a stage folder they read. ``helper``: a row the user did not ask for, run only to make
    stages several rows read."""

    seed: int
    rows: tuple[str, ...]
    after: tuple[int, ...] = ()
    helper: bool = False


HELPER_ROW = "- ST"  # btf and the teacher's fine-tuning: what most rows start from


def row_jobs(
    cfg: ExperimentConfig,
    seeds: list[int],
    fixed_alpha: float = 0.9,
    rows=None,
    whole_seeds: bool = False,
) -> list[RowJob]:
    """``run_ablate``'s work as independent processes. ``whole_seeds``: one job per seed, with
    every chosen row (its rows then share round 1's soft step as in a serial run: -AT and soft
    only take Ours'; the right cut when there are at least as many seeds as processes).
    Otherwise one job per row and seed. A row's job plans exactly the stages the serial run
    makes for it (``ablation_variants`` with that row alone), so its models and scores are the
    serial run's. Two jobs never run one stage folder:
    a folder that several rows plan belongs to the job of the row that plans the fewest stages
    (``- ST`` owns btf and the teacher's fine-tuning; ties in ``ablation_rows``' order), and the
    others come ``after`` it. When ``- ST`` is not chosen but two chosen rows read one of its
    stages (``- VM`` reads btf only, not the voters' fine-tuning), its job runs as a ``helper``
    first, so that they do not wait for each other's self-training. Seeds share no folder
    (``seed-<s>/``)."""
    chosen = chosen_rows(cfg, rows)
    if whole_seeds:
        return [RowJob(seed, tuple(chosen)) for seed in seeds]
    root = table_dir(cfg)

    def folders(row: str, seed: int, evaluations: bool = True) -> list:
        variants, picks = ablation_variants(cfg, fixed_alpha, [row])
        c, switches = variants[picks[row][0]]
        seeded = dataclasses.replace(c, seed=seed, out=str(root / f"seed-{seed}"))
        steps = plan_all(seeded, switches["parts"])
        return [plan_stage(pc, st).folder for pc, st in steps if evaluations or st != "evaluate"]

    jobs: list[RowJob] = []
    for seed in seeds:
        plans = {r: folders(r, seed) for r in chosen}
        helper = HELPER_ROW not in chosen
        if helper:  # its training stages, which two chosen rows would otherwise wait on
            shared = set(folders(HELPER_ROW, seed, evaluations=False))
            helper = sum(bool(shared & set(p)) for p in plans.values()) >= 2
            if helper:
                plans = {HELPER_ROW: folders(HELPER_ROW, seed), **plans}
        owner: dict = {}  # stage folder: the index of the job that makes it
        for row in sorted(plans, key=lambda r: len(plans[r])):  # stable: ties keep the order
            after = tuple(sorted({owner[f] for f in plans[row] if f in owner}))
            for f in plans[row]:
                owner.setdefault(f, len(jobs))
            jobs.append(RowJob(seed, (row,), after, helper=helper and row == HELPER_ROW))
    return jobs


def run_ablate(
    cfg: ExperimentConfig,
    seeds: list[int],
    fixed_alpha: float = 0.9,
    resume: bool = False,
    echo=print,
    progress=None,
    rows: list[str] | None = None,
    table: bool = True,
) -> dict:
    """The paper's ablation rows (or only ``rows``, in the order of ``ablation_rows``, which
    may also name Ours under another pseudo-label rule, ``rule = <name>``; a variant runs only
    when a chosen row needs it) for every seed (each seed in ``<table_dir>/seed-<s>``),
    then ``ablation.json`` and ``ablation.md`` (mean +- std over seeds) in ``table_dir(cfg)``
    (not with ``table=False``: one seed of ``ablate --jobs``, whose caller writes the table)."""
    if not seeds:
        raise ValueError("seeds: give at least one seed")
    every = ablation_rows(cfg)
    chosen = chosen_rows(cfg, rows)
    root = table_dir(cfg)
    if table:
        claim_table(cfg, "ablation")  # before any work: never a file of the user's
    scores: dict[str, dict[str, list[float]]] = {row: {} for row in chosen}
    variants, picks = ablation_variants(cfg, fixed_alpha, chosen)
    needed = {picks[r][0] for r in chosen}
    for seed in seeds:
        if echo:
            echo(f"=== seed {seed}")
        runs = {
            name: run_all(
                dataclasses.replace(c, seed=seed, out=str(root / f"seed-{seed}")),
                resume=resume,
                echo=echo,
                progress=progress,
                **switches,
            )
            for name, (c, switches) in variants.items()
            if name in needed
        }
        for row in chosen:
            run, col = picks[row]
            for t, r in runs[run]["targets"].items():
                if r[col] is not None:
                    scores[row].setdefault(t, []).append(r[col])
    result = {
        "metric": next(iter(runs.values()))["metric"],
        "seeds": list(seeds),
        "fixed_alpha": fixed_alpha,
        "split": cfg.section(EvaluateSection).split,
        "scores": scores,
    }
    if table and rank_world()[0] == 0:
        merged = with_earlier_rows(root / f"ablation{split_suffix(cfg)}", result, list(every))
        write_table(cfg, "ablation", merged, ablation_table(merged), echo)
    return result


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
    par = cfg.section(FinetuneSection).parallel_file
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
            step = model_stage(c, name) if name in named_models() else (c, "cotrain")
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
    check_seeds(seeds)
    distributed.init(cfg.device)
    claim_table(cfg, "cotrain-ablation")
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
            name, secs = run_step(pc, stage, resume, echo, progress)
            seconds.setdefault(name, []).append(secs)
        for pc in pair_configs(seeded):
            for row, (c, model) in cotrain_rows(pc).items():
                res = evaluate_row(c, model, echo)
                if res is None:
                    continue
                metric = res["metric"]
                scores[row].setdefault(pc.pair_target, []).append(
                    res["languages"][pc.pair_target]["score"]
                )
                if pc.pair_target == pair_configs(seeded)[0].pair_target:
                    source[row].append(res["languages"][pc.source]["score"])
    left_out = [] if cfg.section(FinetuneSection).parallel_file else list(PARALLEL_ROWS)
    result = {
        "study": "cotrain",
        "metric": metric,
        "seeds": list(seeds),
        "predict_with": cfg.section(CotrainSection).predict_with,
        "split": cfg.section(EvaluateSection).split,
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
