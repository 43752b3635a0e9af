"""From an ``ExperimentConfig`` to the stage configs, and running one stage of it.

The run folder layout, the fingerprints and the reuse / resume decision are ``experiment.runs``'s.
Every stage folder gets ``fingerprint.json`` (``runs``), ``config.json`` (the resolved
experiment and stage configs) and ``run.json`` (package version, git sha, torch / Python
versions, command line, world size, and once the stage is done its wall time ``seconds``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import time
from pathlib import Path

from xlt_engine import provenance
from xlt_engine.data.task import read_task_file, subsample_items
from xlt_engine.data.text import read_text
from xlt_engine.engine.experiment.config import ConfigError, ExperimentConfig, check_files, to_dict
from xlt_engine.engine.experiment.runs import (
    FINGERPRINT,
    check_plans,
    evaluated_languages,
    iter1_twin,
    model_path,
    model_paths,
    pair_twin,
    plan_stage,
    round1_twin,
    stage_dir,
    teacher_models,
    text_roles,
    unlabeled_role,
    with_section,
)
from xlt_engine.engine.method.btf import BtfConfig, run_btf
from xlt_engine.engine.method.cotrain import CotrainConfig, run_cotrain
from xlt_engine.engine.method.evaluate import (
    EvaluateConfig,
    PredictConfig,
    run_evaluate,
    run_predict,
)
from xlt_engine.engine.method.finetune import FinetuneConfig, run_finetune
from xlt_engine.engine.method.selftrain import SelftrainConfig, run_selftrain
from xlt_engine.engine.method.settings import (
    TEST_SPLIT,
    BtfSettings,
    CotrainSettings,
    FinetuneSettings,
    FreezeSettings,
    HeadSettings,
    SelftrainSettings,
    settings_of,
)
from xlt_engine.engine.train import distributed
from xlt_engine.engine.train.checkpoints import drop_checkpoints
from xlt_engine.engine.train.distributed import rank_world, resolve_device
from xlt_engine.engine.train.loop import TrainConfig
from xlt_engine.fileio import (
    DEBRIS,
    LOCK_FILE,
    atomic_folder,
    atomic_write_text,
    folder_lock,
    link_tree,
    remove_debris,
)


def write_run_info(folder: Path, cfg: ExperimentConfig, stage: str, stage_cfg) -> None:
    if rank_world()[0] != 0:
        return
    folder.mkdir(parents=True, exist_ok=True)
    resolved = {
        "experiment": to_dict(cfg),
        "stage": stage,
        "stage_config": dataclasses.asdict(stage_cfg),
    }
    atomic_write_text(folder / "config.json", json.dumps(resolved, indent=2) + "\n")
    env = provenance.environment(resolve_device(cfg.device))
    info = {
        "version": env.pop("xlt_engine"),
        **env,
        "argv": sys.argv,
        "world_size": rank_world()[1],
    }
    atomic_write_text(folder / "run.json", json.dumps(info, indent=2) + "\n")


def btf_texts(cfg: ExperimentConfig, folder: Path) -> tuple[str, ...]:
    """One plain-text file per language (source, then the pair's target): the ``text`` file
    when given, else the labeled/unlabeled file's text written to ``folder/texts/<lang>.txt``;
    with ``data.max_train`` (source) / ``data.max_unlabeled`` (target) a sample of it."""
    out = []
    for lang, role in text_roles(cfg).items():
        limit = cfg.data.max_train if lang in cfg.source_languages else cfg.data.max_unlabeled
        path = cfg.data_path(lang, role)
        plain = role == "text" or (role == "unlabeled" and cfg.data.unlabeled_format == "text")
        if plain and limit is None:
            out.append(str(path))
            continue
        if plain:
            lines = subsample_items(read_text(path).texts, limit, cfg.seed)
        else:
            data = read_task_file(path, cfg.data.format, True, limit, cfg.seed, cfg.data.encoding)
            lines = data.plain_lines()
        path = folder / "texts" / f"{lang}.txt"
        text = "\n".join(lines) + "\n"
        if rank_world()[0] == 0 and not (
            path.is_file() and path.read_text(encoding="utf-8") == text
        ):
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, text)
        out.append(str(path))
    distributed.barrier()  # the other ranks read what rank 0 wrote
    return tuple(out)


def _seeded(train: TrainConfig, cfg: ExperimentConfig) -> TrainConfig:
    """One seed for every stage; no loop checkpoint at a stage's last step (every stage saves
    its model right after, and drops its loop checkpoints once finished) unless they are kept."""
    return dataclasses.replace(train, seed=cfg.seed, final_checkpoint=cfg.keep_loop_checkpoints)


def build_btf(cfg: ExperimentConfig) -> BtfConfig:
    check_files(cfg, "btf")
    folder = stage_dir(cfg, "btf")
    return BtfConfig(
        **settings_of(cfg.btf, BtfSettings) | {"train": _seeded(cfg.btf.train, cfg)},
        **settings_of(cfg.freeze("btf"), FreezeSettings),
        model=cfg.model.path,
        texts=btf_texts(cfg, folder),
        out=str(folder),
        max_len=cfg.model.max_len,
        device=cfg.device,
    )


def build_finetune(cfg: ExperimentConfig) -> FinetuneConfig:
    check_files(cfg, "finetune")
    f = cfg.finetune
    dev = cfg.data_path(f.source or cfg.source, "dev")
    train, *more = (str(cfg.data_path(lang, "train")) for lang in cfg.finetune_languages())
    return FinetuneConfig(
        **settings_of(f, FinetuneSettings) | {"train": _seeded(f.train, cfg)},
        **settings_of(cfg.model, HeadSettings),
        **settings_of(cfg.freeze("finetune"), FreezeSettings),
        model=str(model_path(cfg, f.init, "finetune.init")),
        train_file=train,
        more_train_files=tuple(more),
        out=str(stage_dir(cfg, "finetune")),
        format=cfg.data.format,
        encoding=cfg.data.encoding,
        dev_file=str(dev) if dev else None,
        max_len=cfg.model.max_len,
        device=cfg.device,
        max_train=cfg.data.max_train,
        max_dev=cfg.data.max_dev,
    )


def build_selftrain(cfg: ExperimentConfig) -> SelftrainConfig:
    check_files(cfg, "selftrain")
    s = cfg.selftrain
    tgt = cfg.pair_target
    role = unlabeled_role(cfg)
    settings = settings_of(s, SelftrainSettings)
    settings.update(soft=_seeded(s.soft, cfg), hard=_seeded(s.hard, cfg))
    caps = [n for n in (s.max_unlabeled, cfg.data.max_unlabeled) if n is not None]
    settings["max_unlabeled"] = min(caps) if caps else None
    teacher, *more_teachers = (
        str(model_path(c, name, key)) for key, (c, name) in teacher_models(cfg).items()
    )
    source, *more_sources = (str(cfg.data_path(x, "train")) for x in cfg.source_languages)
    return SelftrainConfig(
        **settings,
        **settings_of(cfg.freeze("selftrain"), FreezeSettings),
        base_model=str(model_path(cfg, s.base, "selftrain.base")),
        teacher=teacher,
        more_teachers=tuple(more_teachers),
        source_file=source,
        more_source_files=tuple(more_sources),
        unlabeled_file=str(cfg.data_path(tgt, role)),
        unlabeled_format=cfg.data.unlabeled_format if role == "unlabeled" else None,
        out=str(stage_dir(cfg, "selftrain")),
        format=cfg.data.format,
        encoding=cfg.data.encoding,
        max_len=cfg.model.max_len,
        student_head=HeadSettings(**settings_of(cfg.model, HeadSettings)),
        device=cfg.device,
        max_source=cfg.data.max_train,
        dev_files={  # every step's student is scored on these (a diagnostic: the check)
            lang: str(path)
            for lang in (*cfg.source_languages, tgt)
            if (path := cfg.data_path(lang, "dev")) is not None
        },
        max_dev=cfg.data.max_dev,
        round1_from=None if (twin := round1_twin(cfg)) is None else str(twin),
    )


def build_cotrain(cfg: ExperimentConfig) -> CotrainConfig:
    check_files(cfg, "cotrain")
    c = cfg.cotrain
    tgt = cfg.pair_target
    dev = cfg.data_path(tgt, "dev")
    settings = settings_of(c, CotrainSettings) | {"train": _seeded(c.train, cfg)}
    return CotrainConfig(
        **settings,
        model=cfg.model.path,
        embedding_model=c.embedding_model,
        train_file=str(cfg.data_path(cfg.source, "train")),
        unlabeled_file=str(cfg.data_path(tgt, unlabeled_role(cfg))),
        dev_file=str(dev) if dev else None,
        out=str(stage_dir(cfg, "cotrain")),
        format=cfg.data.format,
        max_len=cfg.model.max_len,
        device=cfg.device,
        max_train=cfg.data.max_train,
        max_unlabeled=cfg.data.max_unlabeled,
        max_dev=cfg.data.max_dev,
        iter1_from=None if (twin := iter1_twin(cfg)) is None else str(twin),
    )


def build_evaluate(cfg: ExperimentConfig) -> EvaluateConfig:
    check_files(cfg, "evaluate")
    model, *more = model_paths(cfg, cfg.evaluate.model, "evaluate.model")
    folder = stage_dir(cfg, "evaluate")
    split = cfg.evaluate.split
    tests = {lang: str(cfg.data_path(lang, split)) for lang in evaluated_languages(cfg)}
    return EvaluateConfig(
        model=str(model),
        ensemble=tuple(str(m) for m in more),
        tests=tests,
        out=str(folder),
        format=cfg.data.format,
        encoding=cfg.data.encoding,
        source=cfg.source,
        max_len=cfg.model.max_len,
        eval_max_tokens=cfg.evaluate.max_tokens,
        device=cfg.device,
        max_test=cfg.data.max_test if split == TEST_SPLIT else cfg.data.max_dev,
        sample_seed=cfg.seed,
        split=split,
    )


def build_predict(cfg: ExperimentConfig) -> PredictConfig:
    check_files(cfg, "predict")
    model, *more = model_paths(cfg, cfg.predict.model, "predict.model")
    return PredictConfig(
        model=str(model),
        ensemble=tuple(str(m) for m in more),
        input=cfg.predict.input,
        output=cfg.predict.output,
        format=cfg.data.format,
        encoding=cfg.data.encoding,
        max_len=cfg.model.max_len,
        eval_max_tokens=cfg.predict.max_tokens,
        device=cfg.device,
        overwrite=cfg.predict.overwrite,
    )


BUILDERS = {
    "btf": build_btf,
    "finetune": build_finetune,
    "selftrain": build_selftrain,
    "cotrain": build_cotrain,
    "evaluate": build_evaluate,
    "predict": build_predict,
}


def build_stage(cfg: ExperimentConfig, stage: str):
    """The stage's config dataclass; every config problem is raised here, before any run."""
    if stage not in BUILDERS:
        raise ValueError(f"stage must be one of {sorted(BUILDERS)}, got {stage!r}")
    try:
        return BUILDERS[stage](cfg)
    except ConfigError:
        raise
    except ValueError as err:  # a stage config's own check (e.g. a model of the wrong kind)
        raise ConfigError(cfg.name or "config", [f"[{stage}] {err}"]) from None


def run_stage(
    cfg: ExperimentConfig,
    stage: str,
    resume: bool = False,
    echo=print,
    progress=None,
    reuse: bool = False,
):
    """Run one stage of ``cfg``: its config problems and a stale folder (``runs``) are raised
    before any work. A finished stage with the same fingerprint is not run again: with
    ``reuse`` or ``resume`` its output is returned (evaluate: the results dict), else it is an
    error (a second fresh run into one folder is a mistake more often than not). A started one
    needs ``resume``. Under torchrun the process group is joined first; evaluate and predict run
    on rank 0 only."""
    distributed.init(cfg.device)
    main = rank_world()[0] == 0
    if stage == "predict":
        stage_cfg = build_stage(cfg, stage)
        return run_predict(stage_cfg, echo=echo) if main else None
    check_files(cfg, stage)
    plan = plan_stage(cfg, stage)
    check_plans([plan])
    finished, started = plan.output.exists(), plan.started()
    twin = None if finished or started else pair_twin(plan)
    distributed.barrier()  # every rank has looked before rank 0 writes (a twin links in a blink)
    if finished:
        if not (reuse or resume):
            raise ValueError(
                f"{plan.folder} holds the finished {stage} of an earlier run with "
                "the same settings: --resume returns it as it is, or choose "
                "another folder (--out)"
            )
        if echo:
            echo(f"{stage}: {plan.output} exists with the same fingerprint, not run again")
        if stage == "evaluate":
            return json.loads(plan.output.read_text(encoding="utf-8"))
        return plan.output
    if started and not resume:
        raise ValueError(
            f"{plan.folder} holds the checkpoints of an earlier run: resume it "
            "(--resume) or choose another folder (--out)"
        )
    stage_cfg = build_stage(cfg, stage)
    with contextlib.ExitStack() as held:
        if main:  # one process per stage folder (rank 0 speaks for a torchrun job)
            held.enter_context(folder_lock(plan.folder, f"the {stage} stage"))
        if twin is not None:
            return _take_twin(cfg, stage, stage_cfg, plan, twin, main, echo)
        return _run_locked(cfg, stage, stage_cfg, plan, main, resume, echo, progress)


def _take_twin(cfg, stage, stage_cfg, plan, twin: Path, main: bool, echo):
    """The finished stage ``twin`` (``pair_twin``: another pair's folder with this very
    fingerprint) linked into this stage's folder instead of computed again: its files as hard
    links, loop checkpoints left out, the output last (a kill before it leaves no finished
    folder); this run's own config.json, and run.json with ``shared_from`` and the seconds
    the twin took (what the stage costs from nothing)."""
    output = plan.output.relative_to(plan.folder)
    own = {FINGERPRINT, "run.json", "config.json", LOCK_FILE}

    def skip(rel: Path) -> bool:
        name = rel.name
        return (
            str(rel) in own
            or rel == output
            or name == "latest"
            or name.startswith("ckpt-")
            or DEBRIS.match(name) is not None
        )

    if main:
        remove_debris(plan.folder)
        plan.begin()
        write_run_info(plan.folder, cfg, stage, stage_cfg)
        link_tree(twin, plan.folder, skip)
        if (twin / output).is_dir():
            with atomic_folder(plan.output) as tmp:
                link_tree(twin / output, tmp)
        else:
            link_tree(twin, plan.folder, lambda rel: rel.parts[0] != output.parts[0])
        theirs = twin / "run.json"
        info = json.loads(theirs.read_text(encoding="utf-8")) if theirs.is_file() else {}
        record_seconds(plan.folder, info.get("seconds"), shared_from=str(twin))
        if echo:
            echo(
                f"{stage}: {twin} made it with the same fingerprint (another pair's); linked "
                f"into {plan.folder}, not run again"
            )
    if stage == "evaluate":
        return json.loads(plan.output.read_text(encoding="utf-8")) if main else None
    distributed.barrier()
    return plan.output


def _run_locked(cfg, stage, stage_cfg, plan, main, resume, echo, progress):
    start = time.perf_counter()
    if main:
        removed = remove_debris(plan.folder)  # what a kill left half-written
        if removed and echo:
            echo(f"{stage}: removed {len(removed)} temporary file(s) a killed run left")
        plan.begin()
        write_run_info(plan.folder, cfg, stage, stage_cfg)
    if stage == "evaluate":  # rank 0 alone, and no collective: the others go on at once
        if not main:
            return None
        result = run_evaluate(stage_cfg, echo=echo)
    else:
        distributed.barrier()
        runner = {
            "btf": run_btf,
            "finetune": run_finetune,
            "selftrain": run_selftrain,
            "cotrain": run_cotrain,
        }
        result = runner[stage](stage_cfg, resume=resume, echo=echo, progress=progress)
    seconds = time.perf_counter() - start
    if main:
        record_seconds(plan.folder, seconds)
        freed = 0 if cfg.keep_loop_checkpoints else drop_checkpoints(plan.folder)
    if echo and main:
        dropped = f" (dropped its loop checkpoints: {freed / 2**30:.2f} GiB)" if freed else ""
        echo(
            f"{stage}: done in {format_seconds(seconds)}; wrote {plan.folder}, result "
            f"{plan.output}{dropped}"
        )
    return result


def run_teachers(cfg: ExperimentConfig, resume: bool = False, echo=print, progress=None) -> list:
    """``finetune`` on each source alone: self-training's teachers with several sources and
    ``multi_source = "teachers"`` (``run --stage finetune`` runs them after the union's)."""
    out = []
    for lang in cfg.source_languages:
        one = with_section(cfg, "finetune", source=lang)
        out.append(
            run_stage(one, "finetune", resume=resume, echo=echo, progress=progress, reuse=True)
        )
    return out


def record_seconds(folder: Path, seconds: float | None, **extra) -> None:
    """Add the stage's wall time (this run of it: a resumed stage counts from its resume; None
    where unknown) and ``extra`` keys to its ``run.json``."""
    path = folder / "run.json"
    info = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    info |= {"seconds": None if seconds is None else round(seconds, 3), **extra}
    atomic_write_text(path, json.dumps(info, indent=2) + "\n")


def format_seconds(seconds: float) -> str:
    """12.3 s, 4 min 05 s, 2 h 03 min."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
