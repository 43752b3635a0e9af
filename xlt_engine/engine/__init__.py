"""Training loop, distributed set-up, experiment configs, the stages and their metrics.

Stages (each a function taking a config dataclass): ``btf.run_btf``, ``finetune.run_finetune``,
``selftrain.run_selftrain``, ``evaluate.run_evaluate``, ``evaluate.run_predict``;
``pipeline.run_all`` and ``pipeline.run_ablate`` chain them; ``select_threshold`` picks the
self-training confidence threshold.
"""

from xlt_engine.engine.threshold import ThresholdChoice, select_threshold

__all__ = ["ThresholdChoice", "select_threshold"]
