"""Experiment configs: a TOML file (stdlib ``tomllib``) mapped onto frozen dataclasses.

``load_config(path, overrides)`` reads the file (or a stage folder's ``config.json``: the
resolved config that stage ran with, to run it again or alike), applies ``--set key=value``
overrides (dotted keys; the value is read as a TOML value, and as a plain string when it is not
one), and builds an ``ExperimentConfig``. Every problem is collected before anything runs and reported at once in
a ``ConfigError`` naming the file and the key: unknown keys, wrong types, bad values. Missing
files are checked per stage by ``check_files(cfg, stage)``, again naming the key.

Relative data paths (``languages.<lang>.*``) are read against ``data.root``; ``data.root``,
``model.path`` and ``out`` against the working directory. Each registered stage's ``[<stage>]``
table is built with the section its ``registry.Stage`` declares (the built-ins' in
``experiment.stages.<name>``, each deriving from its stage's settings in ``method.settings``),
and a config's ``plugins`` are imported first, so that their stages' tables are known.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.machinery
import importlib.util
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import tomllib

from xlt_engine.data.task import Format, task_kind
from xlt_engine.engine.experiment import registry
from xlt_engine.engine.experiment.from_toml import apply_overrides, build_table
from xlt_engine.engine.method.settings import (
    FreezeLayers,
    FreezeSettings,
    HeadSettings,
    InputSettings,
    check_choices,
    check_device,
    check_encoding,
    check_freeze_layers,
    check_limit,
)
from xlt_engine.engine.train.config import TrainConfig
from xlt_engine.inputs import InputError, parse_json, read_text
from xlt_engine.model.checkpoint import plan_checkpoint
from xlt_engine.model.config import BertConfig

TASKS = ("ner", "classification")
S = TypeVar("S")  # a stage's section class


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
        task_kind(self.format)  # a registered format (a plug-in's included)
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


MultiSource = Literal["teachers", "union"]


# files that may serve a use, in order of preference: ROLES[use][is the source language]
ROLES = {
    "text": {True: ("text", "train"), False: ("text", "unlabeled", "train")},
    "unlabeled": {True: ("unlabeled", "train"), False: ("unlabeled", "train")},
}


SEEDS = 2**32  # numpy's and torch's seeds are unsigned 32-bit integers


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
    plugins: tuple[str, ...] = ()  # modules that register stages, pseudo-label rules, task
    # formats or model families of one's own (imported before the stages' tables are read)
    sections: dict[str, Any] = field(default_factory=dict)  # each registered stage's settings,
    # its [<stage>] table (``cfg.section(Kind)``, ``cfg.settings_of(name)``; no table: its defaults)
    name: str = ""  # set from the file name
    HIDDEN_KEYS: ClassVar[tuple[str, ...]] = ("name", "sections")  # never a key of the file

    @staticmethod
    def extra_keys() -> tuple[str, ...]:
        """The file's keys beside the fields: each registered stage's table."""
        return registry.names()

    def __post_init__(self):
        if (
            isinstance(self.seed, bool)
            or not isinstance(self.seed, int)
            or not 0 <= self.seed < SEEDS
        ):
            raise ValueError(f"seed must be an integer in [0, 2**32), got {self.seed!r}")
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        kind = "ner" if task_kind(self.data.format) == "token" else "classification"
        if kind != self.task:
            raise ValueError(
                f"task {self.task!r} does not go with data.format {self.data.format!r}"
            )
        if self.task == "ner" and self.model.representation != "cls":
            raise ValueError(
                f"model.representation: {self.model.representation!r} is for sequence tasks "
                "(NER labels every word's first sub-token; leave it 'cls')"
            )
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
        if self.target is not None and self.target not in self.targets:
            raise ValueError(f"target: {self.target!r} is not one of targets {list(self.targets)}")
        for key, train in self.train_tables().items():
            if train.seed != 0:
                raise ValueError(f"{key}.seed: set the top-level seed (one for all stages)")
        check_device(self.device)
        for stage in registry.stages():  # a stage's checks: on its section, in this experiment
            if stage.check is not None and stage.name in self.sections:
                stage.check(self.sections[stage.name], self)

    def section(self, kind: type[S]) -> S:
        """The settings of the stage whose section class is ``kind``, typed
        (``cfg.section(SelftrainSection).rule``): its ``[<stage>]`` table, else its defaults."""
        return self.settings_of(registry.by_section(kind).name)

    def settings_of(self, stage: str) -> Any:
        """Stage ``stage``'s settings by name, for code that walks the registered stages (its
        table, else its defaults); code that knows the stage reads ``section``."""
        if stage in self.sections:
            return self.sections[stage]
        kind = registry.get(stage).section
        if kind is None:
            raise ValueError(f"stage {stage!r} has no settings")
        return kind()

    def value_at(self, key: str) -> Any:
        """The value a dotted key (``selftrain.soft.lr``, ``model.max_len``) holds, as the
        stages read it (a stage's section without a table: its defaults)."""
        head, *rest = key.split(".")
        fields = {f.name for f in dataclasses.fields(self)}
        value = getattr(self, head) if head in fields else self.settings_of(head)
        for part in rest:
            value = getattr(value, part)
        return value

    def seeded(self, train: TrainConfig) -> TrainConfig:
        """A stage's training loop with the experiment's seed (one for every stage), and no
        loop checkpoint at its last step (every stage saves its model right after, and drops
        its loop checkpoints once finished) unless they are kept."""
        return dataclasses.replace(
            train, seed=self.seed, final_checkpoint=self.keep_loop_checkpoints
        )

    def train_tables(self) -> dict[str, TrainConfig]:
        """Every training loop's settings, by key (``btf.train``, ``selftrain.soft``...: the
        registered stages' ``trains``)."""
        return {
            f"{stage.name}.{name}": getattr(self.settings_of(stage.name), name)
            for stage in registry.stages()
            for name in stage.trains
        }

    @property
    def source_languages(self) -> tuple[str, ...]:
        """Every source language: ``sources``, or ``source`` alone."""
        return self.sources or (self.source,)

    @property
    def teachers_per_source(self) -> bool:
        """Several sources with one teacher each (``multi_source = "teachers"``)."""
        return len(self.source_languages) > 1 and self.multi_source == "teachers"

    def freeze(self, stage: str) -> FreezeSettings:
        """What ``stage`` (btf, finetune, selftrain) freezes: its section's setting, else
        ``[model]``'s."""
        return self.settings_of(stage).over(self.model)

    def freeze_key(self, stage: str) -> str:
        """The key that set ``stage``'s freeze_layers (for messages)."""
        own = self.settings_of(stage).freeze_layers is not None
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


registry.reserve(f.name for f in dataclasses.fields(ExperimentConfig))  # no stage takes them


def import_plugin(module: str, near: str | Path | None = None):
    """Import the plug-in ``module`` (it registers its stages or rules): from Python's path,
    else from the current directory, else from ``near`` (the folder of the config naming it).
    The same rule for ``python -m xlt_engine.cli`` (which has the current directory on its path)
    and the installed ``xlt-engine`` script (which has not); ``sys.path`` is left as it is."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        top = module.split(".")[0]
        if err.name != top:
            raise
        for folder in dict.fromkeys([Path.cwd(), *([Path(near)] if near else [])]):
            spec = importlib.machinery.PathFinder.find_spec(top, [str(folder)])
            if spec is None or spec.loader is None:
                continue
            package = importlib.util.module_from_spec(spec)
            sys.modules[top] = package
            try:
                spec.loader.exec_module(package)
            except BaseException:
                sys.modules.pop(top, None)
                raise
            return importlib.import_module(module)
        raise


def _import_plugins(table: dict, problems: list[str], near: str | Path | None = None) -> None:
    """Import the modules ``plugins`` names (each registers its stages) before the stages'
    tables are read (``import_plugin``; ``near``: the config file's folder)."""
    plugins = table.get("plugins", [])
    if not isinstance(plugins, list | tuple) or not all(isinstance(p, str) for p in plugins):
        return  # reported as a wrong type by the build
    for module in plugins:
        try:
            import_plugin(module, near)
        except Exception as err:  # whatever the module raises, named
            problems.append(f"plugins: {module!r}: cannot import it ({type(err).__name__}: {err})")


def _sections(table: dict, problems: list[str]) -> dict[str, Any]:
    """Every registered stage's settings from its ``[<stage>]`` table (its defaults where
    absent), taken out of ``table``."""
    out = {}
    for stage in registry.stages():
        if stage.section is None:
            continue
        raw, default = table.pop(stage.name, None), stage.section()
        if raw is not None and not isinstance(raw, dict):
            problems.append(f"{stage.name}: expected a table, got {raw!r}")
            raw = None
        built = (
            None
            if raw is None
            else build_table(stage.section, raw, f"{stage.name}.", problems, default)
        )
        out[stage.name] = default if built is None else built
    return out


def config_from_dict(table: dict, where: str, name: str = "") -> ExperimentConfig:
    problems: list[str] = []
    table = dict(table)
    _import_plugins(table, problems, Path(where).parent if where else None)
    sections = _sections(table, problems)
    cfg = build_table(ExperimentConfig, table, "", problems, given={"sections": sections})
    if problems:
        root = table.get("data", {}).get("root") if isinstance(table.get("data"), dict) else None
        if isinstance(root, str) and not Path(root).is_dir():  # what a stage would say next
            problems.append(f"data.root: {root}: no such folder")
        raise ConfigError(where, list(dict.fromkeys(problems)))
    return dataclasses.replace(cfg, name=name)


CONFIG_BYTES = 16 << 20  # a config of any size a person writes, or a stage's config.json


def _problem(err: Exception, path: Path) -> str:
    """A reader's message about ``path`` without its leading path ("line N: ..." where it had
    one), for a ``ConfigError`` that names the file once."""
    rest = str(err).removeprefix(str(path)).lstrip(": ")
    return f"line {rest}" if re.match(r"\d+:", rest) else rest


def load_config(
    path: str | Path, overrides: list[str] | tuple[str, ...] = (), text: str | None = None
) -> ExperimentConfig:
    """The config of a TOML file, or of a stage folder's ``config.json`` (its ``experiment``
    table: the resolved config, every key set, named as the run's config was), with
    ``overrides`` (``--set``) applied. ``text``: the file's content as read elsewhere (the
    preset at an earlier commit); ``path`` then names it and places its plugins."""
    path = Path(path)
    try:
        if text is None:
            text = read_text(path, limit=CONFIG_BYTES)
    except OSError as err:
        raise ConfigError(str(path), [f"cannot read: {err.strerror}"]) from None
    except InputError as err:
        raise ConfigError(str(path), [_problem(err, path)]) from None
    name = path.stem
    try:
        if path.suffix == ".json":
            table, name = _resolved_table(parse_json(text, path), str(path))
        else:
            table = tomllib.loads(text)
    except InputError as err:
        raise ConfigError(str(path), [_problem(err, path)]) from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(str(path), [f"not valid TOML: {err}"]) from None
    except RecursionError:  # tomllib recurses per nested array or table
        raise ConfigError(str(path), ["TOML nested too deeply to parse; refused"]) from None
    except json.JSONDecodeError as err:
        raise ConfigError(
            str(path),
            [
                f"not valid JSON: {getattr(err, 'reason', err.msg)} (line {err.lineno}, "
                f"column {err.colno})"
            ],
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
    """The resolved config as plain data (for ``config.json`` in the run folder): the TOML
    tree's shape, each stage's table at the top level."""
    out = dataclasses.asdict(cfg)
    if isinstance(cfg, ExperimentConfig):
        out |= out.pop("sections")
    return out


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
        return plan_checkpoint(folder, "encoder", keep_tokenizer=False).pooler
    except (ValueError, OSError):
        return None


class Needs:
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


def _model_problems(cfg: ExperimentConfig, spec: registry.Stage, need: Needs) -> None:
    """The model folder, and what its config.json says of the settings: a freezing that leaves
    only the head, a max_len beyond its positions, a pooler representation without a pooler."""
    need("model.path", Path(cfg.model.path), folder=True)
    config = model_config(Path(cfg.model.path))  # read once, for the checks below
    positions = None if config is None else config.max_tokens
    stage = spec.name
    if spec.freezes is not None and config is not None:
        frozen = cfg.freeze(stage).freeze_layers
        if frozen != "all" and frozen >= config.num_hidden_layers:
            head = spec.freezes
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
    if spec.task_head and pooler and has_pooler(Path(cfg.model.path)) is False:
        need.problems.append(
            f"model.representation: 'pooler', but {cfg.model.path} holds no pooler.dense "
            "weights (use 'cls' or 'mean')"
        )


def check_files(cfg: ExperimentConfig, stage: str) -> None:
    """Every file ``stage`` reads must exist; one ``ConfigError`` lists all that do not."""
    spec = registry.get(stage)
    need = Needs(cfg, stage)
    if not Path(cfg.data.root).is_dir():
        need.problems.append(f"data.root: {cfg.data.root}: no such folder")
    _model_problems(cfg, spec, need)
    if spec.files is not None:
        spec.files(cfg, need)
    if need.problems:
        raise ConfigError(cfg.name or "config", need.problems)
