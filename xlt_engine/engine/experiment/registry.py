"""Stages as plug-ins: one ``Stage`` object declares everything the experiment core needs to run
a stage, and ``register`` adds it. The core (config loading, planning, fingerprints, reuse,
resume, ``run --stage``) reads these objects and has no table keyed by a stage's name; the
built-in stages register themselves in ``experiment.stages`` and a user's stage registers the
same way from a module of its own (a config names it in ``plugins``, see docs/manual.md)::

    from xlt_engine.engine.experiment.registry import Stage, register

    register(Stage(name="distil", section=DistilSection, build=build, run=run_distil,
                   files=files, plan=plan))

A stage's settings are the ``[<name>]`` table of the experiment config (``cfg.section(section)``, an
instance of ``section``; its default when the table is absent). ``build(cfg)`` makes the
stage's own config dataclass (config problems raised there, before any work); ``run(stage_cfg,
resume=, echo=, progress=)`` runs it. ``plan(cfg, common, head, trained)`` returns the
``runs.StagePlan``: the settings that count (the stage decides which), the input files and the
earlier stages it reads; its fingerprint is what reuse and resume compare. Every hook's
signature is a named type in ``hooks`` (``hooks.Build``, ``hooks.RunStage``, ``hooks.Plan``...).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from xlt_engine import outputs
from xlt_engine.engine.experiment import hooks


@dataclass(frozen=True)
class Partial:
    """Work a stage can take from a finished twin (a folder of the same stage and pair whose
    fingerprint matches in everything but ``free``): self-training's round 1, co-training's
    iteration 1. ``done``: the path (in the twin) that marks that work finished;
    ``lay_down(twin, folder)``: link it into ``folder`` the way a resumed run finds its own."""

    free: tuple[str, ...]  # settings (dotted keys; one ending in "." is a prefix) acting later
    done: str
    lay_down: hooks.LayDown


@dataclass(frozen=True)
class Stage:
    """One stage of an experiment (see the module docstring). Only ``name``, ``build`` and
    ``run`` are required; a stage without ``plan`` has no run folder (predict)."""

    name: str
    build: hooks.Build
    run: hooks.RunStage
    section: type | None = None  # the settings of its [<name>] table (a frozen dataclass)
    files: hooks.Files | None = None
    plan: hooks.Plan | None = None
    folder: hooks.FolderName | None = None
    output: str = "model"  # what a finished stage leaves (its marker), in its folder
    trains: tuple[str, ...] = ()  # the fields of its section that are training loops
    # (``TrainConfig``): ``--tensorboard`` and ``with_trains`` reach them
    freezes: str | None = None  # it trains the encoder with ``freeze_layers``: what alone
    # would train when every layer is frozen ("the task head"); None: it freezes nothing
    task_head: bool = False  # it builds a task head on ``model.path`` (the pooler is checked)
    models: Mapping[str, hooks.MakesModel] = field(default_factory=dict)  # the model names it
    # makes (``selftrain.base = "btf"``...)
    model_folders: hooks.ModelFolders | None = None
    label: hooks.Label | None = None
    started: hooks.FolderTest | None = None
    partial: Partial | None = None
    result: hooks.Result | None = None
    main_only: bool = False  # rank 0 alone runs it, with no collective (evaluate)
    check: hooks.Check | None = None
    then: hooks.Then | None = None
    claims: hooks.Claims | None = None
    table: hooks.TableRow | None = None

    def __post_init__(self):
        if not self.name.isidentifier() or self.name.startswith("_"):
            raise ValueError(
                f"stage name must be a Python identifier (it is a TOML table and an attribute "
                f"of the config), got {self.name!r}"
            )
        if self.name in _RESERVED:
            raise ValueError(f"stage name {self.name!r} is a top-level setting of the config")

    def folder_name(self, cfg) -> str:
        return self.folder(cfg) if self.folder is not None else self.name


# names no stage may take: the experiment config's top-level keys (``config`` reserves them
# where it defines them) and ``all`` (``run --stage all``)
_RESERVED: set[str] = {"all"}


def reserve(names) -> None:
    """Names no stage may take (the config's own keys)."""
    _RESERVED.update(names)


_STAGES: dict[str, Stage] = {}


def register(stage: Stage, replace: bool = False) -> Stage:
    """Add ``stage`` (after those registered before it: ``names()`` keeps the order). A second
    stage of the same name is refused unless ``replace``; so is a model name another stage
    makes."""
    if stage.name in _STAGES and not replace:
        raise ValueError(f"a stage named {stage.name!r} is registered already")
    if "pretrained" in stage.models:  # the name of model.path itself
        raise ValueError(
            f"stage {stage.name!r}: 'pretrained' names model.path, not a stage's model"
        )
    for other in _STAGES.values():
        if other.name == stage.name:
            continue
        if shared := sorted(set(other.models) & set(stage.models)):
            raise ValueError(f"stage {stage.name!r}: the model names {shared} are {other.name!r}'s")
    _STAGES[stage.name] = stage
    if stage.claims is not None:  # it writes files outside the run folder: a writer
        outputs.register_writer(stage.name, "file")
    return stage


def unregister(name: str) -> None:
    """Remove a stage (a test's own, when it is done)."""
    _STAGES.pop(name, None)
    outputs.unregister_writer(name)


def names() -> tuple[str, ...]:
    """The registered stages, in the order they were registered (the built-ins': btf,
    finetune, selftrain, cotrain, evaluate, predict)."""
    return tuple(_STAGES)


def get(name: str) -> Stage:
    if name not in _STAGES:
        raise ValueError(f"stage must be one of {', '.join(_STAGES)}, got {name!r}")
    return _STAGES[name]


def stages() -> tuple[Stage, ...]:
    return tuple(_STAGES.values())


def by_section(kind: type) -> Stage:
    """The registered stage whose settings class is ``kind``."""
    for stage in _STAGES.values():
        if stage.section is kind:
            return stage
    raise ValueError(f"no registered stage has the settings {kind.__name__}")


def model_maker(name: str) -> tuple[Stage, hooks.MakesModel] | None:
    """The stage that makes the model called ``name``, with the config change under which it
    makes it; None when no stage does (a folder, or "pretrained")."""
    for stage in stages():
        if name in stage.models:
            return stage, stage.models[name]
    return None


def model_names() -> tuple[str, ...]:
    """Every model name a stage makes ("btf", "finetune", "finetune-direct", "selftrain"...)."""
    return tuple(n for s in stages() for n in s.models)
