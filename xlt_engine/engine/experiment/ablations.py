"""The paper's ablation switches, each written once as a config overlay: ``run``'s options
(``--no-btf``, ``--fixed-threshold``, ``--linear-head``), ``pipeline.run_all``, the ablation
study and the lab's studies all apply these.

- ``without_btf`` (-BTF): fine-tuning and self-training start from the pretrained model, and
  round 1's teacher is the pretrained model fine-tuned (``finetune-direct``).
- ``fixed_threshold`` (-AT): a fixed confidence threshold alpha instead of the automatic one.
- ``linear_head`` (-VM, and the direct-transfer baseline): a plain linear head, no voters.
- ``soft_only`` (soft only): no hard step in any round; each round's soft student is its result.
- -ST is no overlay: ``run_all`` with ``Parts(selftrain=False)`` stops after fine-tuning.
"""

from __future__ import annotations

from xlt_engine.engine.experiment.config import ExperimentConfig
from xlt_engine.engine.experiment.runs import with_linear_head, with_section
from xlt_engine.engine.experiment.stages.selftrain import SelftrainSection


def without_btf(cfg: ExperimentConfig) -> ExperimentConfig:
    cfg = with_section(cfg, "finetune", init="pretrained")
    return with_section(cfg, "selftrain", base="pretrained", teacher="finetune-direct")


def fixed_threshold(cfg: ExperimentConfig, alpha: float) -> ExperimentConfig:
    return with_section(cfg, "selftrain", rule=cfg.section(SelftrainSection).rule.fixed(alpha))


def linear_head(cfg: ExperimentConfig) -> ExperimentConfig:
    return with_linear_head(cfg)


def soft_only(cfg: ExperimentConfig) -> ExperimentConfig:
    return with_section(cfg, "selftrain", hard_steps=False)
