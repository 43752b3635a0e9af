"""The ``selftrain`` stage: self-training with soft and hard labels, the automatic threshold and
the Voters Module (``method.selftrain``), from round 1's teacher (``selftrain.teacher``, one per
source with ``multi_source = "teachers"``), each round's student restored from
``selftrain.base``. Folders: ``selftrain``, ``selftrain-direct`` (from the pretrained model),
with ``-voters<M>`` / ``-linear``, ``-alpha<A>`` (a fixed threshold), ``-rounds<N>``,
``-<rule name>``, ``-src<filter>``, ``-init_<student_init>`` and ``-softonly`` (no hard
steps) where they differ from the paper's. Folders that differ only in what acts after round
1's soft step share that step: a new one takes it from a finished twin (``Partial``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from xlt_engine.engine.experiment.config import ExperimentConfig, FreezeOverride, Needs
from xlt_engine.engine.experiment.registry import Partial, Stage, register
from xlt_engine.engine.experiment.runs import (
    StagePlan,
    flat,
    model_input,
    model_path,
    stage_dir,
    unlabeled_role,
    variant,
    with_section,
)
from xlt_engine.engine.method.rules import switch_rule
from xlt_engine.engine.method.selftrain import SelftrainConfig, run_selftrain
from xlt_engine.engine.method.selftrain.files import lay_down_round1
from xlt_engine.engine.method.selftrain_settings import SelftrainSettings
from xlt_engine.engine.method.settings import FreezeSettings, HeadSettings, settings_of


@dataclass(frozen=True)
class SelftrainSection(SelftrainSettings, FreezeOverride):
    """... the soft and the hard step freeze alike (``freeze_layers``); a step's
    ``train.freeze`` patterns add to it."""

    base: str = "btf"  # the students' start: "btf" (the Base Model), "pretrained" or a folder
    teacher: str = "finetune"  # round 1's teacher: "finetune", "finetune-direct" or a folder

    def __post_init__(self):
        SelftrainSettings.__post_init__(self)
        FreezeOverride.__post_init__(self)


PAPER = SelftrainSettings()  # the paper's N, rule, source filter, student start: others get a
# folder of their own

# settings that act only after round 1's soft step: self-training folders that differ in these
# (and the hard step's) alone make the same teacher probabilities and soft student in round 1
AFTER_ROUND1_SOFT = (
    "selftrain.rounds",
    "selftrain.rule.",
    "selftrain.source_filter",
    "selftrain.on_collapse",
    "selftrain.hard.",
    "selftrain.hard_steps",
)


def with_rule(cfg: ExperimentConfig, name: str | None = None, **changes) -> ExperimentConfig:
    """``cfg`` with another pseudo-label rule (``name``: its alpha settings carried over, its
    own parameters' defaults) and / or rule settings changed (``threshold="fixed", alpha=0.9``:
    the -AT ablation)."""
    rule = cfg.section(SelftrainSection).rule
    if name is not None and name != rule.name:
        rule = switch_rule(rule, name)
    return with_section(cfg, "selftrain", rule=dataclasses.replace(rule, **changes))


def teacher_models(cfg: ExperimentConfig) -> dict[str, tuple[ExperimentConfig, str]]:
    """Round 1's teachers as ``{config key: (config, model name)}``: ``selftrain.teacher``, or
    with several sources and ``multi_source = "teachers"`` the same model fine-tuned on each
    source alone (``finetune.source``), one per source."""
    name = cfg.section(SelftrainSection).teacher
    if cfg.teachers_per_source and name in ("finetune", "finetune-direct"):
        return {
            f"selftrain.teacher[{lang}]": (with_section(cfg, "finetune", source=lang), name)
            for lang in cfg.source_languages
        }
    return {"selftrain.teacher": (cfg, name)}


def files(cfg: ExperimentConfig, need: Needs) -> None:
    for lang in cfg.source_languages:
        need(f"languages.{lang}.train", cfg.data_path(lang, "train"))
    need.unlabeled()


def folder(cfg: ExperimentConfig) -> str:
    s = cfg.section(SelftrainSection)
    direct = "-direct" if s.base == "pretrained" else ""
    fixed = f"-alpha{s.rule.alpha:g}" if s.rule.threshold == "fixed" else ""
    rounds = f"-rounds{s.rounds:g}" if s.rounds != PAPER.rounds else ""
    rule = f"-{s.rule.name}" if s.rule.name != PAPER.rule.name else ""
    source = f"-src{s.source_filter}" if s.source_filter != PAPER.source_filter else ""
    init = f"-init_{s.student_init}" if s.student_init != PAPER.student_init else ""
    soft = "-softonly" if not s.hard_steps else ""
    return f"selftrain{direct}{variant(cfg)}{fixed}{rounds}{rule}{source}{init}{soft}"


def build(cfg: ExperimentConfig) -> SelftrainConfig:
    s = cfg.section(SelftrainSection)
    tgt = cfg.pair_target
    role = unlabeled_role(cfg)
    settings = settings_of(s, SelftrainSettings)
    settings.update(soft=cfg.seeded(s.soft), hard=cfg.seeded(s.hard))
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
    )


def plan(cfg: ExperimentConfig, common: dict, head: dict, trained: dict) -> StagePlan:
    settings = flat("selftrain", cfg.section(SelftrainSection), {})
    for key in ("selftrain.base", "selftrain.teacher"):
        settings.pop(key)
    if cfg.section(SelftrainSection).on_collapse != "skip_hard":  # warn and error change no result
        settings.pop("selftrain.on_collapse")
    plan = StagePlan(cfg, "selftrain", {**common, **head, **settings, **trained}, {})
    model_input(cfg, cfg.section(SelftrainSection).base, "selftrain.base", plan)
    for key, (c, name) in teacher_models(cfg).items():
        model_input(c, name, key, plan)
    for lang in cfg.source_languages:
        plan.inputs[f"languages.{lang}.train"] = cfg.data_path(lang, "train")
    tgt, role = cfg.pair_target, unlabeled_role(cfg)
    plan.inputs[f"languages.{tgt}.{role}"] = cfg.data_path(tgt, role)
    return plan


def started(folder: Path) -> bool:
    return (folder / "selftrain.jsonl").exists() or any(folder.glob("round-*"))


STAGE = register(
    Stage(
        name="selftrain",
        section=SelftrainSection,
        build=build,
        run=run_selftrain,
        files=files,
        plan=plan,
        folder=folder,
        trains=("soft", "hard"),
        freezes="the task head",
        task_head=True,
        models={"selftrain": lambda cfg: cfg},
        started=started,
        partial=Partial(AFTER_ROUND1_SOFT, "round-1/soft/model", lay_down_round1),
    )
)
