"""What a training stage trains and how fast: freezing by name pattern, the optimizer's
parameter groups (weight decay on matrices, the fresh head's learning-rate scale), the schedule
(linear warm-up, then linear decay) and the autocast dtype."""

from __future__ import annotations

import contextlib
import re

import torch
from torch import nn

from xlt_engine import provenance
from xlt_engine.engine.train import distributed
from xlt_engine.engine.train.config import TrainConfig


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up over ``warmup_ratio * max_steps`` steps, then linear decay to 0."""
    warm = int(cfg.warmup_ratio * cfg.max_steps)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    return cfg.lr * max(0.0, (cfg.max_steps - step) / max(1, cfg.max_steps - warm))


HEAD_PREFIX = "voters."  # the task model's fresh head (``TaskModel.voters``)


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """The optimizer's groups over the trainable parameters: weight decay on matrices only (not
    biases and LayerNorm); with ``head_lr_scale != 1`` the head's (``HEAD_PREFIX``) get their
    own groups, whose ``lr_scale`` the schedule multiplies in. A scale with no head to apply it
    to is an error (an MLM model has none)."""
    named = [(n, p) for n, p in unwrap(model).named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("every parameter is frozen: nothing to train")
    scaled = cfg.head_lr_scale != 1.0
    if scaled and not any(n.startswith(HEAD_PREFIX) for n, _ in named):
        raise ValueError(
            f"head_lr_scale={cfg.head_lr_scale:g}: this model has no trainable task head "
            f"({HEAD_PREFIX}*) to give it to"
        )
    groups = []
    for head in (False, True) if scaled else (None,):
        part = [(n, p) for n, p in named if head is None or n.startswith(HEAD_PREFIX) == head]
        scale = cfg.head_lr_scale if head else 1.0
        for decay in (True, False):
            ps = [p for _, p in part if (p.dim() >= 2) == decay]
            wd = cfg.weight_decay if decay else 0.0
            groups.append({"params": ps, "weight_decay": wd, "lr_scale": scale})
    return groups


def freeze(
    model: nn.Module, patterns: tuple[str, ...] | list[str], apply: bool = True
) -> list[str]:
    """Set ``requires_grad=False`` on parameters whose name matches a pattern (``re.match``);
    returns their names. A pattern that matches nothing is an error (a typo would silently
    train everything). ``apply=False`` only checks that they are frozen already (a model
    wrapped in DDP must be frozen before wrapping)."""
    names = [n for n, _ in model.named_parameters()]
    frozen = []
    for pattern in patterns:
        hits = [n for n in names if re.match(pattern, n)]
        if not hits:
            raise ValueError(
                f"freeze pattern {pattern!r} matches no parameter (names look like {names[0]!r})"
            )
        frozen += hits
    frozen = sorted(set(frozen))
    for name, p in model.named_parameters():
        if name in frozen and p.requires_grad:
            if not apply:
                raise ValueError(
                    f"{name} matches a freeze pattern but is trainable: freeze before wrapping "
                    "the model in DDP (loop.prepare)"
                )
            p.requires_grad_(False)
    return frozen


def prepare(model: nn.Module, cfg: TrainConfig, device: torch.device, frozen=()) -> nn.Module:
    """Freeze exactly ``frozen``, ``cfg.freeze`` (patterns over ``model``'s parameter names)
    and the parameters the model says it never reads (``model.idle_parameters()``, e.g. a
    pooler that the loss does not use: DDP needs a gradient for every trainable parameter);
    every other parameter trains, whatever an earlier step froze. Then wrap the model in DDP
    when a process group is up: what a stage hands to ``train``."""
    for p in model.parameters():
        p.requires_grad_(True)
    idle = model.idle_parameters() if hasattr(model, "idle_parameters") else []
    freeze(model, (*frozen, *cfg.freeze, *(re.escape(n) + r"\Z" for n in idle)))
    return distributed.wrap(model, device)


CPU_BF16_MIN_WIDTH = 1024  # the widest layer (in features) from which bf16 trains faster on a
# CPU with native bf16 dot products: the e5-small step (widest 1,536) ran 2.2x fp32's tokens/s
# under bf16 autocast on one AVX512-BF16 thread, a 2-layer H 64 model (widest 128) 0.5x
# (benchmarks/bench_cpu_step.py, 2026-11-26)


_ASSUMED_NATIVE_BF16: bool | None = None  # set by assume_native_bf16


def cpu_has_native_bf16() -> bool:
    """The CPU multiplies bf16 natively (``provenance.cpu_info``), or what the stage being
    resumed assumes: the answer of the machine it began on (``assume_native_bf16``)."""
    if _ASSUMED_NATIVE_BF16 is not None:
        return _ASSUMED_NATIVE_BF16
    return provenance.cpu_info()["native_bf16"]


@contextlib.contextmanager
def assume_native_bf16(value: bool | None):
    """Within the block, ``precision = "auto"`` decides as on a CPU whose native bf16 is
    ``value`` (None: this machine's). A stage resumed on another machine runs in the precision
    it began in: e5-small's steps are bf16 on a CPU with native bf16 and fp32 on one without,
    and a run that changed between them part way would match neither."""
    global _ASSUMED_NATIVE_BF16
    before, _ASSUMED_NATIVE_BF16 = _ASSUMED_NATIVE_BF16, value
    try:
        yield
    finally:
        _ASSUMED_NATIVE_BF16 = before


def widest_layer(model: nn.Module) -> int:
    """The largest ``in_features`` of the model's linear layers (0: none)."""
    return max((m.in_features for m in model.modules() if isinstance(m, nn.Linear)), default=0)


def resolve_precision(
    precision: str, device: torch.device, width: int | None = None
) -> torch.dtype | None:
    """The autocast dtype (None: none; ``bf16-pure`` runs the model in bf16 itself).
    ``auto``: bf16 on CUDA; on a CPU bf16 only for training a model whose widest layer
    (``width``, ``widest_layer``) is at least ``CPU_BF16_MIN_WIDTH`` on a CPU with native bf16,
    where it was measured faster, else fp32 (``inference.inference_dtype`` passes the width
    too; a caller that passes none gets fp32 on a CPU)."""
    if precision == "bf16-pure":
        return None
    if precision == "auto":
        fast = width is not None and width >= CPU_BF16_MIN_WIDTH and cpu_has_native_bf16()
        precision = "bf16" if device.type == "cuda" or fast else "fp32"
    if precision == "fp32":
        return None
    if device.type != "cuda" and precision == "fp16":
        raise ValueError("fp16 needs CUDA (use fp32 or bf16 on CPU)")
    return torch.bfloat16 if precision == "bf16" else torch.float16


AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def precision_name(precision: str, amp: torch.dtype | None) -> str:
    """What a loop's steps run in: ``bf16-pure``, or the autocast dtype's name (fp32: none)."""
    if precision == "bf16-pure":
        return precision
    return next(name for name, dtype in AMP_DTYPES.items() if dtype == amp)


def resumed_precision(
    precision: str, saved: str | None, amp: torch.dtype | None, echo
) -> torch.dtype | None:
    """The autocast dtype of a run resumed from a checkpoint written in ``saved`` (its
    ``precision_name``; None: a checkpoint from before the record). Under ``auto`` the run
    continues in ``saved`` where this machine would pick another (``amp``), and says so to
    ``echo``; a precision asked for by name is the config's, which the resume check compares."""
    if precision != "auto" or saved is None or saved == precision_name(precision, amp):
        return amp
    if saved not in AMP_DTYPES:
        raise ValueError(f"the checkpoint's precision {saved!r} is none of {sorted(AMP_DTYPES)}")
    if echo:
        echo(
            f"resumed in {saved}, the precision this run began in (precision 'auto' picks "
            f"{precision_name(precision, amp)} on this machine)"
        )
    return AMP_DTYPES[saved]


def resumed_threads(saved: int | None, device: torch.device) -> str | None:
    """What a run resumed on a CPU must be told when it runs with another thread count than
    its checkpoint was written with (``saved``; None: a checkpoint from before the record), else
    None. A CPU reduction over a large tensor splits its sum by thread count (a sum of 4M
    floats differs in its last bits between 1 and 2 threads here), so the gradient norm, and
    through clipping the weights, may leave the uninterrupted run's bits."""
    now = torch.get_num_threads()
    if device.type != "cpu" or saved is None or saved == now:
        return None
    return (
        f"resumed with {now} CPU thread(s) where the checkpoint was written with {saved}: "
        "large sums (the gradient norm) split by thread count, so this run may leave the "
        f"bits of one that was not stopped; OMP_NUM_THREADS={saved} resumes as it ran"
    )


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model
