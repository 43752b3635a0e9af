"""Training loop, distributed set-up, experiment configs, the stages and their metrics.

Stages (each a function taking a config dataclass): ``btf.run_btf``, ``finetune.run_finetune``,
``selftrain.run_selftrain``, ``evaluate.run_evaluate``, ``evaluate.run_predict``;
``pipeline.run_all`` and ``pipeline.run_ablate`` chain them; ``select_threshold`` picks the
self-training confidence threshold. The pseudo-label rule, tensor-level and file-free for other
trainers (``pseudo_labels``): ``PseudoRule``, ``choose_thresholds`` -> ``Thresholds``,
``pseudo_label``, ``source_keep``, ``check_collapse``.
"""

from xlt_engine.engine.pseudo_labels import (
    PseudoRule,
    Thresholds,
    check_collapse,
    choose_thresholds,
    pseudo_label,
    source_keep,
)
from xlt_engine.engine.threshold import ThresholdChoice, select_threshold

__all__ = [
    "PseudoRule",
    "ThresholdChoice",
    "Thresholds",
    "check_collapse",
    "choose_thresholds",
    "pseudo_label",
    "select_threshold",
    "source_keep",
]
