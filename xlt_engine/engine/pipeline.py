"""The whole method in one call, and its ablations.

``run_all``: for every target language (or the config's ``target``): btf -> finetune (from the
Base Model) and finetune-direct (from the pretrained model: direct transfer) -> selftrain ->
evaluate, then one table per target: direct transfer, + BTF, + self-training. A stage whose
output already exists is not run again, so variants share their common stages and a re-run
picks up where an earlier one stopped (a stage killed half-way continues with ``resume``).
Switches give the paper's ablation rows: ``btf=False`` (-BTF: fine-tuning and self-training
start from the pretrained model), ``selftrain=False`` (-ST), ``selftrain.threshold = "fixed"``
(-AT), ``model.voters = 1`` (-VM).

``run_ablate``: every row of the paper's tables 5 and 6 (Ours, -AT, -VM, -BTF, -ST, direct
transfer) for every seed, and a table of mean +- std over seeds per target and on average.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path

from xlt_engine.engine import distributed
from xlt_engine.engine.config import ExperimentConfig
from xlt_engine.engine.distributed import rank_world
from xlt_engine.engine.evaluate import EvaluateConfig, run_evaluate
from xlt_engine.engine.experiment import _with, build_stage, run_stage, stage_dir
from xlt_engine.engine.loop import latest_checkpoint
from xlt_engine.fileio import atomic_write_text

COLUMNS = ("direct", "btf", "selftrain")
HEADINGS = {"direct": "direct transfer", "btf": "+ BTF", "selftrain": "+ self-training"}
ABLATION_ROWS = ("Ours", "- AT", "- VM", "- BTF", "- ST", "direct transfer")


def _done(cfg: ExperimentConfig, stage: str) -> Path | None:
    """The stage's output when it exists (then the stage is not run again)."""
    folder = stage_dir(cfg, stage)
    out = folder / ("base-model" if stage == "btf" else "model")
    return out if out.is_dir() else None


def _started(cfg: ExperimentConfig, stage: str) -> bool:
    folder = stage_dir(cfg, stage)
    if stage == "selftrain":
        return (folder / "selftrain.jsonl").exists() or any(folder.glob("round-*"))
    return latest_checkpoint(folder) is not None


def _ensure(cfg: ExperimentConfig, stage: str, resume: bool, echo, progress) -> Path:
    done = _done(cfg, stage)
    if done is not None:
        if echo:
            echo(f"[{cfg.source}-{cfg.pair_target}] {stage}: {done} exists, not run again")
        return done
    if echo:
        echo(f"[{cfg.source}-{cfg.pair_target}] {stage} -> {stage_dir(cfg, stage)}")
    run_stage(cfg, stage, resume=resume and _started(cfg, stage), echo=echo, progress=progress)
    distributed.barrier()
    return _done(cfg, stage)


def _evaluate(cfg: ExperimentConfig, model: Path, echo) -> dict | None:
    """Source and pair-target scores of ``model`` (rank 0; the others get None)."""
    if rank_world()[0] != 0:
        return None
    tests = {lang: str(cfg.data_path(lang, "test")) for lang in (cfg.source, cfg.pair_target)}
    out = cfg.run_dir() / f"evaluate-{model.parent.name}"
    ecfg = EvaluateConfig(model=str(model), tests=tests, out=str(out), format=cfg.data.format,
                          source=cfg.source, max_len=cfg.model.max_len,
                          max_tokens=cfg.evaluate.max_tokens, device=cfg.device)  # fmt: skip
    res = run_evaluate(ecfg, echo=None)
    if echo:
        s = res["languages"]
        echo(f"[{cfg.source}-{cfg.pair_target}] {model.parent.name}: {res['metric']} "
             f"{cfg.source} {100 * s[cfg.source]['score']:.2f}, {cfg.pair_target} "
             f"{100 * s[cfg.pair_target]['score']:.2f}")  # fmt: skip
    return res


def pair_configs(cfg: ExperimentConfig) -> list[ExperimentConfig]:
    """One config per target (``target`` set, ``out`` per pair when the config gives one)."""
    targets = [cfg.target] if cfg.target else list(cfg.targets)
    out = []
    for t in targets:
        pc = dataclasses.replace(cfg, target=t)
        if cfg.out:
            pc = dataclasses.replace(pc, out=str(Path(cfg.out) / f"{cfg.source}-{t}"))
        out.append(pc)
    return out


def table_dir(cfg: ExperimentConfig) -> Path:
    """Where the tables over all pairs go: ``out`` when given, else ``runs/<config name>``."""
    return Path(cfg.out) if cfg.out else Path("runs") / (cfg.name or "run")


def check_all(cfg: ExperimentConfig, btf: bool = True, selftrain: bool = True) -> None:
    """Every config problem of every stage ``run_all`` would run, before anything runs (the
    stages' own checks for models not yet trained are left to the stage)."""
    from xlt_engine.engine.config import check_files

    for pc in pair_configs(cfg):
        stages = (["btf"] if btf else []) + ["finetune"] + (["selftrain"] if selftrain else [])
        for stage in [*stages, "evaluate"]:
            check_files(pc, stage)


def run_all(
    cfg: ExperimentConfig,
    btf: bool = True,
    selftrain: bool = True,
    resume: bool = False,
    echo=print,
    progress=None,
    direct: bool = True,
    table_name: str = "all",
) -> dict:
    """Run the pipeline for every pair; returns ``{"metric", "source", "targets": {target:
    {"direct", "btf", "selftrain" (scores or None), "source": {...}}}}`` and writes
    ``all.json`` and ``all.md`` into ``table_dir(cfg)``. ``direct=False`` skips the direct
    transfer model when btf runs (an ablation variant that does not need it); ``table_name``
    names the two files."""
    distributed.init(cfg.device)
    check_all(cfg, btf, selftrain)
    if not btf:
        cfg = _with(cfg, "selftrain", base="pretrained", teacher="finetune-direct")
    results: dict = {"metric": None, "source": cfg.source, "targets": {}}
    for pc in pair_configs(cfg):
        models = {}
        if btf:
            _ensure(pc, "btf", resume, echo, progress)
        if direct or not btf:  # without btf, the direct model is the teacher
            models["direct"] = _ensure(_with(pc, "finetune", init="pretrained"), "finetune",
                                       resume, echo, progress)  # fmt: skip
        if btf:
            models["btf"] = _ensure(_with(pc, "finetune", init="btf"), "finetune", resume, echo,
                                    progress)  # fmt: skip
        if selftrain:
            build_stage(pc, "selftrain")  # its config problems before a long run
            models["selftrain"] = _ensure(pc, "selftrain", resume, echo, progress)
        row = dict.fromkeys(COLUMNS)
        row["source"] = dict.fromkeys(COLUMNS)
        for col, model in models.items():
            res = _evaluate(pc, model, echo)
            if res is None:
                continue
            results["metric"] = res["metric"]
            row[col] = res["languages"][pc.pair_target]["score"]
            row["source"][col] = res["languages"][pc.source]["score"]
        results["targets"][pc.pair_target] = row
    if rank_world()[0] == 0:
        folder = table_dir(cfg)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / f"{table_name}.json", json.dumps(results, indent=2) + "\n")
        table = all_table(results)
        atomic_write_text(folder / f"{table_name}.md", table)
        if echo:
            echo(table.rstrip())
    return results


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def all_table(results: dict) -> str:
    """Markdown: one row per target (its score under each model), then the source language."""
    metric = "entity F1" if results["metric"] == "entity_f1" else "accuracy"
    head = ["language"] + [HEADINGS[c] for c in COLUMNS]
    rows = [f"{metric} (%)\n", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
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
        rows.append("| " + " | ".join([f"{results['source']} (source)"]
                                      + [_pct(src[c]) for c in COLUMNS]) + " |")  # fmt: skip
    return "\n".join(rows) + "\n"


def run_ablate(
    cfg: ExperimentConfig,
    seeds: list[int],
    fixed_alpha: float = 0.9,
    resume: bool = False,
    echo=print,
    progress=None,
) -> dict:
    """Every ablation row for every seed (each seed in ``<table_dir>/seed-<s>``), then
    ``ablation.json`` and ``ablation.md`` (mean +- std over seeds) in ``table_dir(cfg)``."""
    if not seeds:
        raise ValueError("seeds: give at least one seed")
    root = table_dir(cfg)
    scores: dict[str, dict[str, list[float]]] = {row: {} for row in ABLATION_ROWS}
    fixed = _with(cfg, "selftrain", threshold="fixed", alpha=fixed_alpha)
    voters1 = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, voters=1,
                                                                  voter_widths=()))  # fmt: skip
    for seed in seeds:

        def seeded(c: ExperimentConfig, seed: int = seed) -> ExperimentConfig:
            return dataclasses.replace(c, seed=seed, out=str(root / f"seed-{seed}"))

        if echo:
            echo(f"=== seed {seed}")
        runs = {
            "full": run_all(seeded(cfg), resume=resume, echo=echo, progress=progress),
            "fixed": run_all(
                seeded(fixed),
                resume=resume,
                echo=echo,
                progress=progress,
                table_name=f"all-alpha{fixed_alpha:g}",
            ),
            "voters1": run_all(
                seeded(voters1),
                resume=resume,
                echo=echo,
                progress=progress,
                direct=False,
                table_name="all-voters1",
            ),
            "nobtf": run_all(
                seeded(cfg),
                btf=False,
                resume=resume,
                echo=echo,
                progress=progress,
                table_name="all-no-btf",
            ),
        }
        picks = {"Ours": ("full", "selftrain"), "- AT": ("fixed", "selftrain"),
                 "- VM": ("voters1", "selftrain"), "- BTF": ("nobtf", "selftrain"),
                 "- ST": ("full", "btf"), "direct transfer": ("full", "direct")}  # fmt: skip
        for row, (run, col) in picks.items():
            for t, r in runs[run]["targets"].items():
                if r[col] is not None:
                    scores[row].setdefault(t, []).append(r[col])
    result = {
        "metric": runs["full"]["metric"],
        "seeds": list(seeds),
        "fixed_alpha": fixed_alpha,
        "scores": scores,
    }
    if rank_world()[0] == 0:
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(root / "ablation.json", json.dumps(result, indent=2) + "\n")
        table = ablation_table(result)
        atomic_write_text(root / "ablation.md", table)
        if echo:
            echo(table.rstrip())
    return result


def _mean_std(vals: list[float]) -> str:
    if not vals:
        return "–"
    m = 100 * statistics.fmean(vals)
    sd = 100 * statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{m:.2f} ± {sd:.2f}"


def ablation_table(result: dict) -> str:
    """Rows: the ablation rows; columns: targets, then their average (per seed, then mean +-
    std over seeds)."""
    targets = sorted({t for row in result["scores"].values() for t in row})
    metric = "entity F1" if result["metric"] == "entity_f1" else "accuracy"
    head = ["model", *targets, "average"]
    lines = [
        f"{metric} (%), mean ± std over seeds {result['seeds']}; - AT uses alpha = "
        f"{result['fixed_alpha']}\n",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for row, per_target in result["scores"].items():
        cells = [_mean_std(per_target.get(t, [])) for t in targets]
        n = min((len(per_target.get(t, [])) for t in targets), default=0)
        avg = [statistics.fmean(per_target[t][i] for t in targets) for i in range(n)]
        lines.append("| " + " | ".join([row, *cells, _mean_std(avg)]) + " |")
    return "\n".join(lines) + "\n"
