"""The ``btf`` stage: Bilingual Task Fitting, continued MLM on the source's and the pair
target's text (``method.btf``); its output ``base-model/`` is the Base Model the other stages
start from (the model name ``btf``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from xlt_engine.data.task import read_task_file, subsample_items
from xlt_engine.data.text import read_text
from xlt_engine.engine.experiment.config import ROLES, ExperimentConfig, FreezeOverride, Needs
from xlt_engine.engine.experiment.registry import Stage, register
from xlt_engine.engine.experiment.runs import StagePlan, flat, stage_dir
from xlt_engine.engine.method.btf import BtfConfig, run_btf
from xlt_engine.engine.method.settings import BtfSettings, FreezeSettings, settings_of
from xlt_engine.engine.train import distributed
from xlt_engine.engine.train.distributed import rank_world
from xlt_engine.fileio import atomic_write_text


@dataclass(frozen=True)
class BtfSection(BtfSettings, FreezeOverride):
    def __post_init__(self):
        BtfSettings.__post_init__(self)
        FreezeOverride.__post_init__(self)


def text_roles(cfg: ExperimentConfig) -> dict[str, str]:
    """btf's text file per language (the sources, then the pair's target): ``{lang: role}``."""
    return {lang: cfg.role(lang, "text") for lang in (*cfg.source_languages, cfg.pair_target)}


def files(cfg: ExperimentConfig, need: Needs) -> None:
    for lang in (*cfg.source_languages, cfg.pair_target):
        role = cfg.role(lang, "text")
        if role is None:
            roles = ", ".join(ROLES["text"][lang in cfg.source_languages])
            need.problems.append(f"languages.{lang}: btf needs text (one of {roles})")
        else:
            need(f"languages.{lang}.{role}", cfg.data_path(lang, role))


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


def build(cfg: ExperimentConfig) -> BtfConfig:
    folder = stage_dir(cfg, "btf")
    return BtfConfig(
        **settings_of(cfg.section(BtfSection), BtfSettings)
        | {"train": cfg.seeded(cfg.section(BtfSection).train)},
        **settings_of(cfg.freeze("btf"), FreezeSettings),
        model=cfg.model.path,
        texts=btf_texts(cfg, folder),
        out=str(folder),
        max_len=cfg.model.max_len,
        device=cfg.device,
    )


def plan(cfg: ExperimentConfig, common: dict, head: dict, trained: dict) -> StagePlan:
    plan = StagePlan(
        cfg, "btf", {**common, **flat("btf", cfg.section(BtfSection), {}), **trained}, {}
    )
    plan.inputs["model.path"] = Path(cfg.model.path)
    for lang, role in text_roles(cfg).items():
        plan.inputs[f"languages.{lang}.{role}"] = cfg.data_path(lang, role)
    return plan


STAGE = register(
    Stage(
        name="btf",
        section=BtfSection,
        build=build,
        run=run_btf,
        files=files,
        plan=plan,
        output="base-model",
        trains=("train",),
        freezes="the MLM head",
        models={"btf": lambda cfg: cfg},
    )
)
