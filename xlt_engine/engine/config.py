"""Experiment configs: a TOML file (stdlib ``tomllib``) mapped onto frozen dataclasses.

``load_config(path, overrides)`` reads the file (or a stage folder's ``config.json``: the
resolved config that stage ran with, to run it again or alike), applies ``--set key=value``
overrides (dotted keys; the value is read as a TOML value, and as a plain string when it is not
one), and builds an ``ExperimentConfig``. Every problem is collected before anything runs and reported at once in
a ``ConfigError`` naming the file and the key: unknown keys, wrong types, bad values. Missing
files are checked per stage by ``check_files(cfg, stage)``, again naming the key.

Relative data paths (``languages.<lang>.*``) are read against ``data.root``; ``data.root``,
``model.path`` and ``out`` against the working directory. The stage configs (``BtfConfig``,
``FinetuneConfig``, ...) are built from an experiment by ``engine.experiment``.
"""

from __future__ import annotations

import codecs
import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import tomllib

from xlt_engine import STAGES
from xlt_engine.data.task import Format
from xlt_engine.engine.loop import TrainConfig
from xlt_engine.engine.pseudo_labels import PseudoRule, SourceFilter
from xlt_engine.engine.pseudo_labels import RuleName as PseudoRuleName
from xlt_engine.model.checkpoint import plan_checkpoint
from xlt_engine.model.config import BertConfig
from xlt_engine.model.heads import LINEAR

TASKS = ("ner", "classification")


class ConfigError(ValueError):
    def __init__(self, where: str, problems: list[str]):
        self.where, self.problems = where, problems
        super().__init__(
            f"{where}: " + "; ".join(problems)
            if len(problems) == 1
            else f"{where}: {len(problems)} problems:\n  " + "\n  ".join(problems)
        )


def check_choices(obj) -> None:
    """Every ``Literal``-typed field of a config dataclass holds one of its choices."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        tp = hints[f.name]
        if typing.get_origin(tp) is Literal and getattr(obj, f.name) not in typing.get_args(tp):
            choices = ", ".join(map(str, typing.get_args(tp)))
            raise ValueError(f"{f.name} must be one of {choices}, got {getattr(obj, f.name)!r}")


@dataclass(frozen=True)
class LanguageFiles:
    train: str | None = None  # labeled training data (the source language)
    dev: str | None = None  # labeled dev data (finetune's dev score)
    test: str | None = None  # labeled test data (evaluate)
    unlabeled: str | None = None  # target-language data whose labels, if any, are ignored
    text: str | None = None  # plain text (one sentence or document per line) for btf


def check_encoding(encoding: str | None) -> None:
    if encoding is not None:
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise ValueError(f"encoding: unknown encoding {encoding!r}") from None


def check_limit(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{name} must be >= 1 (or left out), got {value}")


LIMITS = ("max_train", "max_dev", "max_test", "max_unlabeled")


@dataclass(frozen=True)
class DataSection:
    """The data's location and format, and caps for a small run: at most ``max_<role>``
    examples (sentences, reviews) of each file of that role, sampled without replacement from
    the experiment's seed and kept in file order (btf's texts included: the source's from
    ``max_train``, the target's from ``max_unlabeled``). In every stage's fingerprint."""

    root: str = "."
    format: Format = "conll"
    encoding: str | None = None  # CoNLL files (None: UTF-8, or latin-1 when clearly not UTF-8)
    max_train: int | None = None
    max_dev: int | None = None
    max_test: int | None = None  # of each test file
    max_unlabeled: int | None = None
    unlabeled_format: Literal["text"] | None = None  # "text": the targets' unlabeled files are
    # plain text, one sentence (NER: words split on spaces / tabs) or text per line, streamed
    # whatever their size (None: they are in ``format``)

    def __post_init__(self):
        check_choices(self)
        check_encoding(self.encoding)
        if self.unlabeled_format not in (None, "text"):
            raise ValueError(
                f"unlabeled_format must be 'text' or unset, got {self.unlabeled_format!r}"
            )
        for name in LIMITS:
            check_limit(name, getattr(self, name))


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


@dataclass(frozen=True)
class FreezeOverride:
    """A stage section's own freezing (``[btf]``, ``[finetune]``, ``[selftrain]``); None:
    ``[model]``'s."""

    freeze_layers: FreezeLayers | None = None
    freeze_embeddings: bool | None = None

    def __post_init__(self):
        check_freeze_layers(self.freeze_layers)

    def over(self, model: FreezeSettings) -> FreezeSettings:
        return FreezeSettings(
            model.freeze_layers if self.freeze_layers is None else self.freeze_layers,
            model.freeze_embeddings if self.freeze_embeddings is None else self.freeze_embeddings,
        )


EVAL_MAX_TOKENS = 16384  # padded tokens per inference batch, unless a config says otherwise


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
        check_encoding(self.encoding)
        if self.eval_max_tokens < 8:
            raise ValueError(f"eval_max_tokens must be >= 8, got {self.eval_max_tokens}")


@dataclass(frozen=True)
class ModelSection(HeadSettings, FreezeSettings, InputSettings):
    path: str = ""  # the pretrained model folder (mBERT in Hugging Face layout)

    def __post_init__(self):
        HeadSettings.__post_init__(self)
        FreezeSettings.__post_init__(self)
        InputSettings.__post_init__(self)
        if not self.path:
            raise ValueError("path: give the pretrained model folder (model.path)")


@dataclass(frozen=True)
class BatchSettings:
    """How a training stage batches: the base of [btf], [finetune] and [selftrain]."""

    batch_size: int = 32
    max_tokens: int | None = None  # padded tokens per batch (with batch_size: both hold)

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_tokens is not None and self.max_tokens < 8:
            raise ValueError(f"max_tokens must be >= 8 (or left out), got {self.max_tokens}")


@dataclass(frozen=True)
class BtfSettings(BatchSettings):
    """btf's settings: the ``[btf]`` section's (less freezing) and the library's
    ``BtfConfig``'s."""

    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=3, lr=2e-5))
    mlm_probability: float = 0.15
    whole_word: bool = False
    epoch_size: int | None = None  # windows per epoch (None: the corpora's total)

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.mlm_probability < 1:
            raise ValueError(f"mlm_probability must be in (0, 1), got {self.mlm_probability}")
        if self.epoch_size is not None and self.epoch_size < 1:
            raise ValueError(f"epoch_size must be >= 1 (or left out), got {self.epoch_size}")


@dataclass(frozen=True)
class BtfSection(BtfSettings, FreezeOverride):
    def __post_init__(self):
        BtfSettings.__post_init__(self)
        FreezeOverride.__post_init__(self)


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


@dataclass(frozen=True)
class FinetuneSection(FinetuneSettings, FreezeOverride):
    init: str = "btf"  # "btf" (this target's Base Model), "pretrained" (model.path) or a folder
    source: str | None = None  # with several sources: train on this one alone (a teacher of
    # multi_source = "teachers"); None: on every source's train file (their union)

    def __post_init__(self):
        FinetuneSettings.__post_init__(self)
        FreezeOverride.__post_init__(self)


Threshold = Literal["curvature", "max_second_difference", "fixed"]
MultiSource = Literal["teachers", "union"]
FilterUnit = Literal["word", "sequence"]
OnCollapse = Literal["warn", "error", "skip_hard"]
SoftLoss = Literal["mse", "kl"]


@dataclass(frozen=True)
class SelftrainSettings(BatchSettings):
    """The self-training method's settings: the ``[selftrain]`` section and the library's
    ``SelftrainConfig`` both are these (defaults and checks written here only)."""

    rounds: float = 1.5  # N; a trailing .5 ends with a soft step
    soft: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=10, lr=3e-5))
    hard: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=10, lr=1e-6))
    threshold: Threshold = "curvature"
    alpha: float | None = None  # with threshold = "fixed" (the "-AT" ablation)
    grid: tuple[float, ...] | str = ()  # () : 0.50..0.99 by 0.01, then 0.995 and 0.999;
    # "even": 0.50..0.99 by 0.01 only (no tail)
    filter_unit: FilterUnit = "word"
    source_filter: SourceFilter = "correct"  # which source rows the hard steps keep: correct
    # (the voters' mean predicts the gold label: the paper), confident (the voters agree on the
    # gold label above its class's threshold), off (all)
    pseudo_rule: PseudoRuleName = "paper"  # how the thresholds are chosen (pseudo_labels.py):
    # paper (one alpha), per_class_precision, class_quota, entity_curve
    min_rows: int = 30  # per_class_precision: source rows a class's threshold must leave
    class_precision: float = 0.9  # per_class_precision: their precision's Wilson lower bound
    quota: float = 0.5  # class_quota: the share of each class's agreed target rows kept
    on_collapse: OnCollapse = "warn"  # a round whose pseudo labels collapsed: warn, error
    # (stop before the hard step) or skip_hard (the soft student is the round's result)
    max_unlabeled: int | None = None  # down-sample the unlabeled target data (CLS: 10000)
    soft_loss: SoftLoss = "mse"  # the soft step's loss: mse (the paper's eq. 1, on
    # probabilities) or kl (KL(teacher || student), the usual distillation loss)

    def __post_init__(self):
        super().__post_init__()
        check_choices(self)
        if not (0.5 <= self.rounds <= 1000 and 2 * self.rounds == int(2 * self.rounds)):
            raise ValueError(f"rounds must be a multiple of 0.5 in [0.5, 1000], got {self.rounds}")
        if not isinstance(self.grid, str) and (bad := [t for t in self.grid if not 0 < t < 1]):
            raise ValueError(f"grid: thresholds must be in (0, 1), got {bad}")
        self.pseudo_rule_settings()  # the rule's own checks (grid name, min_rows, precision, quota)
        if self.threshold == "fixed" and (self.alpha is None or not 0 <= self.alpha < 1):
            raise ValueError(f"threshold = 'fixed' needs alpha in [0, 1), got {self.alpha!r}")
        if self.threshold != "fixed" and self.alpha is not None:
            raise ValueError(f"alpha = {self.alpha} is read only with threshold = 'fixed'")
        if self.max_unlabeled is not None and self.max_unlabeled < 1:
            raise ValueError(f"max_unlabeled must be >= 1, got {self.max_unlabeled}")

    def pseudo_rule_settings(self) -> PseudoRule:
        """The pseudo-label rule these settings describe (``engine.pseudo_labels``)."""
        return PseudoRule(
            name=self.pseudo_rule,
            method=self.threshold,
            alpha=self.alpha,
            grid=self.grid or None,
            min_rows=self.min_rows,
            class_precision=self.class_precision,
            quota=self.quota,
        )

    @property
    def steps(self) -> list[tuple[int, str]]:
        """(round, "soft" | "hard") in order: N = 1.5 -> (1, soft), (1, hard), (2, soft)."""
        out = []
        for r in range(1, math.ceil(self.rounds) + 1):
            out.append((r, "soft"))
            if r <= self.rounds:
                out.append((r, "hard"))
        return out


@dataclass(frozen=True)
class SelftrainSection(SelftrainSettings, FreezeOverride):
    """... the soft and the hard step freeze alike (``freeze_layers``); a step's
    ``train.freeze`` patterns add to it."""

    base: str = "btf"  # the students' start: "btf" (the Base Model), "pretrained" or a folder
    teacher: str = "finetune"  # round 1's teacher: "finetune", "finetune-direct" or a folder

    def __post_init__(self):
        SelftrainSettings.__post_init__(self)
        FreezeOverride.__post_init__(self)


CotrainPredict = Literal["lm", "emb", "mean"]


@dataclass(frozen=True)
class CotrainSettings(BatchSettings):
    """Co-training's settings (paper 003, Algorithm 1; see ``engine.cotrain``): the
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


@dataclass(frozen=True)
class CotrainSection(CotrainSettings):
    """``[cotrain]``: the LM view is ``model.path``; the embedding view's encoder is
    ``embedding_model`` (a LaBSE / e5 folder in Hugging Face layout)."""

    embedding_model: str = ""


@dataclass(frozen=True)
class InferenceSection:
    model: str = "finetune"  # a stage name ("finetune", "finetune-direct", "selftrain"), a
    # co-training model ("cotrain": its predict_with, "cotrain-lm", "cotrain-emb",
    # "cotrain-mean": the mean of both views) or a model folder
    max_tokens: int = EVAL_MAX_TOKENS  # padded tokens per inference batch

    def __post_init__(self):
        check_choices(self)
        if self.max_tokens < 8:
            raise ValueError(f"max_tokens must be >= 8, got {self.max_tokens}")


Split = Literal["test", "dev"]
TEST_SPLIT: Split = "test"  # the default: the scores reported; any other split is marked


@dataclass(frozen=True)
class EvaluateSection(InferenceSection):
    # the labeled files scored: each language's test file, or its dev file (``data.max_dev``
    # of them) for choices made on dev data only; a dev evaluation has its own folder
    # (``evaluate-<model>-dev``) and tables (``all-dev``, ``ablation-dev``...)
    split: Split = TEST_SPLIT


@dataclass(frozen=True)
class PredictSection(InferenceSection):
    input: str | None = None
    output: str | None = None


# files that may serve a use, in order of preference: ROLES[use][is the source language]
ROLES = {
    "text": {True: ("text", "train"), False: ("text", "unlabeled", "train")},
    "unlabeled": {True: ("unlabeled", "train"), False: ("unlabeled", "train")},
}


@dataclass(frozen=True)
class ExperimentConfig:
    task: str
    source: str
    targets: tuple[str, ...]
    languages: dict[str, LanguageFiles]
    model: ModelSection
    target: str | None = None  # the target btf works on (default: the first of targets)
    out: str | None = None  # the experiment's folder (default: runs/<config name>); each
    # source-target pair runs in <out>/<source>-<target>
    seed: int = 42
    device: str = "auto"
    sources: tuple[str, ...] = ()  # several source languages (source among them, the one whose
    # dev file fine-tuning reports and whose test is the tables' source row); () : source alone
    multi_source: MultiSource = "teachers"  # with sources: round 1's soft labels are the mean
    # of one teacher per source ("teachers") or one teacher fine-tuned on their union ("union")
    keep_loop_checkpoints: bool = False  # a finished stage keeps its loop checkpoints
    # (ckpt-*/: a copy of the model and the optimizer state); False: dropped once its output
    # is written, as nothing reads them after that
    data: DataSection = field(default_factory=DataSection)
    btf: BtfSection = field(default_factory=BtfSection)
    finetune: FinetuneSection = field(default_factory=FinetuneSection)
    selftrain: SelftrainSection = field(default_factory=SelftrainSection)
    cotrain: CotrainSection = field(default_factory=CotrainSection)
    evaluate: EvaluateSection = field(default_factory=EvaluateSection)
    predict: PredictSection = field(default_factory=PredictSection)
    name: str = ""  # set from the file name

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        kind = "ner" if self.data.format == "conll" else "classification"
        if kind != self.task:
            raise ValueError(
                f"task {self.task!r} does not go with data.format {self.data.format!r}"
            )
        if self.task == "ner" and self.model.representation != "cls":
            raise ValueError(
                f"model.representation: {self.model.representation!r} is for sequence tasks "
                "(NER labels every word's first sub-token; leave it 'cls')"
            )
        self.finetune.check_kind("token" if self.task == "ner" else "sequence", "finetune.")
        if not self.targets:
            raise ValueError("targets: give at least one target language")
        check_choices(self)
        if self.sources:
            if len(set(self.sources)) != len(self.sources) or len(self.sources) < 2:
                raise ValueError(
                    f"sources: give two or more different languages, got {list(self.sources)}"
                )
            if self.source not in self.sources:
                raise ValueError(
                    f"source: {self.source!r} is not one of sources {list(self.sources)}"
                )
        both = sorted(set(self.source_languages) & set(self.targets))
        if both:
            raise ValueError(f"targets: {both} are source languages too")
        for lang in (*self.source_languages, *self.targets):
            if lang not in self.languages:
                raise ValueError(f"languages: no [languages.{lang}] table for language {lang!r}")
        one = self.finetune.source
        if one is not None and one not in self.source_languages:
            raise ValueError(
                f"finetune.source: {one!r} is not a source language ({list(self.source_languages)})"
            )
        if self.target is not None and self.target not in self.targets:
            raise ValueError(f"target: {self.target!r} is not one of targets {list(self.targets)}")
        trains = {
            "btf.train": self.btf.train,
            "finetune.train": self.finetune.train,
            "selftrain.soft": self.selftrain.soft,
            "selftrain.hard": self.selftrain.hard,
            "cotrain.train": self.cotrain.train,
        }
        for key, train in trains.items():
            if train.seed != 0:
                raise ValueError(f"{key}.seed: set the top-level seed (one for all stages)")
        check_device(self.device)

    @property
    def source_languages(self) -> tuple[str, ...]:
        """Every source language: ``sources``, or ``source`` alone."""
        return self.sources or (self.source,)

    @property
    def teachers_per_source(self) -> bool:
        """Several sources with one teacher each (``multi_source = "teachers"``)."""
        return len(self.source_languages) > 1 and self.multi_source == "teachers"

    def finetune_languages(self) -> tuple[str, ...]:
        """The source languages whose train files ``finetune`` reads."""
        one = self.finetune.source
        return (one,) if one is not None else self.source_languages

    def freeze(self, stage: str) -> FreezeSettings:
        """What ``stage`` (btf, finetune, selftrain) freezes: its section's setting, else
        ``[model]``'s."""
        return getattr(self, stage).over(self.model)

    def freeze_key(self, stage: str) -> str:
        """The key that set ``stage``'s freeze_layers (for messages)."""
        own = getattr(self, stage).freeze_layers is not None
        return f"{stage if own else 'model'}.freeze_layers"

    @property
    def pair_target(self) -> str:
        return self.target or self.targets[0]

    def role(self, lang: str, use: str) -> str | None:
        """Which file of ``lang`` serves ``use``: "text" (btf's plain text: ``text``, else the
        source's ``train`` or the target's ``unlabeled`` / ``train``) or "unlabeled" (the
        target's ``unlabeled``, else ``train``, labels never read); None when none is given."""
        roles = ROLES[use][lang in self.source_languages]
        return next((r for r in roles if getattr(self.languages[lang], r)), None)

    def data_path(self, lang: str, role: str) -> Path | None:
        rel = getattr(self.languages[lang], role)
        return None if rel is None else Path(self.data.root) / rel

    def out_root(self) -> Path:
        """The experiment's folder: ``out``, else ``runs/<config name>``. The tables over all
        pairs go here; each pair has its run folder inside (``run_dir``)."""
        return Path(self.out) if self.out else Path("runs") / (self.name or "run")

    def run_dir(self) -> Path:
        """The run folder of the source-target pair: ``<out_root>/<source>-<target>`` (several
        sources: ``<s1>+<s2>-<target>``), for a single stage and for ``run --stage all``
        alike."""
        return self.out_root() / f"{'+'.join(self.source_languages)}-{self.pair_target}"


# ---------------------------------------------------------------------------------------------
# TOML -> dataclasses


def _type_name(tp) -> str:
    if typing.get_origin(tp) is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "none")


def _convert(tp, value, key: str, problems: list[str]):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if value is None and len(inner) < len(args):  # unset (null in a stage's config.json)
            return None
        for candidate in inner:  # the first type that takes the value (int | "all")
            trial: list[str] = []
            converted = _convert(candidate, value, key, trial)
            if not trial:
                return converted
        if len(inner) == 1:
            problems.extend(trial)
        else:
            names = " or ".join(_type_name(a) for a in inner)
            problems.append(f"{key}: expected {names}, got {value!r}")
        return None
    if origin is Literal:  # its choices are checked by the section (check_choices)
        return _convert(type(args[0]), value, key, problems)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            problems.append(f"{key}: expected a table, got {value!r}")
            return None
        return _build(tp, value, key + ".", problems)
    if origin is tuple:
        if not isinstance(value, list):
            problems.append(f"{key}: expected a list, got {value!r}")
            return None
        return tuple(_convert(args[0], v, f"{key}[{i}]", problems) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{key}: expected a table, got {value!r}")
            return None
        return {k: _convert(args[1], v, f"{key}.{k}", problems) for k, v in value.items()}
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):  # TOML reads inf and nan: no setting means them
                problems.append(f"{key}: expected a finite number, got {value!r}")
                return None
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp in (str, bool):
        if isinstance(value, tp):
            return value
    else:
        raise TypeError(f"config type {tp} is not supported")
    problems.append(f"{key}: expected {_type_name(tp)}, got {value!r}")
    return None


def _build(cls, table: dict, prefix: str, problems: list[str], base=None):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    n_before = len(problems)
    for k in table:
        if k not in fields or (k == "name" and cls is ExperimentConfig):
            known = ", ".join(n for n in fields if n != "name")
            problems.append(f"{prefix}{k}: unknown key (known here: {known})")
    kwargs = {}
    for name, f in fields.items():
        if name not in table:
            no_default = (
                f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            )
            if no_default and base is None:
                problems.append(f"{prefix}{name}: missing")
            continue
        default = None
        if dataclasses.is_dataclass(hints[name]) and isinstance(table[name], dict):
            if f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            if base is not None:
                default = getattr(base, name)
        if default is not None:  # a section starts from its default values (e.g. lr per stage)
            kwargs[name] = _build(hints[name], table[name], f"{prefix}{name}.", problems, default)
        else:
            kwargs[name] = _convert(hints[name], table[name], prefix + name, problems)
    if len(problems) > n_before:
        return None
    try:
        return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)
    except (ValueError, TypeError) as err:
        problems.append(f"{prefix.rstrip('.') or 'config'}: {err}")
        return None


def parse_override(item: str) -> tuple[list[str], object]:
    """``a.b.c=value`` -> (["a", "b", "c"], value read as TOML, else the raw string)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ValueError(
            f"--set {item!r}: expected key=value with a dotted key, e.g. btf.train.lr=1e-5"
        )
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.split("."), value


def apply_overrides(table: dict, overrides: list[str]) -> dict:
    for item in overrides:
        path, value = parse_override(item)
        node = table
        for i, part in enumerate(path[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {item!r}: {'.'.join(path[: i + 1])} is not a table")
        node[path[-1]] = value
    return table


def config_from_dict(table: dict, where: str, name: str = "") -> ExperimentConfig:
    problems: list[str] = []
    cfg = _build(ExperimentConfig, table, "", problems)
    if problems:
        raise ConfigError(where, problems)
    return dataclasses.replace(cfg, name=name)


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """The config of a TOML file, or of a stage folder's ``config.json`` (its ``experiment``
    table: the resolved config, every key set, named as the run's config was), with
    ``overrides`` (``--set``) applied."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError(str(path), [f"cannot read: {err.strerror}"]) from None
    name = path.stem
    try:
        if path.suffix == ".json":
            table, name = _resolved_table(json.loads(raw.decode("utf-8")), str(path))
        else:
            table = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(str(path), [f"not UTF-8 at byte {err.start}"]) from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(str(path), [f"not valid TOML: {err}"]) from None
    except json.JSONDecodeError as err:
        raise ConfigError(
            str(path), [f"not valid JSON: {err.msg} (line {err.lineno}, column {err.colno})"]
        ) from None
    try:
        apply_overrides(table, list(overrides))
    except ValueError as err:
        raise ConfigError(str(path), [str(err)]) from None
    return config_from_dict(table, str(path), name)


def _resolved_table(doc, where: str) -> tuple[dict, str]:
    """(the config table, its name) of a stage's ``config.json`` (``to_dict`` under
    ``experiment``)."""
    experiment = doc.get("experiment") if isinstance(doc, dict) else None
    if not isinstance(experiment, dict):
        raise ConfigError(
            where, ["experiment: missing (a stage folder's config.json has the run's config there)"]
        )
    table = dict(experiment)
    name = table.pop("name", "")
    if not isinstance(name, str):
        raise ConfigError(where, [f"experiment.name: expected str, got {name!r}"])
    return table, name


def to_dict(cfg) -> dict:
    """The resolved config as plain data (for ``config.json`` in the run folder)."""
    return dataclasses.asdict(cfg)


def model_config(folder: Path) -> BertConfig | None:
    """The config of the model in ``folder``, or None when its config.json is absent or
    invalid (loading the model reports that, naming the file)."""
    try:
        return BertConfig.from_json(folder / "config.json")
    except ValueError:
        return None


def has_pooler(folder: Path) -> bool | None:
    """Whether the checkpoint in ``folder`` holds ``pooler.dense`` (header reads only), or None
    when it cannot be planned (loading it reports why, naming the file)."""
    try:
        return plan_checkpoint(folder, "encoder").pooler
    except (ValueError, OSError):
        return None


def check_files(cfg: ExperimentConfig, stage: str) -> None:
    """Every file ``stage`` reads must exist; one ``ConfigError`` lists all that do not."""
    problems = []

    def need(key: str, path: Path | None, folder: bool = False, required: bool = True):
        if path is None:
            if required:
                problems.append(f"{key}: missing (stage {stage} needs it)")
            return
        ok = path.is_dir() if folder else path.is_file()
        if not ok:
            problems.append(f"{key}: {path}: no such {'folder' if folder else 'file'}")

    def need_unlabeled():  # the pair target's unlabeled data
        role = cfg.role(tgt, "unlabeled")
        if role is None:
            problems.append(
                f"languages.{tgt}: {stage} needs unlabeled target data (unlabeled or train)"
            )
        else:
            need(f"languages.{tgt}.{role}", cfg.data_path(tgt, role))

    if not Path(cfg.data.root).is_dir():
        problems.append(f"data.root: {cfg.data.root}: no such folder")
    need("model.path", Path(cfg.model.path), folder=True)
    config = model_config(Path(cfg.model.path))  # read once, for the checks below
    positions = None if config is None else config.max_tokens
    if stage in ("btf", "finetune", "selftrain") and config is not None:
        frozen = cfg.freeze(stage).freeze_layers
        if frozen != "all" and frozen >= config.num_hidden_layers:
            head = "the MLM head" if stage == "btf" else "the task head"
            problems.append(
                f"{cfg.freeze_key(stage)}: {frozen} freezes all {config.num_hidden_layers} "
                f"layers of the model (only {head} would train in {stage}); set it to 'all' "
                "if that is meant"
            )
    if positions is not None and cfg.model.max_len > positions:
        problems.append(
            f"model.max_len: {cfg.model.max_len} is more than the {positions} positions of the "
            f"model ({Path(cfg.model.path) / 'config.json'})"
        )
    if (
        stage in ("finetune", "selftrain")
        and cfg.model.representation == "pooler"
        and has_pooler(Path(cfg.model.path)) is False
    ):
        problems.append(
            f"model.representation: 'pooler', but {cfg.model.path} holds no pooler.dense "
            "weights (use 'cls' or 'mean')"
        )
    src, tgt = cfg.source, cfg.pair_target
    if stage == "btf":
        for lang in (*cfg.source_languages, tgt):
            role = cfg.role(lang, "text")
            if role is None:
                roles = ", ".join(ROLES["text"][lang in cfg.source_languages])
                problems.append(f"languages.{lang}: btf needs text (one of {roles})")
            else:
                need(f"languages.{lang}.{role}", cfg.data_path(lang, role))
    elif stage == "finetune":
        for lang in cfg.finetune_languages():
            need(f"languages.{lang}.train", cfg.data_path(lang, "train"))
        dev = cfg.finetune.source or src
        need(f"languages.{dev}.dev", cfg.data_path(dev, "dev"), required=False)
        if cfg.finetune.parallel_file:
            need("finetune.parallel_file", Path(cfg.finetune.parallel_file))
    elif stage == "selftrain":
        for lang in cfg.source_languages:
            need(f"languages.{lang}.train", cfg.data_path(lang, "train"))
        need_unlabeled()
    elif stage == "cotrain":
        need(f"languages.{src}.train", cfg.data_path(src, "train"))
        need_unlabeled()
        need(f"languages.{tgt}.dev", cfg.data_path(tgt, "dev"), required=False)
        emb = cfg.cotrain.embedding_model
        if not emb:
            problems.append("cotrain.embedding_model: missing (the embedding view's encoder)")
        else:
            need("cotrain.embedding_model", Path(emb), folder=True)
    elif stage == "evaluate":
        split = cfg.evaluate.split
        for lang in (src, *cfg.targets):
            need(f"languages.{lang}.{split}", cfg.data_path(lang, split))
        for lang in (x for x in cfg.source_languages if x != src):  # other sources' files
            need(f"languages.{lang}.{split}", cfg.data_path(lang, split), required=False)
    elif stage == "predict":
        if cfg.predict.input is None:
            problems.append("predict.input: missing (the file to predict)")
        else:
            need("predict.input", Path(cfg.predict.input))
        if cfg.predict.output is None:
            problems.append("predict.output: missing (where to write the predictions)")
    else:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    if problems:
        raise ConfigError(cfg.name or "config", problems)
