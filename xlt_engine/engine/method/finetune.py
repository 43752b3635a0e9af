"""Stage ``finetune``: the Base Model (or mBERT) + a fresh ``VotersModule`` trained with
cross-entropy on the source language's labeled data, averaged over voters; the embeddings and
the bottom ``freeze_layers`` layers stay fixed (``FreezeSettings``). Sequence
classification (CLS-10, MARC, XNLI pairs, JSONL/TSV) classifies [CLS]; token classification
(CoNLL NER) classifies each word's first sub-token, long sentences in windows.

Paper 003's options (sequence tasks): ``label_alignment`` adds the supervised contrastive loss
of each batch's sentence representations; ``parallel_file`` adds its translations to the data
(translate-train); ``semantic_alignment`` then runs a second phase on the parallel items alone
(``method.adaptation``), with its own checkpoints in ``out/semantic-alignment/``.

Output in ``out``: ``model/`` (a task model folder, see ``model.task``), ``dev.json`` (the
dev-set score, when a dev file is given), ``metrics.jsonl`` and the loop's checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from xlt_engine.data.parallel import read_parallel
from xlt_engine.data.task import (
    Encoded,
    TaskBatches,
    concat_encoded,
    encode,
    label_set,
    read_task_file,
    task_kind,
)
from xlt_engine.data.tokenizer import load_tokenizer
from xlt_engine.engine.method.adaptation import (
    SABatches,
    sa_encoded,
    semantic_alignment_loss,
    translations_data,
)
from xlt_engine.engine.method.settings import (
    FinetuneSettings,
    FreezeSettings,
    HeadSettings,
    TaskSettings,
    check_limit,
)
from xlt_engine.engine.train import distributed
from xlt_engine.engine.train.checkpoints import latest_checkpoint
from xlt_engine.engine.train.distributed import rank_world
from xlt_engine.engine.train.inference import evaluate_model, forward_batch
from xlt_engine.engine.train.loop import RunIO, TrainResult, train
from xlt_engine.engine.train.optim import prepare
from xlt_engine.fileio import atomic_write_text
from xlt_engine.kernels import supcon_loss
from xlt_engine.model.checkpoint import load_encoder
from xlt_engine.model.heads import VotersModule
from xlt_engine.model.task import load_task_model, new_task_model, save_task_model


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig(FinetuneSettings, FreezeSettings, HeadSettings, TaskSettings):
    """Fine-tuning's settings (``FinetuneSettings``), what it freezes (``FreezeSettings``: the
    embeddings and the bottom 3 layers by default, as the paper) and the head's
    (``HeadSettings``: head, voters, voter_widths, voter_dropout, representation) plus what this
    run reads and where it writes."""

    model: str  # Base Model or mBERT folder (Hugging Face layout, with its tokenizer files)
    train_file: str  # labeled source-language data
    out: str  # run folder; the fine-tuned model goes to out/model
    more_train_files: tuple[str, ...] = ()  # other sources' labeled data: trained on the union
    dev_file: str | None = None
    labels: tuple[str, ...] | None = None  # label order; None: sorted from the train file
    max_train: int | None = None  # examples sampled from train_file (train.seed), None: all
    max_dev: int | None = None  # ... and from dev_file

    def __post_init__(self):
        FinetuneSettings.__post_init__(self)
        FreezeSettings.__post_init__(self)
        HeadSettings.__post_init__(self)
        TaskSettings.__post_init__(self)
        check_limit("max_train", self.max_train)
        check_limit("max_dev", self.max_dev)
        for name in ("train_file", "dev_file"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{name}: {path}: no such file")
        for path in self.more_train_files:
            if not Path(path).is_file():
                raise ValueError(f"more_train_files: {path}: no such file")
        if not Path(self.model).is_dir():
            raise ValueError(f"model: {self.model}: no such folder")
        self.check_kind(task_kind(self.format))
        if self.parallel_file is not None and not Path(self.parallel_file).is_file():
            raise ValueError(f"parallel_file: {self.parallel_file}: no such file")


RARE_LABEL = 3  # fewer occurrences than this: most likely a typo (a B-XYZ became a class)


def report_labels(data, echo) -> None:
    """Print the training labels with their counts; warn about any seen fewer than
    ``RARE_LABEL`` times."""
    counts = data.label_counts()
    if echo:
        echo(f"labels of {data.path}: " + ", ".join(f"{k} {n:,}" for k, n in counts.items()))
    for label, n in counts.items():
        if n < RARE_LABEL:
            warnings.warn(
                f"{data.path}: label {label!r} occurs {n} time(s) only: a typo? It becomes a "
                "class of the model",
                stacklevel=2,
            )


def finetune_loss(cfg: FinetuneSettings, device: torch.device):
    """The training loss: the voters' mean cross-entropy, plus ``la_weight`` x the supervised
    contrastive loss of the batch's sentence representations (``label_alignment``)."""

    def loss_fn(m: nn.Module, batch: dict, gen: torch.Generator) -> torch.Tensor:
        targets = batch["targets"]  # the batch is on the device (the loop's stage)
        if not cfg.label_alignment:
            return VotersModule.loss(forward_batch(m, batch, device), targets)
        logits, reps = forward_batch(m, batch, device, features=True)
        la = supcon_loss(reps, targets, cfg.la_temperature)
        return VotersModule.loss(logits, targets) + cfg.la_weight * la

    return loss_fn


SA_FOLDER = "semantic-alignment"  # phase 2's checkpoints and metrics, inside the stage folder


def semantic_alignment_step(cfg: FinetuneSettings, device: torch.device):
    """Phase 2's loss: cross-entropy over every row of the groups plus ``sa_weight`` x the
    Semantic Alignment loss (``adaptation.semantic_alignment_loss``)."""

    def loss_fn(m: nn.Module, batch: dict, gen: torch.Generator) -> torch.Tensor:
        targets = batch["targets"]  # the batch is on the device (the loop's stage)
        logits, reps = forward_batch(m, batch, device, features=True)
        group = [batch[k] for k in ("sa_anchor", "sa_member", "sa_positive")]
        sa = semantic_alignment_loss(reps, *group, cfg.sa_temperature)
        return VotersModule.loss(logits, targets) + cfg.sa_weight * sa

    return loss_fn


@dataclass
class FinetuneResult:
    model: Path
    dev: dict | None
    train: TrainResult


@dataclass
class FinetuneData:
    """What fine-tuning reads, encoded once: the training parts (each file's ``max_train``
    examples, then paper 003's translations), their labels, the dev data (unknown dev labels
    are an error before training) and the parallel items."""

    train: object  # the first training file's TaskData (its kind is the task's)
    labels: list[str]
    enc: Encoded
    dev: object | None
    dev_enc: Encoded | None
    items: list | None


def finetune_data(cfg: FinetuneConfig, tok, echo) -> FinetuneData:
    seed = cfg.train.seed
    parts = [  # max_train examples of each file
        read_task_file(path, cfg.format, False, cfg.max_train, seed, cfg.encoding)
        for path in (cfg.train_file, *cfg.more_train_files)
    ]
    for part in parts:
        report_labels(part, echo)
    items = read_parallel(cfg.parallel_file) if cfg.parallel_file else None
    if items is not None:  # phase 1 trains on the translations too (translate-train)
        parts.append(translations_data(items, Path(cfg.parallel_file)))
    train_data = parts[0]
    labels = list(cfg.labels) if cfg.labels else label_set(parts)
    if len(labels) < 2:
        raise ValueError(f"{cfg.train_file}: needs at least 2 labels, found {labels}")
    dev_data = None
    if cfg.dev_file:
        dev_data = read_task_file(cfg.dev_file, cfg.format, False, cfg.max_dev, seed, cfg.encoding)
    enc = concat_encoded([encode(part, tok, labels, cfg.max_len) for part in parts])
    dev_enc = None  # encoded once: unknown dev labels are an error before training
    if dev_data is not None:
        dev_enc = encode(dev_data, tok, labels, cfg.max_len)
    return FinetuneData(train_data, labels, enc, dev_data, dev_enc, items)


def semantic_alignment_phase(
    cfg: FinetuneConfig, model, data: FinetuneData, tok, frozen, io, evaluate
):
    """Phase 2: CE + SA on the parallel items at ``sa_lr_scale`` x the learning rate, its
    checkpoints in ``out/semantic-alignment``."""
    out, device = Path(cfg.out), next(model.parameters()).device
    enc_sa, source_labels, rows = sa_encoded(
        data.items, Path(cfg.parallel_file), tok, data.labels, cfg.max_len
    )
    group = 1 + 2 * max(len(r) for r in rows)
    sa_data = SABatches(
        enc_sa, source_labels, rows, tok.pad_id, cfg.batch_size // group, cfg.train.seed
    )
    sa_train = dataclasses.replace(
        cfg.train, lr=cfg.train.lr * cfg.sa_lr_scale, epochs=cfg.sa_epochs, max_steps=0
    )
    return train(
        prepare(model, sa_train, device, frozen),
        semantic_alignment_step(cfg, device),
        sa_data,
        sa_train.with_steps(sa_data.num_batches(0)),
        out / SA_FOLDER,
        io,
        resume=latest_checkpoint(out / SA_FOLDER) is not None,
        evaluate=evaluate,
    )


def run_finetune(
    cfg: FinetuneConfig, resume: bool = False, echo=print, progress=None
) -> FinetuneResult:
    out = Path(cfg.out)
    device = distributed.init(cfg.device)
    rank, _ = rank_world()
    tok = load_tokenizer(cfg.model)
    fd = finetune_data(cfg, tok, echo if rank == 0 else None)
    train_data, labels, enc, dev_data, dev_enc = fd.train, fd.labels, fd.enc, fd.dev, fd.dev_enc
    encoder = load_encoder(cfg.model, dtype=torch.float32, device=device)
    torch.manual_seed(cfg.train.seed)  # the fresh voters are a function of the seed
    try:
        model = new_task_model(
            encoder,
            train_data.kind,
            labels,
            *cfg.voter_shape(),
            cfg.voter_dropout,
            cfg.representation,
        )
    except ValueError as err:
        raise ValueError(f"{cfg.model}: {err}") from None
    data = TaskBatches(
        enc, tok.pad_id, cfg.batch_size, cfg.max_tokens, cfg.train.seed, cfg.pad_for(device)
    )

    loss_fn = finetune_loss(cfg, device)

    def save(m, folder):
        save_task_model(m, folder, tok)

    def load(m, folder):
        m.load_state_dict(load_task_model(folder, device=device).state_dict())

    evaluate = None
    if dev_data is not None:

        def evaluate(m):
            s = evaluate_model(m, dev_data, tok, cfg.max_len, device, cfg.eval_max_tokens, dev_enc)
            return {"dev_" + s["metric"]: s["score"]}

    frozen = cfg.frozen_patterns(len(encoder.layers))
    io = RunIO(save, load, echo=echo, progress=progress)
    # phase 1 ends with a checkpoint when Semantic Alignment follows: a resume of phase 2
    # passes through phase 1, which must find itself finished
    phase1 = (
        dataclasses.replace(cfg.train, final_checkpoint=True)
        if cfg.semantic_alignment
        else cfg.train
    )
    result = train(
        prepare(model, cfg.train, device, frozen),
        loss_fn,
        data,
        phase1.with_steps(data.num_batches(0)),
        out,
        io,
        resume=resume,
        evaluate=evaluate,
    )
    if cfg.semantic_alignment:  # phase 2: CE + SA on the parallel items, a smaller lr
        result = semantic_alignment_phase(cfg, model, fd, tok, frozen, io, evaluate)
    dev = None
    if rank == 0:
        if dev_data is not None:
            dev = evaluate_model(
                model, dev_data, tok, cfg.max_len, device, cfg.eval_max_tokens, dev_enc
            )
            dev["file"] = str(cfg.dev_file)
            atomic_write_text(out / "dev.json", json.dumps(dev, indent=2) + "\n")
            if echo:
                echo(f"dev {dev['metric']} {dev['score']:.4f} ({cfg.dev_file})")
        # last: model/ marks the stage finished, so it never stands without dev.json
        save_task_model(model, out / "model", tok)
    distributed.barrier()
    return FinetuneResult(out / "model", dev, result)
