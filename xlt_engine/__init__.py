"""xlt-engine: a low-level training engine for zero-shot cross-lingual transfer without
parallel data (Bilingual Task Fitting + self-training with a Voters Module)."""

__version__ = "0.1.0"
