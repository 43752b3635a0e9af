"""The engine, in three layers whose imports point down only:

- ``engine.train``: framework-free training primitives: the loop (``loop.train``,
  ``TrainConfig``), its checkpoints, distributed set-up, batched inference, the metrics.
- ``engine.method``: the papers' stages, each a function taking a config dataclass
  (``run_btf``, ``run_finetune``, ``run_selftrain``, ``run_cotrain``, ``run_evaluate``,
  ``run_predict``), their settings (``method.settings``, each written once) and the
  pseudo-label rule, tensor-level and file-free for other trainers (``PseudoRule``,
  ``make_rule``, ``register_rule``,
  ``choose_thresholds`` -> ``Thresholds``, ``pseudo_label``, ``source_keep``,
  ``check_collapse``; ``select_threshold`` picks the paper's confidence threshold).
- ``engine.experiment``: the TOML config tree, stage building, run folders and fingerprints,
  the reuse of finished stages, and ``pipeline.run_all`` (the whole method in one call).

The studies (ablations, threshold and rounds studies, the report) are ``xlt_engine.studies``.
"""

from xlt_engine.engine.method.btf import BtfConfig, run_btf
from xlt_engine.engine.method.cotrain import CotrainConfig, run_cotrain
from xlt_engine.engine.method.evaluate import (
    EvaluateConfig,
    PredictConfig,
    run_evaluate,
    run_predict,
)
from xlt_engine.engine.method.finetune import FinetuneConfig, run_finetune
from xlt_engine.engine.method.pseudo_labels import (
    PseudoRule,
    Thresholds,
    check_collapse,
    choose_thresholds,
    pseudo_label,
    source_keep,
)
from xlt_engine.engine.method.rules import make_rule, register_rule
from xlt_engine.engine.method.selftrain import SelftrainConfig, run_selftrain
from xlt_engine.engine.method.threshold import ThresholdChoice, select_threshold
from xlt_engine.engine.train import metrics
from xlt_engine.engine.train.config import TrainConfig

__all__ = [
    "BtfConfig",
    "CotrainConfig",
    "EvaluateConfig",
    "FinetuneConfig",
    "PredictConfig",
    "PseudoRule",
    "SelftrainConfig",
    "ThresholdChoice",
    "Thresholds",
    "TrainConfig",
    "check_collapse",
    "choose_thresholds",
    "make_rule",
    "metrics",
    "pseudo_label",
    "register_rule",
    "run_btf",
    "run_cotrain",
    "run_evaluate",
    "run_finetune",
    "run_predict",
    "run_selftrain",
    "select_threshold",
    "source_keep",
]
