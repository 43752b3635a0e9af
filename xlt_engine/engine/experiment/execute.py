"""Running one stage of an experiment: ``run_stage`` plans it (``runs``), checks its folder's
fingerprint, reuses a finished twin or takes a partial one's work (``registry.Partial``),
resumes or runs it, and records what it took. It reads the stage from the registry
(``registry.Stage``): nothing here is keyed by a stage's name.

Every stage folder gets ``fingerprint.json`` (``runs``), ``config.json`` (the resolved
experiment and stage configs) and ``run.json`` (package version, git sha, torch / Python
versions, command line, world size, and once the stage is done its wall time ``seconds``: this
run of it; ``seconds_all_runs`` adds the runs a resumed stage continues, interrupted ones
included, whose time each interrupted run records there as it stops).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import time
from pathlib import Path

from xlt_engine import provenance
from xlt_engine.engine.experiment import registry
from xlt_engine.engine.experiment.config import (
    ConfigError,
    ExperimentConfig,
    check_files,
    import_plugin,
    to_dict,
)
from xlt_engine.engine.experiment.runs import (
    FINGERPRINT,
    check_plans,
    pair_twin,
    partial_twin,
    plan_stage,
)
from xlt_engine.engine.method.evaluate import EVAL_WALL
from xlt_engine.engine.train import distributed
from xlt_engine.engine.train.checkpoints import drop_checkpoints
from xlt_engine.engine.train.distributed import rank_world, resolve_device
from xlt_engine.engine.train.loop import LOOP_WALL
from xlt_engine.engine.train.optim import assume_native_bf16
from xlt_engine.fileio import (
    DEBRIS,
    LOCK_FILE,
    atomic_folder,
    atomic_write_text,
    folder_lock,
    link_tree,
    remove_debris,
)
from xlt_engine.inputs import read_json


def plugin_folders(plugins) -> dict[str, str]:
    """For each plug-in module, the folder its top package was imported from (what
    ``config.import_plugin`` needs to import it again in another process, from anywhere)."""
    out = {}
    for module in plugins:
        top = sys.modules.get(module.split(".")[0])
        where = getattr(top, "__file__", None)
        if where:
            path = Path(where).resolve()
            out[module] = str(path.parent.parent if path.name == "__init__.py" else path.parent)
    return out


def load_plugins(stage_folder: Path) -> tuple[list[str], list[str]]:
    """Import the plug-ins the run's saved config (``config.json`` of a stage folder) names,
    as ``run`` did (``config.import_plugin``), so that ``report`` and ``accept-code`` know their
    stages; the modules it names and those that could not be imported (a warning names each)."""
    import warnings

    saved = stage_folder / "config.json"
    try:
        doc = read_json(saved) if saved.is_file() else {}
    except (OSError, ValueError) as err:
        raise ValueError(str(err) if str(saved) in str(err) else f"{saved}: {err}") from None
    experiment = doc.get("experiment") if isinstance(doc, dict) else None
    plugins = experiment.get("plugins", []) if isinstance(experiment, dict) else []
    folders = doc.get("plugin_folders", {}) if isinstance(doc, dict) else {}
    plugins = [str(m) for m in plugins] if isinstance(plugins, list) else []
    missing = []
    for module in plugins:
        near = folders.get(module) if isinstance(folders, dict) else None
        try:
            import_plugin(str(module), near if isinstance(near, str) else None)
        except Exception as err:  # whatever the module raises, named
            warnings.warn(f"{saved}: plugin {module!r} cannot be imported ({err})", stacklevel=2)
            missing.append(str(module))
    return plugins, missing


def write_run_info(folder: Path, cfg: ExperimentConfig, stage: str, stage_cfg) -> None:
    if rank_world()[0] != 0:
        return
    folder.mkdir(parents=True, exist_ok=True)
    resolved = {
        "experiment": to_dict(cfg),
        "stage": stage,
        "stage_config": dataclasses.asdict(stage_cfg),
        "plugin_folders": plugin_folders(cfg.plugins),  # where report imports them from
    }
    atomic_write_text(folder / "config.json", json.dumps(resolved, indent=2) + "\n")
    env = provenance.environment(resolve_device(cfg.device))
    info = {
        "version": env.pop("xlt_engine"),
        **env,
        "argv": sys.argv,
        "world_size": rank_world()[1],
    }
    atomic_write_text(folder / "run.json", json.dumps(info, indent=2) + "\n")


def build_stage(cfg: ExperimentConfig, stage: str):
    """The stage's config dataclass; every config problem is raised here, before any run."""
    check_files(cfg, stage)
    return _built(cfg, registry.get(stage))


def _built(cfg: ExperimentConfig, spec: registry.Stage):
    """``spec.build(cfg)``, its own checks' errors as config errors (the files checked)."""
    stage = spec.name
    try:
        return spec.build(cfg)
    except ConfigError:
        raise
    except ValueError as err:  # a stage config's own check (e.g. a model of the wrong kind)
        raise ConfigError(cfg.name or "config", [f"[{stage}] {err}"]) from None


def run_stage(
    cfg: ExperimentConfig,
    stage: str,
    resume: bool = False,
    echo=print,
    progress=None,
    reuse: bool = False,
):
    """Run one stage of ``cfg``: its config problems and a stale folder (``runs``) are raised
    before any work. A finished stage with the same fingerprint is not run again: with
    ``reuse`` or ``resume`` its output is returned (evaluate: the results dict), else it is an
    error (a second fresh run into one folder is a mistake more often than not). A started one
    needs ``resume``. Under torchrun the process group is joined first; evaluate and predict run
    on rank 0 only."""
    distributed.init(cfg.device)
    main = rank_world()[0] == 0
    spec = registry.get(stage)
    if spec.plan is None:  # no run folder (predict): built and run, nothing to reuse
        stage_cfg = build_stage(cfg, stage)
        if spec.main_only and not main:
            return None
        return spec.run(stage_cfg, resume=resume, echo=echo, progress=progress)
    check_files(cfg, stage)
    plan = plan_stage(cfg, stage)
    check_plans([plan])
    finished, started = plan.output.exists(), plan.started()
    twin = None if finished or started else pair_twin(plan)
    distributed.barrier()  # every rank has looked before rank 0 writes (a twin links in a blink)
    if finished:
        if not (reuse or resume):
            raise ValueError(
                f"{plan.folder} holds the finished {stage} of an earlier run with "
                "the same settings: --resume returns it as it is, or choose "
                "another folder (--out)"
            )
        if echo:
            echo(f"{stage}: {plan.output} exists with the same fingerprint, not run again")
        return _result(spec, plan)
    if started and not resume:
        raise ValueError(
            f"{plan.folder} holds the checkpoints of an earlier run: resume it "
            "(--resume) or choose another folder (--out)"
        )
    stage_cfg = _built(cfg, spec)  # its files were checked above
    with contextlib.ExitStack() as held:
        if main:  # one process per stage folder (rank 0 speaks for a torchrun job)
            held.enter_context(folder_lock(plan.folder, f"the {stage} stage"))
        if twin is not None:
            return _take_twin(cfg, stage, stage_cfg, plan, twin, main, echo)
        return _run_locked(cfg, stage, stage_cfg, plan, main, resume, echo, progress)


def _take_twin(cfg, stage, stage_cfg, plan, twin: Path, main: bool, echo):
    """The finished stage ``twin`` (``pair_twin``: another pair's folder with this very
    fingerprint) linked into this stage's folder instead of computed again: its files as hard
    links, loop checkpoints left out, the output last (a kill before it leaves no finished
    folder); this run's own config.json, and run.json with ``shared_from`` and the seconds
    the twin took (what the stage costs from nothing)."""
    spec = registry.get(stage)
    output = plan.output.relative_to(plan.folder)
    own = {FINGERPRINT, "run.json", "config.json", LOCK_FILE}

    def skip(rel: Path) -> bool:
        name = rel.name
        return (
            str(rel) in own
            or rel == output
            or name == "latest"
            or name.startswith("ckpt-")
            or DEBRIS.match(name) is not None
        )

    if main:
        remove_debris(plan.folder)
        plan.begin()
        write_run_info(plan.folder, cfg, stage, stage_cfg)
        link_tree(twin, plan.folder, skip)
        if (twin / output).is_dir():
            with atomic_folder(plan.output) as tmp:
                link_tree(twin / output, tmp)
        else:
            link_tree(twin, plan.folder, lambda rel: rel.parts[0] != output.parts[0])
        theirs = twin / "run.json"
        info = read_json(theirs) if theirs.is_file() else {}
        record_seconds(plan.folder, info.get("seconds"), shared_from=str(twin))
        if echo:
            echo(
                f"{stage}: {twin} made it with the same fingerprint (another pair's); linked "
                f"into {plan.folder}, not run again"
            )
    if spec.main_only:
        return _result(spec, plan) if main else None
    distributed.barrier()
    return _result(spec, plan)


def _result(spec: registry.Stage, plan) -> object:
    """What a finished stage returns: its output's path, or what the stage reads from it."""
    return spec.result(plan.output) if spec.result is not None else plan.output


def _run_locked(cfg, stage, stage_cfg, plan, main, resume, echo, progress):
    spec = registry.get(stage)
    start = time.perf_counter()
    earlier = _all_runs(plan.folder) if main else 0.0  # before run.json is written anew
    began = _began_with(plan.folder) if main else None  # likewise
    if main:
        removed = remove_debris(plan.folder)  # what a kill left half-written
        if removed and echo:
            echo(f"{stage}: removed {len(removed)} temporary file(s) a killed run left")
        plan.begin()
        write_run_info(plan.folder, cfg, stage, stage_cfg)
    taken, twin_began = _take_partial(cfg, spec, plan, main, echo)
    resume = taken or resume
    began = twin_began if twin_began is not None else began  # its work begun by the twin
    earlier = earlier if resume else 0.0  # a stage run from nothing counts from nothing
    native = _precision_basis(cfg, stage, plan.folder, began if resume else None, main, echo)
    try:
        with assume_native_bf16(native):
            if spec.main_only:  # rank 0 alone, and no collective: the others go on at once
                if not main:
                    return None
                result = spec.run(stage_cfg, resume=resume, echo=echo, progress=progress)
            else:
                distributed.barrier()
                result = spec.run(stage_cfg, resume=resume, echo=echo, progress=progress)
    except BaseException:  # interrupted or failed: what it took counts when it is resumed
        if main and (plan.folder / "run.json").is_file():
            _record(plan.folder, seconds_all_runs=round(earlier + time.perf_counter() - start, 3))
        raise
    seconds = time.perf_counter() - start
    if main:
        total = round(earlier + seconds, 3)
        record_seconds(
            plan.folder, seconds, seconds_all_runs=total, **stage_wall(plan.folder, total)
        )
        freed = 0 if cfg.keep_loop_checkpoints else drop_checkpoints(plan.folder)
    if echo and main:
        dropped = f" (dropped its loop checkpoints: {freed / 2**30:.2f} GiB)" if freed else ""
        echo(
            f"{stage}: done in {format_seconds(seconds)}; wrote {plan.folder}, result "
            f"{plan.output}{dropped}"
        )
    return result


PRECISION_BASIS = "precision_basis"  # run.json: what precision "auto" decided by


def _began_with(folder: Path) -> bool | None:
    """Whether the CPU that began the stage in ``folder`` had native bf16, from its run.json
    (None: no earlier run, or one from before the record)."""
    try:
        basis = read_json(folder / "run.json").get(PRECISION_BASIS)
        value = basis.get("cpu_native_bf16") if isinstance(basis, dict) else None
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, bool) else None


def _precision_basis(cfg, stage: str, folder: Path, began, main: bool, echo) -> bool:
    """The native bf16 that precision "auto" assumes while the stage runs: the machine's that
    began it (``began``, for a resumed stage), else this one's; in run.json (rank 0) and the
    same on every rank (rank 0's answer). On a CPU, said when it is not this machine's."""
    here = provenance.cpu_info()["native_bf16"]
    native = distributed.broadcast_object(here if began is None else began)
    if main:
        _record(folder, **{PRECISION_BASIS: {"cpu_native_bf16": native}})
        if echo and native != here and resolve_device(cfg.device).type == "cpu":
            has = {True: "with", False: "without"}
            echo(
                f"{stage}: resumed as it began: precision 'auto' decides as on the CPU "
                f"{has[native]} native bf16 it began on (this one is {has[here]})"
            )
    return native


def _take_partial(cfg, spec: registry.Stage, plan, main: bool, echo) -> tuple[bool, bool | None]:
    """Lay down a twin's finished first part (``registry.Partial``) where this folder has not
    made its own, rank 0 under the folder's lock. Returns whether the folder then holds work a
    resumed run reads (the stage is run with ``resume``), and, when the twin's part was laid
    down, the native bf16 of the CPU the twin began on (``_began_with``): the rest of the work
    continues in the precision its first part was made in."""
    if spec.partial is None:
        return False, None
    twin = partial_twin(cfg, spec.name, plan) if main else None
    began = None
    if twin is not None:
        said = spec.partial.lay_down(twin, plan.folder)
        if said:
            began = _began_with(twin)
            if echo:
                echo(f"{spec.name}: {said}")
    distributed.barrier()
    return plan.started(), began


def stage_wall(folder: Path, total: float) -> dict:
    """``{"wall": ...}`` for ``run.json`` when the stage's own training loop ran in ``folder``
    (btf, finetune): the loop's parts over every run (``loop-wall.json``: training steps, dev
    evaluation, checkpoints) and ``other``, the rest of the stage's ``total`` seconds (reading
    and encoding the data, loading and saving the model); for an evaluation its parts
    (``eval-wall.json``: model load, reading, encoding, forward-only passes, scoring) and
    ``other``; else ``{}`` (self-training keeps its finer breakdown in ``summary.json``)."""
    path = next((folder / n for n in (LOOP_WALL, EVAL_WALL) if (folder / n).is_file()), None)
    try:
        loop = read_json(path) if path is not None else None
    except ValueError:
        return {}
    if not isinstance(loop, dict):
        return {}
    parts = {k: float(v) for k, v in loop.items() if type(v) in (int, float)}
    return {"wall": {**parts, "other": round(max(0.0, total - sum(parts.values())), 3)}}


def record_seconds(folder: Path, seconds: float | None, **extra) -> None:
    """Add the stage's wall time (this run of it: a resumed stage counts from its resume; None
    where unknown) and ``extra`` keys to its ``run.json``."""
    _record(folder, seconds=None if seconds is None else round(seconds, 3), **extra)


def _record(folder: Path, **keys) -> None:
    path = folder / "run.json"
    info = read_json(path) if path.is_file() else {}
    atomic_write_text(path, json.dumps(info | keys, indent=2) + "\n")


def _all_runs(folder: Path) -> float:
    """The seconds the stage's earlier runs in ``folder`` took, all of them (0 when none
    recorded it: a folder from before the record, or a stage never started)."""
    try:
        info = read_json(folder / "run.json")
        return float(info.get("seconds_all_runs") or 0.0)
    except (OSError, ValueError, TypeError, AttributeError):
        return 0.0


def format_seconds(seconds: float) -> str:
    """12.3 s, 4 min 05 s, 2 h 03 min."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
