"""A round's two training steps: the soft step (a student from the Base Model, or from its
teacher, with fresh voters, fitted to the teacher's probabilities on U_tgt) and the hard step
(the student continues with cross-entropy on D_keep + the pseudo labels, or is kept as it is
when there is nothing to fit or the guard skips it), each through the training loop."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from xlt_engine.data.packed import STORE_FORMAT, StoreWriter, open_store
from xlt_engine.data.task import Encoded
from xlt_engine.engine.method.selftrain.context import SelftrainContext
from xlt_engine.engine.method.selftrain.counts import distribution_chunked, teacher_names
from xlt_engine.engine.method.selftrain.store import SoftBatches, StoreBatches, write_with_targets
from xlt_engine.engine.train import distributed
from xlt_engine.engine.train.checkpoints import latest_checkpoint
from xlt_engine.engine.train.inference import forward_batch
from xlt_engine.engine.train.loop import RunIO, train
from xlt_engine.engine.train.optim import prepare
from xlt_engine.engine.train.progress import format_loss
from xlt_engine.fileio import atomic_folder
from xlt_engine.inputs import read_json
from xlt_engine.kernels import soft_label_kl, soft_label_mse
from xlt_engine.model.checkpoint import load_encoder
from xlt_engine.model.heads import VotersModule
from xlt_engine.model.task import TaskModel, load_task_model, new_task_model, save_task_model


def encoder_digest(model: nn.Module) -> str:
    """sha256 over an encoder's parameters and buffers (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().data if t.numel() else b"")  # no extra copy
    return h.hexdigest()


def train_step(ctx: SelftrainContext, model, loss_fn, data, train_cfg, folder: Path):
    """One soft or hard step through the loop (resumed from its checkpoint, if any)."""
    t0 = time.perf_counter()
    result = train(
        prepare(model, train_cfg, ctx.device, ctx.frozen(model)),
        loss_fn,
        data,
        train_cfg.with_steps(data.num_batches(0)),
        folder,
        RunIO(
            lambda m, f: save_task_model(m, f, ctx.tok),
            lambda m, f: m.load_state_dict(load_task_model(f, device=ctx.device).state_dict()),
            echo=ctx.echo,
            progress=ctx.progress,
        ),
        resume=latest_checkpoint(folder) is not None,
    )
    if ctx.main:
        save_task_model(model, folder / "model", ctx.tok)
    distributed.barrier()
    rates = [h["tokens_per_s"] for h in result.history]
    return result, time.perf_counter() - t0, (sum(rates) / len(rates) if rates else None)


def soft_step(ctx: SelftrainContext, r: int, probs: np.ndarray, teachers: list[Path]) -> TaskModel:
    """S = the Base Model's encoder (``student_init = "base"``) or the first teacher's
    (``"teacher"``) + fresh voters, trained to fit ``probs`` (``soft_loss``)."""
    folder = ctx.out / f"round-{r}" / "soft"
    if distributed.rank0_view((folder / "model").is_dir()):
        return load_task_model(folder / "model", device=ctx.device)
    cfg, device = ctx.cfg, ctx.device
    start = cfg.base_model if cfg.student_init == "base" else str(teachers[0])
    encoder = load_encoder(start, dtype=torch.float32, device=device)
    digest = encoder_digest(encoder)
    torch.manual_seed(ctx.seed + 1000 * r)  # the fresh voters: a function of seed, round
    try:
        student = new_task_model(
            encoder,
            ctx.kind,
            ctx.labels,
            ctx.num_voters,
            ctx.widths,
            ctx.dropout,
            ctx.representation,
        )
    except ValueError as err:
        raise ValueError(f"{start}: {err}") from None
    data = SoftBatches(
        ctx.tgt,
        probs,
        ctx.tok.pad_id,
        cfg.batch_size,
        cfg.max_tokens,
        ctx.seed,
        cfg.pad_for(device),
    )

    fit = soft_label_kl if cfg.soft_loss == "kl" else soft_label_mse

    def soft_loss(m, batch, gen):
        return fit(forward_batch(m, batch, device), batch["probs"])  # staged by the loop

    res, secs, toks = train_step(ctx, student, soft_loss, data, cfg.soft, folder)
    ctx.log(
        {
            "round": r,
            "step": "soft",
            "student_init": cfg.student_init,
            "student_from": start,
            "student_digest": digest,
            "base_model": cfg.base_model,
            "teacher": teacher_names(teachers),
            "steps": res.step,
            "loss": res.last_loss,
            "seconds": secs,
            "tokens_per_s": toks,
        }
    )
    ctx.say(f"round {r}: soft step done, loss {format_loss(res.last_loss)} ({secs:.1f} s)")
    return student


def hard_data(
    ctx: SelftrainContext, r: int, source_keep: np.ndarray, pseudo: np.ndarray
) -> tuple[Encoded, int]:
    """D_keep + P as a packed store (``round-<r>/hard-data``, written by rank 0 chunk by
    chunk): the source items with a kept row (gold labels), then the target items with a
    pseudo label; and how many items are the source's."""
    folder = ctx.out / f"round-{r}" / "hard-data"
    if ctx.main and not (folder / "meta.json").is_file():
        with atomic_folder(folder) as tmp:
            writer = StoreWriter(tmp, ctx.kind)
            n_src = write_with_targets(writer, ctx.src, np.where(source_keep, ctx.gold, -1))
            write_with_targets(writer, ctx.tgt, pseudo)
            pairs = ctx.src.token_type_ids is not None or ctx.tgt.token_type_ids is not None
            meta = {"store_format": STORE_FORMAT, "source_items": n_src, "pairs": int(pairs)}
            writer.close(meta)
    distributed.barrier()
    meta = read_json(folder / "meta.json")
    return open_store(folder), int(meta["source_items"])


def hard_step(
    ctx: SelftrainContext,
    r: int,
    student: TaskModel,
    source_keep: np.ndarray,
    pseudo: np.ndarray,
    alpha: float,
    skip: str | None = None,
) -> TaskModel:
    """S continues with cross-entropy on D_keep + P (``skip``: why it does not, ``guard``'s)."""
    folder = ctx.out / f"round-{r}" / "hard"
    if distributed.rank0_view((folder / "model").is_dir()):  # skip_hard writes it at once
        return load_task_model(folder / "model", device=ctx.device)
    cfg, device = ctx.cfg, ctx.device
    if skip is not None:
        return skip_hard(ctx, r, student, skip)
    hard, n_src = hard_data(ctx, r, source_keep, pseudo)
    rows = np.asarray(hard.targets.offsets)
    src_y = np.asarray(hard.targets.flat[: rows[n_src]])
    tgt_dist = distribution_chunked(hard.targets.flat, int(rows[n_src]), int(rows[-1]), ctx.labels)
    if len(hard) == 0:  # a student too unsure for the rule: nothing to fit, S stays as it is
        why = (
            f"no training data: the source filter removed every source row and no target "
            f"row passed alpha = {alpha}"
        )
        return skip_hard(ctx, r, student, why)
    data = StoreBatches(
        hard, ctx.tok.pad_id, cfg.batch_size, cfg.max_tokens, ctx.seed, cfg.pad_for(device)
    )

    def hard_loss(m, batch, gen):
        return VotersModule.loss(forward_batch(m, batch, device), batch["targets"])

    res, secs, toks = train_step(ctx, student, hard_loss, data, cfg.hard, folder)
    ctx.log(
        {
            "round": r,
            "step": "hard",
            "items": len(hard),
            "source_items": n_src,
            "source_rows": int((src_y >= 0).sum()),
            "target_items": len(hard) - n_src,
            "target_rows": sum(tgt_dist.values()),
            "target_distribution": tgt_dist,
            "steps": res.step,
            "loss": res.last_loss,
            "seconds": secs,
            "tokens_per_s": toks,
        }
    )
    ctx.say(
        f"round {r}: hard step on {len(hard)} items done, loss {format_loss(res.last_loss)} "
        f"({secs:.1f} s)"
    )
    return student


def skip_hard(ctx: SelftrainContext, r: int, student: TaskModel, why: str) -> TaskModel:
    """No hard step in round ``r``: the soft student is the round's result (hard/model)."""
    folder = ctx.out / f"round-{r}" / "hard"
    if ctx.main:
        save_task_model(student, folder / "model", ctx.tok)
    distributed.barrier()
    ctx.log({"round": r, "step": "hard", "items": 0, "steps": 0, "skipped": why})
    ctx.warn(f"round {r}: hard step skipped: {why}; the student stays the soft one")
    return student
