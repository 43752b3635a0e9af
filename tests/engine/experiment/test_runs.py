"""Run folders: file identities, fingerprints and what a changed one reports."""

import hashlib
import json
import os
from pathlib import Path

import pytest

from tests.engine.experiment.test_config import CONLL
from xlt_engine.engine.experiment.config import ConfigError, load_config
from xlt_engine.engine.experiment.runs import (
    FINGERPRINT,
    FORMAT,
    StagePlan,
    StaleStageError,
    check_plans,
    file_identity,
)

MIB = 1 << 20


def test_file_identity_is_what_the_file_holds_not_when_it_was_written(tmp_path):
    big = tmp_path / "big"
    data = bytearray(b"x" * (3 * MIB))
    big.write_bytes(data)
    a = file_identity(big)
    assert a == {"size": 3 * MIB, "sha256": hashlib.sha256(data).hexdigest()}
    os.utime(big, ns=(10**18, 10**18))  # touched (or copied): the same bytes, the same identity
    assert file_identity(big) == a
    data[MIB + 5 : MIB + 6] = b"y"  # an edit in the middle, same size
    big.write_bytes(data)
    os.utime(big, ns=(10**18, 10**18))  # and the old mtime: only the bytes tell
    assert file_identity(big)["sha256"] != a["sha256"]


def test_a_fingerprint_of_an_older_format_is_refused_by_name(tmp_path):
    """Nothing of an older fingerprint format is read in a compatible way: a folder recorded in
    one (no ``format``, or another) is stale, naming the format, and the run stops before any
    work; its results are kept."""
    cfg = load_config(CONLL, [f"out={str(tmp_path)!r}"])
    small = tmp_path / "small.txt"
    small.write_bytes(b"a\n" * 1000)
    btf = StagePlan(cfg, "btf", {"seed": 1}, {"small": small})
    btf.begin()
    assert btf.differences() == [] and btf.fingerprint()["format"] == FORMAT
    legacy = json.loads((btf.folder / FINGERPRINT).read_text())
    del legacy["format"]  # as xlt-engine wrote it before formats were numbered
    (btf.folder / FINGERPRINT).write_text(json.dumps(legacy))
    (btf.folder / "base-model").mkdir()
    fresh = StagePlan(cfg, "btf", {"seed": 1}, {"small": small})
    assert fresh.differences() == [
        f"fingerprint.json of format 1 (written by an older xlt-engine; this one writes format "
        f"{FORMAT} and reads no other)"
    ]
    with pytest.raises(StaleStageError, match="was made with other settings") as info:
        check_plans([fresh])
    assert "format 1" in str(info.value) and (btf.folder / "base-model").is_dir()


def test_a_changed_setting_is_listed_with_old_and_new_value(tmp_path):
    cfg = load_config(CONLL, [f"out={str(tmp_path)!r}"])
    data = tmp_path / "train.txt"
    data.write_text("a\n")
    old = StagePlan(cfg, "btf", {"btf.train.lr": 2e-5, "seed": 1}, {"text": data})
    old.begin()
    assert old.differences() == []
    new = StagePlan(cfg, "btf", {"btf.train.lr": 1e-4, "seed": 1}, {"text": data})
    assert new.differences() == ["btf.train.lr: 2e-05 -> 0.0001"]
    data.write_text("b\n")
    changed = StagePlan(cfg, "btf", {"btf.train.lr": 2e-5, "seed": 1}, {"text": data})
    diff = changed.differences()
    assert len(diff) == 1 and diff[0].startswith(f"input text: {data}: ") and "sha256" in diff[0]
    with pytest.raises(StaleStageError, match="was made with other settings"):
        check_plans([changed])
    (tmp_path / "eng-esp" / "btf" / "base-model").mkdir()  # work in the folder, no fingerprint
    (tmp_path / "eng-esp" / "btf" / "fingerprint.json").unlink()
    assert "no fingerprint.json" in changed.differences()[0]


def test_out_is_the_experiment_folder_for_one_stage_and_for_all(tmp_path):
    """--out meant the pair's folder for one stage and the experiment's for --stage all."""
    from xlt_engine.engine.experiment.pipeline import pair_configs, table_dir
    from xlt_engine.engine.experiment.runs import stage_dir

    cfg = load_config(CONLL, [f"out={str(tmp_path)!r}"])
    assert cfg.run_dir() == tmp_path / "eng-esp" and table_dir(cfg) == tmp_path
    assert [c.run_dir() for c in pair_configs(cfg)] == [
        tmp_path / "eng-esp",
        tmp_path / "eng-ned",
        tmp_path / "eng-deu",
    ]
    assert stage_dir(load_config(CONLL, ["target=ned"]), "btf") == Path("runs/conll/eng-ned/btf")


def test_a_missing_model_names_the_setting_and_the_model_that_exists(tmp_path):
    from xlt_engine.engine.experiment.runs import model_path

    cfg = load_config(CONLL, [f"out={str(tmp_path)!r}"])
    (tmp_path / "eng-esp" / "finetune-direct" / "model").mkdir(parents=True)
    with pytest.raises(ConfigError) as info:
        model_path(cfg, "finetune", "evaluate.model")
    msg = str(info.value)
    assert "evaluate.model: " in msg and "run the finetune stage first" in msg
    assert "or set evaluate.model = 'finetune-direct': that model exists" in msg
    model_path(cfg, "finetune-direct", "evaluate.model")  # exists: no error


def test_plain_text_unlabeled_data_is_a_setting_in_the_fingerprint_only_when_set(tmp_path):
    from tests.engine.experiment.test_config import MINIMAL, problems, write
    from xlt_engine.engine.experiment.runs import plan_stage

    plain = load_config(write(tmp_path, MINIMAL), ["data.unlabeled_format='text'"])
    assert plain.data.unlabeled_format == "text"
    assert plan_stage(plain, "selftrain").settings["data.unlabeled_format"] == "text"
    default = load_config(write(tmp_path, MINIMAL))
    assert "data.unlabeled_format" not in plan_stage(default, "selftrain").settings
    found = problems(tmp_path, MINIMAL, "data.unlabeled_format='conll'")
    assert any("unlabeled_format" in p for p in found)


def test_every_training_setting_is_in_the_fingerprint_at_its_default_too(tmp_path):
    """``head_lr_scale``, ``soft_loss`` and ``hard_steps`` are settings like any other: in the
    fingerprint whatever their value (no setting is left out to keep an older folder valid)."""
    from tests.engine.experiment.test_config import MINIMAL, write
    from xlt_engine.engine.experiment.runs import plan_stage

    default = load_config(write(tmp_path, MINIMAL))
    assert plan_stage(default, "finetune").settings["finetune.train.head_lr_scale"] == 1.0
    assert plan_stage(default, "selftrain").settings["selftrain.soft_loss"] == "kl"
    assert plan_stage(default, "selftrain").settings["selftrain.hard_steps"] is True
    scaled = load_config(write(tmp_path, MINIMAL), ["finetune.train.head_lr_scale=10"])
    settings = plan_stage(scaled, "finetune").settings
    assert settings["finetune.train.head_lr_scale"] == 10
    assert not any("finetune" in k for k in plan_stage(scaled, "btf").settings)
    mse = load_config(write(tmp_path, MINIMAL), ["selftrain.soft_loss='mse'"])
    assert plan_stage(mse, "selftrain").settings["selftrain.soft_loss"] == "mse"


def test_pseudo_rule_settings_name_the_folder_and_count_only_where_they_act(tmp_path):
    """A rule other than the paper's, or a source filter other than ``correct``, gets a folder of
    its own (rows of a study share the rest); a rule's own settings are in the fingerprint only
    under that rule; ``on_collapse`` only when it changes the result (skip_hard)."""
    from tests.engine.experiment.test_config import MINIMAL, write
    from xlt_engine.engine.experiment.runs import plan_stage, stage_dir

    def plan(*sets):
        cfg = load_config(write(tmp_path, MINIMAL), list(sets))
        return stage_dir(cfg, "selftrain").name, plan_stage(cfg, "selftrain").settings

    name, settings = plan()
    assert name == "selftrain"
    assert settings["selftrain.rule.name"] == "paper"
    assert settings["selftrain.source_filter"] == "correct"
    assert not {"selftrain.rule.min_rows", "selftrain.rule.quota", "selftrain.on_collapse"} & set(
        settings
    )
    assert plan("selftrain.on_collapse='error'")[1] == settings
    # a rule's own settings exist only under that rule (they used to be accepted and ignored)
    with pytest.raises(ConfigError, match="a setting of the rule per_class_precision"):
        plan("selftrain.rule.min_rows=5")
    name, settings = plan("selftrain.rule.name='per_class_precision'", "selftrain.rule.min_rows=5")
    assert name == "selftrain-per_class_precision"
    assert (settings["selftrain.rule.min_rows"], settings["selftrain.rule.class_precision"]) == (
        5,
        0.9,
    )
    assert "selftrain.rule.quota" not in settings
    name, settings = plan(
        "selftrain.rule.name='class_quota'", "selftrain.source_filter='confident'"
    )
    assert name == "selftrain-class_quota-srcconfident" and settings["selftrain.rule.quota"] == 0.5
    assert plan("selftrain.on_collapse='skip_hard'")[1]["selftrain.on_collapse"] == "skip_hard"


def test_student_init_names_the_folder_counts_in_the_fingerprint_and_is_no_round1_twin(tmp_path):
    """``student_init = "teacher"`` is another self-training run: its own folder and
    fingerprint, and (acting in round 1's soft step) never a round-1 twin of the paper's."""
    from tests.engine.experiment.test_config import MINIMAL, write
    from xlt_engine.engine.experiment.runs import _part, plan_stage, stage_dir
    from xlt_engine.engine.experiment.stages.selftrain import AFTER_ROUND1_SOFT

    paper = load_config(write(tmp_path, MINIMAL))
    mine = load_config(write(tmp_path, MINIMAL), ["selftrain.student_init='teacher'"])
    both = load_config(
        write(tmp_path, MINIMAL),
        ["selftrain.student_init='teacher'", "selftrain.rule.name='class_quota'"],
    )
    assert stage_dir(paper, "selftrain").name == "selftrain"
    assert stage_dir(mine, "selftrain").name == "selftrain-init_teacher"
    assert stage_dir(both, "selftrain").name == "selftrain-class_quota-init_teacher"
    a, b, c = ({"settings": plan_stage(x, "selftrain").settings} for x in (paper, mine, both))
    assert a["settings"]["selftrain.student_init"] == "base"
    assert b["settings"]["selftrain.student_init"] == "teacher"
    free = AFTER_ROUND1_SOFT  # the settings round-1 twins may differ in
    assert _part(a, free) != _part(b, free)  # no twin of the paper's run ...
    assert _part(b, free) == _part(c, free)  # ... but of its own with another rule
    with pytest.raises(ConfigError, match="student_init"):
        load_config(write(tmp_path, MINIMAL), ["selftrain.student_init='finetune'"])


def test_hard_steps_false_names_its_folder_and_is_a_round1_twin_of_the_papers(tmp_path):
    """The soft-only row (``hard_steps = false``): a folder of its own, and a round-1 twin of
    the paper's run (it acts after round 1's soft step, which it takes from a finished twin)."""
    from tests.engine.experiment.test_config import MINIMAL, write
    from xlt_engine.engine.experiment.ablations import soft_only
    from xlt_engine.engine.experiment.runs import _part, plan_stage, stage_dir
    from xlt_engine.engine.experiment.stages.selftrain import AFTER_ROUND1_SOFT

    paper = load_config(write(tmp_path, MINIMAL))
    soft = soft_only(paper)
    assert soft == load_config(write(tmp_path, MINIMAL), ["selftrain.hard_steps=false"])
    assert stage_dir(paper, "selftrain").name == "selftrain"
    assert stage_dir(soft, "selftrain").name == "selftrain-softonly"
    a, b = ({"settings": plan_stage(x, "selftrain").settings} for x in (paper, soft))
    assert a["settings"]["selftrain.hard_steps"] is True
    assert b["settings"]["selftrain.hard_steps"] is False
    assert _part(a, AFTER_ROUND1_SOFT) == _part(b, AFTER_ROUND1_SOFT)
    with pytest.raises(ConfigError, match="hard_steps"):
        load_config(write(tmp_path, MINIMAL), ["selftrain.hard_steps=2"])
