"""The training loop: one readable function, no callbacks, no framework.

``train(model, loss_fn, data, cfg, run_dir, ...)`` runs ``cfg.max_steps`` optimizer steps of
AdamW (fused on CUDA) with linear warm-up over ``warmup_ratio`` of the steps then linear decay,
gradient accumulation, clipping, parameter freezing by name pattern, and mixed precision (bf16
autocast on CUDA by default, fp16 with a grad scaler as an option, fp32 on CPU; master weights
stay fp32).

Data is a ``DataSource``: ``num_batches(epoch)`` and ``batch(epoch, index)``, each a pure
function of its arguments (the order of an epoch comes from ``(seed, epoch)``), so the data
position is just ``(epoch, index)`` and a resumed run reads the same batches. ``loss_fn(model,
batch, generator)`` gets a ``torch.Generator`` seeded from ``(seed, epoch, index)`` for any
randomness of its own (MLM masking); dropout draws from torch's global RNG, whose state is saved.

Checkpoints are written every ``save_minutes`` of training (10 by default, so a kill loses at
most that), every ``save_every`` steps if set, at the end and on SIGINT/SIGTERM; the newest
``keep_checkpoints`` stay. ``run_dir/ckpt-<step>/`` holds the model (``save_model``: for BERT, safetensors
with Hugging Face names) and ``state.pt`` (optimizer, scaler, step, data position, RNG states of
python / numpy / torch / cuda); ``run_dir/latest`` names the newest complete one and is
replaced atomically after both are written, so a kill at any moment leaves a usable checkpoint.
``resume=True`` continues from it exactly: on CPU the final weights equal an uninterrupted run's
bit for bit; a changed training setting (other than ``RESUME_FREE``) is refused by name unless
``accept_changes``. SIGINT / SIGTERM finish the current step, write a checkpoint and raise
``Interrupted`` (whose message says how to resume). A non-finite loss stops the run with an
error naming the step and batch before any checkpoint after it is written, and weights that are
not finite are never saved as a checkpoint.

Metrics go to ``run_dir/metrics.jsonl`` (one JSON object per log interval or evaluation, with
``run``, an id per call of ``train``, and ``time``, Unix seconds); a fresh run starts the file
over and a resumed one drops the records after its checkpoint. ``.item()`` is called only there. Distributed (DDP, ``torch.distributed`` initialised, e.g. by
``train.distributed.init``): freeze, then wrap the model before calling ``train``; the data
source shards batches round-robin by rank (``data.batching.shard``); the logged loss and token
counts are reduced over ranks; a signal stops, and a due time-based save saves, every rank at
the next log or save point (no per-step sync); each rank's RNG state goes into the
checkpoint; only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import random
import re
import shutil
import signal
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Protocol

import click
import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from xlt_engine.engine.train import distributed
from xlt_engine.fileio import append_jsonl, atomic_file, atomic_write_text, folder_bytes, read_jsonl

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
MAX_EPOCHS = 1e6  # beyond these a typo, not a plan (and 1e308 epochs overflowed the step count)
MAX_STEPS = 10**12
MAX_HEAD_LR_SCALE = 1000.0  # a fresh head at lr x 1000 is past any recipe: most likely a typo
MAX_LR = 10.0  # AdamW on these models trains below 1e-2; lr 1e39 was a RuntimeError in AdamW


class Interrupted(Exception):
    """SIGINT/SIGTERM: a checkpoint was written; the message says how to resume."""


class NonFiniteLoss(RuntimeError):
    pass


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
    precision: str = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    freeze: tuple[str, ...] = ()  # regexes matched (re.match) against the trained model's
    # parameter names: encoder.embeddings.*, encoder.layers.<i>.*, voters.* (task), head.* (MLM)
    log_every: int = 10
    save_every: int = 0  # a checkpoint every this many steps (0: none by count)
    save_minutes: float = 10.0  # and one every this many minutes of training (0: none by time);
    # always one at the end and on SIGINT/SIGTERM. Under DDP the ranks agree at log points.
    eval_every: int = 0
    keep_checkpoints: int = 1
    seed: int = 0
    tensorboard: bool = False  # also write each metric record as TensorBoard scalars into
    # <run folder>/tensorboard (needs the tensorboard package)

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


class Board:
    """TensorBoard scalars from the metric records (loss, lr, tokens/s, grad norm, dev scores),
    one event file folder per training stage, so runs compare in TensorBoard."""

    SKIP = ("run", "time", "step", "epoch")

    def __init__(self, folder: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder))

    def write(self, record: dict) -> None:
        for key, value in record.items():
            if key not in self.SKIP and isinstance(value, int | float) and math.isfinite(value):
                self.writer.add_scalar(key, value, record["step"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class DataSource(Protocol):
    def num_batches(self, epoch: int) -> int: ...

    def batch(self, epoch: int, index: int) -> dict[str, torch.Tensor]: ...


@dataclass
class TrainResult:
    step: int
    last_loss: float
    checkpoint: Path | None
    history: list[dict] = field(default_factory=list)


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
    named = [(n, p) for n, p in _unwrap(model).named_parameters() if p.requires_grad]
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


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None: fp32)."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return None
    if device.type != "cuda" and precision == "fp16":
        raise ValueError("fp16 needs CUDA (use fp32 or bf16 on CPU)")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def _generator(seed: int, epoch: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(hash((seed, epoch, index)) & (2**63 - 1))


def _rng_state() -> dict:
    np_state = np.random.get_state(legacy=False)  # its key array as a tensor: no pickle needed
    np_state["state"]["key"] = torch.from_numpy(np_state["state"]["key"].astype(np.int64))
    state = {"python": random.getstate(), "numpy": np_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np_state = state["numpy"]
    np_state["state"]["key"] = np_state["state"]["key"].numpy().astype(np.uint32)
    np.random.set_state(np_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = run_dir / "latest"
    if not pointer.is_file():
        return None
    folder = run_dir / pointer.read_text(encoding="utf-8").strip()
    if not (folder / "state.pt").is_file():
        raise ValueError(f"{pointer} names {folder.name}, which has no state.pt")
    return folder


def drop_checkpoints(folder: Path) -> int:
    """Remove the loop checkpoints (``latest`` and ``ckpt-*/``, optimizer state included) of
    every training run at or below ``folder`` (a stage's own, a self-training step's, a
    co-training view's): what a finished stage no longer needs. Each run's ``latest`` goes
    first, so a kill midway leaves no pointer to a half-removed folder. Returns the bytes freed."""
    runs = {p.parent for p in folder.rglob("latest") if p.is_file()}
    runs |= {p.parent.parent for p in folder.rglob("ckpt-*/state.pt")}
    freed = 0
    for run in sorted(runs):
        (run / "latest").unlink(missing_ok=True)
        for ckpt in sorted(p for p in run.glob("ckpt-*") if p.is_dir()):
            freed += folder_bytes(ckpt)
            shutil.rmtree(ckpt)
    return freed


def fault_kill_step(run_dir: Path) -> int | None:
    """Fault injection for the kill-and-resume tests: ``XLT_KILL_AT="[FOLDER:]STEP"`` makes
    ``train`` SIGKILL its own process right after optimizer step STEP, in a run folder whose
    path ends with FOLDER (any folder when it is left out), e.g. ``round-2/soft:150``."""
    spec = os.environ.get("XLT_KILL_AT", "")
    if not spec:
        return None
    folder, _, step = spec.rpartition(":")
    if folder and not run_dir.as_posix().endswith(folder):
        return None
    try:
        return int(step)
    except ValueError:
        raise ValueError(f"XLT_KILL_AT={spec!r}: expected [FOLDER:]STEP") from None


def _restart_metrics(path: Path, step: int) -> None:
    """Keep the records of steps up to ``step`` (the checkpoint a run resumes from; 0: a fresh
    run), so the file never holds a killed run's steps twice or an older run's at all."""
    if not path.exists():
        return
    keep = [r for r in read_jsonl(path) if r.get("step", 0) <= step] if step else []
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in keep))


RESUME_FREE = (
    "log_every",
    "save_every",
    "save_minutes",
    "eval_every",
    "keep_checkpoints",
    "tensorboard",
)


def config_changes(stored: dict | None, current: dict) -> list[str]:
    """``key: old -> new`` for each training setting a resume would change (those that do not
    change the result, ``RESUME_FREE``, may change)."""
    if stored is None:  # a checkpoint from before settings were stored
        return []
    defaults = {f.name: f.default for f in fields(TrainConfig)}  # a setting added since
    out = []
    for key in sorted(set(stored) | set(current)):
        old, new = stored.get(key, defaults.get(key)), current.get(key)
        if isinstance(old, list):  # a tuple comes back from torch.load as a list
            old = tuple(old)
        if key not in RESUME_FREE and old != new:
            out.append(f"{key}: {old!r} -> {new!r}")
    return out


def non_finite_parameters(model: nn.Module) -> list[str]:
    """Names of the parameters holding inf or NaN (one host sync for all of them)."""
    named = [(n, p) for n, p in model.named_parameters() if p.is_floating_point()]
    if not named:
        return []
    ok = torch.stack([p.detach().isfinite().all() for _, p in named]).cpu()
    return [n for (n, _), good in zip(named, ok.tolist(), strict=True) if not good]


def _last_good(run_dir: Path) -> str:
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        return "no checkpoint was written yet (the run starts over)"
    return f"the last good checkpoint is {ckpt}"


def format_loss(value: float) -> str:
    """Four significant digits: 0.6931, 12.35, 1.9e-07 (a fixed 4 decimals printed 0.0000)."""
    return f"{value:.4g}"


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


class Checkpoints:
    """The checkpoints of one run folder: ``ckpt-<step>/`` with the model (``save_model``) and
    ``state.pt`` (optimizer, scaler, data position, every rank's RNG states), the ``latest``
    pointer replaced atomically after both are written, and pruning to ``keep`` folders."""

    def __init__(self, run_dir: Path, save_model, load_model, keep: int):
        self.run_dir, self.save_model, self.load_model, self.keep = (
            run_dir,
            save_model,
            load_model,
            keep,
        )
        self.rank, self.world = distributed.rank_world()

    def latest(self) -> Path | None:
        return latest_checkpoint(self.run_dir)

    def check_fresh(self) -> None:
        earlier = self.latest()
        if earlier is not None:
            raise ValueError(
                f"{self.run_dir} holds the checkpoints of an earlier run (latest: {earlier.name}): "
                "resume it (--resume) or choose another folder"
            )

    def load(self, model: nn.Module) -> dict:
        """Load the latest checkpoint's weights into ``model`` and this rank's RNG states;
        returns the rest of its state (optimizer, scaler, step, data position)."""
        ckpt = self.latest()
        if ckpt is None:
            raise ValueError(f"{self.run_dir}: nothing to resume (no checkpoint written yet)")
        self.load_model(model, ckpt / "model")
        state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
        rng = state["rng"]
        if len(state.get("rng_ranks", ())) == self.world:
            rng = state["rng_ranks"][self.rank]  # each rank continues its own streams (dropout)
        _set_rng_state(rng)
        return state

    def save(self, model: nn.Module, step: int, state: dict) -> Path | None:
        """Every rank's RNG states are gathered (a collective: call on every rank); rank 0
        writes ``ckpt-<step>``, points ``latest`` at it and prunes older ones."""
        rng = _rng_state()
        rng_ranks = [rng]
        if self.world > 1:
            rng_ranks = [None] * self.world
            dist.all_gather_object(rng_ranks, rng)
        if self.rank != 0:
            return None
        folder = self.run_dir / f"ckpt-{step:08d}"
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        self.save_model(model, folder / "model")
        with atomic_file(folder / "state.pt") as f:
            torch.save({**state, "rng": rng, "rng_ranks": rng_ranks}, f)
        atomic_write_text(self.run_dir / "latest", folder.name + "\n")
        old = sorted(p for p in self.run_dir.glob("ckpt-*") if p.is_dir() and p != folder)
        for p in old[: max(0, len(old) - (self.keep - 1))]:
            shutil.rmtree(p, ignore_errors=True)
        return folder


def train(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, dict, torch.Generator], torch.Tensor],
    data: DataSource,
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    save_model: Callable[[nn.Module, Path], None],
    load_model: Callable[[nn.Module, Path], None],
    resume: bool = False,
    accept_changes: bool = False,
    evaluate: Callable[[nn.Module], dict] | None = None,
    echo: Callable[[str], None] | None = print,
    progress: bool | None = None,
) -> TrainResult:
    """Train ``model`` in place (see the module docstring). ``save_model(model, folder)`` and
    ``load_model(model, folder)`` write and read the weights of a checkpoint. ``progress``: a
    click progress bar on stderr (None: when stderr is a terminal); log lines go to ``echo``
    when there is no bar."""
    if cfg.max_steps < 1:
        raise ValueError("TrainConfig.max_steps is 0: resolve epochs first (cfg.with_steps)")
    run_dir = Path(run_dir)
    kill_at = fault_kill_step(run_dir)
    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    is_main = rank == 0
    core = _unwrap(model)
    ddp = isinstance(model, nn.parallel.DistributedDataParallel)
    device = next(core.parameters()).device
    amp_dtype = resolve_precision(cfg.precision, device)
    freeze(core, cfg.freeze, apply=not ddp)
    opt = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, fused=device.type == "cuda")
    params = [p for group in opt.param_groups for p in group["params"]]
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    step, epoch, index = 0, 0, 0
    history: list[dict] = []
    random.seed(cfg.seed)  # a fresh run is a function of the seed (dropout included)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed + rank)
    ckpts = Checkpoints(run_dir, save_model, load_model, cfg.keep_checkpoints)
    if resume:
        state = ckpts.load(core)
        changed = config_changes(state.get("config"), asdict(cfg))
        if changed and not accept_changes:
            raise ValueError(
                f"{ckpts.latest()} was written with other settings: {'; '.join(changed)}; "
                "resume with the same settings (or accept_changes=True)"
            )
        opt.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        step, epoch, index = state["step"], state["epoch"], state["index"]
        if echo and is_main:
            echo(f"resumed from {ckpts.latest()} at step {step}")
    else:
        ckpts.check_fresh()
    run_id = uuid.uuid4().hex[:12]  # tells a resumed run's records from the killed one's
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        _restart_metrics(run_dir / "metrics.jsonl", step if resume else 0)

    def checkpoint() -> Path | None:
        # every rank checks (their weights are equal), so all stop before the collective save
        bad = non_finite_parameters(core)
        if bad:
            raise NonFiniteLoss(
                f"non-finite weights at step {step} ({', '.join(bad[:3])}"
                f"{', ...' if len(bad) > 3 else ''}): not saved as a checkpoint; "
                f"{_last_good(run_dir)}"
            )
        state = {
            "optimizer": opt.state_dict(),
            "scaler": scaler.state_dict(),
            "step": step,
            "epoch": epoch,
            "index": index,
            "config": asdict(cfg),
        }
        return ckpts.save(core, step, state)

    stop = {"signal": None}

    def on_signal(signum, _frame):
        stop["signal"] = signum

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    metrics_path = run_dir / "metrics.jsonl"
    loss_sum = torch.zeros((), device=device)
    steps_since_log = 0
    tokens = torch.zeros((), dtype=torch.float64)  # CPU: the masks are CPU tensors
    if progress is None:
        progress = sys.stderr.isatty()
    bar = None
    if progress and is_main:
        label = run_dir.name  # the stage; a self-training step: "selftrain round-1 soft"
        if run_dir.parent.name.startswith("round-"):
            label = f"{run_dir.parent.parent.name} {run_dir.parent.name} {run_dir.name}"
        bar = click.progressbar(
            length=cfg.max_steps,
            label=label,
            file=sys.stderr,
            show_eta=True,
            item_show_func=lambda s: s,
        )
        bar.__enter__()
        bar.update(step)
    board = Board(run_dir / "tensorboard") if cfg.tensorboard and is_main else None
    grad_norm = None
    t_last = t_saved = time.perf_counter()
    save_period = cfg.save_minutes * 60
    last_loss = float("nan")
    last_ckpt = None
    try:
        model.train()
        while step < cfg.max_steps:
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg) * group.get("lr_scale", 1.0)
            where = []
            for micro in range(cfg.grad_accum):
                n = data.num_batches(epoch)
                if n == 0:
                    raise ValueError(f"epoch {epoch} has no batches")
                if index >= n:
                    epoch, index = epoch + 1, 0
                batch = data.batch(epoch, index)
                # keyed by the global batch number: rank r's i-th batch is batch i*world + r of
                # the epoch (``shard`` is round-robin), so a DDP run draws the same masks as one
                # process running grad_accum = world over the same batches
                gen = _generator(cfg.seed, epoch, index * world + rank)
                where.append((epoch, index))
                index += 1
                # DDP all-reduces gradients in backward: only the last micro-batch of an
                # accumulation needs it, the others accumulate locally (no_sync)
                last = micro == cfg.grad_accum - 1
                sync = contextlib.nullcontext() if last or not ddp else model.no_sync()
                autocast = torch.autocast(
                    device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
                )
                with sync, autocast:
                    loss = loss_fn(model, batch, gen)
                    scaler.scale(loss / cfg.grad_accum).backward()
                loss_sum += loss.detach() / cfg.grad_accum
                if "attention_mask" in batch:
                    tokens += batch["attention_mask"].sum()
                # CPU: checking is free; CUDA and DDP: at log intervals (a sync; every rank
                # sees the reduced loss, so all stop together), before any checkpoint
                if device.type != "cuda" and not distributed and not torch.isfinite(loss):
                    raise NonFiniteLoss(
                        f"non-finite loss {float(loss.detach())} at step {step + 1}, epoch {epoch}, batch "
                        f"{where[-1][1]}; {_last_good(run_dir)}"
                    )
            if cfg.clip > 0:
                scaler.unscale_(opt)
                grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.clip)  # before clipping
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            step += 1
            steps_since_log += 1
            if step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)  # fault injection: die without clean-up
            if bar is not None:
                bar.update(1)

            log_now = step % cfg.log_every == 0 or step == cfg.max_steps
            save_now = (cfg.save_every and step % cfg.save_every == 0) or step == cfg.max_steps
            timed = bool(save_period) and time.perf_counter() - t_saved >= save_period
            stopping = stop["signal"]
            if distributed:
                # a signal or the save clock may reach the ranks at different steps: they agree
                # at log and save points only (already a sync), so a DDP run stops or saves at
                # the next such point
                stopping = None
                if log_now or save_now:
                    flag = torch.tensor([stop["signal"] or 0, int(timed)], device=device)
                    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                    stopping = int(flag[0].item()) or None
                    save_now = save_now or bool(flag[1].item())
            else:
                save_now = save_now or timed
            if log_now or save_now or stopping is not None:
                n_steps = steps_since_log  # a save or signal may log between log intervals
                if distributed:
                    sums = torch.stack([loss_sum.double(), tokens.to(device)])
                    dist.all_reduce(sums)
                    loss_sum.copy_(sums[0] / world)
                    tokens = sums[1].cpu()
                mean = loss_sum.item() / max(1, n_steps)  # the sync point
                if not math.isfinite(mean):
                    raise NonFiniteLoss(
                        f"non-finite loss in steps {step - n_steps + 1}-{step} (last batch: epoch "
                        f"{where[-1][0]}, index {where[-1][1]}); {_last_good(run_dir)}"
                    )
                last_loss = mean
                now = time.perf_counter()
                record = {
                    "run": run_id,
                    "time": round(time.time(), 3),
                    "step": step,
                    "loss": mean,
                    "lr": lr_at(step - 1, cfg),
                    "tokens_per_s": float(tokens) / max(now - t_last, 1e-9),
                    "epoch": epoch,
                }
                if grad_norm is not None:  # the last step's, before clipping (clip > 0)
                    norm = float(grad_norm)
                    record["grad_norm"] = norm if math.isfinite(norm) else None
                loss_sum.zero_()
                tokens = torch.zeros((), dtype=torch.float64)
                steps_since_log, t_last = 0, now
                due = cfg.eval_every and step % cfg.eval_every == 0
                if evaluate is not None and due and is_main:
                    record.update(evaluate(core))
                    model.train()
                history.append(record)
                if is_main:
                    append_jsonl(metrics_path, record)
                    if board is not None:
                        board.write(record)
                    line = (
                        f"loss {format_loss(mean)} lr {record['lr']:.2e} "
                        f"{record['tokens_per_s']:,.0f} tok/s"
                    )
                    if bar is not None:
                        bar.current_item = line
                        bar.render_progress()
                    elif echo:
                        echo(f"step {step}/{cfg.max_steps} {line}")
            if save_now or stopping is not None:
                last_ckpt = checkpoint()
                t_saved = time.perf_counter()
            if stopping is not None:
                name = signal.Signals(stopping).name
                raise Interrupted(
                    f"{name} received: checkpoint written at step {step} in {run_dir}; "
                    "continue with the same command plus --resume"
                )
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
        if board is not None:
            board.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
    return TrainResult(step, last_loss, last_ckpt, history)
