"""A training loop's settings (``TrainConfig``): steps or epochs, learning rate and schedule,
precision, freezing, checkpointing and logging. The loop (``loop.train``) and the optimizer's
set-up (``optim``) both read it; neither is imported here."""

from __future__ import annotations

import importlib.util
import math
import re
from dataclasses import dataclass, replace

PRECISIONS = ("auto", "bf16", "fp16", "fp32", "bf16-pure")  # bf16, fp16: autocast;
# bf16-pure: bf16 weights with fp32 masters (train.precision)
# how the model runs in a step: eager; torch.compile (one graph per shape bucket, dynamic after
# a recompile); "graphs": torch.compile with CUDA graphs (mode "reduce-overhead": the forward
# and backward replayed as graphs, inputs copied into static buffers; CUDA only, elsewhere it
# runs as "compile" and says so). The optimizer step stays eager in both.
COMPILE_MODES = ("off", "compile", "graphs")
MAX_EPOCHS = 1e6  # beyond these a typo, not a plan (and 1e308 epochs overflowed the step count)
MAX_STEPS = 10**12
MAX_HEAD_LR_SCALE = 1000.0  # a fresh head at lr x 1000 is past any recipe: most likely a typo
MAX_LR = 10.0  # AdamW on these models trains below 1e-2; lr 1e39 was a RuntimeError in AdamW


# settings that do not change a run's result (how often it logs, saves, evaluates; what it keeps):
# a resume may change them, and a stage's fingerprint leaves them out
RESUME_FREE = (
    "log_every",
    "save_every",
    "save_minutes",
    "eval_every",
    "keep_checkpoints",
    "tensorboard",
    "final_checkpoint",
)


@dataclass(frozen=True)
class TrainConfig:
    max_steps: int = 0  # optimizer steps; 0: from ``epochs`` (``with_steps``)
    epochs: float = 0.0  # used when max_steps is 0
    lr: float = 2e-5
    head_lr_scale: float = 1.0  # the fresh task head's (``voters.*``) learning rate: this x lr
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    grad_accum: int = 1
    clip: float = 1.0  # max grad norm; 0 disables
    precision: str = "auto"  # auto: bf16 on CUDA, and on a CPU with native bf16 for a model
    # whose widest layer has >= 1,024 inputs (optim.resolve_precision), else fp32; bf16 / fp16: autocast over fp32
    # weights; bf16-pure: the model in bf16, the optimizer on fp32 masters (train.precision)
    freeze: tuple[str, ...] = ()  # regexes matched (re.match) against the trained model's
    # parameter names: encoder.embeddings.*, encoder.layers.<i>.*, voters.* (task), head.* (MLM)
    log_every: int = 10
    save_every: int = 0  # a checkpoint every this many steps (0: none by count)
    save_minutes: float = 10.0  # and one every this many minutes of training (0: none by time);
    # one at the end (final_checkpoint) and on SIGINT/SIGTERM. Under DDP the ranks agree at log
    # points.
    eval_every: int = 0
    keep_checkpoints: int = 1
    seed: int = 0
    tensorboard: bool = False  # also write each metric record as TensorBoard scalars into
    # <run folder>/tensorboard (needs the tensorboard package)
    compile: str = "off"  # COMPILE_MODES
    final_checkpoint: bool = True  # a checkpoint (model and optimizer state) at the last step;
    # an experiment turns it off where the stage saves its model right after (a kill before that
    # save resumes from the last timed checkpoint), unless it keeps its loop checkpoints

    def __post_init__(self):
        for name in ("grad_accum", "log_every", "keep_checkpoints"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("max_steps", "save_every", "eval_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {getattr(self, name)!r}")
        if not (isinstance(self.epochs, int | float) and 0 <= self.epochs <= MAX_EPOCHS):
            raise ValueError(f"epochs must be a number in [0, {MAX_EPOCHS:g}], got {self.epochs!r}")
        if self.max_steps > MAX_STEPS:
            raise ValueError(f"max_steps must be at most {MAX_STEPS:g}, got {self.max_steps!r}")
        if self.max_steps == 0 and not self.epochs > 0:
            raise ValueError("max_steps must be a positive integer (or give epochs > 0)")
        if not (0 < self.lr <= MAX_LR):
            raise ValueError(f"lr must be in (0, {MAX_LR:g}], got {self.lr!r}")
        if not (0 < self.head_lr_scale <= MAX_HEAD_LR_SCALE):
            raise ValueError(
                f"head_lr_scale must be in (0, {MAX_HEAD_LR_SCALE:g}], got {self.head_lr_scale!r}"
            )
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise ValueError(
                f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}"
            )
        if not (
            isinstance(self.save_minutes, int | float)
            and self.save_minutes >= 0
            and math.isfinite(self.save_minutes)
        ):
            raise ValueError(
                f"save_minutes must be a finite number >= 0, got {self.save_minutes!r}"
            )
        if not (self.clip >= 0 and math.isfinite(self.clip)):
            raise ValueError(f"clip must be a finite number >= 0, got {self.clip!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.compile not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {COMPILE_MODES}, got {self.compile!r}")
        for pattern in self.freeze:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"freeze pattern {pattern!r} is not a regex: {err}") from None
        if self.tensorboard and importlib.util.find_spec("tensorboard") is None:
            raise ValueError(
                "tensorboard = true needs the tensorboard package (pip install tensorboard)"
            )

    def with_steps(self, batches_per_epoch: int) -> TrainConfig:
        """``max_steps`` from ``epochs`` when it is 0: ceil(epochs * batches / grad_accum),
        with ``batches_per_epoch`` counted per rank."""
        if self.max_steps:
            return self
        if batches_per_epoch < 1:
            raise ValueError("the training data gives no batches")
        steps = math.ceil(self.epochs * batches_per_epoch / self.grad_accum)
        return replace(self, max_steps=max(1, steps))
