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
paper's 1.5), ``-<pseudo_rule>`` (a rule other than the paper's), ``-src<filter>`` (a source
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

from xlt_engine.engine.experiment.config import LIMITS, ConfigError, ExperimentConfig
from xlt_engine.engine.method.settings import TEST_SPLIT, FreezeSettings, SelftrainSettings
from xlt_engine.engine.train.checkpoints import latest_checkpoint
from xlt_engine.engine.train.distributed import rank_world
from xlt_engine.engine.train.loop import RESUME_FREE
from xlt_engine.fileio import atomic_write_text, file_sha256

FINGERPRINT = "fingerprint.json"
# training settings that change neither a stage's results nor what it reads: those a resume may
# change (the loop's own list, written once)
VOLATILE = RESUME_FREE
# the fingerprint's format: a folder recorded in another one is refused, naming it (its results
# are kept; nothing of an older format is read in a compatible way)
FORMAT = 2
# co-training's models: its final prediction (``cotrain.predict_with``), or one view's last
# model, or the mean of both views' probabilities (an ensemble: evaluate and predict read it)
COTRAIN_MODELS = ("cotrain", "cotrain-lm", "cotrain-emb", "cotrain-mean")
NAMED_MODELS = ("pretrained", "btf", "finetune", "finetune-direct", "selftrain", *COTRAIN_MODELS)
PAPER_ROUNDS = SelftrainSettings.rounds  # the default N (1.5): others get their own folder
PAPER_RULE = SelftrainSettings.pseudo_rule  # likewise the default rule and source filter
PAPER_FILTER = SelftrainSettings.source_filter
PAPER_INIT = SelftrainSettings.student_init


class StaleStageError(ValueError):
    """Stage folders made with other settings than the current config's."""


def with_section(cfg: ExperimentConfig, section: str, **changes) -> ExperimentConfig:
    """``cfg`` with fields of one section replaced (e.g. ``finetune``, ``init="pretrained"``)."""
    return dataclasses.replace(
        cfg, **{section: dataclasses.replace(getattr(cfg, section), **changes)}
    )


def with_trains(cfg: ExperimentConfig, **changes) -> ExperimentConfig:
    """``cfg`` with the same fields replaced in every training loop's settings
    (``TRAIN_TABLES``), e.g. ``max_steps=4``."""
    for key, train in cfg.train_tables().items():
        section, name = key.split(".")
        cfg = with_section(cfg, section, **{name: dataclasses.replace(train, **changes)})
    return cfg


def with_linear_head(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` with the plain linear head (``model.head = "linear"``): the direct-transfer
    baseline and the -VM ablation."""
    return with_section(cfg, "model", head="linear", voter_widths=())


def _variant(cfg: ExperimentConfig) -> str:
    if cfg.model.head == "linear":
        return "-linear"
    return f"-voters{cfg.model.voters}" if cfg.model.voters != 3 else ""


def _adaptation(cfg: ExperimentConfig) -> str:
    """Paper 003's language adaptation in a finetune folder's name: ``-la`` (Label Alignment),
    ``-tt`` (translate-train: the parallel file's translations, no contrastive term), ``-sa``
    (Semantic Alignment, which trains on the translations too)."""
    f = cfg.finetune
    la = "-la" if f.label_alignment else ""
    if f.semantic_alignment:
        return la + "-sa"
    return la + ("-tt" if f.parallel_file else "")


def cotrain_views(cfg: ExperimentConfig, name: str) -> tuple[str, ...]:
    """The views whose models make the prediction a co-training model name stands for."""
    which = cfg.cotrain.predict_with if name == "cotrain" else name.split("-", 1)[1]
    return ("lm", "emb") if which == "mean" else (which,)


def stage_dir(cfg: ExperimentConfig, stage: str) -> Path:
    """The folder of ``stage`` for this config (see the module docstring)."""
    run = cfg.run_dir()
    if stage == "finetune":
        direct = "-direct" if cfg.finetune.init == "pretrained" else ""
        one = cfg.finetune.source
        alone = f"-{one}" if one is not None and len(cfg.source_languages) > 1 else ""
        return run / f"finetune{direct}{_variant(cfg)}{_adaptation(cfg)}{alone}"
    if stage == "selftrain":
        s = cfg.selftrain
        direct = "-direct" if s.base == "pretrained" else ""
        fixed = f"-alpha{s.alpha:g}" if s.threshold == "fixed" else ""
        rounds = f"-rounds{s.rounds:g}" if s.rounds != PAPER_ROUNDS else ""
        rule = f"-{s.pseudo_rule}" if s.pseudo_rule != PAPER_RULE else ""
        source = f"-src{s.source_filter}" if s.source_filter != PAPER_FILTER else ""
        init = f"-init_{s.student_init}" if s.student_init != PAPER_INIT else ""
        return run / f"selftrain{direct}{_variant(cfg)}{fixed}{rounds}{rule}{source}{init}"
    if stage == "cotrain":
        return run / ("cotrain-self" if cfg.cotrain.exchange == "self" else "cotrain")
    if stage == "evaluate":
        return run / (f"evaluate-{_scored(cfg, run)}" + split_suffix(cfg))
    return run / stage


def _scored(cfg: ExperimentConfig, run: Path) -> str:
    """What an evaluation folder is named after: the model's stage folder (``selftrain``,
    ``cotrain-emb``...), its path inside the run folder, or ``model``."""
    name = cfg.evaluate.model
    if name in COTRAIN_MODELS:
        views = cotrain_views(cfg, name)
        which = "mean" if len(views) > 1 else views[0]
        return f"{stage_dir(cfg, 'cotrain').name}-{which}"
    if name in NAMED_MODELS[1:]:
        return stage_dir(*model_stage(cfg, name)).name
    parts = Path(name).resolve().parts
    inside = run.resolve().parts
    if parts[: len(inside)] == inside and len(parts) > len(inside):
        rel = list(parts[len(inside) :])
        if rel[-1] == "model" and len(rel) > 1:
            rel = rel[:-1]
        return "-".join(rel)
    return "model"


def split_suffix(cfg: ExperimentConfig) -> str:
    """``-dev`` for an evaluation on the dev files (``evaluate.split``): in its folder's and
    its tables' names, so it never replaces the test scores."""
    return "" if cfg.evaluate.split == TEST_SPLIT else f"-{cfg.evaluate.split}"


def model_stage(cfg: ExperimentConfig, name: str) -> tuple[ExperimentConfig, str]:
    """The (config, stage) whose output is the model called ``name``."""
    if name == "finetune":
        return with_section(cfg, "finetune", init="btf"), "finetune"
    if name == "finetune-direct":
        return with_section(cfg, "finetune", init="pretrained"), "finetune"
    if name in COTRAIN_MODELS:
        return cfg, "cotrain"
    return cfg, name


def output_of(cfg: ExperimentConfig, stage: str) -> Path:
    """What a finished stage leaves: its model folder, or evaluate's results.json."""
    name = {"btf": "base-model", "evaluate": "results.json", "cotrain": "cotrain.json"}.get(
        stage, "model"
    )
    return stage_dir(cfg, stage) / name


def model_paths(cfg: ExperimentConfig, name: str, key: str, must_exist: bool = True) -> list[Path]:
    """The model folders a name stands for: one (``model_path``), or for co-training's
    ``cotrain-mean`` (``cotrain`` with ``predict_with = "mean"``) its two views' models, whose
    mean-of-voters probabilities are averaged."""
    if name not in COTRAIN_MODELS:
        return [model_path(cfg, name, key, must_exist)]
    stage = stage_dir(cfg, "cotrain")
    if must_exist and not output_of(cfg, "cotrain").is_file():
        raise ConfigError(
            cfg.name or "config",
            [
                f"{key}: {name!r}: {stage} holds no finished co-training (run the cotrain stage first)"
            ],
        )
    last = stage / f"iter-{cfg.cotrain.iterations}"
    return [last / view / "model" for view in cotrain_views(cfg, name)]


def model_path(cfg: ExperimentConfig, name: str, key: str, must_exist: bool = True) -> Path:
    """A model named by a stage ("pretrained", "btf", "finetune", "finetune-direct",
    "selftrain", one co-training view: "cotrain-lm", "cotrain-emb") or a folder; ``key`` is the
    config key that named it (for errors)."""
    if name in COTRAIN_MODELS:
        paths = model_paths(cfg, name, key, must_exist)
        if len(paths) > 1:
            raise ConfigError(
                cfg.name or "config",
                [f"{key}: {name!r} is the mean of two models (only evaluate and predict read "
                 "an ensemble); name one view: 'cotrain-lm' or 'cotrain-emb'"],
            )  # fmt: skip
        return paths[0]
    if name == "pretrained":
        path = Path(cfg.model.path)
    elif name in NAMED_MODELS:
        path = output_of(*model_stage(cfg, name))
    else:
        path = Path(name)
    if must_exist and not path.is_dir():
        hint = ""
        if name in NAMED_MODELS:
            hint = f" (run the {name.split('-')[0]} stage first"
            # e.g. finetune ran with finetune.init = "pretrained": its model is finetune-direct
            twin = {"finetune": "finetune-direct", "finetune-direct": "finetune"}.get(name)
            if twin and output_of(*model_stage(cfg, twin)).is_dir():
                hint += f", or set {key} = {twin!r}: that model exists"
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


def _flat(prefix: str, value, out: dict) -> dict:
    if dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            v = getattr(value, f.name)
            if f.name not in VOLATILE:
                _flat(f"{prefix}.{f.name}", v, out)
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
            canon = json.dumps(body, sort_keys=True, default=str).encode()
            self._fingerprint = {**body, "digest": hashlib.sha256(canon).hexdigest()}
        return self._fingerprint

    def recorded(self) -> dict | None:
        path = self.folder / FINGERPRINT
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise StaleStageError(f"{path}: unreadable ({err}); move the folder away") from None

    def started(self) -> bool:
        """Work of an earlier run is in the folder (a loop checkpoint, selftrain rounds)."""
        folder = self.folder
        if self.stage == "selftrain":
            return (folder / "selftrain.jsonl").exists() or any(folder.glob("round-*"))
        if self.stage == "cotrain":
            return any(folder.glob("iter-*"))
        return latest_checkpoint(folder) is not None

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
    return theirs is not None and theirs.get("digest") == recorded and not plan.differences()


def _diff(old: dict, new: dict, upstream: dict[str, StagePlan]) -> list[str]:
    out = []
    for part, label in (("settings", ""), ("upstream", "upstream "), ("inputs", "input ")):
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
            "settings, or restore the settings it was made with."
        )


# ---------------------------------------------------------------------------------------------
# what each stage reads


def text_roles(cfg: ExperimentConfig) -> dict[str, str]:
    """btf's text file per language (the sources, then the pair's target): ``{lang: role}``."""
    return {lang: cfg.role(lang, "text") for lang in (*cfg.source_languages, cfg.pair_target)}


def teacher_models(cfg: ExperimentConfig) -> dict[str, tuple[ExperimentConfig, str]]:
    """Round 1's teachers as ``{config key: (config, model name)}``: ``selftrain.teacher``, or
    with several sources and ``multi_source = "teachers"`` the same model fine-tuned on each
    source alone (``finetune.source``), one per source."""
    name = cfg.selftrain.teacher
    if cfg.teachers_per_source and name in ("finetune", "finetune-direct"):
        return {
            f"selftrain.teacher[{lang}]": (with_section(cfg, "finetune", source=lang), name)
            for lang in cfg.source_languages
        }
    return {"selftrain.teacher": (cfg, name)}


def evaluated_languages(cfg: ExperimentConfig) -> list[str]:
    """The languages ``evaluate`` scores: the source, every other source with a file of the
    split (``evaluate.split``: test or dev), the targets."""
    split = cfg.evaluate.split
    others = [
        x for x in cfg.source_languages if x != cfg.source and getattr(cfg.languages[x], split)
    ]
    return [cfg.source, *others, *cfg.targets]


def unlabeled_role(cfg: ExperimentConfig) -> str:
    return cfg.role(cfg.pair_target, "unlabeled")


def _model_input(cfg: ExperimentConfig, name: str, key: str, plan: StagePlan) -> None:
    """A model the stage reads: a planned stage (upstream) or a folder (input)."""
    if name in NAMED_MODELS[1:]:
        if name == plan.stage:
            raise ConfigError(cfg.name or "config", [f"{key}: {name!r} is this stage's own output"])
        plan.upstream[key] = plan_stage(*model_stage(cfg, name))
    else:
        plan.inputs[key] = model_path(cfg, name, key, must_exist=False)


def _btf_plan(cfg: ExperimentConfig, common: dict, head: dict, trained: dict) -> StagePlan:
    plan = StagePlan(cfg, "btf", {**common, **_flat("btf", cfg.btf, {}), **trained}, {})
    plan.inputs["model.path"] = Path(cfg.model.path)
    for lang, role in text_roles(cfg).items():
        plan.inputs[f"languages.{lang}.{role}"] = cfg.data_path(lang, role)
    return plan


def _finetune_plan(cfg: ExperimentConfig, common: dict, head: dict, trained: dict) -> StagePlan:
    settings = _flat("finetune", cfg.finetune, {})
    settings.pop("finetune.init")
    if cfg.finetune.source is None:
        settings.pop("finetune.source")
    parallel = settings.pop("finetune.parallel_file")
    unused = []  # paper 003's options count only when on
    if not cfg.finetune.label_alignment:
        unused += ["label_alignment", "la_weight", "la_temperature"]
    if not cfg.finetune.semantic_alignment:
        unused += ["semantic_alignment", "sa_weight", "sa_temperature", "sa_lr_scale", "sa_epochs"]
    for key in unused:
        settings.pop(f"finetune.{key}")
    plan = StagePlan(cfg, "finetune", {**common, **head, **settings, **trained}, {})
    if parallel:  # its contents, not its name
        plan.inputs["finetune.parallel_file"] = Path(parallel)
    _model_input(cfg, cfg.finetune.init, "finetune.init", plan)
    for lang in cfg.finetune_languages():
        plan.inputs[f"languages.{lang}.train"] = cfg.data_path(lang, "train")
    dev = cfg.finetune.source or cfg.source
    if cfg.languages[dev].dev:
        plan.inputs[f"languages.{dev}.dev"] = cfg.data_path(dev, "dev")
    return plan


def _selftrain_plan(cfg: ExperimentConfig, common: dict, head: dict, trained: dict) -> StagePlan:
    settings = _flat("selftrain", cfg.selftrain, {})
    for key in ("selftrain.base", "selftrain.teacher"):
        settings.pop(key)
    if cfg.selftrain.on_collapse != "skip_hard":  # warn and error change no result
        settings.pop("selftrain.on_collapse")
    rule = cfg.selftrain.pseudo_rule  # a rule's own settings, only where they act
    unused = {"selftrain.min_rows": "per_class_precision",
              "selftrain.class_precision": "per_class_precision", "selftrain.quota": "class_quota"}  # fmt: skip
    for key in [k for k, r in unused.items() if r != rule]:
        settings.pop(key)
    plan = StagePlan(cfg, "selftrain", {**common, **head, **settings, **trained}, {})
    _model_input(cfg, cfg.selftrain.base, "selftrain.base", plan)
    for key, (c, name) in teacher_models(cfg).items():
        _model_input(c, name, key, plan)
    for lang in cfg.source_languages:
        plan.inputs[f"languages.{lang}.train"] = cfg.data_path(lang, "train")
    tgt, role = cfg.pair_target, unlabeled_role(cfg)
    plan.inputs[f"languages.{tgt}.{role}"] = cfg.data_path(tgt, role)
    return plan


def _cotrain_plan(cfg: ExperimentConfig, common: dict, head: dict, trained: dict) -> StagePlan:
    settings = _flat("cotrain", cfg.cotrain, {})
    settings.pop("cotrain.embedding_model")
    plan = StagePlan(cfg, "cotrain", {**common, **settings, **trained}, {})
    src, tgt, role = cfg.source, cfg.pair_target, unlabeled_role(cfg)
    plan.inputs["model.path"] = Path(cfg.model.path)
    plan.inputs["cotrain.embedding_model"] = Path(cfg.cotrain.embedding_model)
    plan.inputs[f"languages.{src}.train"] = cfg.data_path(src, "train")
    plan.inputs[f"languages.{tgt}.{role}"] = cfg.data_path(tgt, role)
    if cfg.languages[tgt].dev:
        plan.inputs[f"languages.{tgt}.dev"] = cfg.data_path(tgt, "dev")
    return plan


def _evaluate_plan(cfg: ExperimentConfig, common: dict, head: dict, trained: dict) -> StagePlan:
    settings = dict(common)
    if cfg.evaluate.model in COTRAIN_MODELS:  # which views' probabilities make the prediction
        settings["evaluate.views"] = list(cotrain_views(cfg, cfg.evaluate.model))
    split = cfg.evaluate.split
    if split != TEST_SPLIT:  # a dev evaluation is another stage (its own folder)
        settings["evaluate.split"] = split
    plan = StagePlan(cfg, "evaluate", settings, {})
    _model_input(cfg, cfg.evaluate.model, "evaluate.model", plan)
    for lang in evaluated_languages(cfg):
        plan.inputs[f"languages.{lang}.{split}"] = cfg.data_path(lang, split)
    return plan


PLANS = {"btf": _btf_plan, "finetune": _finetune_plan, "selftrain": _selftrain_plan,
         "cotrain": _cotrain_plan, "evaluate": _evaluate_plan}  # fmt: skip


def plan_stage(cfg: ExperimentConfig, stage: str) -> StagePlan:
    """The stage's settings, inputs and upstream stages (nothing is read but file headers)."""
    if stage not in PLANS:
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
    if stage in ("btf", "finetune", "selftrain"):  # what it freezes, wherever that was set
        trained |= _flat(stage, cfg.freeze(stage), {})
    freeze_keys = [f"model.{f.name}" for f in dataclasses.fields(FreezeSettings)]
    head = {
        k: v
        for k, v in _flat("model", cfg.model, {}).items()
        if k not in ("model.path", "model.max_len", *freeze_keys)
    }
    return PLANS[stage](cfg, common, head, trained)


# settings that act only after round 1's soft step: self-training folders that differ in these
# (and the hard step's) alone make the same teacher probabilities and soft student in round 1
AFTER_ROUND1_SOFT = (
    "selftrain.rounds",
    "selftrain.threshold",
    "selftrain.alpha",
    "selftrain.grid",
    "selftrain.source_filter",
    "selftrain.pseudo_rule",
    "selftrain.min_rows",
    "selftrain.class_precision",
    "selftrain.quota",
    "selftrain.on_collapse",
    "selftrain.hard.",
)
# co-training's settings that act only from the first exchange on: folders that differ in these
# alone fine-tune the same two views in iteration 1 (on the source set alone)
AFTER_ITER1_TRAINING = (
    "cotrain.iterations",
    "cotrain.threshold",
    "cotrain.subset_fraction",
    "cotrain.reinit",
    "cotrain.predict_with",
    "cotrain.exchange",
)


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
        found = json.loads((folder / FINGERPRINT).read_text(encoding="utf-8"))
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


def _twin(cfg: ExperimentConfig, stage: str, free: tuple[str, ...], done: str) -> Path | None:
    """Another folder of the pair's ``stage`` (``<stage>*``) holding ``done`` whose recorded
    fingerprint matches this config's in everything but ``free``."""
    plan = plan_stage(cfg, stage)
    mine = _part(plan.fingerprint(), free)
    others = [f for f in sorted(plan.folder.parent.glob(f"{stage}*")) if f != plan.folder]
    return _first_finished(others, done, lambda theirs: _part(theirs, free) == mine)


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


def round1_twin(cfg: ExperimentConfig) -> Path | None:
    """Another self-training folder of the pair whose finished round 1 (teacher probabilities,
    soft student) this config's would equal: its recorded fingerprint matches this one's in
    everything but ``AFTER_ROUND1_SOFT`` (the same inputs, the same upstream stages). -AT, the
    threshold study's rows and the rounds study's share it with Ours. None when there is none."""
    return _twin(cfg, "selftrain", AFTER_ROUND1_SOFT, "round-1/soft/model")


def iter1_twin(cfg: ExperimentConfig) -> Path | None:
    """Another co-training folder of the pair whose iteration-1 views (fine-tuned on the source
    set alone) this config's would equal: its fingerprint matches in everything but
    ``AFTER_ITER1_TRAINING``. ``cotrain-self/`` shares them with ``cotrain/``."""
    return _twin(cfg, "cotrain", AFTER_ITER1_TRAINING, "iter-1/state.safetensors")
