"""The ``cotrain`` stage: paper 003's co-training of an LM view (``model.path``) and a
sentence-embedding view (``cotrain.embedding_model``) that label target rows for each other
(``method.cotrain``). Its models: ``cotrain`` (its ``predict_with``), ``cotrain-lm``,
``cotrain-emb`` and ``cotrain-mean`` (the mean of both views' probabilities: an ensemble that
evaluate and predict read). Folders: ``cotrain``, ``cotrain-self`` (each view keeps its own
rows: ``exchange = "self"``); folders that differ only in what acts from the first exchange on
share iteration 1 (``Partial``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from xlt_engine.engine.experiment.config import ExperimentConfig, Needs
from xlt_engine.engine.experiment.registry import Partial, Stage, register
from xlt_engine.engine.experiment.runs import StagePlan, flat, stage_dir, unlabeled_role
from xlt_engine.engine.method.cotrain import CotrainConfig, lay_down_iteration1, run_cotrain
from xlt_engine.engine.method.settings import CotrainSettings, settings_of


@dataclass(frozen=True)
class CotrainSection(CotrainSettings):
    """``[cotrain]``: the LM view is ``model.path``; the embedding view's encoder is
    ``embedding_model`` (a LaBSE / e5 folder in Hugging Face layout)."""

    embedding_model: str = ""


MODELS = ("cotrain", "cotrain-lm", "cotrain-emb", "cotrain-mean")
# co-training's settings that act only from the first exchange on: folders that differ in these
# alone fine-tune the same two views in iteration 1 (on the source set alone)
AFTER_ITER1_TRAINING = (
    "cotrain.iterations",
    "cotrain.threshold",
    "cotrain.subset_fraction",
    "cotrain.reinit",
    "cotrain.predict_with",
    "cotrain.exchange",
)


def views(cfg: ExperimentConfig, name: str) -> tuple[str, ...]:
    """The views whose models make the prediction a co-training model name stands for."""
    which = cfg.section(CotrainSection).predict_with if name == "cotrain" else name.split("-", 1)[1]
    return ("lm", "emb") if which == "mean" else (which,)


def model_folders(cfg: ExperimentConfig, name: str) -> list[Path]:
    """The last iteration's model of each view ``name`` stands for (both: their mean)."""
    last = stage_dir(cfg, "cotrain") / f"iter-{cfg.section(CotrainSection).iterations}"
    return [last / view / "model" for view in views(cfg, name)]


def label(cfg: ExperimentConfig, name: str) -> str:
    """An evaluation folder's name for a co-training model: ``cotrain-<view>`` or ``-mean``."""
    chosen = views(cfg, name)
    return f"{stage_dir(cfg, 'cotrain').name}-{'mean' if len(chosen) > 1 else chosen[0]}"


def files(cfg: ExperimentConfig, need: Needs) -> None:
    src, tgt = cfg.source, cfg.pair_target
    need(f"languages.{src}.train", cfg.data_path(src, "train"))
    need.unlabeled()
    need(f"languages.{tgt}.dev", cfg.data_path(tgt, "dev"), required=False)
    emb = cfg.section(CotrainSection).embedding_model
    if not emb:
        need.problems.append("cotrain.embedding_model: missing (the embedding view's encoder)")
    else:
        need("cotrain.embedding_model", Path(emb), folder=True)


def build(cfg: ExperimentConfig) -> CotrainConfig:
    c = cfg.section(CotrainSection)
    tgt = cfg.pair_target
    dev = cfg.data_path(tgt, "dev")
    return CotrainConfig(
        **settings_of(c, CotrainSettings) | {"train": cfg.seeded(c.train)},
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
    )


def plan(cfg: ExperimentConfig, common: dict, head: dict, trained: dict) -> StagePlan:
    settings = flat("cotrain", cfg.section(CotrainSection), {})
    settings.pop("cotrain.embedding_model")
    plan = StagePlan(cfg, "cotrain", {**common, **settings, **trained}, {})
    src, tgt, role = cfg.source, cfg.pair_target, unlabeled_role(cfg)
    plan.inputs["model.path"] = Path(cfg.model.path)
    plan.inputs["cotrain.embedding_model"] = Path(cfg.section(CotrainSection).embedding_model)
    plan.inputs[f"languages.{src}.train"] = cfg.data_path(src, "train")
    plan.inputs[f"languages.{tgt}.{role}"] = cfg.data_path(tgt, role)
    if cfg.languages[tgt].dev:
        plan.inputs[f"languages.{tgt}.dev"] = cfg.data_path(tgt, "dev")
    return plan


STAGE = register(
    Stage(
        name="cotrain",
        section=CotrainSection,
        build=build,
        run=run_cotrain,
        files=files,
        plan=plan,
        folder=lambda cfg: (
            "cotrain-self" if cfg.section(CotrainSection).exchange == "self" else "cotrain"
        ),
        output="cotrain.json",
        trains=("train",),
        models={name: (lambda cfg: cfg) for name in MODELS},
        model_folders=model_folders,
        label=label,
        started=lambda folder: any(folder.glob("iter-*")),
        partial=Partial(AFTER_ITER1_TRAINING, "iter-1/state.safetensors", lay_down_iteration1),
    )
)
