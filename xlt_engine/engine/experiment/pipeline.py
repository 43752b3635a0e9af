"""The whole method in one call.

``run_all``: for every target language (or the config's ``target``): btf -> finetune (from the
Base Model) and finetune-direct (from the pretrained model: direct transfer) -> selftrain ->
evaluate, then one table per target: direct transfer, + BTF, + self-training. Every stage
folder of the whole run is checked against its fingerprint (``experiment.runs``) before
anything runs: a finished stage made with the same settings and inputs is reused (so variants
share their common stages and a re-run picks up where an earlier one stopped; a stage killed
half-way continues with ``resume``), and one made otherwise stops the run, naming each change.
Switches give the paper's ablation rows (``studies.ablate``): ``Parts(btf=False)`` (-BTF:
fine-tuning and self-training start from the pretrained model), ``Parts(selftrain=False)`` (-ST),
``selftrain.rule.threshold = "fixed"`` (-AT), ``model.head = "linear"`` (-VM),
``selftrain.rule`` (the class-aware rules). The direct-transfer column is always the
pretrained model fine-tuned with a plain linear head (``finetune-direct-linear``), standard
mBERT fine-tuning as in the paper's baseline; without btf the teacher is the pretrained model
fine-tuned with the configured head (``finetune-direct``).

With several sources (``sources``) btf reads every source's text and the target's; the
+ BTF and direct-transfer columns fine-tune on the union of the sources' training data; with
``multi_source = "teachers"`` self-training starts from one teacher per source
(``finetune-<lang>``), the mean of their probabilities. Every table is scored on the test
files, or with ``evaluate.split = "dev"`` on the dev files (``data.max_dev`` of them) into
tables of their own (``all-dev``...): choices such as a learning rate are made on those, the
test tables reported.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from xlt_engine.engine.experiment.ablations import without_btf
from xlt_engine.engine.experiment.config import ExperimentConfig, check_files
from xlt_engine.engine.experiment.execute import format_seconds, run_stage
from xlt_engine.engine.experiment.runs import (
    check_plans,
    plan_stage,
    stage_dir,
    with_linear_head,
    with_section,
)
from xlt_engine.engine.experiment.stages.evaluate import EvaluateSection, split_suffix
from xlt_engine.engine.method.settings import TEST_SPLIT
from xlt_engine.engine.train import distributed
from xlt_engine.engine.train.distributed import rank_world
from xlt_engine.fileio import folder_bytes, write_results
from xlt_engine.outputs import claim_output, record_output

COLUMNS = ("direct", "btf", "selftrain")
HEADINGS = {"direct": "direct transfer", "btf": "+ BTF", "selftrain": "+ self-training"}


def evaluate_row(pc: ExperimentConfig, model: str, echo) -> dict | None:
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


@dataclass(frozen=True)
class Parts:
    """Which parts of the method a whole run makes: btf (False: -BTF, fine-tuning and
    self-training start from the pretrained model), self-training (False: -ST), the
    direct-transfer model, and the + BTF column (False: the model fine-tuned from the Base Model
    is made only where it is round 1's teacher, and not evaluated)."""

    btf: bool = True
    selftrain: bool = True
    direct: bool = True
    finetuned: bool = True


EVERY_PART = Parts()  # the whole method: the default of a run


def plan_all(
    cfg: ExperimentConfig, parts: Parts = EVERY_PART
) -> list[tuple[ExperimentConfig, str]]:
    """The (config, stage) steps ``run_all`` takes, in order: per pair btf, finetune-direct,
    finetune, selftrain, then the evaluation of each model (``evaluate.model`` set); any other
    stage whose model a step reads comes before that step (``with_upstream``)."""
    btf, selftrain, direct, finetuned = parts.btf, parts.selftrain, parts.direct, parts.finetuned
    if not btf:
        cfg = without_btf(cfg)
    steps = []
    for pc in pair_configs(cfg):
        models = []  # (config, model name) to evaluate
        if btf:
            steps.append((pc, "btf"))
        if direct:  # the baseline: a plain linear head on the pretrained model
            dc = with_linear_head(pc)
            steps.append((with_section(dc, "finetune", init="pretrained"), "finetune"))
            models.append((dc, "finetune-direct"))
        if btf and finetuned:  # the + BTF column
            steps.append((with_section(pc, "finetune", init="btf"), "finetune"))
            models.append((pc, "finetune"))
        if selftrain:  # its teacher(s) and Base Model come before it through with_upstream
            steps.append((pc, "selftrain"))
            models.append((pc, "selftrain"))
        steps += [(with_section(c, "evaluate", model=m), "evaluate") for c, m in models]
    return with_upstream(steps)


def with_upstream(steps: list[tuple[ExperimentConfig, str]]) -> list[tuple[ExperimentConfig, str]]:
    """``steps`` with each stage whose model a step reads (its plan's upstream: a stage of
    one's own named as ``selftrain.base`` or ``finetune.init``...) planned before it, unless
    a step already makes that folder."""
    out, folders = [], set()

    def add(c: ExperimentConfig, stage: str) -> None:
        plan = plan_stage(c, stage)
        if plan.folder in folders:
            return
        for up in plan.upstream.values():
            add(up.cfg, up.stage)
        folders.add(plan.folder)
        out.append((c, stage))

    for c, stage in steps:
        add(c, stage)
    return out


def check_all(
    cfg: ExperimentConfig, parts: Parts = EVERY_PART
) -> list[tuple[ExperimentConfig, str]]:
    """Every file problem and every stale stage folder of the whole run, before anything runs;
    returns the steps (``plan_all``)."""
    steps = plan_all(cfg, parts)
    for pc, stage in steps:
        check_files(pc, stage)
    check_plans([plan_stage(pc, stage) for pc, stage in steps])
    return steps


def run_all(
    cfg: ExperimentConfig,
    parts: Parts = EVERY_PART,
    resume: bool = False,
    echo=print,
    progress=None,
    table_name: str = "all",
) -> dict:
    """Run the pipeline for every pair; returns ``{"metric", "source", "targets": {target:
    {"direct", "btf", "selftrain" (scores or None), "source": {...}}}}`` and writes
    ``all.json`` and ``all.md`` into ``table_dir(cfg)``; ``parts`` chooses what it makes (an
    ablation variant makes only what its rows read); ``table_name`` names the two files."""
    distributed.init(cfg.device)
    steps = check_all(cfg, parts)
    claim_table(cfg, table_name)  # before any work: never a file of the user's
    start = time.perf_counter()
    timings: list[tuple[str, float | None]] = []  # (pair and stage, seconds; None: reused)
    results: dict = {
        "metric": None,
        "source": cfg.source,
        "split": cfg.section(EvaluateSection).split,
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
            res = evaluate_row(pc, pc.section(EvaluateSection).model, echo)
            timings.append(
                (f"{where} evaluate {pc.section(EvaluateSection).model}", time.perf_counter() - t0)
            )
            if res is not None:
                col = column[pc.section(EvaluateSection).model]
                results["metric"] = res["metric"]
                row[col] = res["languages"][pc.pair_target]["score"]
                row["source"][col] = res["languages"][pc.source]["score"]
            continue
        timings.append(run_step(pc, stage, resume, echo, progress))
    if rank_world()[0] == 0:
        name = write_table(cfg, table_name, results, all_table(results), echo)
        if echo:
            echo(run_summary(timings, time.perf_counter() - start, table_dir(cfg), name))
    return results


def run_step(
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


def claim_table(cfg: ExperimentConfig, name: str) -> list[Path]:
    """The files of table ``name`` (``write_table``), claimed (``outputs.claim_output``): new,
    or tables a run wrote, never a user's file that happens to sit in the out folder."""
    folder, name = table_dir(cfg), name + split_suffix(cfg)
    files = [folder / f"{name}{ext}" for ext in (".md", ".json")]
    for path in files:
        claim_output(path, "a table", "run", remedy="choose another --out (out)")
    return files


def write_table(cfg: ExperimentConfig, name: str, result: dict, table: str, echo) -> str:
    """``<name>.json`` and ``.md`` in ``table_dir(cfg)``, ``<name>-dev`` when scored on the dev
    files (``evaluate.split``, so a dev table never replaces a test one); returns the name."""
    files = claim_table(cfg, name)
    name += split_suffix(cfg)
    write_results(table_dir(cfg), name, result, table, echo)
    for path in files:
        record_output(path, "run")
    return name


def scored_on(result: dict) -> str:
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
        f"{metric} (%){scored_on(results)}\n",
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


def seed_config(cfg: ExperimentConfig, seed: int) -> ExperimentConfig:
    """``cfg`` for one seed of a study: its runs in ``<table_dir>/seed-<s>`` (shared with the
    ablation's, so every stage they have in common is reused)."""
    return dataclasses.replace(cfg, seed=seed, out=str(table_dir(cfg) / f"seed-{seed}"))
