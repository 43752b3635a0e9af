"""Run folders: where each stage of an experiment writes, what produced it, and whether it may be
reused, resumed or must run. The one place these rules live.

Layout (``cfg.run_dir()`` = ``<out>/<source>-<target>``, one per source-target pair, for a
single stage and ``run --stage all`` alike; the tables over all pairs go to ``<out>``)::

    btf/                     base-model/ (the Base Model), texts/, cache/, checkpoints
    finetune/                model/ (fine-tuned from the Base Model)         (finetune.init = btf)
    finetune-direct/         the same from the pretrained model   (finetune.init = pretrained)
    selftrain/               round-<r>/..., model/ (the final student)      (selftrain.base = btf)
    selftrain-direct/        the same from the pretrained model
    cotrain/                 iter-<k>/{lm,emb}/..., cotrain.json     (paper 003's co-training)
    cotrain-self/            the same with each view's rows kept by itself (exchange = self)
    evaluate-<model folder>/ results.json, results.md
    evaluate-cotrain-<view>/ co-training's lm or emb view, or the mean of both

Ablation variants add ``-voters<M>`` (model.voters != 3) to finetune and selftrain folders,
``-la`` / ``-tt`` / ``-sa`` (paper 003's Label Alignment, translate-train, Semantic Alignment) to
finetune folders, ``-alpha<A>`` (a fixed threshold), ``-rounds<N>`` (N other than the
paper's 1.5), ``-<rule name>`` (a rule other than the paper's), ``-src<filter>`` (a source
filter other than ``correct``) and ``-init_<student_init>`` (students that start from another
encoder than the Base Model) to selftrain folders, so the rows of an ablation and the studies share the folders whose settings they share
(btf always). A model given by a folder inside the run folder is evaluated into
``evaluate-<its path, "/" as "-", less the trailing "model">`` (a round's student:
``evaluate-selftrain-rounds3-round-2-soft``), any other folder into ``evaluate-model``.

**Fingerprints.** Every stage folder holds ``fingerprint.json``, written before the stage does
any work: the stage's resolved settings (dotted keys, only those the stage reads), the
fingerprints of the stages it reads (its upstream), and the identity of every input file (size
and the sha256 of its bytes, so a copied or touched file that holds the same bytes changes
nothing; a model folder given by path: every file in it). A finished stage is reused only when
its recorded fingerprint matches the one the current config gives (``StagePlan.differences``);
a started one is resumed only then. Any
difference stops the run before any work with a ``StaleStageError`` listing each changed key
with its old and new value: a finished stage's results are never overwritten in place.
Settings that do not change results (log/save intervals, kept checkpoints, the device, the
inference batch size) are left out; the number of processes of a training stage is in (the
global batch and a checkpoint's data position depend on it). A fingerprint carries its format
(``FORMAT``): one of another format is refused, naming it, never read in a compatible way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from xlt_engine.engine.experiment import registry
from xlt_engine.engine.experiment.code import describe_change, stage_code
from xlt_engine.engine.experiment.config import LIMITS, ConfigError, ExperimentConfig
from xlt_engine.engine.method.settings import FreezeSettings
from xlt_engine.engine.train.checkpoints import latest_checkpoint
from xlt_engine.engine.train.config import RESUME_FREE
from xlt_engine.engine.train.distributed import rank_world
from xlt_engine.fileio import atomic_write_text, file_sha256
from xlt_engine.inputs import read_json

FINGERPRINT = "fingerprint.json"
# training settings that change neither a stage's results nor what it reads: those a resume may
# change (the loop's own list, written once)
VOLATILE = RESUME_FREE
# the fingerprint's format: a folder recorded in another one is refused, naming it (its results
# are kept; nothing of an older format is read in a compatible way)
FORMAT = 2
# what a fingerprint's digest is taken of (a record also holds the digest, and ``accepted``:
# the digests it had before each ``xlt-engine accept-code``)
BODY = ("format", "stage", "settings", "inputs", "upstream", "code")


def body_digest(record: dict) -> str:
    """The sha256 of a fingerprint's body (``BODY``), canonical JSON."""
    body = {k: record[k] for k in BODY if k in record}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


class StaleStageError(ValueError):
    """Stage folders made with other settings than the current config's."""


def with_section(cfg: ExperimentConfig, section: str, **changes) -> ExperimentConfig:
    """``cfg`` with fields of one section replaced (e.g. ``finetune``, ``init="pretrained"``;
    a stage's section or ``model`` / ``data``)."""
    fields = {f.name for f in dataclasses.fields(cfg)}
    old = getattr(cfg, section) if section in fields else cfg.settings_of(section)
    new = dataclasses.replace(old, **changes)
    if section in fields:
        return dataclasses.replace(cfg, **{section: new})
    return dataclasses.replace(cfg, sections={**cfg.sections, section: new})


def with_trains(cfg: ExperimentConfig, **changes) -> ExperimentConfig:
    """``cfg`` with the same fields replaced in every training loop's settings
    (``cfg.train_tables()``), e.g. ``max_steps=4``."""
    for key, train in cfg.train_tables().items():
        section, name = key.split(".")
        cfg = with_section(cfg, section, **{name: dataclasses.replace(train, **changes)})
    return cfg


def with_linear_head(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` with the plain linear head (``model.head = "linear"``): the direct-transfer
    baseline and the -VM ablation."""
    return with_section(cfg, "model", head="linear", voter_widths=())


def variant(cfg: ExperimentConfig) -> str:
    """The head in a trained stage folder's name: ``-linear``, ``-voters<M>`` (M not 3)."""
    if cfg.model.head == "linear":
        return "-linear"
    return f"-voters{cfg.model.voters}" if cfg.model.voters != 3 else ""


def stage_dir(cfg: ExperimentConfig, stage: str) -> Path:
    """The folder of ``stage`` for this config (its ``Stage.folder``; see the module
    docstring)."""
    return cfg.run_dir() / registry.get(stage).folder_name(cfg)


def named_models() -> tuple[str, ...]:
    """The model names a config may give for a model (``finetune.init``, ``evaluate.model``...):
    ``pretrained`` and every name a registered stage makes."""
    return ("pretrained", *registry.model_names())


def model_stage(cfg: ExperimentConfig, name: str) -> tuple[ExperimentConfig, str]:
    """The (config, stage) whose output is the model called ``name``."""
    maker = registry.model_maker(name)
    if maker is None:
        raise ValueError(f"no stage makes a model named {name!r}")
    stage, change = maker
    return change(cfg), stage.name


def output_of(cfg: ExperimentConfig, stage: str) -> Path:
    """What a finished stage leaves (its ``Stage.output``: a model folder, evaluate's
    results.json...)."""
    return stage_dir(cfg, stage) / registry.get(stage).output


def model_paths(cfg: ExperimentConfig, name: str, key: str, must_exist: bool = True) -> list[Path]:
    """The model folders a name stands for: one (``model_path``), or several whose
    mean-of-voters probabilities are averaged (an ensemble: co-training's ``cotrain-mean``,
    its two views' models), as the stage that makes it says (``Stage.model_folders``)."""
    maker = registry.model_maker(name)
    if maker is None or maker[0].model_folders is None:
        return [model_path(cfg, name, key, must_exist)]
    stage, change = maker
    made = change(cfg)
    if must_exist and not output_of(made, stage.name).exists():
        raise ConfigError(
            cfg.name or "config",
            [
                f"{key}: {name!r}: {stage_dir(made, stage.name)} holds no finished {stage.name} "
                f"(run the {stage.name} stage first)"
            ],
        )
    return stage.model_folders(made, name)


_NUMBERS = {2: "two", 3: "three", 4: "four"}


def model_path(cfg: ExperimentConfig, name: str, key: str, must_exist: bool = True) -> Path:
    """A model named by a stage ("pretrained", "btf", "finetune", "finetune-direct",
    "selftrain", one co-training view: "cotrain-lm", "cotrain-emb": ``named_models``) or a
    folder; ``key`` is the config key that named it (for errors)."""
    maker = registry.model_maker(name)
    if maker is not None and maker[0].model_folders is not None:
        paths = model_paths(cfg, name, key, must_exist)
        if len(paths) > 1:
            raise ConfigError(
                cfg.name or "config",
                [
                    f"{key}: {name!r} is the mean of {_NUMBERS.get(len(paths), len(paths))} models "
                    "(only evaluate and predict read an ensemble); name one of them"
                ],
            )
        return paths[0]
    if name == "pretrained":
        path = Path(cfg.model.path)
    elif maker is not None:
        path = output_of(*model_stage(cfg, name))
    else:
        path = Path(name)
    if must_exist and not path.is_dir():
        hint = ""
        if maker is not None:
            stage = maker[0]
            hint = f" (run the {stage.name} stage first"
            # e.g. finetune ran with finetune.init = "pretrained": its model is finetune-direct
            for other in (n for n in stage.models if n != name):
                if output_of(*model_stage(cfg, other)).is_dir():
                    hint += f", or set {key} = {other!r}: that model exists"
            hint += ")"
        raise ConfigError(cfg.name or "config", [f"{key}: {path}: no such folder{hint}"])
    return path


# ---------------------------------------------------------------------------------------------
# fingerprints


def file_identity(path: Path) -> dict:
    """Size and the sha256 of the whole file: what it holds, not when it was written, so a
    copy or a touch of a data file leaves every stage that read it valid."""
    return {"size": path.stat().st_size, "sha256": file_sha256(path)}


def same_file(old: dict, new: dict) -> bool:
    """Whether a file (identity ``new``) holds what the record ``old`` says."""
    return old.get("size") == new["size"] and old.get("sha256") == new["sha256"]


def _file_changes(old: dict, new: dict) -> list[str]:
    """For an input whose path is unchanged: the files that no longer hold what ``old`` says
    ([] for a single file that does; ``[""]`` for one that does not)."""
    if "files" not in old and "files" not in new:
        return [] if same_file(old, new) else [""]
    fo, fn = old.get("files", {}), new.get("files", {})
    names = sorted(set(fo) | set(fn))
    return [n for n in names if n not in fo or n not in fn or not same_file(fo[n], fn[n])]


def input_identity(path: Path) -> dict:
    """A file's identity, or for a folder the identity of every file directly in it."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file())
        return {"path": str(path), "files": {p.name: file_identity(p) for p in files}}
    return {"path": str(path), **file_identity(path)}


def flat(prefix: str, value, out: dict) -> dict:
    """``value``'s settings as dotted keys under ``prefix`` (a dataclass: each field, those
    that change no result left out: ``VOLATILE``), added to ``out``."""
    if dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            v = getattr(value, f.name)
            if f.name not in VOLATILE:
                flat(f"{prefix}.{f.name}", v, out)
    else:
        out[prefix] = list(value) if isinstance(value, tuple) else value
    return out


@dataclass
class StagePlan:
    """One stage of an experiment: its folder, settings, inputs and upstream stages."""

    cfg: ExperimentConfig
    stage: str
    settings: dict
    inputs: dict[str, Path]
    upstream: dict[str, StagePlan] = field(default_factory=dict)
    _fingerprint: dict | None = None

    @property
    def folder(self) -> Path:
        return stage_dir(self.cfg, self.stage)

    @property
    def output(self) -> Path:
        return output_of(self.cfg, self.stage)

    def fingerprint(self) -> dict:
        if self._fingerprint is None:
            body = {
                "format": FORMAT,
                "stage": self.stage,
                "settings": self.settings,
                "inputs": {k: input_identity(p) for k, p in sorted(self.inputs.items())},
                "upstream": {
                    k: u.fingerprint()["digest"] for k, u in sorted(self.upstream.items())
                },
            }
            code = stage_code(self.stage, self.cfg.plugins)
            if code is not None:  # the code the result comes from (code.py)
                body["code"] = code
            self._fingerprint = {**body, "digest": body_digest(body)}
        return self._fingerprint

    def recorded(self) -> dict | None:
        path = self.folder / FINGERPRINT
        if not path.is_file():
            return None
        try:
            return read_json(path)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise StaleStageError(f"{path}: unreadable ({err}); move the folder away") from None

    def started(self) -> bool:
        """Work of an earlier run is in the folder (a loop checkpoint, or what the stage says:
        ``Stage.started``)."""
        spec = registry.get(self.stage)
        if spec.started is not None:
            return spec.started(self.folder)
        return latest_checkpoint(self.folder) is not None

    def differences(self) -> list[str]:
        """What changed since the folder's fingerprint was written ([] when it matches or the
        folder holds no work). Equal digests match at once; otherwise each part is compared:
        an input by what its files hold (``same_file``), an upstream stage by its digest, or
        else by being the very folder recorded (its own recorded digest) and still valid, as
        when its own record is valid in another form. A record of another format is refused."""
        old = self.recorded()
        if old is None:
            has_work = self.output.exists() or (self.folder.is_dir() and self.started())
            return ["no fingerprint.json (made by an older xlt-engine)"] if has_work else []
        if old.get("format", 1) != FORMAT:
            return [
                f"fingerprint.json of format {old.get('format', 1)} (written by an older "
                f"xlt-engine; this one writes format {FORMAT} and reads no other)"
            ]
        new = self.fingerprint()
        if old.get("digest") == new["digest"]:
            return []
        return _diff(old, new, self.upstream)

    def begin(self) -> None:
        """Record the fingerprint (rank 0, before the stage's first write)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.recorded() is None:
            text = json.dumps(self.fingerprint(), indent=2, default=str) + "\n"
            atomic_write_text(self.folder / FINGERPRINT, text)


def _same_upstream(recorded: str, plan: StagePlan | None) -> bool:
    if plan is None:
        return False
    theirs = plan.recorded()
    if theirs is None:
        return False
    known = {theirs.get("digest"), *(a.get("digest") for a in accepted(theirs))}
    return recorded in known and not plan.differences()


def accepted(record: dict) -> list[dict]:
    """The record's earlier digests and code, one entry per ``accept-code`` (oldest first)."""
    history = record.get("accepted")
    return [a for a in history if isinstance(a, dict)] if isinstance(history, list) else []


def _diff(old: dict, new: dict, upstream: dict[str, StagePlan]) -> list[str]:
    out = []
    parts = (("settings", ""), ("upstream", "upstream "), ("inputs", "input "))
    out += describe_change(old.get("code") or {}, new.get("code") or {})
    for part, label in parts:
        a, b = old.get(part, {}), new.get(part, {})
        for key in sorted(set(a) | set(b)):
            x, y = a.get(key, "(absent)"), b.get(key, "(absent)")
            if x == y:
                continue
            if part == "inputs" and isinstance(x, dict) and isinstance(y, dict):
                if x.get("path") != y.get("path"):
                    out.append(f"{label}{key}: {x.get('path')} -> {y.get('path')}")
                elif changed := _file_changes(x, y):
                    out.append(f"{label}{key}: {_describe_file_change(x, y, changed)}")
            elif part == "upstream":
                if not _same_upstream(x, upstream.get(key)):
                    out.append(f"{label}{key}: fingerprint {str(x)[:12]} -> {str(y)[:12]}")
            else:
                out.append(f"{label}{key}: {x!r} -> {y!r}")
    return out


def _describe_file_change(x: dict, y: dict, changed: list[str]) -> str:
    if changed != [""]:
        return f"{y['path']}: files changed: {', '.join(changed)}"
    if x.get("size") != y.get("size"):
        return f"{y['path']}: size, sha256 changed (size {x.get('size')} -> {y.get('size')})"
    return f"{y['path']}: sha256 changed"


def check_plans(plans: list[StagePlan]) -> None:
    """Every planned stage whose folder was made with other settings, in one error."""
    problems = []
    seen = set()
    for plan in plans:
        if plan.folder in seen:
            continue
        seen.add(plan.folder)
        diff = plan.differences()
        if diff:
            problems.append(
                f"{plan.folder} was made with other settings:\n    " + "\n    ".join(diff)
            )
    if problems:
        raise StaleStageError(
            "\n".join(problems)
            + "\nIts results are kept as they are. To proceed: run into another "
            "folder (--out), or move that folder away to compute it again with the current "
            "settings and code, or restore the settings (or the code) it was made with; a "
            "code change you judge harmless: xlt-engine accept-code <folder>."
        )


# ---------------------------------------------------------------------------------------------
# what each stage reads


def unlabeled_role(cfg: ExperimentConfig) -> str:
    return cfg.role(cfg.pair_target, "unlabeled")


def model_input(cfg: ExperimentConfig, name: str, key: str, plan: StagePlan) -> None:
    """A model the stage reads: a planned stage (upstream) or a folder (input)."""
    if registry.model_maker(name) is not None:
        if name == plan.stage:
            raise ConfigError(cfg.name or "config", [f"{key}: {name!r} is this stage's own output"])
        plan.upstream[key] = plan_stage(*model_stage(cfg, name))
    else:
        plan.inputs[key] = model_path(cfg, name, key, must_exist=False)


def plan_stage(cfg: ExperimentConfig, stage: str) -> StagePlan:
    """The stage's settings, inputs and upstream stages (nothing is read but file headers)."""
    spec = registry.get(stage)
    if spec.plan is None:
        raise ValueError(f"stage {stage!r} has no run folder")
    common = {
        "task": cfg.task,
        "data.format": cfg.data.format,
        "seed": cfg.seed,
        "model.max_len": cfg.model.max_len,
        # the data caps of a small run, when set
        **{
            f"data.{k}": v
            for k in (*LIMITS, "encoding", "unlabeled_format")
            if (v := getattr(cfg.data, k)) is not None
        },
    }
    if len(cfg.source_languages) > 1:  # several sources: which, and how they teach
        common |= {"sources": list(cfg.sources), "multi_source": cfg.multi_source}
    # the global batch is batch_size x processes x grad_accum, and a checkpoint's data position
    # is per rank: a trained stage is another one on another number of processes
    trained = {"world_size": rank_world()[1]}
    if spec.freezes is not None:  # what it freezes, wherever that was set
        trained |= flat(stage, cfg.freeze(stage), {})
    freeze_keys = [f"model.{f.name}" for f in dataclasses.fields(FreezeSettings)]
    head = {
        k: v
        for k, v in flat("model", cfg.model, {}).items()
        if k not in ("model.path", "model.max_len", *freeze_keys)
    }
    return spec.plan(cfg, common, head, trained)


def _part(fingerprint: dict, free: tuple[str, ...]) -> dict:
    """The fingerprint less the settings ``free`` names (a name ending in "." : a prefix)."""

    def is_free(key: str) -> bool:
        return any(key.startswith(f) if f.endswith(".") else key == f for f in free)

    settings = {k: v for k, v in fingerprint.get("settings", {}).items() if not is_free(k)}
    return {
        "settings": settings,
        "inputs": fingerprint.get("inputs"),
        "upstream": fingerprint.get("upstream"),
    }


def recorded_fingerprint(folder: Path) -> dict | None:
    """The fingerprint a stage folder recorded, or None when it has none or it is unreadable
    (for a look at other folders; ``StagePlan.recorded`` stops on an unreadable one)."""
    try:
        found = read_json(folder / FINGERPRINT)
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def _first_finished(candidates, done: str, matches) -> Path | None:
    """The first folder of ``candidates`` holding ``done`` whose recorded fingerprint (a
    readable one) ``matches``."""
    for folder in candidates:
        if not (folder / done).exists():
            continue
        theirs = recorded_fingerprint(folder)
        if theirs is not None and matches(theirs):
            return folder
    return None


def partial_twin(cfg: ExperimentConfig, stage: str, plan: StagePlan | None = None) -> Path | None:
    """Another folder of the pair's ``stage`` (``<stage>*``) holding its ``Partial``'s finished
    work whose recorded fingerprint matches this config's in everything but what acts later
    (``Partial.free``): self-training's round 1 (-AT, the threshold study's rows and the rounds
    study's share Ours'), co-training's iteration 1 (``cotrain-self/`` shares ``cotrain/``'s).
    None when there is none, or the stage has no ``Partial``. ``plan``: the stage's plan, when
    the caller has made it (its fingerprint is not computed again)."""
    partial = registry.get(stage).partial
    if partial is None:
        return None
    plan = plan or plan_stage(cfg, stage)
    mine = _part(plan.fingerprint(), partial.free)
    others = [f for f in sorted(plan.folder.parent.glob(f"{stage}*")) if f != plan.folder]
    return _first_finished(others, partial.done, lambda theirs: _part(theirs, partial.free) == mine)


def pair_twin(plan: StagePlan) -> Path | None:
    """The same stage folder of another pair of the experiment (``<out>/<pair>/<name>``),
    finished, whose recorded fingerprint is this plan's very digest: the same settings, input
    files and upstream work. A stage that reads nothing of its pair's target (direct transfer,
    -BTF's teacher, each source's teacher, with several targets an evaluation) is thus made
    once per experiment, not once per target. None when there is none."""
    here = plan.folder
    if not here.parent.parent.is_dir():
        return None
    digest = plan.fingerprint()["digest"]
    pairs = sorted(p for p in here.parent.parent.iterdir() if p.is_dir() and p != here.parent)
    done = str(plan.output.relative_to(here))
    return _first_finished(
        [p / here.name for p in pairs], done, lambda t: t.get("digest") == digest
    )
