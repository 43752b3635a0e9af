"""Experiment configs: a TOML file (stdlib ``tomllib``) mapped onto frozen dataclasses.

``load_config(path, overrides)`` reads the file (or a stage folder's ``config.json``: the
resolved config that stage ran with, to run it again or alike), applies ``--set key=value``
overrides (dotted keys; the value is read as a TOML value, and as a plain string when it is not
one), and builds an ``ExperimentConfig``. Every problem is collected before anything runs and reported at once in
a ``ConfigError`` naming the file and the key: unknown keys, wrong types, bad values. Missing
files are checked per stage by ``check_files(cfg, stage)``, again naming the key.

Relative data paths (``languages.<lang>.*``) are read against ``data.root``; ``data.root``,
``model.path`` and ``out`` against the working directory. The stage configs (``BtfConfig``,
``FinetuneConfig``, ...) are built from an experiment by ``experiment.stages``; each section
derives from its stage's settings (``method.settings``), adding only what an experiment needs
(where the stage starts from, a freezing override).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import tomllib

from xlt_engine import STAGES
from xlt_engine.data.task import Format
from xlt_engine.engine.method.settings import (
    TEST_SPLIT,
    BtfSettings,
    CotrainSettings,
    FinetuneSettings,
    FreezeLayers,
    FreezeSettings,
    HeadSettings,
    InputSettings,
    SelftrainSettings,
    Split,
    check_choices,
    check_device,
    check_encoding,
    check_freeze_layers,
    check_limit,
)
from xlt_engine.engine.train.inference import EVAL_MAX_TOKENS
from xlt_engine.engine.train.loop import TrainConfig
from xlt_engine.fileio import loads_json
from xlt_engine.model.checkpoint import plan_checkpoint
from xlt_engine.model.config import BertConfig

TASKS = ("ner", "classification")


class ConfigError(ValueError):
    def __init__(self, where: str, problems: list[str]):
        self.where, self.problems = where, problems
        super().__init__(
            f"{where}: " + "; ".join(problems)
            if len(problems) == 1
            else f"{where}: {len(problems)} problems:\n  " + "\n  ".join(problems)
        )


@dataclass(frozen=True)
class LanguageFiles:
    train: str | None = None  # labeled training data (the source language)
    dev: str | None = None  # labeled dev data (finetune's dev score)
    test: str | None = None  # labeled test data (evaluate)
    unlabeled: str | None = None  # target-language data whose labels, if any, are ignored
    text: str | None = None  # plain text (one sentence or document per line) for btf


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
class BtfSection(BtfSettings, FreezeOverride):
    def __post_init__(self):
        BtfSettings.__post_init__(self)
        FreezeOverride.__post_init__(self)


@dataclass(frozen=True)
class FinetuneSection(FinetuneSettings, FreezeOverride):
    init: str = "btf"  # "btf" (this target's Base Model), "pretrained" (model.path) or a folder
    source: str | None = None  # with several sources: train on this one alone (a teacher of
    # multi_source = "teachers"); None: on every source's train file (their union)

    def __post_init__(self):
        FinetuneSettings.__post_init__(self)
        FreezeOverride.__post_init__(self)


MultiSource = Literal["teachers", "union"]


@dataclass(frozen=True)
class SelftrainSection(SelftrainSettings, FreezeOverride):
    """... the soft and the hard step freeze alike (``freeze_layers``); a step's
    ``train.freeze`` patterns add to it."""

    base: str = "btf"  # the students' start: "btf" (the Base Model), "pretrained" or a folder
    teacher: str = "finetune"  # round 1's teacher: "finetune", "finetune-direct" or a folder

    def __post_init__(self):
        SelftrainSettings.__post_init__(self)
        FreezeOverride.__post_init__(self)


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


@dataclass(frozen=True)
class EvaluateSection(InferenceSection):
    # the labeled files scored: each language's test file, or its dev file (``data.max_dev``
    # of them) for choices made on dev data only; a dev evaluation has its own folder
    # (``evaluate-<model>-dev``) and tables (``all-dev``, ``ablation-dev``...)
    split: Split = TEST_SPLIT


@dataclass(frozen=True)
class PredictSection(InferenceSection):
    input: str | None = None
    output: str | None = None  # a new file, or one predict wrote (``fileio.claim_output``)
    overwrite: bool = False  # replace an existing output that predict did not write


# every training loop's table of settings (a ``TrainConfig``): the stages' and self-training's two
TRAIN_TABLES = ("btf.train", "finetune.train", "selftrain.soft", "selftrain.hard", "cotrain.train")

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
        for key, train in self.train_tables().items():
            if train.seed != 0:
                raise ValueError(f"{key}.seed: set the top-level seed (one for all stages)")
        check_device(self.device)

    def train_tables(self) -> dict[str, TrainConfig]:
        """Every training loop's settings, by key (``TRAIN_TABLES``)."""
        out = {}
        for key in TRAIN_TABLES:
            section, name = key.split(".")
            out[key] = getattr(getattr(self, section), name)
        return out

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
    blocked = False  # a required setting missing or a value of the wrong type: not built
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
                blocked = True
            continue
        default = None
        if dataclasses.is_dataclass(hints[name]) and isinstance(table[name], dict):
            if f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            if base is not None:
                default = getattr(base, name)
        if default is not None:  # a section starts from its default values (e.g. lr per stage)
            kwargs[name] = _build(hints[name], table[name], f"{prefix}{name}.", problems, default)
            if kwargs[name] is None:  # reported: its default stands in, so that this
                kwargs[name] = default  # section's own values are still checked below
        else:
            n = len(problems)
            kwargs[name] = _convert(hints[name], table[name], prefix + name, problems)
            blocked |= len(problems) > n
    if blocked:
        return None
    built = _construct(cls, base, kwargs, prefix, problems)
    return built if len(problems) == n_before else None


def _construct(cls, base, kwargs: dict, prefix: str, problems: list[str]):
    """``cls(**kwargs)`` (or ``base`` with ``kwargs`` replaced); each problem its checks find
    is added to ``problems``: a setting named by a problem goes back to its default and the
    others are checked again, so one pass reports every bad value of a section."""
    where = prefix.rstrip(".") or "config"
    kwargs = dict(kwargs)
    start = base if base is not None else None
    for _ in range(len(kwargs) + 1):
        try:
            return dataclasses.replace(start, **kwargs) if start is not None else cls(**kwargs)
        except (ValueError, TypeError) as err:
            problems.append(f"{where}: {err}")
            named = [k for k in kwargs if re.match(rf"{re.escape(k)}\b", str(err))]
            if not named or (start is None and not _has_default(cls, named[0])):
                return None
            kwargs.pop(named[0])  # its default (or the base's value) stands in
    return None


def _has_default(cls, name: str) -> bool:
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


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
        root = table.get("data", {}).get("root") if isinstance(table.get("data"), dict) else None
        if isinstance(root, str) and not Path(root).is_dir():  # what a stage would say next
            problems.append(f"data.root: {root}: no such folder")
        raise ConfigError(where, list(dict.fromkeys(problems)))
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
            table, name = _resolved_table(loads_json(raw, path), str(path))
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


class _Needs:
    """The missing-file problems of one stage, collected to be reported at once."""

    def __init__(self, cfg: ExperimentConfig, stage: str):
        self.cfg, self.stage, self.problems = cfg, stage, []

    def __call__(self, key: str, path: Path | None, folder: bool = False, required: bool = True):
        if path is None:
            if required:
                self.problems.append(f"{key}: missing (stage {self.stage} needs it)")
            return
        if not (path.is_dir() if folder else path.is_file()):
            self.problems.append(f"{key}: {path}: no such {'folder' if folder else 'file'}")

    def unlabeled(self) -> None:  # the pair target's unlabeled data
        tgt = self.cfg.pair_target
        role = self.cfg.role(tgt, "unlabeled")
        if role is None:
            self.problems.append(
                f"languages.{tgt}: {self.stage} needs unlabeled target data (unlabeled or train)"
            )
        else:
            self(f"languages.{tgt}.{role}", self.cfg.data_path(tgt, role))


def _model_problems(cfg: ExperimentConfig, stage: str, need: _Needs) -> None:
    """The model folder, and what its config.json says of the settings: a freezing that leaves
    only the head, a max_len beyond its positions, a pooler representation without a pooler."""
    need("model.path", Path(cfg.model.path), folder=True)
    config = model_config(Path(cfg.model.path))  # read once, for the checks below
    positions = None if config is None else config.max_tokens
    if stage in ("btf", "finetune", "selftrain") and config is not None:
        frozen = cfg.freeze(stage).freeze_layers
        if frozen != "all" and frozen >= config.num_hidden_layers:
            head = "the MLM head" if stage == "btf" else "the task head"
            need.problems.append(
                f"{cfg.freeze_key(stage)}: {frozen} freezes all {config.num_hidden_layers} "
                f"layers of the model (only {head} would train in {stage}); set it to 'all' "
                "if that is meant"
            )
    if positions is not None and cfg.model.max_len > positions:
        need.problems.append(
            f"model.max_len: {cfg.model.max_len} is more than the {positions} positions of the "
            f"model ({Path(cfg.model.path) / 'config.json'})"
        )
    pooler = cfg.model.representation == "pooler"
    if stage in ("finetune", "selftrain") and pooler and has_pooler(Path(cfg.model.path)) is False:
        need.problems.append(
            f"model.representation: 'pooler', but {cfg.model.path} holds no pooler.dense "
            "weights (use 'cls' or 'mean')"
        )


def _btf_files(cfg: ExperimentConfig, need: _Needs) -> None:
    for lang in (*cfg.source_languages, cfg.pair_target):
        role = cfg.role(lang, "text")
        if role is None:
            roles = ", ".join(ROLES["text"][lang in cfg.source_languages])
            need.problems.append(f"languages.{lang}: btf needs text (one of {roles})")
        else:
            need(f"languages.{lang}.{role}", cfg.data_path(lang, role))


def _finetune_files(cfg: ExperimentConfig, need: _Needs) -> None:
    for lang in cfg.finetune_languages():
        need(f"languages.{lang}.train", cfg.data_path(lang, "train"))
    dev = cfg.finetune.source or cfg.source
    need(f"languages.{dev}.dev", cfg.data_path(dev, "dev"), required=False)
    if cfg.finetune.parallel_file:
        need("finetune.parallel_file", Path(cfg.finetune.parallel_file))


def _selftrain_files(cfg: ExperimentConfig, need: _Needs) -> None:
    for lang in cfg.source_languages:
        need(f"languages.{lang}.train", cfg.data_path(lang, "train"))
    need.unlabeled()


def _cotrain_files(cfg: ExperimentConfig, need: _Needs) -> None:
    src, tgt = cfg.source, cfg.pair_target
    need(f"languages.{src}.train", cfg.data_path(src, "train"))
    need.unlabeled()
    need(f"languages.{tgt}.dev", cfg.data_path(tgt, "dev"), required=False)
    emb = cfg.cotrain.embedding_model
    if not emb:
        need.problems.append("cotrain.embedding_model: missing (the embedding view's encoder)")
    else:
        need("cotrain.embedding_model", Path(emb), folder=True)


def _evaluate_files(cfg: ExperimentConfig, need: _Needs) -> None:
    split, src = cfg.evaluate.split, cfg.source
    for lang in (src, *cfg.targets):
        need(f"languages.{lang}.{split}", cfg.data_path(lang, split))
    for lang in (x for x in cfg.source_languages if x != src):  # other sources' files
        need(f"languages.{lang}.{split}", cfg.data_path(lang, split), required=False)


def _predict_files(cfg: ExperimentConfig, need: _Needs) -> None:
    if cfg.predict.input is None:
        need.problems.append("predict.input: missing (the file to predict)")
    else:
        need("predict.input", Path(cfg.predict.input))
    if cfg.predict.output is None:
        need.problems.append("predict.output: missing (where to write the predictions)")


STAGE_FILES = {"btf": _btf_files, "finetune": _finetune_files, "selftrain": _selftrain_files,
               "cotrain": _cotrain_files, "evaluate": _evaluate_files, "predict": _predict_files}  # fmt: skip


def check_files(cfg: ExperimentConfig, stage: str) -> None:
    """Every file ``stage`` reads must exist; one ``ConfigError`` lists all that do not."""
    if stage not in STAGE_FILES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    need = _Needs(cfg, stage)
    if not Path(cfg.data.root).is_dir():
        need.problems.append(f"data.root: {cfg.data.root}: no such folder")
    _model_problems(cfg, stage, need)
    STAGE_FILES[stage](cfg, need)
    if need.problems:
        raise ConfigError(cfg.name or "config", need.problems)
