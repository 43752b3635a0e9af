"""The method's settings, each written once: one frozen dataclass per stage (``BtfSettings``,
``FinetuneSettings``, ``CotrainSettings``; ``SelftrainSettings`` in ``selftrain_settings``, apart
because it holds the pseudo-label rule) and the parts they share
(``HeadSettings``, ``FreezeSettings``, ``InputSettings``, ``StageSettings``, ``TaskSettings``,
``BatchSettings``). A library caller's stage config (``BtfConfig``, ``FinetuneConfig``...) and
the TOML sections of an experiment (``engine.experiment.config``) both derive from them, so a
default or a check lives here only. Each class checks its values in ``__post_init__`` and raises
``ValueError`` naming the setting.
"""

from __future__ import annotations

import codecs
import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Literal

import torch

from xlt_engine.data.batching import PAD_MULTIPLE
from xlt_engine.data.formats import Format, get_format
from xlt_engine.engine.train.config import MAX_EPOCHS, TrainConfig
from xlt_engine.engine.train.inference import EVAL_MAX_TOKENS
from xlt_engine.model.heads import LINEAR


def check_choices(obj) -> None:
    """Every ``Literal``-typed field of a config dataclass holds one of its choices."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        tp = hints[f.name]
        if typing.get_origin(tp) is Literal and getattr(obj, f.name) not in typing.get_args(tp):
            choices = ", ".join(map(str, typing.get_args(tp)))
            raise ValueError(f"{f.name} must be one of {choices}, got {getattr(obj, f.name)!r}")


def check_encoding(encoding: str | None) -> None:
    if encoding is not None:
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise ValueError(f"encoding: unknown encoding {encoding!r}") from None


def check_limit(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{name} must be >= 1 (or left out), got {value}")


def settings_of(section, cls) -> dict:
    """The fields of ``cls`` (a settings class ``section`` derives from) as keyword arguments:
    how a stage config takes its section's settings without naming each one again."""
    return {f.name: getattr(section, f.name) for f in dataclasses.fields(cls)}


MAX_VOTERS = (
    1024  # far above any ensemble worth training; 2**32 would only fail late, out of memory
)


Representation = Literal["cls", "pooler", "mean"]  # model.task.REPRESENTATIONS


@dataclass(frozen=True)
class HeadSettings:
    """The head of every task model (``[model]`` and the library's FinetuneConfig): the
    VotersModule (``head = "voters"``) or a plain linear head (``head = "linear"``: dropout and
    one linear layer, as standard BERT fine-tuning; the direct-transfer baseline and the -VM
    ablation), and, for sequence tasks, the sentence vector it reads."""

    head: Literal["voters", "linear"] = "voters"
    voters: int = 3  # with head = "voters"
    voter_widths: tuple[int, ...] = ()  # () : spread over 0.75H .. 1.25H; 0: a linear voter
    voter_dropout: float = 0.1  # the head's dropout (either head)
    representation: Representation = "cls"  # sequence tasks: cls, pooler (needs one) or mean

    def __post_init__(self):
        check_choices(self)
        if not 1 <= self.voters <= MAX_VOTERS:
            raise ValueError(f"voters must be in [1, {MAX_VOTERS}], got {self.voters}")
        if any(w < 0 for w in self.voter_widths):
            raise ValueError(
                f"voter_widths must be >= 0 (0: a linear voter), got {list(self.voter_widths)}"
            )
        if self.head == "linear" and self.voter_widths:
            raise ValueError("voter_widths is for head = 'voters' (a linear head has no width)")
        if self.voter_widths and len(self.voter_widths) != self.voters:
            raise ValueError(
                f"voter_widths has {len(self.voter_widths)} entries for voters = {self.voters}"
            )
        if not 0 <= self.voter_dropout < 1:
            raise ValueError(f"voter_dropout must be in [0, 1), got {self.voter_dropout}")

    def voter_shape(self) -> tuple[int, tuple[int, ...] | None]:
        """(number of voters, their widths or None for the default spread) of this head: one
        linear voter for ``head = "linear"``."""
        if self.head == "linear":
            return 1, (LINEAR,)
        return self.voters, self.voter_widths or None


FreezeLayers = int | Literal["all"]


def check_freeze_layers(value) -> None:
    if isinstance(value, str):
        if value != "all":
            raise ValueError(f"freeze_layers must be a number >= 0 or 'all', got {value!r}")
    elif value is not None and value < 0:
        raise ValueError(f"freeze_layers must be >= 0, got {value}")


@dataclass(frozen=True)
class FreezeSettings:
    """What a training stage keeps fixed (the paper freezes the embeddings and the bottom 3
    layers "during training": btf, fine-tuning and both self-training steps): ``[model]``'s
    default for every stage, and the library's stage configs."""

    freeze_layers: FreezeLayers = 3  # bottom encoder layers frozen; "all": every layer (a
    # number >= the model's layers is refused by an experiment as a slip)
    freeze_embeddings: bool = True  # false only for a model with no pretraining (quickstart)

    def __post_init__(self):
        check_freeze_layers(self.freeze_layers)

    def frozen_patterns(self, num_layers: int) -> tuple[str, ...]:
        """Regexes (``loop.freeze``) over the parameter names of a model whose encoder is
        ``encoder.*`` (task models, btf's MLM objective): the embeddings, when frozen, and the
        bottom layers."""
        n = num_layers if self.freeze_layers == "all" else min(self.freeze_layers, num_layers)
        return (
            *([r"encoder\.embeddings\."] if self.freeze_embeddings else []),
            *(rf"encoder\.layers\.{i}\." for i in range(n)),
        )


def check_device(device: str) -> None:
    if device != "auto" and not device.startswith(("cpu", "cuda")):
        raise ValueError(f"device must be auto, cpu or cuda[:N], got {device!r}")


@dataclass(frozen=True)
class InputSettings:
    """How inputs are cut: ``[model]`` and every library stage config that encodes text."""

    max_len: int = 128  # tokens per sequence (NER: longer sentences go in windows)

    def __post_init__(self):
        if self.max_len < 8:
            raise ValueError(f"max_len must be >= 8, got {self.max_len}")


@dataclass(frozen=True)
class StageSettings(InputSettings):
    """What every library stage config shares: how inputs are cut and where the model runs."""

    device: str = "auto"  # auto (cuda when present), cpu, cuda[:N]

    def __post_init__(self):
        super().__post_init__()
        check_device(self.device)


@dataclass(frozen=True)
class TaskSettings(StageSettings):
    """... and for the stages of task models (finetune, selftrain, evaluate, predict): the
    data's format and the inference batch."""

    format: Format = "conll"
    eval_max_tokens: int = EVAL_MAX_TOKENS
    encoding: str | None = None  # CoNLL files' encoding (None: UTF-8, latin-1 by a margin)

    def __post_init__(self):
        super().__post_init__()
        check_choices(self)
        get_format(self.format)  # a registered format (a plug-in's included)
        check_encoding(self.encoding)
        if self.eval_max_tokens < 8:
            raise ValueError(f"eval_max_tokens must be >= 8, got {self.eval_max_tokens}")


PadMultiple = int | Literal["auto"]
CPU_PAD_MULTIPLE = 8  # on a CPU every padded token is work: at e5-small's shapes (batch 16, 64
# tokens) rounding to 8 instead of 32 trained 1.6x the tokens/s on one thread
# (benchmarks/bench_cpu_step.py)


@dataclass(frozen=True)
class BatchSettings:
    """How a training stage batches: the base of [btf], [finetune] and [selftrain]."""

    batch_size: int = 32
    max_tokens: int | None = None  # padded tokens per batch (with batch_size: both hold)
    pad_multiple: PadMultiple = "auto"  # sequence lengths round up to a multiple of this,
    # never past the data's longest (rounded to 8); auto: 32 on CUDA (few shapes: a GPU warms
    # up once per shape), 8 elsewhere (``pad_for``)

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.pad_multiple != "auto" and not (
            isinstance(self.pad_multiple, int) and 1 <= self.pad_multiple <= 512
        ):
            raise ValueError(
                f"pad_multiple must be an integer in [1, 512] or 'auto', got {self.pad_multiple!r}"
            )
        if self.max_tokens is not None and self.max_tokens < 8:
            raise ValueError(f"max_tokens must be >= 8 (or left out), got {self.max_tokens}")

    def pad_for(self, device: torch.device | str) -> int:
        """``pad_multiple`` on ``device``: ``auto`` is 32 on CUDA, 8 on any other device."""
        if self.pad_multiple != "auto":
            return self.pad_multiple
        return PAD_MULTIPLE if torch.device(device).type == "cuda" else CPU_PAD_MULTIPLE


@dataclass(frozen=True)
class BtfSettings(BatchSettings):
    """btf's settings: the ``[btf]`` section's (less freezing) and the library's
    ``BtfConfig``'s."""

    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=3, lr=2e-5))
    mlm_probability: float = 0.15
    whole_word: bool = False
    epoch_size: int | None = None  # windows per epoch (None: the corpora's total)
    head_warmup_epochs: float = 0.0  # > 0: first the MLM head alone (every encoder parameter
    # frozen) for this many epochs at head_warmup_lr, then btf as set: for a checkpoint that
    # ships no MLM head (e5), whose fresh head would otherwise steer the encoder from step 1
    head_warmup_lr: float = 1e-3

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.mlm_probability < 1:
            raise ValueError(f"mlm_probability must be in (0, 1), got {self.mlm_probability}")
        if self.epoch_size is not None and self.epoch_size < 1:
            raise ValueError(f"epoch_size must be >= 1 (or left out), got {self.epoch_size}")
        if not (
            isinstance(self.head_warmup_epochs, int | float)
            and 0 <= self.head_warmup_epochs <= MAX_EPOCHS
        ):
            raise ValueError(
                f"head_warmup_epochs must be a number in [0, {MAX_EPOCHS:g}], "
                f"got {self.head_warmup_epochs!r}"
            )
        if not (isinstance(self.head_warmup_lr, int | float) and 0 < self.head_warmup_lr <= 1):
            raise ValueError(f"head_warmup_lr must be in (0, 1], got {self.head_warmup_lr!r}")


LA_MAX_WEIGHT = 1000.0  # a contrastive weight beyond this is a typo, not a setting
LA_TEMPERATURES = (1e-3, 100.0)  # tau's range: S / tau stays finite in fp32 and bf16


@dataclass(frozen=True)
class FinetuneSettings(BatchSettings):
    """Source fine-tuning's settings: ``[finetune]`` and the library's ``FinetuneConfig``.

    ``label_alignment``: paper 003's Label Alignment, the supervised contrastive loss
    (``kernels.supcon_loss``) on each batch's sentence representations (``model.representation``)
    added to the cross-entropy with weight ``la_weight`` at temperature ``la_temperature``
    (sequence tasks only; 0.5 and 0.3 are DESIGN's choices)."""

    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=3, lr=2e-5))
    label_alignment: bool = False
    la_weight: float = 0.5
    la_temperature: float = 0.3
    parallel_file: str | None = None  # paper 003's D^bi (``data.parallel``): its translations
    # join the training data (alone: translate-train), and Semantic Alignment reads it
    semantic_alignment: bool = False  # then a second phase: CE + sa_weight x Eq. 4
    sa_weight: float = 0.5
    sa_temperature: float = 0.3
    sa_lr_scale: float = 0.1  # phase 2's learning rate: this x train.lr
    sa_epochs: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        lo, hi = LA_TEMPERATURES
        for name in ("la", "sa"):
            weight, tau = getattr(self, f"{name}_weight"), getattr(self, f"{name}_temperature")
            if not 0 <= weight <= LA_MAX_WEIGHT:  # also refuses nan
                raise ValueError(f"{name}_weight must be in [0, {LA_MAX_WEIGHT:g}], got {weight}")
            if not lo <= tau <= hi:
                raise ValueError(f"{name}_temperature must be in [{lo:g}, {hi:g}], got {tau}")
        if not 0 < self.sa_lr_scale <= 1:
            raise ValueError(f"sa_lr_scale must be in (0, 1], got {self.sa_lr_scale}")
        if not 0 < self.sa_epochs <= 100:
            raise ValueError(f"sa_epochs must be in (0, 100], got {self.sa_epochs}")
        if self.semantic_alignment and not self.parallel_file:
            raise ValueError("semantic_alignment needs parallel_file (the translations)")

    def check_kind(self, kind: str, prefix: str = "") -> None:
        """Paper 003's options contrast sentence representations: refused for token tasks
        (``prefix``: how the caller names this section, e.g. ``finetune.``)."""
        for key in ("label_alignment", "parallel_file"):
            if getattr(self, key) and kind == "token":
                raise ValueError(
                    f"{prefix}{key}: paper 003's language adaptation contrasts sentence "
                    "representations; token classification has none"
                )


CotrainPredict = Literal["lm", "emb", "mean"]


@dataclass(frozen=True)
class CotrainSettings(BatchSettings):
    """Co-training's settings (paper 003, Algorithm 1; see ``method.cotrain``): the
    ``[cotrain]`` section and the library's ``CotrainConfig``. DESIGN: t = 0.9, s = 3, reinit,
    the final prediction by the LM view; paper 003: AdamW lr 5e-5, batch 16, 2 epochs on MARC
    (5 on XNLI)."""

    iterations: int = 3  # s
    threshold: float = 0.9  # t: a prediction is a candidate when its confidence is above it
    subset_fraction: float = 1 / 3  # each exchange draws round(fraction x n) rows at most
    reinit: bool = True  # each iteration starts both views from their pre-trained encoders
    predict_with: CotrainPredict = "lm"
    exchange: Literal["cross", "self"] = "cross"  # self: each view's rows go to its own set
    # (self-training of each view alone, paper 003's baseline)
    lm_representation: Representation = "cls"
    emb_representation: Representation = "mean"
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=2.0, lr=5e-5))
    # what both views keep fixed while they fine-tune: nothing by default (paper 003 fine-tunes
    # whole models); a CPU-sized run may freeze the embeddings and bottom layers
    freeze_layers: FreezeLayers = 0
    freeze_embeddings: bool = False

    def __post_init__(self):
        super().__post_init__()
        check_choices(self)
        check_freeze_layers(self.freeze_layers)
        if not 1 <= self.iterations <= 1000:
            raise ValueError(f"iterations must be in [1, 1000], got {self.iterations}")
        if not 0 <= self.threshold < 1:  # also refuses nan
            raise ValueError(f"threshold must be in [0, 1), got {self.threshold}")
        if not 0 < self.subset_fraction <= 1:
            raise ValueError(f"subset_fraction must be in (0, 1], got {self.subset_fraction}")


Split = Literal["test", "dev"]
TEST_SPLIT: Split = "test"  # the default: the scores reported; any other split is marked
