"""xlt-engine: a low-level training engine for zero-shot cross-lingual transfer without
parallel data (Bilingual Task Fitting + self-training with a Voters Module)."""

__version__ = "0.1.0"

# the stages of an experiment, in the order they run (the CLI, the configs and the run folders
# all take their names from here)
STAGES = ("btf", "finetune", "selftrain", "cotrain", "evaluate", "predict")
