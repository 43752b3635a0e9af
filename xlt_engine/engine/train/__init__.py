"""Framework-free training primitives: the loop, its checkpoints, distributed set-up, batched
inference and the metrics. Nothing here knows the papers' methods or experiments."""
