"""From an ``ExperimentConfig`` to the stage configs, and running one stage of it.

Run folder layout (``cfg.run_dir()``, one per source-target pair)::

    btf/              base-model/ (the Base Model), texts/, cache/, checkpoints, metrics.jsonl
    finetune/         model/ (the fine-tuned task model), dev.json, ...  (init = "btf")
    finetune-direct/  the same from the pretrained model                (init = "pretrained")
    selftrain/        round-<r>/..., model/ (the final student)          (base = "btf")
    selftrain-direct/ the same from the pretrained model                (base = "pretrained")
    evaluate-<model>/ results.json, results.md

Ablation variants add ``-voters<M>`` (model.voters != 3) to finetune and selftrain folders and
``-alpha<A>`` (a fixed threshold) to selftrain folders, so variants share what they have in
common (btf always).
    predict/          (the output path is the config's)

Every stage folder gets ``config.json`` (the resolved experiment and stage configs) and
``run.json`` (package version, git sha, torch / Python versions, command line, world size).
"""

from __future__ import annotations

import dataclasses
import json
import platform
import subprocess
import sys
from pathlib import Path

import torch

import xlt_engine
from xlt_engine.engine import distributed
from xlt_engine.engine.btf import BtfConfig, run_btf
from xlt_engine.engine.config import ConfigError, ExperimentConfig, check_files, to_dict
from xlt_engine.engine.distributed import rank_world
from xlt_engine.engine.evaluate import EvaluateConfig, PredictConfig, run_evaluate, run_predict
from xlt_engine.engine.finetune import FinetuneConfig, run_finetune
from xlt_engine.engine.loop import latest_checkpoint
from xlt_engine.engine.selftrain import SelftrainConfig, run_selftrain
from xlt_engine.engine.tasks import read_task_file
from xlt_engine.fileio import atomic_write_text


def git_sha() -> str:
    """The commit of the source tree the package runs from ("+dirty" if modified), or
    "unknown" outside a git checkout."""
    root = Path(xlt_engine.__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return "unknown"
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


def write_run_info(folder: Path, cfg: ExperimentConfig, stage: str, stage_cfg) -> None:
    if rank_world()[0] != 0:
        return
    folder.mkdir(parents=True, exist_ok=True)
    resolved = {"experiment": to_dict(cfg), "stage": stage,
                "stage_config": dataclasses.asdict(stage_cfg)}  # fmt: skip
    atomic_write_text(folder / "config.json", json.dumps(resolved, indent=2) + "\n")
    info = {
        "version": xlt_engine.__version__,
        "git_sha": git_sha(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "argv": sys.argv,
        "world_size": rank_world()[1],
    }
    atomic_write_text(folder / "run.json", json.dumps(info, indent=2) + "\n")


def _variant(cfg: ExperimentConfig) -> str:
    """Folder-name suffix of the settings an ablation changes after btf (so the variants of one
    pair share btf and whatever else they have in common)."""
    return f"-voters{cfg.model.voters}" if cfg.model.voters != 3 else ""


def stage_dir(cfg: ExperimentConfig, stage: str) -> Path:
    """btf/, finetune/ (init btf), finetune-direct/ (init pretrained), selftrain/ (from the Base
    Model), selftrain-direct/ (from the pretrained model); ``-voters<M>`` when model.voters is
    not 3 and ``-alpha<A>`` for a fixed threshold."""
    run = cfg.run_dir()
    if stage == "finetune":
        direct = "-direct" if cfg.finetune.init == "pretrained" else ""
        return run / f"finetune{direct}{_variant(cfg)}"
    if stage == "selftrain":
        s = cfg.selftrain
        direct = "-direct" if s.base == "pretrained" else ""
        fixed = f"-alpha{s.alpha:g}" if s.threshold == "fixed" else ""
        return run / f"selftrain{direct}{_variant(cfg)}{fixed}"
    return run / stage


def model_path(cfg: ExperimentConfig, name: str, key: str) -> Path:
    """A model named by a stage ("btf", "finetune", "finetune-direct", "selftrain",
    "pretrained") or a path."""
    run = cfg.run_dir()
    named = {
        "pretrained": Path(cfg.model.path),
        "btf": run / "btf" / "base-model",
        "finetune": stage_dir(_with(cfg, "finetune", init="btf"), "finetune") / "model",
        "finetune-direct": stage_dir(_with(cfg, "finetune", init="pretrained"), "finetune")
        / "model",
        "selftrain": stage_dir(cfg, "selftrain") / "model",
    }
    path = named.get(name, Path(name))
    if not path.is_dir():
        hint = f" (run the {name.split('-')[0]} stage first)" if name in named else ""
        raise ConfigError(cfg.name or "config", [f"{key}: {path}: no such folder{hint}"])
    return path


def _with(cfg: ExperimentConfig, section: str, **changes) -> ExperimentConfig:
    return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section),
                                                                    **changes)})  # fmt: skip


def btf_texts(cfg: ExperimentConfig, folder: Path) -> tuple[str, ...]:
    """One plain-text file per language (source, then the pair's target): the ``text`` file
    when given, else the labeled/unlabeled file's text written to ``folder/texts/<lang>.txt``."""
    out = []
    for lang, roles in ((cfg.source, ("train",)), (cfg.pair_target, ("unlabeled", "train"))):
        if cfg.languages[lang].text:
            out.append(str(cfg.data_path(lang, "text")))
            continue
        role = next(r for r in roles if getattr(cfg.languages[lang], r))
        data = read_task_file(cfg.data_path(lang, role), cfg.data.format, unlabeled=True)
        if data.kind == "token":
            lines = [" ".join(words) for words in data.inputs]
        else:
            pairs = data.pairs or [None] * len(data)
            lines = [
                " ".join((t + " " + (p or "")).split())
                for t, p in zip(data.inputs, pairs, strict=True)
            ]
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


def _train_cfg(cfg: ExperimentConfig, section):
    return dataclasses.replace(section.train, seed=cfg.seed)  # one seed for every stage


def build_btf(cfg: ExperimentConfig) -> BtfConfig:
    check_files(cfg, "btf")
    folder = stage_dir(cfg, "btf")
    b = cfg.btf
    return BtfConfig(
        model=cfg.model.path, texts=btf_texts(cfg, folder), out=str(folder), train=_train_cfg(cfg, b),
        max_len=cfg.model.max_len, batch_size=b.batch_size, max_tokens=b.max_tokens,
        mlm_probability=b.mlm_probability, whole_word=b.whole_word, freeze_layers=b.freeze_layers, freeze_embeddings=b.freeze_embeddings,
        epoch_size=b.epoch_size, device=cfg.device,
    )  # fmt: skip


def build_finetune(cfg: ExperimentConfig) -> FinetuneConfig:
    check_files(cfg, "finetune")
    f = cfg.finetune
    init = model_path(cfg, f.init, "finetune.init")
    dev = cfg.data_path(cfg.source, "dev")
    return FinetuneConfig(
        model=str(init), train_file=str(cfg.data_path(cfg.source, "train")),
        out=str(stage_dir(cfg, "finetune")), format=cfg.data.format,
        dev_file=str(dev) if dev else None, max_len=cfg.model.max_len, num_voters=cfg.model.voters,
        voter_widths=cfg.model.voter_widths or None, voter_dropout=cfg.model.voter_dropout,
        batch_size=f.batch_size, max_tokens=f.max_tokens, train=_train_cfg(cfg, f),
        device=cfg.device,
    )  # fmt: skip


def build_selftrain(cfg: ExperimentConfig) -> SelftrainConfig:
    check_files(cfg, "selftrain")
    s = cfg.selftrain
    tgt = cfg.pair_target
    role = next(r for r in ("unlabeled", "train") if getattr(cfg.languages[tgt], r))
    return SelftrainConfig(
        base_model=str(model_path(cfg, s.base, "selftrain.base")),
        teacher=str(model_path(cfg, s.teacher, "selftrain.teacher")),
        source_file=str(cfg.data_path(cfg.source, "train")),
        unlabeled_file=str(cfg.data_path(tgt, role)), out=str(stage_dir(cfg, "selftrain")),
        format=cfg.data.format, rounds=s.rounds, max_len=cfg.model.max_len,
        num_voters=cfg.model.voters, voter_widths=cfg.model.voter_widths or None,
        voter_dropout=cfg.model.voter_dropout, batch_size=s.batch_size, max_tokens=s.max_tokens,
        soft=dataclasses.replace(s.soft, seed=cfg.seed),
        hard=dataclasses.replace(s.hard, seed=cfg.seed), threshold=s.threshold, alpha=s.alpha,
        grid=s.grid or None, filter_unit=s.filter_unit, source_filter=s.source_filter,
        max_unlabeled=s.max_unlabeled, device=cfg.device,
    )  # fmt: skip


def build_evaluate(cfg: ExperimentConfig) -> EvaluateConfig:
    check_files(cfg, "evaluate")
    name = cfg.evaluate.model
    model = model_path(cfg, name, "evaluate.model")
    label = model.parent.name if name in ("finetune", "finetune-direct", "selftrain") else name
    folder = cfg.run_dir() / ("evaluate-" + (label if model != Path(name) else "model"))
    tests = {lang: str(cfg.data_path(lang, "test")) for lang in (cfg.source, *cfg.targets)}
    return EvaluateConfig(model=str(model), tests=tests, out=str(folder), format=cfg.data.format,
                          source=cfg.source, max_len=cfg.model.max_len,
                          max_tokens=cfg.evaluate.max_tokens, device=cfg.device)  # fmt: skip


def build_predict(cfg: ExperimentConfig) -> PredictConfig:
    check_files(cfg, "predict")
    model = model_path(cfg, cfg.predict.model, "predict.model")
    return PredictConfig(model=str(model), input=cfg.predict.input, output=cfg.predict.output,
                         format=cfg.data.format, max_len=cfg.model.max_len,
                         max_tokens=cfg.predict.max_tokens, device=cfg.device)  # fmt: skip


BUILDERS = {"btf": build_btf, "finetune": build_finetune, "selftrain": build_selftrain,
            "evaluate": build_evaluate, "predict": build_predict}  # fmt: skip


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


def run_stage(cfg: ExperimentConfig, stage: str, resume: bool = False, echo=print, progress=None):
    """Build the stage's config (every problem raised first), then run it. Under torchrun the
    process group is joined first; evaluate and predict run on rank 0 only."""
    distributed.init(cfg.device)
    stage_cfg = build_stage(cfg, stage)
    if stage in ("evaluate", "predict") and rank_world()[0] != 0:
        return None
    if stage == "predict":
        return run_predict(stage_cfg, echo=echo)
    folder = Path(stage_cfg.out)
    earlier = latest_checkpoint(folder) is not None
    if stage == "selftrain":
        earlier = (folder / "selftrain.jsonl").exists() or any(folder.glob("round-*"))
    if stage in ("btf", "finetune", "selftrain") and not resume and earlier:
        raise ValueError(f"{folder} holds the checkpoints of an earlier run: resume it (--resume) "
                         "or choose another folder (--out)")  # fmt: skip
    write_run_info(folder, cfg, stage, stage_cfg)
    if stage == "btf":
        return run_btf(stage_cfg, resume=resume, echo=echo, progress=progress)
    if stage == "finetune":
        return run_finetune(stage_cfg, resume=resume, echo=echo, progress=progress)
    if stage == "selftrain":
        return run_selftrain(stage_cfg, resume=resume, echo=echo, progress=progress)
    return run_evaluate(stage_cfg, echo=echo)
