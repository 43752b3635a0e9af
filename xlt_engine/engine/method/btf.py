"""Stage ``btf``: Bilingual Task Fitting, continued MLM on task-related source and target text.

Each text file (one per language) is tokenised once into a ``TokenCache``, cut into windows of
``max_len``; every epoch mixes the languages by ``resample`` (equal shares by default), batches
them by length and shards the batches by rank. Masking (``MlmMasker``) returns only the masked
positions; only those rows go through the MLM head transform and ``fused_mlm_loss``. The
embeddings (and so the tied decoder weight) and the bottom ``freeze_layers`` encoder layers are
frozen (``FreezeSettings``), as in fine-tuning and self-training. With ``head_warmup_epochs``
a first phase trains the MLM head alone (every encoder parameter frozen, ``head_warmup_lr``; its
checkpoints in ``out/head-warmup``): for a checkpoint with no MLM head. Output: the Base Model in
Hugging Face layout (``out/base-model``), loadable by transformers' ``BertForMaskedLM``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from xlt_engine.data.batching import length_batches, length_limit, pad_batch, resample, shard
from xlt_engine.data.cache import TokenCache
from xlt_engine.data.masking import IGNORE, MlmMasker
from xlt_engine.data.tokenizer import WordPieceTokenizer, load_tokenizer
from xlt_engine.engine.method.settings import BtfSettings, FreezeSettings, StageSettings
from xlt_engine.engine.train import distributed
from xlt_engine.engine.train.checkpoints import latest_checkpoint
from xlt_engine.engine.train.distributed import rank_world
from xlt_engine.engine.train.loop import RunIO, TrainResult, batch_generator, train
from xlt_engine.engine.train.optim import prepare
from xlt_engine.kernels import fused_mlm_loss
from xlt_engine.model import BertForMLM, load_pretrained, plan_checkpoint, save_pretrained


@dataclass(frozen=True, kw_only=True)
class BtfConfig(BtfSettings, FreezeSettings, StageSettings):
    """btf's settings (``BtfSettings``: train, batch, masking; ``FreezeSettings``) plus what
    this run reads and where it writes."""

    model: str  # Hugging Face layout folder (mBERT, or `xlt-engine init` output)
    texts: tuple[str, ...]  # plain-text files, one per language
    out: str  # run folder; the Base Model goes to out/base-model
    shares: tuple[float, ...] | None = None  # per text file; None: equal
    max_predictions: int | None = None
    cache_dir: str | None = None  # default: out/cache

    def __post_init__(self):
        BtfSettings.__post_init__(self)
        FreezeSettings.__post_init__(self)
        StageSettings.__post_init__(self)
        if not self.texts:
            raise ValueError("texts: give at least one text file")
        for t in self.texts:
            if not Path(t).is_file():
                raise ValueError(f"texts: {t}: no such file")
        if not Path(self.model).exists():
            raise ValueError(f"model: {self.model}: no such folder")
        if self.shares is not None and len(self.shares) != len(self.texts):
            raise ValueError(f"shares: {len(self.shares)} values for {len(self.texts)} texts")


HEAD_WARMUP_FOLDER = "head-warmup"  # the head-only phase's checkpoints and metrics

MLM_ROW_MULTIPLE = 64  # masked rows per batch padded to a multiple of this with ignored rows
# (position 0, label -100): the loss is unchanged, and the MLM head's and fused loss's GEMMs see
# few row counts


def pad_rows(positions: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked rows padded to a multiple of ``MLM_ROW_MULTIPLE``: position 0, label ignored."""
    extra = -len(labels) % MLM_ROW_MULTIPLE
    return (
        torch.cat([positions, positions.new_zeros(extra)]),
        torch.cat([labels, labels.new_full((extra,), IGNORE)]),
    )


class MlmData:
    """Windows of several token caches, resampled per epoch into length-bucketed batches, masked
    on the host (``masker``, drawing from the loop's generator of the batch: ``batch_generator``)
    so that the loop copies a finished batch to the device one step ahead."""

    def __init__(
        self,
        caches: list[TokenCache],
        tok: WordPieceTokenizer,
        cfg: BtfConfig,
        masker: MlmMasker,
        pad_multiple: int,
    ):
        self.caches, self.tok, self.cfg, self.masker = caches, tok, cfg, masker
        self.pad_multiple = pad_multiple  # cfg.pad_for(the device)
        self.rank, self.world = rank_world()
        self.windows = [c.windows(cfg.max_len) for c in caches]
        self.limit = length_limit(
            np.concatenate([w[:, 2] - w[:, 1] + 2 for w in self.windows])  # + [CLS], [SEP]
        )
        self._epoch: tuple[int, list, np.ndarray] | None = None

    def _plan(self, epoch: int):
        if self._epoch is None or self._epoch[0] != epoch:
            cfg = self.cfg
            mix = resample(
                [len(w) for w in self.windows], cfg.shares, cfg.epoch_size, cfg.train.seed, epoch
            )
            lengths = np.empty(len(mix), dtype=np.int64)
            for c, w in enumerate(self.windows):
                sel = mix[:, 0] == c
                lengths[sel] = w[mix[sel, 1], 2] - w[mix[sel, 1], 1] + 2  # + [CLS], [SEP]
            batches = length_batches(
                lengths,
                cfg.batch_size,
                cfg.max_tokens,
                self.pad_multiple,
                seed=cfg.train.seed,
                epoch=epoch,
            )
            batches = shard(batches, self.rank, self.world)
            self._epoch = (epoch, batches, mix)
        return self._epoch

    def num_batches(self, epoch: int) -> int:
        return len(self._plan(epoch)[1])

    def batch(self, epoch: int, index: int) -> dict[str, torch.Tensor]:
        _, batches, mix = self._plan(epoch)
        seqs = []
        for c, i in mix[batches[index]]:
            entry, start, end = self.windows[c][i]
            seqs.append(self.caches[c].window(entry, start, end, self.tok.cls_id, self.tok.sep_id))
        batch = pad_batch(seqs, self.tok.pad_id, self.pad_multiple, limit=self.limit)
        gen = batch_generator(self.cfg.train.seed, epoch, index * self.world + self.rank)
        masked = self.masker(batch["input_ids"], batch["attention_mask"], gen)
        positions, labels = masked.positions, masked.labels
        if self.masker.max_predictions is None:  # (with it the row count is fixed already)
            positions, labels = pad_rows(positions, labels)
        return {
            "input_ids": masked.input_ids,
            "attention_mask": batch["attention_mask"],
            "positions": positions,
            "labels": labels,
        }


class MlmObjective(nn.Module):
    """The MLM loss as a module, so that DDP sees a ``forward`` call: masked rows only, through
    the head transform, into ``fused_mlm_loss`` with the tied decoder weight."""

    def __init__(self, model: BertForMLM):
        super().__init__()
        # BertForMLM's own submodules, so parameter names (freeze patterns, DDP) are the
        # model's: encoder.*, head.*
        self.encoder, self.head = model.encoder, model.head
        self.__dict__["model"] = model  # not registered twice

    def idle_parameters(self) -> list[str]:
        return self.model.idle_parameters()

    def forward(self, input_ids, positions, attention_mask, labels) -> torch.Tensor:
        m = self.model
        h = m.masked_hidden(input_ids, positions, attention_mask)  # (N, H): masked rows only
        return fused_mlm_loss(h, m.decoder_weight, m.head.bias, labels)


def fresh_head_notice(model: str | Path) -> str:
    """What btf says when it starts from a checkpoint with no MLM head and no head warm-up."""
    return (
        f"btf: {model} has no MLM head: btf trains a fresh one from its first step, and that "
        "head's first gradients move the encoder (on CLS books Japanese with e5-small they cost "
        "the classifier its reading of the target). btf.head_warmup_epochs trains the head "
        "alone first; lab/results/cls_btf_cause_20261128 has the runs."
    )


def run_btf(cfg: BtfConfig, resume: bool = False, echo=print, progress=None) -> TrainResult:
    out = Path(cfg.out)
    device = distributed.init(cfg.device)
    rank, _ = rank_world()
    tok = load_tokenizer(cfg.model)
    if echo and rank == 0 and cfg.head_warmup_epochs == 0:
        fresh = plan_checkpoint(cfg.model, keep_tokenizer=False).initialised
        if fresh:
            echo(fresh_head_notice(cfg.model))
    model = load_pretrained(cfg.model, dtype=torch.float32, device=device)
    frozen_patterns = cfg.frozen_patterns(len(model.encoder.layers))
    cache_root = Path(cfg.cache_dir) if cfg.cache_dir else out / "cache"
    if rank != 0:  # rank 0 tokenises; the others open its caches
        distributed.barrier()
    caches = [TokenCache.build(t, tok, cache_root) for t in cfg.texts]
    if rank == 0:
        distributed.barrier()
    masker = MlmMasker.from_tokenizer(
        tok,
        probability=cfg.mlm_probability,
        whole_word=cfg.whole_word,
        max_predictions=cfg.max_predictions,
    )
    data = MlmData(caches, tok, cfg, masker, cfg.pad_for(device))

    def loss_fn(objective: nn.Module, batch: dict, gen: torch.Generator) -> torch.Tensor:
        keys = ("input_ids", "positions", "attention_mask", "labels")
        return objective(*(batch[k] for k in keys))  # on the device already (the loop's stage)

    def save(objective, folder):
        save_pretrained(objective.model, folder, tok)

    def load(objective, folder):
        state = load_pretrained(folder, dtype=torch.float32, device=device).state_dict()
        objective.model.load_state_dict(state)

    objective = MlmObjective(model)
    io = RunIO(save, load, echo=echo, progress=progress)
    if cfg.head_warmup_epochs > 0:
        warm = dataclasses.replace(
            cfg.train,
            epochs=cfg.head_warmup_epochs,
            lr=cfg.head_warmup_lr,
            max_steps=0,
            final_checkpoint=True,  # a resume of the main phase passes through this one,
            # which must find itself finished
        )
        train(
            prepare(objective, warm, device, (r"encoder\.",)),
            loss_fn,
            data,
            warm.with_steps(data.num_batches(0)),
            out / HEAD_WARMUP_FOLDER,
            io,
            resume=resume,
        )
        # a run stopped in the head phase resumes there; the main phase then starts afresh
        resume = resume and latest_checkpoint(out) is not None
    train_cfg = cfg.train.with_steps(data.num_batches(0))
    result = train(
        prepare(objective, train_cfg, device, frozen_patterns),
        loss_fn,
        data,
        train_cfg,
        out,
        io,
        resume=resume,
    )
    if rank == 0:
        save_pretrained(model, out / "base-model", tok)
    distributed.barrier()
    return result
