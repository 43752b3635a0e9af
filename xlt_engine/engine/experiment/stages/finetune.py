"""The ``finetune`` stage: the task head (and encoder) trained on the source's labeled data
(``method.finetune``), from the Base Model (model name ``finetune``) or the pretrained model
(``finetune-direct``); with several sources on their union, or on one (``finetune.source``:
a teacher of ``multi_source = "teachers"``). Folders: ``finetune``, ``finetune-direct``, with
``-voters<M>`` / ``-linear`` (the head), ``-la`` / ``-tt`` / ``-sa`` (paper 003's language
adaptation) and ``-<lang>`` (one source of several)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from xlt_engine.engine.experiment.config import ExperimentConfig, FreezeOverride, Needs
from xlt_engine.engine.experiment.execute import run_stage
from xlt_engine.engine.experiment.registry import Stage, register
from xlt_engine.engine.experiment.runs import (
    StagePlan,
    flat,
    model_input,
    model_path,
    stage_dir,
    variant,
    with_section,
)
from xlt_engine.engine.method.finetune import FinetuneConfig, run_finetune
from xlt_engine.engine.method.settings import (
    FinetuneSettings,
    FreezeSettings,
    HeadSettings,
    settings_of,
)


@dataclass(frozen=True)
class FinetuneSection(FinetuneSettings, FreezeOverride):
    init: str = "btf"  # "btf" (this target's Base Model), "pretrained" (model.path) or a folder
    source: str | None = None  # with several sources: train on this one alone (a teacher of
    # multi_source = "teachers"); None: on every source's train file (their union)

    def __post_init__(self):
        FinetuneSettings.__post_init__(self)
        FreezeOverride.__post_init__(self)


def languages(cfg: ExperimentConfig) -> tuple[str, ...]:
    """The source languages whose train files ``finetune`` reads."""
    one = cfg.section(FinetuneSection).source
    return (one,) if one is not None else cfg.source_languages


def check(section: FinetuneSection, cfg: ExperimentConfig) -> None:
    """``[finetune]`` against the experiment: paper 003's options need a sequence task, and
    ``source`` is one of its source languages."""
    section.check_kind("token" if cfg.task == "ner" else "sequence", "finetune.")
    if section.source is not None and section.source not in cfg.source_languages:
        raise ValueError(
            f"finetune.source: {section.source!r} is not a source language "
            f"({list(cfg.source_languages)})"
        )


def files(cfg: ExperimentConfig, need: Needs) -> None:
    for lang in languages(cfg):
        need(f"languages.{lang}.train", cfg.data_path(lang, "train"))
    dev = cfg.section(FinetuneSection).source or cfg.source
    need(f"languages.{dev}.dev", cfg.data_path(dev, "dev"), required=False)
    if cfg.section(FinetuneSection).parallel_file:
        need("finetune.parallel_file", Path(cfg.section(FinetuneSection).parallel_file))


def _adaptation(cfg: ExperimentConfig) -> str:
    """Paper 003's language adaptation in a finetune folder's name: ``-la`` (Label Alignment),
    ``-tt`` (translate-train: the parallel file's translations, no contrastive term), ``-sa``
    (Semantic Alignment, which trains on the translations too)."""
    f = cfg.section(FinetuneSection)
    la = "-la" if f.label_alignment else ""
    if f.semantic_alignment:
        return la + "-sa"
    return la + ("-tt" if f.parallel_file else "")


def folder(cfg: ExperimentConfig) -> str:
    direct = "-direct" if cfg.section(FinetuneSection).init == "pretrained" else ""
    one = cfg.section(FinetuneSection).source
    alone = f"-{one}" if one is not None and len(cfg.source_languages) > 1 else ""
    return f"finetune{direct}{variant(cfg)}{_adaptation(cfg)}{alone}"


def build(cfg: ExperimentConfig) -> FinetuneConfig:
    f = cfg.section(FinetuneSection)
    dev = cfg.data_path(f.source or cfg.source, "dev")
    train, *more = (str(cfg.data_path(lang, "train")) for lang in languages(cfg))
    return FinetuneConfig(
        **settings_of(f, FinetuneSettings) | {"train": cfg.seeded(f.train)},
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


def plan(cfg: ExperimentConfig, common: dict, head: dict, trained: dict) -> StagePlan:
    settings = flat("finetune", cfg.section(FinetuneSection), {})
    settings.pop("finetune.init")
    if cfg.section(FinetuneSection).source is None:
        settings.pop("finetune.source")
    parallel = settings.pop("finetune.parallel_file")
    unused = []  # paper 003's options count only when on
    if not cfg.section(FinetuneSection).label_alignment:
        unused += ["label_alignment", "la_weight", "la_temperature"]
    if not cfg.section(FinetuneSection).semantic_alignment:
        unused += ["semantic_alignment", "sa_weight", "sa_temperature", "sa_lr_scale", "sa_epochs"]
    for key in unused:
        settings.pop(f"finetune.{key}")
    plan = StagePlan(cfg, "finetune", {**common, **head, **settings, **trained}, {})
    if parallel:  # its contents, not its name
        plan.inputs["finetune.parallel_file"] = Path(parallel)
    model_input(cfg, cfg.section(FinetuneSection).init, "finetune.init", plan)
    for lang in languages(cfg):
        plan.inputs[f"languages.{lang}.train"] = cfg.data_path(lang, "train")
    dev = cfg.section(FinetuneSection).source or cfg.source
    if cfg.languages[dev].dev:
        plan.inputs[f"languages.{dev}.dev"] = cfg.data_path(dev, "dev")
    return plan


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


def then(cfg: ExperimentConfig, resume: bool, echo, progress) -> None:
    """After the union's model, each source's teacher (``multi_source = "teachers"``)."""
    if cfg.teachers_per_source and cfg.section(FinetuneSection).source is None:
        run_teachers(cfg, resume=resume, echo=echo, progress=progress)


STAGE = register(
    Stage(
        name="finetune",
        section=FinetuneSection,
        build=build,
        run=run_finetune,
        files=files,
        plan=plan,
        folder=folder,
        trains=("train",),
        freezes="the task head",
        task_head=True,
        models={
            "finetune": lambda cfg: with_section(cfg, "finetune", init="btf"),
            "finetune-direct": lambda cfg: with_section(cfg, "finetune", init="pretrained"),
        },
        check=check,
        then=then,
    )
)
