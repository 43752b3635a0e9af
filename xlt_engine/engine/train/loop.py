"""The training loop: one readable function, no callbacks, no framework.

``train(model, loss_fn, data, cfg, run_dir, io)`` runs ``cfg.max_steps`` optimizer steps of
AdamW (fused, on CUDA and CPU) with linear warm-up over ``warmup_ratio`` of the steps then linear decay,
gradient accumulation, clipping, parameter freezing by name pattern, and mixed precision (bf16
autocast on CUDA by default, fp16 with a grad scaler as an option, fp32 on CPU; master weights
stay fp32; ``bf16-pure`` runs the model itself in bf16 over fp32 masters: ``precision``). The step reads top to bottom in ``train``; beside it, as components: ``Run`` (set-up,
resume, records, saves), ``checkpoints`` (the folder's checkpoints), ``progress`` (metrics file,
progress bar, TensorBoard), ``optim`` (freezing, parameter groups, schedule, precision) and
``faults`` (the tests' fault injection).

Data is a ``DataSource``: ``num_batches(epoch)`` and ``batch(epoch, index)``, each a pure
function of its arguments (the order of an epoch comes from ``(seed, epoch)``), so the data
position is just ``(epoch, index)`` and a resumed run reads the same batches. ``loss_fn(model,
batch, generator)`` gets a ``torch.Generator`` seeded from ``(seed, epoch, index)`` for any
randomness of its own (MLM masking); dropout draws from torch's global RNG, whose state is saved.

Checkpoints are written every ``save_minutes`` of training (10 by default, so a kill loses at
most that), every ``save_every`` steps if set, at the end (``final_checkpoint``) and on
SIGINT/SIGTERM; the newest ``keep_checkpoints`` stay (``io.save_model`` writes the model: for
BERT, safetensors with Hugging Face names). ``resume=True`` continues from the latest exactly: on CPU the final weights
equal an uninterrupted run's bit for bit; a changed training setting (other than
``RESUME_FREE``) is refused by name unless ``resume="accept_changes"``. SIGINT / SIGTERM finish
the current step, write a checkpoint and raise ``Interrupted`` (whose message says how to
resume). A non-finite loss stops the run with an error naming the step and batch before any
checkpoint after it is written, and weights that are not finite are never saved.

``.item()`` is called only at log and save points. Distributed (DDP, ``torch.distributed``
initialised, e.g. by ``train.distributed.init``): freeze, then wrap the model before calling
``train``; the data source shards batches round-robin by rank (``data.batching.shard``); the
logged loss and token counts are reduced over ranks; a signal stops, and a due time-based save
saves, every rank at the next log or save point (no per-step sync); each rank's RNG state goes
into the checkpoint; only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from xlt_engine.engine.train import distributed, faults
from xlt_engine.engine.train.checkpoints import Checkpoints, last_good, non_finite_parameters
from xlt_engine.engine.train.config import RESUME_FREE, TrainConfig
from xlt_engine.engine.train.optim import (
    freeze,
    lr_at,
    param_groups,
    precision_name,
    resolve_precision,
    resumed_precision,
    resumed_threads,
    unwrap,
    widest_layer,
)
from xlt_engine.engine.train.precision import PureBf16, master_groups
from xlt_engine.engine.train.progress import RunLog
from xlt_engine.fileio import atomic_write_text
from xlt_engine.inputs import read_json
from xlt_engine.kernels._dispatch import free_checks

LOOP_WALL = "loop-wall.json"  # in a loop's folder: where its time went (``Run.add_wall``)


class Interrupted(Exception):
    """SIGINT/SIGTERM: a checkpoint was written; the message says how to resume."""


class NonFiniteLoss(RuntimeError):
    pass


class DataSource(Protocol):
    def num_batches(self, epoch: int) -> int: ...

    def batch(self, epoch: int, index: int) -> dict[str, torch.Tensor]: ...


@dataclass
class TrainResult:
    step: int
    last_loss: float
    checkpoint: Path | None
    history: list[dict] = field(default_factory=list)


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


def batch_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator a loss function gets for global batch ``index`` of ``epoch`` (a data
    source that draws its own randomness, e.g. MLM masking, takes the same one)."""
    return torch.Generator().manual_seed(hash((seed, epoch, index)) & (2**63 - 1))


@dataclass(frozen=True)
class RunIO:
    """How a run keeps its model in a checkpoint (``save_model(model, folder)``,
    ``load_model(model, folder)``) and where it reports: log lines to ``echo`` and, with
    ``progress`` (None: when stderr is a terminal), a click progress bar on stderr instead."""

    save_model: Callable[[nn.Module, Path], None]
    load_model: Callable[[nn.Module, Path], None] | None = None
    echo: Callable[[str], None] | None = print
    progress: bool | None = None


def stage(batch: dict, device: torch.device) -> dict:
    """A batch's tensors on ``device``: on CUDA copied from pinned memory without blocking the
    host (the copy runs on the stream, ordered before the kernels that read it); elsewhere as
    they are. Other values pass through."""
    if device.type != "cuda":
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    return {
        k: v.pin_memory().to(device, non_blocking=True)
        if isinstance(v, torch.Tensor) and v.device.type == "cpu"
        else v
        for k, v in batch.items()
    }


def batch_tokens(batch: dict) -> int:
    """Real tokens of a host batch (its attention mask's sum; 0 without one)."""
    mask = batch.get("attention_mask")
    return int(mask.sum()) if isinstance(mask, torch.Tensor) else 0


@dataclass
class Position:
    """Where a run is: optimizer steps done, and the next batch's ``(epoch, index)``. The next
    batch may be read (and its copy to the device started) one step ahead (``read_ahead``); the
    position moves only when a batch is taken, so a checkpoint never counts a batch read ahead."""

    step: int = 0
    epoch: int = 0
    index: int = 0
    last: tuple[int, int] = (0, 0)  # the last batch read: (epoch, index)
    ahead: tuple | None = None  # ((epoch, index), staged batch, tokens) read ahead

    def _next_key(self, data: DataSource) -> tuple[int, int]:
        n = data.num_batches(self.epoch)
        if n == 0:
            raise ValueError(f"epoch {self.epoch} has no batches")
        return (self.epoch + 1, 0) if self.index >= n else (self.epoch, self.index)

    def read_ahead(self, data: DataSource, device: torch.device) -> None:
        """Read the next batch and start its copy to ``device`` now (the host work of the next
        step overlaps the device work of this one)."""
        key = self._next_key(data)
        batch = data.batch(*key)
        self.ahead = (key, stage(batch, device), batch_tokens(batch))

    def next_batch(self, data: DataSource, cfg: TrainConfig, rank: int, world: int, device):
        """The next batch (on ``device``), its real-token count and its generator, keyed by the
        global batch number: rank r's i-th batch is batch i * world + r of the epoch (``shard``
        is round-robin), so a DDP run draws the same masks as one process running grad_accum =
        world over the same batches."""
        key = self._next_key(data)
        if self.ahead is None or self.ahead[0] != key:
            self.read_ahead(data, device)
        _, batch, tokens = self.ahead
        self.ahead = None
        self.epoch, self.index = key
        gen = batch_generator(cfg.seed, self.epoch, self.index * world + rank)
        self.last = key
        self.index += 1
        return batch, tokens, gen


class Meter:
    """The loss and token counts since the last record, kept on the device (no host sync until
    a record is made), reduced over ranks when a record is made."""

    def __init__(self, device: torch.device, run_id: str):
        self.device, self.run_id = device, run_id
        self.loss = torch.zeros((), device=device)
        self.tokens = 0  # real tokens, counted on the host batches
        self.steps, self.clock = 0, time.perf_counter()

    def add(self, loss: torch.Tensor, tokens: int, grad_accum: int) -> None:
        self.loss += loss.detach() / grad_accum
        self.tokens += tokens

    def record(self, step: int, epoch: int, lr: float, world: int) -> dict:
        """The mean loss of the steps since the last record (the one sync point), tokens per
        second, then starts over; raises NonFiniteLoss on a non-finite mean."""
        if world > 1:
            tokens = torch.tensor(float(self.tokens), dtype=torch.float64, device=self.device)
            sums = torch.stack([self.loss.double(), tokens])
            dist.all_reduce(sums)
            self.loss.copy_(sums[0] / world)
            self.tokens = float(sums[1].item())
        mean = self.loss.item() / max(1, self.steps)
        if not math.isfinite(mean):
            raise NonFiniteLoss(f"non-finite loss in steps {step - self.steps + 1}-{step}")
        now = time.perf_counter()
        record = {
            "run": self.run_id,
            "time": round(time.time(), 3),
            "step": step,
            "loss": mean,
            "lr": lr,
            "tokens_per_s": float(self.tokens) / max(now - self.clock, 1e-9),
            "epoch": epoch,
        }
        self.loss.zero_()
        self.tokens = 0
        self.steps, self.clock = 0, now
        return record


class Signals:
    """SIGINT / SIGTERM noted while training, acted on at the next log or save point."""

    def __enter__(self) -> Signals:
        self.received = None
        self.previous = {s: signal.signal(s, self._note) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _note(self, signum, _frame) -> None:
        self.received = signum

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def compiled(model: nn.Module, mode: str, device: torch.device, echo) -> nn.Module:
    """``model`` as the step runs it (``TrainConfig.compile``): itself, or a compiled wrapper
    sharing its parameters (saves and the optimizer use the model itself)."""
    if mode == "off":
        return model
    if mode == "graphs" and device.type != "cuda":
        if echo:
            echo(f"compile = 'graphs' needs CUDA (the device is {device.type}): running 'compile'")
        mode = "compile"
    if mode == "graphs":
        return torch.compile(model, mode="reduce-overhead")
    return torch.compile(model)


def group_up() -> bool:
    """Whether a process group is up (torchrun): then the ranks agree at log and save points."""
    return dist.is_available() and dist.is_initialized()


def due(
    cfg: TrainConfig, step: int, received, saved_at: float, device, final: bool = True
) -> tuple[bool, bool, int | None]:
    """(log, save, stopping signal) after ``step``; ``final``: a checkpoint at the last step.
    Under DDP a signal or the save clock may
    reach the ranks at different steps: they agree at log and save points only (already a
    sync), so a DDP run stops or saves at the next such point."""
    log = step % cfg.log_every == 0 or step == cfg.max_steps
    last = step == cfg.max_steps and final
    save = bool(cfg.save_every and step % cfg.save_every == 0 and step < cfg.max_steps) or last
    timed = bool(cfg.save_minutes) and time.perf_counter() - saved_at >= cfg.save_minutes * 60
    if not group_up():
        return log, save or timed, received
    stopping = None
    if log or save:
        flag = torch.tensor([received or 0, int(timed)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        stopping = int(flag[0].item()) or None
        save = save or bool(flag[1].item())
    return log, save, stopping


@dataclass
class Run:
    """What one call of ``train`` holds besides the loop: the model's parts, the optimizer and
    scaler, the position, the checkpoints, the log and the meter."""

    model: nn.Module  # as handed to train (DDP-wrapped under torchrun)
    core: nn.Module  # the model itself
    cfg: TrainConfig
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ckpts: Checkpoints
    log: RunLog
    meter: Meter
    pos: Position
    autocast: dict
    pure: PureBf16 | None = None  # precision = "bf16-pure"
    rank: int = 0
    world: int = 1
    history: list = field(default_factory=list)
    last_loss: float = float("nan")
    grad_norm: torch.Tensor | None = None
    precision: str = "fp32"  # what the steps run in (``precision_name``): records, checkpoints
    eval_seconds: float = 0.0  # in ``evaluate`` at records (rank 0)
    save_seconds: float = 0.0  # writing checkpoints

    @classmethod
    def start(cls, model: nn.Module, cfg: TrainConfig, run_dir: Path, io: RunIO, resume) -> Run:
        """Freeze, build the optimizer, seed, then resume from the latest checkpoint (its
        weights, optimizer and RNG states; a changed training setting is refused by name unless
        ``resume="accept_changes"``) or check that the folder holds no earlier run."""
        rank, world = distributed.rank_world()
        core = unwrap(model)
        device = next(core.parameters()).device
        amp_dtype = resolve_precision(cfg.precision, device, widest_layer(core))
        freeze(core, cfg.freeze, apply=not isinstance(model, nn.parallel.DistributedDataParallel))
        groups = param_groups(model, cfg)
        pure = PureBf16(model) if cfg.precision == "bf16-pure" else None
        if pure is not None:
            groups = master_groups(groups, pure)
        # fused on CUDA and CPU: on this 2-core machine's CPU, 7.8 ms a step for e5-small's 16M
        # trained weights against 22.7 (for-loop) and 43.1 (foreach), issue 55
        opt = torch.optim.AdamW(groups, lr=cfg.lr, fused=device.type in ("cuda", "cpu"))
        scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
        random.seed(cfg.seed)  # a fresh run is a function of the seed (dropout included)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed + rank)
        ckpts = Checkpoints(run_dir, io.save_model, io.load_model, cfg.keep_checkpoints)
        pos = Position()
        if resume:
            state = ckpts.load(core)
            changed = config_changes(state.get("config"), asdict(cfg))
            if changed and resume != "accept_changes":
                raise ValueError(
                    f"{ckpts.latest()} was written with other settings: {'; '.join(changed)}; "
                    "resume with the same settings (or resume='accept_changes')"
                )
            say = io.echo if rank == 0 else None
            try:
                amp_dtype = resumed_precision(cfg.precision, state.get("precision"), amp_dtype, say)
            except ValueError as err:
                raise ValueError(f"{ckpts.latest()}: {err}") from None
            threads = resumed_threads(state.get("threads"), device)
            if threads and say:
                say(threads)
            opt.load_state_dict(state["optimizer"])
            scaler.load_state_dict(state["scaler"])
            pos = Position(state["step"], state["epoch"], state["index"])
            if pure is not None:
                pure.refresh()  # the loaded fp32 weights are the masters
            if io.echo and rank == 0:
                io.echo(f"resumed from {ckpts.latest()} at step {pos.step}")
        else:
            ckpts.check_fresh()
        if pure is not None:
            pure.to_bf16()
        log = RunLog(
            run_dir,
            cfg.max_steps,
            main=rank == 0,
            echo=io.echo,
            progress=io.progress,
            board=cfg.tensorboard,
        )
        log.start(pos.step, bool(resume))
        autocast = dict(
            device_type=device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
        )
        return cls(
            model,
            core,
            cfg,
            opt,
            scaler,
            ckpts,
            log,
            Meter(device, log.run_id),
            pos,
            autocast,
            pure,
            rank,
            world,
            precision=precision_name(cfg.precision, amp_dtype),
        )

    def record(self, evaluate) -> None:
        """A metric record of the steps since the last one (the sync point), with the last
        step's gradient norm before clipping and, when due, the dev scores."""
        pos, cfg = self.pos, self.cfg
        try:
            record = self.meter.record(pos.step, pos.epoch, lr_at(pos.step - 1, cfg), self.world)
        except NonFiniteLoss as err:
            raise NonFiniteLoss(
                f"{err} (last batch: epoch {pos.last[0]}, index {pos.last[1]}); "
                f"{last_good(self.ckpts.run_dir)}"
            ) from None
        self.last_loss = record["loss"]
        record["precision"] = self.precision
        if self.grad_norm is not None:
            norm = float(self.grad_norm)
            record["grad_norm"] = norm if math.isfinite(norm) else None
        due_eval = cfg.eval_every and pos.step % cfg.eval_every == 0
        if evaluate is not None and due_eval and self.rank == 0:
            t0 = time.perf_counter()
            with self.pure.full_precision() if self.pure else contextlib.nullcontext():
                record.update(evaluate(self.core))  # on the fp32 weights
            self.model.train()
            self.eval_seconds += time.perf_counter() - t0
        self.history.append(record)
        self.log.write(record)

    def save(self) -> Path | None:
        """A checkpoint. Every rank checks the weights (they are equal), so all stop before the
        collective save; non-finite weights are never saved."""
        bad = non_finite_parameters(self.core)
        if bad:
            raise NonFiniteLoss(
                f"non-finite weights at step {self.pos.step} ({', '.join(bad[:3])}"
                f"{', ...' if len(bad) > 3 else ''}): not saved as a checkpoint; "
                f"{last_good(self.ckpts.run_dir)}"
            )
        t0, pos = time.perf_counter(), self.pos
        state = {
            "optimizer": self.opt.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": pos.step,
            "epoch": pos.epoch,
            "index": pos.index,
            "config": asdict(self.cfg),
            "precision": self.precision,  # what a resume under "auto" continues in
            "threads": torch.get_num_threads(),  # a resume with another count is told
        }
        with self.pure.full_precision() if self.pure else contextlib.nullcontext():
            path = self.ckpts.save(self.core, pos.step, state)  # fp32 weights
        self.save_seconds += time.perf_counter() - t0
        return path

    def add_wall(self, seconds: float) -> None:
        """``loop-wall.json`` (rank 0): where this folder's loop spent its time, over every run
        of it (a resumed run adds its own): ``training steps`` (the steps, their records and
        reading ahead), ``dev evaluation`` (``evaluate`` at records), ``checkpoints``. The
        stage adds what the loop does not cover to ``run.json``'s ``wall``."""
        if self.rank != 0:
            return
        path = self.ckpts.run_dir / LOOP_WALL
        try:
            wall = read_json(path) if path.is_file() else {}
        except ValueError:
            wall = {}  # a damaged record: this run's own time, not another error
        parts = {
            "training steps": seconds - self.eval_seconds - self.save_seconds,
            "dev evaluation": self.eval_seconds,
            "checkpoints": self.save_seconds,
        }
        earlier = {k: v for k, v in wall.items() if type(v) in (int, float)}
        wall = {k: round(earlier.get(k, 0.0) + v, 3) for k, v in parts.items()}
        atomic_write_text(path, json.dumps(wall, indent=2) + "\n")


def optimizer_step(run: Run, params: list[torch.Tensor], clip: float) -> None:
    """One optimizer step on the accumulated gradients: to the fp32 masters (bf16-pure),
    clipped to ``clip`` (0: not clipped; the norm kept in ``run.grad_norm``), through the
    scaler, back to the model, gradients cleared."""
    opt, scaler = run.opt, run.scaler
    if run.pure is not None:
        run.pure.grads_to_masters()
    if clip > 0:
        scaler.unscale_(opt)
        run.grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
    scaler.step(opt)
    scaler.update()
    if run.pure is not None:
        run.pure.masters_to_model()
    opt.zero_grad(set_to_none=True)


def train(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, dict, torch.Generator], torch.Tensor],
    data: DataSource,
    cfg: TrainConfig,
    run_dir: str | Path,
    io: RunIO,
    *,
    resume: bool | Literal["accept_changes"] = False,
    evaluate: Callable[[nn.Module], dict] | None = None,
) -> TrainResult:
    """Train ``model`` in place (see the module docstring): ``cfg.max_steps`` optimizer steps
    over ``data``, checkpoints in ``run_dir``, reporting through ``io``; ``evaluate(model)``
    adds dev scores to the records every ``cfg.eval_every`` steps."""
    if cfg.max_steps < 1:
        raise ValueError("TrainConfig.max_steps is 0: resolve epochs first (cfg.with_steps)")
    run_dir = Path(run_dir)
    run = Run.start(model, cfg, run_dir, io, resume)
    pos, opt, scaler, meter, device = run.pos, run.opt, run.scaler, run.meter, run.meter.device
    params = [p for group in opt.param_groups for p in group["params"]]
    ddp = isinstance(model, nn.parallel.DistributedDataParallel)
    step_model = compiled(model, cfg.compile, device, io.echo if run.rank == 0 else None)
    kill, last_ckpt, saved_at = faults.die_after(run_dir), None, time.perf_counter()
    started = saved_at
    with Signals() as signals:
        try:
            model.train()
            while pos.step < cfg.max_steps:
                for group in opt.param_groups:
                    group["lr"] = lr_at(pos.step, cfg) * group.get("lr_scale", 1.0)
                for micro in range(cfg.grad_accum):
                    batch, tokens, gen = pos.next_batch(data, cfg, run.rank, run.world, device)
                    # DDP all-reduces gradients in backward: only the last micro-batch of an
                    # accumulation needs it, the others accumulate locally (no_sync)
                    last = micro == cfg.grad_accum - 1
                    sync = contextlib.nullcontext() if last or not ddp else model.no_sync()
                    with sync, torch.autocast(**run.autocast):
                        loss = loss_fn(step_model, batch, gen)
                        scaler.scale(loss / cfg.grad_accum).backward()
                    meter.add(loss, tokens, cfg.grad_accum)
                    # CPU: checking is free; CUDA and DDP: at records (a sync), before any save
                    if free_checks(device) and not group_up() and not torch.isfinite(loss):
                        raise NonFiniteLoss(
                            f"non-finite loss {float(loss.detach())} at step {pos.step + 1}, "
                            f"epoch {pos.epoch}, batch {pos.last[1]}; {last_good(run_dir)}"
                        )
                if pos.step + 1 < cfg.max_steps:  # the next step's batch, while this one runs
                    pos.read_ahead(data, device)
                optimizer_step(run, params, cfg.clip)
                pos.step += 1
                meter.steps += 1
                kill(pos.step)  # fault injection (tests only)
                run.log.advance()
                log_now, save_now, stopping = due(
                    cfg, pos.step, signals.received, saved_at, device, cfg.final_checkpoint
                )
                if log_now or save_now or stopping is not None:  # a save or signal also logs
                    run.record(evaluate)
                if save_now or stopping is not None:
                    last_ckpt, saved_at = run.save(), time.perf_counter()
                if stopping is not None:
                    raise Interrupted(
                        f"{signal.Signals(stopping).name} received: checkpoint written at step "
                        f"{pos.step} in {run_dir}; continue with the same command plus --resume"
                    )
        finally:
            run.log.close()
            if run.pure is not None:
                run.pure.to_fp32()  # the caller gets the fp32 masters
            with contextlib.suppress(OSError):  # a time record never hides why a run stopped
                run.add_wall(time.perf_counter() - started)
    return TrainResult(pos.step, run.last_loss, last_ckpt, run.history)
