"""The papers' methods: BTF, source fine-tuning (with paper 003's Label and Semantic
Alignment), self-training with the Voters Module and its pseudo-label rule, co-training, and
evaluation; each stage a function taking a config dataclass built on ``settings``."""
