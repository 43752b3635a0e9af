"""The ``evaluate`` and ``predict`` stages: a model (a stage's model name or a folder; several
for an ensemble) scored on every language's test files, or with ``evaluate.split = "dev"`` on the
dev files into folders and tables of their own (``evaluate-<model>-dev``); and a file labeled
by it (``predict``, which has no run folder). Evaluate runs on rank 0 alone."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from xlt_engine.engine.experiment.config import ExperimentConfig, Needs
from xlt_engine.engine.experiment.registry import Stage, model_maker, register
from xlt_engine.engine.experiment.runs import StagePlan, model_input, model_paths, stage_dir
from xlt_engine.engine.experiment.stages import cotrain
from xlt_engine.engine.method.evaluate import (
    EvaluateConfig,
    PredictConfig,
    run_evaluate,
    run_predict,
)
from xlt_engine.engine.method.settings import TEST_SPLIT, Split, check_choices
from xlt_engine.engine.train.inference import EVAL_MAX_TOKENS
from xlt_engine.inputs import read_json


@dataclass(frozen=True)
class InferenceSection:
    model: str = "finetune"  # a stage name ("finetune", "finetune-direct", "selftrain"), a
    # co-training model ("cotrain": its predict_with, "cotrain-lm", "cotrain-emb",
    # "cotrain-mean": the mean of both views) or a model folder
    max_tokens: int = EVAL_MAX_TOKENS  # padded tokens per inference batch

    def __post_init__(self):
        check_choices(self)
        if self.max_tokens < 8:
            raise ValueError(f"max_tokens must be >= 8, got {self.max_tokens}")


@dataclass(frozen=True)
class EvaluateSection(InferenceSection):
    # the labeled files scored: each language's test file, or its dev file (``data.max_dev``
    # of them) for choices made on dev data only; a dev evaluation has its own folder
    # (``evaluate-<model>-dev``) and tables (``all-dev``, ``ablation-dev``...)
    split: Split = TEST_SPLIT


@dataclass(frozen=True)
class PredictSection(InferenceSection):
    input: str | None = None
    output: str | None = None  # a new file, or one predict wrote (``outputs.claim_output``)
    overwrite: bool = False  # replace an existing output that predict did not write


def evaluated_languages(cfg: ExperimentConfig) -> list[str]:
    """The languages ``evaluate`` scores: the source, every other source with a file of the
    split (``evaluate.split``: test or dev), the targets."""
    split = cfg.section(EvaluateSection).split
    others = [
        x for x in cfg.source_languages if x != cfg.source and getattr(cfg.languages[x], split)
    ]
    return [cfg.source, *others, *cfg.targets]


def split_suffix(cfg: ExperimentConfig) -> str:
    """``-dev`` for an evaluation on the dev files (``evaluate.split``): in its folder's and
    its tables' names, so it never replaces the test scores."""
    return (
        ""
        if cfg.section(EvaluateSection).split == TEST_SPLIT
        else f"-{cfg.section(EvaluateSection).split}"
    )


def _scored(cfg: ExperimentConfig) -> str:
    """What an evaluation folder is named after: the model's stage folder (``selftrain``,
    ``cotrain-emb``...), its path inside the run folder, or ``model``."""
    name, run = cfg.section(EvaluateSection).model, cfg.run_dir()
    maker = model_maker(name)
    if maker is not None:
        stage, change = maker
        if stage.label is not None:
            return stage.label(cfg, name)
        return stage_dir(change(cfg), stage.name).name
    parts = Path(name).resolve().parts
    inside = run.resolve().parts
    if parts[: len(inside)] == inside and len(parts) > len(inside):
        rel = list(parts[len(inside) :])
        if rel[-1] == "model" and len(rel) > 1:
            rel = rel[:-1]
        return "-".join(rel)
    return "model"


def evaluate_files(cfg: ExperimentConfig, need: Needs) -> None:
    split, src = cfg.section(EvaluateSection).split, cfg.source
    for lang in (src, *cfg.targets):
        need(f"languages.{lang}.{split}", cfg.data_path(lang, split))
    for lang in (x for x in cfg.source_languages if x != src):  # other sources' files
        need(f"languages.{lang}.{split}", cfg.data_path(lang, split), required=False)


def build_evaluate(cfg: ExperimentConfig) -> EvaluateConfig:
    model, *more = model_paths(cfg, cfg.section(EvaluateSection).model, "evaluate.model")
    split = cfg.section(EvaluateSection).split
    tests = {lang: str(cfg.data_path(lang, split)) for lang in evaluated_languages(cfg)}
    return EvaluateConfig(
        model=str(model),
        ensemble=tuple(str(m) for m in more),
        tests=tests,
        out=str(stage_dir(cfg, "evaluate")),
        format=cfg.data.format,
        encoding=cfg.data.encoding,
        source=cfg.source,
        max_len=cfg.model.max_len,
        eval_max_tokens=cfg.section(EvaluateSection).max_tokens,
        device=cfg.device,
        max_test=cfg.data.max_test if split == TEST_SPLIT else cfg.data.max_dev,
        sample_seed=cfg.seed,
        split=split,
    )


def plan_evaluate(cfg: ExperimentConfig, common: dict, head: dict, trained: dict) -> StagePlan:
    settings = dict(common)
    if (
        cfg.section(EvaluateSection).model in cotrain.MODELS
    ):  # which views' probabilities make the prediction
        settings["evaluate.views"] = list(cotrain.views(cfg, cfg.section(EvaluateSection).model))
    split = cfg.section(EvaluateSection).split
    if split != TEST_SPLIT:  # a dev evaluation is another stage (its own folder)
        settings["evaluate.split"] = split
    plan = StagePlan(cfg, "evaluate", settings, {})
    model_input(cfg, cfg.section(EvaluateSection).model, "evaluate.model", plan)
    for lang in evaluated_languages(cfg):
        plan.inputs[f"languages.{lang}.{split}"] = cfg.data_path(lang, split)
    return plan


def _results(output: Path) -> dict:
    return read_json(output)


def predict_files(cfg: ExperimentConfig, need: Needs) -> None:
    if cfg.section(PredictSection).input is None:
        need.problems.append("predict.input: missing (the file to predict)")
    else:
        need("predict.input", Path(cfg.section(PredictSection).input))
    if cfg.section(PredictSection).output is None:
        need.problems.append("predict.output: missing (where to write the predictions)")


def build_predict(cfg: ExperimentConfig) -> PredictConfig:
    model, *more = model_paths(cfg, cfg.section(PredictSection).model, "predict.model")
    return PredictConfig(
        model=str(model),
        ensemble=tuple(str(m) for m in more),
        input=cfg.section(PredictSection).input,
        output=cfg.section(PredictSection).output,
        format=cfg.data.format,
        encoding=cfg.data.encoding,
        max_len=cfg.model.max_len,
        eval_max_tokens=cfg.section(PredictSection).max_tokens,
        device=cfg.device,
        overwrite=cfg.section(PredictSection).overwrite,
    )


def predict_claims(cfg: ExperimentConfig) -> list[tuple[str, str, bool]]:
    """The predictions file, claimed before any work (``--overwrite``: one predict did not
    write may be replaced)."""
    p = cfg.section(PredictSection)
    return [] if p.output is None else [(p.output, "predict.output", p.overwrite)]


EVALUATE = register(
    Stage(
        name="evaluate",
        section=EvaluateSection,
        build=build_evaluate,
        run=run_evaluate,
        files=evaluate_files,
        plan=plan_evaluate,
        folder=lambda cfg: f"evaluate-{_scored(cfg)}{split_suffix(cfg)}",
        output="results.json",
        result=_results,
        main_only=True,
    )
)
PREDICT = register(
    Stage(
        name="predict",
        section=PredictSection,
        build=build_predict,
        run=run_predict,
        files=predict_files,
        main_only=True,
        claims=predict_claims,
    )
)
