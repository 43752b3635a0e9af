"""TOML experiment configs: keyed errors before anything runs, --set overrides, the shipped
presets, and the CLI `run` command end to end (btf -> finetune -> evaluate -> predict)."""

import dataclasses
import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.conftest import SHARED_DATA
from xlt_engine.cli import main
from xlt_engine.engine.experiment.config import (
    ConfigError,
    check_files,
    config_from_dict,
    load_config,
    to_dict,
)
from xlt_engine.engine.experiment.execute import build_stage
from xlt_engine.engine.experiment.from_toml import apply_overrides, parse_override
from xlt_engine.engine.experiment.runs import plan_stage, with_section
from xlt_engine.engine.experiment.stages.btf import BtfSection
from xlt_engine.engine.experiment.stages.cotrain import CotrainSection
from xlt_engine.engine.method.settings import FreezeSettings

ROOT = Path(__file__).resolve().parents[3]
TINY_FREEZE = "model.freeze_layers=1"  # the presets freeze 3 layers; the tiny model has 2
CONLL = ROOT / "configs" / "conll.toml"
CLS = ROOT / "configs" / "cls.toml"

MINIMAL = """
task = "ner"
source = "eng"
targets = ["esp"]
[model]
path = "m"
[languages.eng]
train = "eng.train"
[languages.esp]
unlabeled = "esp.train"
"""


def write(tmp_path, text, name="exp.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def problems(tmp_path, text, *overrides):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), list(overrides))
    return info.value.problems


def test_minimal_config_defaults(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL))
    assert cfg.name == "exp" and cfg.pair_target == "esp" and cfg.seed == 42
    assert cfg.section(BtfSection).train.lr == 2e-5 and cfg.section(BtfSection).train.epochs == 3
    # the paper's freezing (embeddings and the bottom 3 layers) in every training stage
    assert cfg.model.freeze_layers == 3 and cfg.model.freeze_embeddings
    for stage in ("btf", "finetune", "selftrain"):
        assert cfg.settings_of(stage).freeze_layers is None
        assert cfg.freeze(stage) == FreezeSettings(3, True)
    assert cfg.run_dir() == Path("runs/exp/eng-esp")


def test_section_keeps_its_defaults_when_partly_given(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL + "[btf.train]\nlr = 1e-4\n"))
    assert (
        cfg.section(BtfSection).train.lr == 1e-4 and cfg.section(BtfSection).train.epochs == 3
    )  # epochs: the section default


def test_unknown_keys_and_wrong_types_are_all_named(tmp_path):
    text = (
        "colour = 1\n"
        + MINIMAL
        + '[btf]\nbatch_size = "big"\nfreze_layers = 2\n[btf.train]\nlr = true\n'
    )
    got = problems(tmp_path, text)
    assert any(p.startswith("colour: unknown key") for p in got), got
    assert any(p.startswith("btf.freze_layers: unknown key") and "freeze_layers" in p for p in got)
    assert "btf.batch_size: expected int, got 'big'" in got
    assert "btf.train.lr: expected float, got True" in got
    assert len(got) == 4


def test_bad_values_name_their_section(tmp_path):
    got = problems(tmp_path, MINIMAL, "btf.train.warmup_ratio=1.5")
    assert got == ["btf.train: warmup_ratio must be in [0, 1), got 1.5"]
    got = problems(tmp_path, MINIMAL, "model.voters=0")
    assert got == ["model: voters must be in [1, 1024], got 0"]
    got = problems(tmp_path, MINIMAL, "target=deu")
    assert got == ["config: target: 'deu' is not one of targets ['esp']"]
    got = problems(tmp_path, MINIMAL, "data.format=cls10")
    assert got == ["config: task 'ner' does not go with data.format 'cls10'"]
    got = problems(tmp_path, MINIMAL.replace('targets = ["esp"]', 'targets = ["esp", "ned"]'))
    assert got == ["config: languages: no [languages.ned] table for language 'ned'"]
    got = problems(tmp_path, MINIMAL, "finetune.train.seed=3")
    assert "set the top-level seed" in got[0]


def test_missing_keys_and_broken_toml(tmp_path):
    got = problems(tmp_path, 'task = "ner"\n')
    assert sorted(got) == [
        "languages: missing",
        "model: missing",
        "source: missing",
        "targets: missing",
    ]
    got = problems(tmp_path, MINIMAL + "[btf\n")
    assert got[0].startswith("not valid TOML")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "none.toml")


def test_a_config_text_read_elsewhere_loads_under_its_path(tmp_path):
    """``text``: a preset as it was at an earlier commit, named by its path (lab.tables)."""
    path = write(tmp_path, MINIMAL)
    then = MINIMAL + "[btf.train]\nepochs = 9\n"
    cfg = load_config(path, ["seed=3"], text=then)
    assert cfg.name == "exp" and cfg.seed == 3 and cfg.section(BtfSection).train.epochs == 9
    assert load_config(path).section(BtfSection).train.epochs == 3  # the file as it is now
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load_config(tmp_path / "gone.toml", text="[btf\n")  # the path need not exist
    assert str(tmp_path / "gone.toml") in str(info.value)


def test_set_overrides_parse_toml_values(tmp_path):
    assert parse_override("btf.train.lr=1e-4") == (["btf", "train", "lr"], 1e-4)
    assert parse_override('targets=["a", "b"]') == (["targets"], ["a", "b"])
    assert parse_override("data.root=../shared/data") == (["data", "root"], "../shared/data")
    assert parse_override("btf.whole_word=true") == (["btf", "whole_word"], True)
    with pytest.raises(ValueError, match="expected key=value"):
        parse_override("btf.lr")
    with pytest.raises(ValueError, match="expected key=value"):
        parse_override("btf..lr=1")
    with pytest.raises(ValueError, match="model.path is not a table"):
        apply_overrides({"model": {"path": "x"}}, ["model.path.deep=1"])
    cfg = load_config(write(tmp_path, MINIMAL), ["btf.train.max_steps=7", "seed=3"])
    assert cfg.section(BtfSection).train.max_steps == 7 and cfg.seed == 3


def test_shipped_presets_load_and_find_their_data(tiny):
    e5_conll, e5_cls = (ROOT / "configs" / f"e5-small-{t}.toml" for t in ("conll", "cls"))
    for path, lang in ((CONLL, "eng"), (CLS, "en"), (e5_conll, "eng"), (e5_cls, "en")):
        # the tiny model has 2 layers: the presets' freeze_layers = 3 would freeze them all
        over = [f"data.root={SHARED_DATA}", f"model.path={tiny}", "model.freeze_layers=1"]
        cfg = load_config(path, over)
        assert cfg.source == lang and len(cfg.targets) == 3
        for stage in ("btf", "finetune", "evaluate"):
            check_files(cfg, stage)
    conll = load_config(CONLL, [f"data.root={SHARED_DATA}", f"model.path={tiny}", TINY_FREEZE])
    assert (
        conll.model.max_len == 128
        and conll.section(BtfSection).train.lr == 2e-5
        and conll.section(BtfSection).batch_size == 32
    )
    assert load_config(CLS).model.max_len == 256


def test_missing_files_are_named_per_stage(tmp_path, tiny):
    cfg = load_config(CONLL, [f"data.root={tmp_path}", f"model.path={tiny}", TINY_FREEZE])
    with pytest.raises(ConfigError) as info:
        check_files(cfg, "evaluate")
    got = info.value.problems
    assert (
        len(got) == 4
        and got[0] == f"languages.eng.test: {tmp_path}/conll2003_en/eng.testb: no such file"
    )
    with pytest.raises(ConfigError, match="model.path: nowhere: no such folder"):
        check_files(load_config(CONLL, [f"data.root={SHARED_DATA}", "model.path=nowhere"]), "btf")
    with pytest.raises(ConfigError, match="predict.input: missing"):
        check_files(
            load_config(CONLL, [f"data.root={SHARED_DATA}", f"model.path={tiny}", TINY_FREEZE]),
            "predict",
        )


def test_finetune_needs_its_base_model_first(tmp_path, tiny):
    cfg = load_config(
        CONLL, [f"data.root={SHARED_DATA}", f"model.path={tiny}", TINY_FREEZE, f"out={tmp_path}"]
    )
    with pytest.raises(
        ConfigError, match=r"finetune.init: .*btf/base-model: no such folder \(run the btf"
    ):
        build_stage(cfg, "finetune")
    cfg = load_config(
        CONLL,
        [
            f"data.root={SHARED_DATA}",
            f"model.path={tiny}",
            TINY_FREEZE,
            f"out={tmp_path}",
            "finetune.init=pretrained",
        ],
    )
    assert build_stage(cfg, "finetune").model == str(tiny)


def test_btf_head_warmup_reaches_the_stage(tiny, tmp_path):
    over = [f"data.root={SHARED_DATA}", f"model.path={tiny}", TINY_FREEZE, f"out={tmp_path}"]
    assert build_stage(load_config(CONLL, over), "btf").head_warmup_epochs == 0  # off by default
    warm = ["btf.head_warmup_epochs=0.5", "btf.head_warmup_lr=3e-3"]
    btf = build_stage(load_config(CONLL, over + warm), "btf")
    assert (btf.head_warmup_epochs, btf.head_warmup_lr) == (0.5, 3e-3)


def test_cli_reports_config_errors_before_running(tmp_path):
    res = CliRunner().invoke(
        main,
        [
            "run",
            "--stage",
            "btf",
            "--config",
            str(CONLL),
            "--set",
            "btf.train.lr=-1",
            "--out",
            str(tmp_path / "run"),
        ],
    )
    assert res.exit_code == 1
    assert "btf.train: lr must be in (0, 10], got -1" in res.output
    assert not (tmp_path / "run").exists()


def test_cli_runs_every_stage(tiny, conll, tmp_path):
    base = [
        "--config",
        str(CONLL),
        "--out",
        str(tmp_path / "run"),
        "--no-progress",
        "--set",
        f"data.root={SHARED_DATA}",
        "--set",
        f"model.path={tiny}",
        "--set",
        "model.max_len=48",
        "--set",
        'targets=["esp", "ned"]',
        "--set",
        f"languages.eng.train={conll['eng.train']}",
        "--set",
        f"languages.eng.dev={conll['eng.dev']}",
        "--set",
        f"languages.eng.test={conll['eng.test']}",
        "--set",
        f"languages.esp.unlabeled={conll['esp.train']}",
        "--set",
        f"languages.esp.test={conll['esp.test']}",
        "--set",
        f"languages.ned.test={conll['ned.test']}",
        "--set",
        "btf.batch_size=8",
        "--set",
        "model.freeze_layers=1",
        "--set",
        "finetune.batch_size=8",
        "--set",
        "btf.train.max_steps=6",
        "--set",
        "finetune.train.max_steps=6",
        "--set",
        "btf.train.log_every=3",
        "--set",
        "finetune.train.log_every=3",
    ]
    run = tmp_path / "run" / "eng-esp"  # the pair's run folder inside --out
    for stage in ("btf", "finetune", "evaluate"):
        board = ["--tensorboard"] if stage == "btf" else []  # (not in the fingerprint)
        res = CliRunner().invoke(main, ["run", "--stage", stage, *board, *base])
        assert res.exit_code == 0, (stage, res.output, res.exception)
        *_, last, again = res.output.strip().splitlines()
        assert last.startswith(f"{stage}: done in ") and str(run) in last, res.output
        assert again.startswith("to repeat it (finished stages are reused): xlt-engine run ")
        assert f"--stage {stage}" in again and "--resume" not in again
    assert "result " + str(run / "evaluate-finetune" / "results.json") in last
    assert (run / "btf" / "base-model" / "model.safetensors").is_file()
    assert any((run / "btf" / "tensorboard").glob("events.out.tfevents.*"))
    assert not (run / "finetune" / "tensorboard").exists()
    texts = (run / "btf" / "texts" / "esp.txt").read_text().splitlines()
    assert len(texts) == 240  # the target's sentences, its tags not read
    info = json.loads((run / "finetune" / "run.json").read_text())
    assert info["version"] and info["git_sha"] and info["world_size"] == 1
    assert 0 < info["seconds"] < 600  # the stage's wall time, added when it finished
    resolved = json.loads((run / "finetune" / "config.json").read_text())
    assert resolved["stage"] == "finetune" and resolved["stage_config"]["train"]["max_steps"] == 6
    assert resolved["stage_config"]["model"] == str(run / "btf" / "base-model")
    assert (run / "finetune" / "dev.json").is_file()
    results = json.loads((run / "evaluate-finetune" / "results.json").read_text())
    assert sorted(results["languages"]) == ["eng", "esp", "ned"]
    assert "| eng (source) |" in res.output
    res = CliRunner().invoke(
        main,
        [
            "run",
            "--stage",
            "predict",
            *base,
            "--set",
            f"predict.input={conll['esp.test']}",
            "--set",
            f"predict.output={tmp_path / 'esp.pred'}",
        ],
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "esp.pred").is_file()
    # a second fresh run into the same folder is refused; --resume at the end is a no-op
    res = CliRunner().invoke(main, ["run", "--stage", "finetune", *base])
    assert res.exit_code == 1 and "--resume" in res.output
    res = CliRunner().invoke(main, ["run", "--stage", "finetune", *base, "--resume"])
    assert res.exit_code == 0, res.output
    # the finished stage's config.json is a config: the very same stage (reused, not run again)
    saved = str(run / "finetune" / "config.json")
    res = CliRunner().invoke(main, ["run", "--stage", "finetune", "--config", saved, "--resume"])
    assert res.exit_code == 0, res.output
    assert "finetune: " + str(run / "finetune" / "model") + " exists with the same fingerprint" in (
        res.output
    )


def test_a_stage_config_json_loads_back_as_the_same_config(tmp_path):
    """A stage folder's config.json (the resolved config, every key set, unset ones null) is a
    config file too: every preset written as a stage writes it loads back equal, takes --set like
    the TOML, and its problems name the file."""
    presets = sorted((ROOT / "configs").glob("*.toml"))
    assert len(presets) >= 4
    for path in presets:
        cfg = load_config(path)
        saved = tmp_path / f"{path.stem}.json"
        doc = {"experiment": to_dict(cfg), "stage": "btf", "stage_config": {}}
        saved.write_text(json.dumps(doc, indent=2))
        assert load_config(saved) == cfg, path.name  # the name too: the run's config's
        over = ["seed=7", "btf.train.lr=1e-3", f'targets=["{cfg.targets[-1]}"]']
        assert load_config(saved, over) == load_config(path, over), path.name
    assert any(v is None for v in to_dict(load_config(CONLL))["btf"].values())  # nulls read back
    broken = write(tmp_path, '{"experiment": {"seed": 1,,}}', "broken.json")
    with pytest.raises(ConfigError, match=r"broken.json: not valid JSON: .*\(line 1, column 27\)"):
        load_config(broken)
    with pytest.raises(ConfigError, match=r"other.json: experiment: missing"):
        load_config(write(tmp_path, '{"seed": 1}', "other.json"))
    doc["experiment"]["btf"]["epochs_"] = 2
    saved.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=r"btf.epochs_: unknown key"):
        load_config(saved)


def test_config_from_dict_reports_all_problems_at_once():
    with pytest.raises(ConfigError) as info:
        config_from_dict(
            {"task": "pos", "source": 1, "targets": "esp", "model": {}, "languages": {}}, "inline"
        )
    got = info.value.problems
    assert "source: expected str, got 1" in got and "targets: expected a list, got 'esp'" in got
    assert "model: path: give the pretrained model folder (model.path)" in got
    assert len(got) == 3 and str(info.value).startswith("inline: 3 problems:")


def test_choices_are_checked_once_for_toml_and_library_callers(tmp_path):
    from xlt_engine.engine.experiment.stages.selftrain import SelftrainSection
    from xlt_engine.engine.method.rules import PseudoRule
    from xlt_engine.engine.method.selftrain_settings import SelftrainSettings

    with pytest.raises(
        ConfigError,
        match="selftrain.rule: threshold must be one of curvature, "
        "max_second_difference, fixed, got 'curvy'",
    ):
        load_config(CONLL, ["selftrain.rule.threshold=curvy"])
    with pytest.raises(ConfigError, match="selftrain: filter_unit must be one of word, sequence"):
        load_config(CONLL, ["selftrain.filter_unit=token"])
    for cls in (SelftrainSettings, SelftrainSection):  # the section is the settings' subclass
        with pytest.raises(ValueError, match="threshold = 'fixed' needs alpha"):
            cls(rule=PseudoRule(threshold="fixed"))
    with pytest.raises(ConfigError, match=r"selftrain.threshold: now selftrain.rule.threshold"):
        load_config(CONLL, ["selftrain.threshold=fixed"])  # a key that moved names its new home
    assert SelftrainSection().steps == [(1, "soft"), (1, "hard"), (2, "soft")]


def test_a_stage_reading_its_own_output_is_a_config_error():
    from xlt_engine.engine.experiment.runs import plan_stage

    cfg = load_config(CONLL, ["selftrain.teacher=selftrain"])
    with pytest.raises(ConfigError, match="selftrain.teacher: 'selftrain' is this stage's own"):
        plan_stage(cfg, "selftrain")


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("btf.train.epochs=1e308", "btf.train: epochs must be a number in [0, 1e+06]"),
        ("btf.train.lr=inf", "btf.train.lr: expected a finite number, got inf"),
        ("finetune.train.weight_decay=nan", "finetune.train.weight_decay: expected a finite"),
        ("selftrain.rounds=1e308", "selftrain: rounds must be a multiple of 0.5 in [0.5, 1000]"),
        ("selftrain.rule.grid=[0.5, 1.5]", "selftrain.rule: grid: thresholds must be in (0, 1)"),
        ("model.voter_widths=[-1, 4, 4]", "model: voter_widths must be >= 0 (0: a linear voter)"),
        ("btf.train.max_steps=99999999999999", "btf.train: max_steps must be at most"),
        ("finetune.max_tokens=0", "finetune: max_tokens must be >= 8 (or left out), got 0"),
        ("selftrain.batch_size=0", "selftrain: batch_size must be >= 1, got 0"),
        ("btf.epoch_size=-5", "btf: epoch_size must be >= 1 (or left out), got -5"),
        ("btf.head_warmup_epochs=nan", "btf.head_warmup_epochs: expected a finite number"),
        ("btf.head_warmup_epochs=-1", "btf: head_warmup_epochs must be a number in [0, 1e+06]"),
        ("btf.head_warmup_lr=0", "btf: head_warmup_lr must be in (0, 1], got 0"),
    ],
)
def test_out_of_range_numbers_are_config_errors_naming_the_key(item, message):
    with pytest.raises(ConfigError) as info:
        load_config(CONLL, [item])
    assert any(message in p for p in info.value.problems), info.value.problems


def test_library_train_configs_refuse_non_finite_numbers():
    from xlt_engine.engine.train.config import TrainConfig

    for kw in (dict(weight_decay=float("nan")), dict(clip=float("inf")), dict(epochs=1e308)):
        with pytest.raises(ValueError):
            TrainConfig(max_steps=1, **kw) if "epochs" not in kw else TrainConfig(**kw)


def numeric_keys(table: dict, prefix: str = ""):
    """Every numeric (or numeric-list, or unset optional) leaf of a resolved config."""
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from numeric_keys(value, name + ".")
            continue
        numbers = (isinstance(value, int | float) and not isinstance(value, bool)) or (
            isinstance(value, list) and value and all(isinstance(x, int | float) for x in value)
        )
        unset = value is None and not name.startswith(("languages.", "predict."))
        if numbers or unset:
            yield name, value


BOUNDARY = [
    "nan",
    "inf",
    "-inf",
    "0",
    "-1",
    "-0.5",
    "0.5",
    "4294967296",
    "9223372036854775807",
    "1e308",
    "[]",
]


def test_boundary_sweep_of_every_numeric_key_fails_at_load_naming_the_key():
    """Issue 21 (4), 23 (4): each numeric key set to nan, +-inf, 0, -1, 2**32, 2**63 - 1, 1e308,
    [] ... is either a
    ConfigError naming that key or a value that is finite (and integral where a count is meant):
    never another exception, never an error naming something else."""
    keys = dict(numeric_keys(to_dict(load_config(CONLL))))
    assert {"btf.train.lr", "model.voters", "selftrain.rounds", "evaluate.max_tokens"} <= set(keys)
    accepted = {}
    for key, default in keys.items():
        section, _, leaf = key.rpartition(".")
        for raw in BOUNDARY:
            wrap = isinstance(default, list) and raw != "[]"
            item = f"{key}=[{raw}]" if wrap else f"{key}={raw}"
            try:
                cfg = load_config(CONLL, [item])
            except ConfigError as err:
                assert any(leaf in p and section in p for p in err.problems), (item, err.problems)
                continue
            value = to_dict(cfg)
            for part in key.split("."):
                value = value[part]
            for v in value if isinstance(value, list) else [value]:
                assert math.isfinite(v), (item, v)
                if isinstance(default, int) and default is not None:
                    assert isinstance(v, int), (item, v)
            accepted.setdefault(key, []).append(raw)
    # what used to pass and fail late: 0 or -1 padded tokens per inference batch, 2**32 voters
    assert "0" not in accepted.get("evaluate.max_tokens", [])
    assert "-1" not in accepted.get("predict.max_tokens", [])
    assert "4294967296" not in accepted.get("model.voters", [])
    assert "9223372036854775807" not in accepted.get("model.voters", [])  # it hung
    assert "1e308" not in accepted.get("btf.train.lr", [])  # a RuntimeError in AdamW
    assert not any("nan" in values for values in accepted.values())


def test_max_len_beyond_the_models_positions_is_a_config_error(tiny):
    positions = json.loads((tiny / "config.json").read_text())["max_position_embeddings"]
    over = [
        f"data.root={SHARED_DATA}",
        f"model.path={tiny}",
        TINY_FREEZE,
        f"model.max_len={positions + 1}",
    ]
    with pytest.raises(
        ConfigError, match=rf"model.max_len: {positions + 1} is more than the {positions} positions"
    ):
        check_files(load_config(CONLL, over), "finetune")
    check_files(load_config(CONLL, [*over[:3], f"model.max_len={positions}"]), "finetune")


def test_model_representation_is_checked_where_it_can_go_wrong(tmp_path, tiny):
    got = problems(tmp_path, MINIMAL, "model.representation=max")
    assert got == ["model: representation must be one of cls, pooler, mean, got 'max'"]
    got = problems(tmp_path, MINIMAL, "model.representation=mean")
    assert got == [
        "config: model.representation: 'mean' is for sequence tasks (NER labels every word's "
        "first sub-token; leave it 'cls')"
    ]
    over = [
        f"data.root={SHARED_DATA}",
        f"model.path={tiny}",
        TINY_FREEZE,
        "model.representation=pooler",
    ]
    cfg = load_config(CLS, over)  # the tiny model (xlt-engine init) has no pooler
    for stage in ("finetune", "selftrain"):
        with pytest.raises(ConfigError, match=r"model.representation: 'pooler', but .* no pooler"):
            check_files(cfg, stage)
    check_files(with_section(cfg, "btf", freeze_layers=1), "btf")  # btf does not read it
    check_files(load_config(CLS, [*over[:3], "model.representation=mean"]), "finetune")


def test_the_representation_is_in_the_task_stages_fingerprints(tiny):
    from xlt_engine.engine.experiment.runs import plan_stage

    base = [f"data.root={SHARED_DATA}", f"model.path={tiny}", TINY_FREEZE]
    cls_cfg = load_config(CLS, base)
    mean_cfg = load_config(CLS, [*base, "model.representation=mean"])
    for stage in ("finetune", "selftrain"):
        a, b = plan_stage(cls_cfg, stage), plan_stage(mean_cfg, stage)
        assert a.settings["model.representation"] == "cls"
        assert b.settings["model.representation"] == "mean"
        assert a.fingerprint()["digest"] != b.fingerprint()["digest"]
    assert "model.representation" not in plan_stage(cls_cfg, "btf").settings


def test_data_caps_are_checked_and_in_fingerprints_only_when_set(tmp_path, tiny):
    from xlt_engine.engine.experiment.runs import plan_stage

    got = problems(tmp_path, MINIMAL, "data.max_train=0")
    assert got == ["data: max_train must be >= 1 (or left out), got 0"]
    base = [f"data.root={SHARED_DATA}", f"model.path={tiny}", TINY_FREEZE]
    plain = plan_stage(load_config(CONLL, base), "evaluate").settings
    assert not any(k.startswith("data.max_") for k in plain)  # older folders stay valid
    capped = plan_stage(load_config(CONLL, [*base, "data.max_test=50"]), "evaluate").settings
    assert capped["data.max_test"] == 50


def test_freeze_layers_covering_the_whole_model_must_say_all(tmp_path, tiny):
    """A freeze_layers of 3 on a 2-layer model froze every layer without a word; the check
    covers every training stage and names the key that set the value."""
    base = [f"data.root={SHARED_DATA}", f"model.path={tiny}"]  # tiny: 2 layers
    with pytest.raises(ConfigError, match=r"btf.freeze_layers: 2 freezes all 2 layers"):
        check_files(
            load_config(CONLL, [*base, "model.freeze_layers=1", "btf.freeze_layers=2"]), "btf"
        )
    for stage in ("btf", "finetune", "selftrain"):  # the presets' model.freeze_layers = 3
        with pytest.raises(
            ConfigError, match=rf"model.freeze_layers: 3 freezes all 2 layers .* {stage}"
        ):
            check_files(load_config(CONLL, base), stage)
        over = [*base, f"{stage}.freeze_layers=1"]
        check_files(load_config(CONLL, over), stage)  # the stage's own setting wins
    cfg = load_config(CONLL, [*base, "btf.freeze_layers=all"])
    assert (
        cfg.section(BtfSection).freeze_layers == "all" and cfg.freeze("btf").freeze_layers == "all"
    )
    check_files(cfg, "btf")
    got = problems(tmp_path, MINIMAL, "btf.freeze_layers=some")
    assert got == ["btf: freeze_layers must be a number >= 0 or 'all', got 'some'"]
    got = problems(tmp_path, MINIMAL, "model.freeze_layers=-1")
    assert got == ["model: freeze_layers must be >= 0, got -1"]
    got = problems(tmp_path, MINIMAL, "btf.freeze_layers=1.5")
    assert got == ["btf.freeze_layers: expected int or 'all', got 1.5"]


def test_each_stage_config_gets_the_freezing_it_resolves_to(tmp_path, tiny):
    base = [f"data.root={SHARED_DATA}", f"model.path={tiny}", "model.freeze_layers=1"]
    cfg = load_config(
        CONLL, [*base, "finetune.freeze_layers=0", "selftrain.freeze_embeddings=false"]
    )
    assert cfg.freeze("btf") == FreezeSettings(1, True)
    assert cfg.freeze("finetune") == FreezeSettings(0, True)
    assert cfg.freeze("selftrain") == FreezeSettings(1, False)
    assert FreezeSettings(1, True).frozen_patterns(2) == (
        r"encoder\.embeddings\.",
        r"encoder\.layers\.0\.",
    )
    assert FreezeSettings("all", False).frozen_patterns(2) == (
        r"encoder\.layers\.0\.",
        r"encoder\.layers\.1\.",
    )
    # the fingerprint holds what the stage freezes, wherever it was set: moving the setting from
    # [model] to the stage changes nothing, changing the value changes the stage
    plan = plan_stage(cfg, "finetune").settings
    assert plan["finetune.freeze_layers"] == 0 and plan["finetune.freeze_embeddings"] is True
    assert "model.freeze_layers" not in plan
    same = load_config(CONLL, [*base, "finetune.freeze_layers=0"])
    moved = load_config(CONLL, [*base[:2], "model.freeze_layers=0", "btf.freeze_layers=1"])
    assert plan_stage(same, "finetune").settings == plan_stage(moved, "finetune").settings
    assert plan_stage(same, "btf").settings == plan_stage(moved, "btf").settings
    assert plan_stage(same, "selftrain").settings != plan_stage(moved, "selftrain").settings


def test_data_encoding_reaches_every_reader_and_is_checked(tmp_path, tiny):
    got = problems(tmp_path, MINIMAL, "data.encoding=klingon")
    assert got == ["data: encoding: unknown encoding 'klingon'"]
    over = [f"data.root={SHARED_DATA}", f"model.path={tiny}", TINY_FREEZE, f"out={tmp_path}"]
    over += ["data.encoding=latin-1", "finetune.init=pretrained"]
    cfg = load_config(CONLL, over)
    assert build_stage(cfg, "finetune").encoding == "latin-1"
    from xlt_engine.engine.experiment.runs import plan_stage

    assert plan_stage(cfg, "finetune").settings["data.encoding"] == "latin-1"


def test_several_sources_are_checked_and_planned(tmp_path, tiny):
    multi = ["sources=['eng', 'esp']", "languages.esp.train='esp.train'", "targets=['ned']",
             "languages.ned.unlabeled='ned.train'"]  # fmt: skip
    text = MINIMAL + "[languages.ned]\n"
    assert problems(
        tmp_path, text, "sources=['eng']", "targets=['ned']", "languages.ned.unlabeled='x'"
    ) == ["config: sources: give two or more different languages, got ['eng']"]
    got = problems(
        tmp_path, text, "sources=['esp', 'ned']", "targets=['ned']", "languages.ned.unlabeled='x'"
    )
    assert got == ["config: source: 'eng' is not one of sources ['esp', 'ned']"]
    got = problems(tmp_path, MINIMAL, "sources=['eng', 'esp']")
    assert got == ["config: targets: ['esp'] are source languages too"]
    got = problems(tmp_path, text, *multi, "multi_source=all")
    assert got == ["config: multi_source must be one of teachers, union, got 'all'"]
    got = problems(tmp_path, text, *multi, "finetune.source=ned")
    assert got == ["config: finetune.source: 'ned' is not a source language (['eng', 'esp'])"]
    base = [f"data.root={SHARED_DATA}", f"model.path={tiny}", TINY_FREEZE]
    over = [*base, "sources=['eng', 'esp']", "targets=['ned']",
            "languages.esp.train='conll2002/esp.train'"]  # fmt: skip
    cfg = load_config(CONLL, over)
    assert cfg.run_dir().name == "eng+esp-ned" and cfg.teachers_per_source
    st = plan_stage(cfg, "selftrain")
    assert set(st.upstream) == {
        "selftrain.base",
        "selftrain.teacher[eng]",
        "selftrain.teacher[esp]",
    }
    assert st.upstream["selftrain.teacher[esp]"].folder.name == "finetune-esp"
    assert {"languages.eng.train", "languages.esp.train"} <= set(st.inputs)
    assert st.settings["sources"] == ["eng", "esp"]
    built = build_stage(with_section(cfg, "finetune", init="pretrained"), "finetune")  # union
    assert (Path(built.train_file).name, [Path(f).name for f in built.more_train_files]) == (
        "eng.train",
        ["esp.train"],
    )
    union = load_config(CONLL, [*over, "multi_source=union"])
    assert not union.teachers_per_source
    st = plan_stage(union, "selftrain")
    assert set(st.upstream) == {"selftrain.base", "selftrain.teacher"}
    assert st.upstream["selftrain.teacher"].folder.name == "finetune"
    with pytest.raises(
        ConfigError, match=r"languages.esp.train: missing \(stage finetune needs it\)"
    ):
        check_files(
            load_config(CONLL, [*base, "sources=['eng', 'esp']", "targets=['ned']"]), "finetune"
        )


@pytest.mark.parametrize("name,targets", [("marc", 5), ("xnli", 14)])
def test_cotrain_presets_find_their_data_for_every_target(tiny, name, targets):
    """configs/marc.toml and xnli.toml: every file of every pair exists in the shared data, for
    co-training (and finetune / evaluate); only the two model folders are for the user to give."""
    over = [f"data.root={SHARED_DATA}", f"model.path={tiny}", "model.freeze_layers=1"]
    cfg = load_config(ROOT / "configs" / f"{name}.toml", over)
    assert len(cfg.targets) == targets and cfg.section(CotrainSection).predict_with == "lm"
    with pytest.raises(ConfigError) as info:
        check_files(cfg, "cotrain")
    assert info.value.problems == ["cotrain.embedding_model: LaBSE: no such folder"]
    cfg = load_config(ROOT / "configs" / f"{name}.toml", [*over, f"cotrain.embedding_model={tiny}"])
    for target in cfg.targets:
        pair = dataclasses.replace(cfg, target=target)
        for stage in ("cotrain", "finetune", "evaluate"):
            check_files(pair, stage)


def test_every_problem_of_a_config_is_reported_in_one_pass(tmp_path):
    """A bad epochs, batch size and pad multiple in one section, a bad quota in another and a
    missing data root: all five at once (they used to come one run at a time)."""
    text = MINIMAL + (
        '[data]\nroot = "/no/such/root"\n[btf]\nbatch_size = 0\npad_multiple = 0\n'
        "[btf.train]\nepochs = -1\n[selftrain.rule]\n"
        'name = "class_quota"\nthreshold = "fixed"\nalpha = 0.5\nquota = 2.0\n'
    )
    got = problems(tmp_path, text)
    assert [p.split(":")[0] for p in got] == [
        "btf.train", "btf", "btf", "selftrain.rule", "data.root"
    ]  # fmt: skip
    assert "epochs" in got[0] and "batch_size" in got[1] and "pad_multiple" in got[2]
    assert "quota" in got[3] and "/no/such/root: no such folder" in got[4]
    # a setting that is right only with another (alpha with a fixed threshold) is no problem
    assert not any("alpha" in p for p in got)
