"""The signatures of a ``registry.Stage``'s hooks, one named type each: what the experiment core
calls and with what. A stage of one's own implements the hooks it needs as plain functions of
these shapes (``typing.Protocol``: nothing to subclass).

The config, plan and needs types are named for readers and type checkers only; at run time
this module imports nothing of the experiment layer (the registry, which every stage imports,
stays below the config)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # types only: config and runs import the registry, which imports this
    from xlt_engine.engine.experiment.config import ExperimentConfig, Needs
    from xlt_engine.engine.experiment.runs import StagePlan

Echo = Callable[[str], None]  # where a stage says what it does (``print``, click.echo)
Progress = Any  # a progress-bar factory, or None (``--no-progress``)


class Build(Protocol):
    """The stage's own config from the experiment's; config problems are raised here, before
    any work (``ValueError`` naming the key)."""

    def __call__(self, cfg: ExperimentConfig) -> Any: ...


class RunStage(Protocol):
    """Run the stage on what ``Build`` made; returns its result (the default: its output)."""

    def __call__(
        self, stage_cfg: Any, *, resume: bool, echo: Echo | None, progress: Progress
    ) -> Any: ...


class Files(Protocol):
    """Say every file the stage reads through ``need(key, path)`` (``need.unlabeled()``: the
    target's unlabeled text), so that a missing one is named before any stage runs."""

    def __call__(self, cfg: ExperimentConfig, need: Needs) -> None: ...


class Plan(Protocol):
    """The stage's ``runs.StagePlan``: the settings that count (``common``: the task, data caps,
    seed... every stage has; ``head``: the model's head settings; ``trained``: for a training
    stage, the world size and its freezing), its input files and the earlier stages it reads."""

    def __call__(
        self, cfg: ExperimentConfig, common: dict, head: dict, trained: dict
    ) -> StagePlan: ...


class FolderName(Protocol):
    """The name of the stage's folder in the run folder (default: the stage's name)."""

    def __call__(self, cfg: ExperimentConfig) -> str: ...


class MakesModel(Protocol):
    """The config under which the stage makes a named model (``selftrain.base = "btf"``...)."""

    def __call__(self, cfg: ExperimentConfig) -> ExperimentConfig: ...


class ModelFolders(Protocol):
    """A model name the stage makes -> its folders (co-training: one view, or both)."""

    def __call__(self, cfg: ExperimentConfig, name: str) -> list[Path]: ...


class Label(Protocol):
    """An evaluation folder's name for a model ``name`` of this stage."""

    def __call__(self, cfg: ExperimentConfig, name: str) -> str: ...


class FolderTest(Protocol):
    """Whether a folder holds work of an earlier run (default: a loop checkpoint)."""

    def __call__(self, folder: Path) -> bool: ...


class Result(Protocol):
    """What a finished stage returns, from its output (default: the output's path)."""

    def __call__(self, output: Path) -> Any: ...


class Check(Protocol):
    """Checks of the stage's table against the experiment (``ValueError`` starting with the
    field's name); run only when the config has the table."""

    def __call__(self, section: Any, cfg: ExperimentConfig) -> None: ...


class Then(Protocol):
    """What ``run --stage <name>`` runs after the stage (finetune: each source's teacher)."""

    def __call__(
        self, cfg: ExperimentConfig, *, resume: bool, echo: Echo | None, progress: Progress
    ) -> None: ...


class Claims(Protocol):
    """The files outside the run folder the stage writes, as ``(path, config key, overwrite)``:
    ``run`` claims each before any work (never an input, nor a file the engine did not write)."""

    def __call__(self, cfg: ExperimentConfig) -> list[tuple[str, str, bool]]: ...


class TableRow(Protocol):
    """A finished stage folder -> its row in the report's table of stages (column -> value)."""

    def __call__(self, folder: Path) -> dict: ...


class LayDown(Protocol):
    """Link the work a finished twin did (``Partial``) into ``folder`` the way a resumed run
    finds its own; returns what it did, for the log (None: nothing to take)."""

    def __call__(self, twin: Path, folder: Path) -> str | None: ...
