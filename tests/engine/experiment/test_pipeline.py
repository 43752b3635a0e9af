"""The whole pipeline (``run --stage all``) on slices of the real CoNLL and CLS-10 files with a
tiny random model (real mBERT vocabulary), the ablation switches, and the report of that run
(its tests share the one full run, ``ner_all``)."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from tests.conftest import SHARED_DATA
from tests.engine.conftest import FAST, cls_slice, conll_slice
from xlt_engine.cli import main
from xlt_engine.data import read_conll
from xlt_engine.engine.experiment.config import load_config
from xlt_engine.engine.experiment.pipeline import all_table
from xlt_engine.engine.experiment.runs import partial_twin, with_section
from xlt_engine.engine.experiment.stages.evaluate import build_evaluate

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def ner_all(ner_cfg, tmp_path_factory):
    out = tmp_path_factory.mktemp("ner-run")
    res = CliRunner().invoke(
        main,
        ["run", "--stage", "all", "--config", str(ner_cfg), "--out", str(out), "--no-progress"],
    )
    assert res.exit_code == 0, res.output
    return out, res.output


def test_all_runs_every_stage_per_target_and_prints_the_table(ner_all):
    out, output = ner_all
    results = json.loads((out / "all.json").read_text())
    assert results["metric"] == "entity_f1" and set(results["targets"]) == {"esp", "ned"}
    for tgt in ("esp", "ned"):
        pair = out / f"eng-{tgt}"
        for folder in (
            "btf/base-model",
            "finetune-direct-linear/model",
            "finetune/model",
            "selftrain/model",
        ):
            assert (pair / folder).is_dir(), folder
        for col, folder in (
            ("direct", "finetune-direct-linear"),
            ("btf", "finetune"),
            ("selftrain", "selftrain"),
        ):
            scored = json.loads((pair / f"evaluate-{folder}" / "results.json").read_text())
            assert results["targets"][tgt][col] == scored["languages"][tgt]["score"]
            assert results["targets"][tgt]["source"][col] == scored["languages"]["eng"]["score"]
        # the direct-transfer baseline has a plain linear head (one linear voter), the method's
        # models the Voters Module
        direct = json.loads((pair / "finetune-direct-linear/model/task.json").read_text())
        assert (direct["num_voters"], direct["widths"]) == (1, [0])
        voters = load_file(str(pair / "finetune-direct-linear/model/voters.safetensors"))
        assert sorted(voters) == ["voters.0.classifier.bias", "voters.0.classifier.weight"]
        assert json.loads((pair / "finetune/model/task.json").read_text())["num_voters"] == 3
        # the selftrain stage ran on this pair's own target text, from this pair's Base Model
        st = json.loads((pair / "selftrain" / "config.json").read_text())["stage_config"]
        assert st["unlabeled_file"].endswith(f"{tgt}.train")
        assert st["base_model"] == str(pair / "btf" / "base-model")
        assert st["teacher"] == str(pair / "finetune" / "model")
        assert (pair / "selftrain" / "round-2" / "soft" / "model").is_dir()  # N = 1.5
        assert not (pair / "selftrain" / "round-2" / "hard").exists()
    # the direct-transfer model reads nothing of the target: made once (for eng-esp) and
    # linked into eng-ned, its evaluation too (it scores every target); the twin's seconds kept
    esp, ned = out / "eng-esp", out / "eng-ned"
    for folder in ("finetune-direct-linear", "evaluate-finetune-direct-linear"):
        made = json.loads((esp / folder / "run.json").read_text())
        info = json.loads((ned / folder / "run.json").read_text())
        assert info["shared_from"] == str(esp / folder) and "shared_from" not in made
        assert info["seconds"] == made["seconds"] > 0
        assert (
            json.loads((ned / folder / "config.json").read_text())["experiment"]["target"] == "ned"
        )
    assert f"linked into {ned / 'finetune-direct-linear'}, not run again" in output
    weights = [p / "finetune-direct-linear/model/model.safetensors" for p in (esp, ned)]
    assert weights[0].stat().st_ino == weights[1].stat().st_ino  # one copy on disk
    for folder in ("btf", "finetune", "selftrain", "evaluate-finetune"):  # these read the target
        assert "shared_from" not in json.loads((ned / folder / "run.json").read_text())
    # an evaluation's time by part (eval-wall.json) and the rest of its seconds, in run.json
    info = json.loads((esp / "evaluate-finetune" / "run.json").read_text())
    parts = ["model load", "reading", "encoding", "forward-only passes", "scoring", "other"]
    assert list(info["wall"]) == parts and info["wall"]["forward-only passes"] > 0
    assert sum(info["wall"].values()) == pytest.approx(info["seconds_all_runs"], abs=2e-3)
    # a finished stage drops its loop checkpoints (self-training steps' included)
    assert not list(out.rglob("ckpt-*")) and not list(out.rglob("latest"))
    assert "finetune: done in" in output and "(dropped its loop checkpoints: " in output
    table = (out / "all.md").read_text()
    assert table in output + "\n" and table == all_table(results)
    assert "| language | direct transfer | + BTF | + self-training |" in table
    assert re.search(r"\| esp \| \d+\.\d\d \| \d+\.\d\d \| \d+\.\d\d \|", table)


def test_all_again_runs_nothing_twice(ner_cfg, ner_all):
    out, _ = ner_all
    before = (out / "eng-esp" / "selftrain" / "selftrain.jsonl").read_text()
    for f in Path(load_config(ner_cfg).data.root).iterdir():  # re-copied: same bytes, new mtime
        os.utime(f, ns=(f.stat().st_mtime_ns + 10**9,) * 2)
    res = run_all_cli(ner_cfg, out, "target=esp")
    assert res.exit_code == 0, res.output
    assert res.output.count("not run again") == 4  # btf, both finetunes, selftrain
    assert (out / "eng-esp" / "selftrain" / "selftrain.jsonl").read_text() == before


def test_dev_split_scores_every_model_on_the_dev_files_beside_the_test_tables(
    ner_cfg, ner_all, tmp_path
):
    """``evaluate.split = "dev"``: the same models (nothing trained again) scored on
    ``data.max_dev`` sentences of each language's dev file, into folders and tables of their
    own; the test scores stay as they were."""
    out, _ = ner_all
    pair = out / "eng-esp"
    esp_dev = conll_slice(SHARED_DATA / "conll2002/esp.testa", tmp_path / "esp.dev", 40)
    tests_before = {
        name: _tree(pair / name)
        for name in ("evaluate-finetune", "evaluate-selftrain", "evaluate-finetune-direct-linear")
    }
    all_before = (out / "all.json").read_bytes()
    sets = ['targets=["esp"]', "evaluate.split=dev", f"languages.esp.dev={str(esp_dev)!r}"]
    res = run_all_cli(ner_cfg, out, *sets)
    assert res.exit_code == 0, res.output
    assert res.output.count("not run again") == 4  # btf, both finetunes, selftrain
    assert (out / "all.json").read_bytes() == all_before
    assert {name: _tree(pair / name) for name in tests_before} == tests_before
    dev = json.loads((out / "all-dev.json").read_text())
    assert dev["split"] == "dev" and "on the dev files" in (out / "all-dev.md").read_text()
    root = Path(load_config(ner_cfg).data.root)
    for col, folder in (("direct", "finetune-direct-linear"), ("btf", "finetune"),
                        ("selftrain", "selftrain")):  # fmt: skip
        scored = json.loads((pair / f"evaluate-{folder}-dev" / "results.json").read_text())
        assert scored["split"] == "dev" and scored["model"] == str(pair / folder / "model")
        langs = scored["languages"]
        assert (langs["esp"]["file"], langs["eng"]["file"]) == (str(esp_dev), str(root / "eng.dev"))
        assert (langs["esp"]["sentences"], langs["eng"]["sentences"]) == (40, 60)  # all of them
        assert dev["targets"]["esp"][col] == langs["esp"]["score"]
        assert dev["targets"]["esp"]["source"][col] == langs["eng"]["score"]
    # data.max_dev caps a dev evaluation as data.max_test a test one (the same seeded sample)
    cfg = load_config(ner_cfg, [*sets, "data.max_dev=25", "data.max_test=9", f"out={str(out)!r}"])
    assert build_evaluate(with_section(cfg, "evaluate", model="finetune")).max_test == 25
    test = with_section(cfg, "evaluate", model="finetune", split="test")
    assert build_evaluate(test).max_test == 9
    # a language without a dev file is named before anything runs
    res = run_all_cli(ner_cfg, out, "target=ned", "evaluate.split=dev")
    assert (
        res.exit_code == 1 and "languages.ned.dev: missing (stage evaluate needs it)" in res.output
    )
    res = run_all_cli(ner_cfg, out, "evaluate.split=train")
    assert res.exit_code == 1 and "split must be one of test, dev, got 'train'" in res.output


def test_another_pairs_stage_is_taken_only_on_its_very_fingerprint(ner_cfg, ner_all, tmp_path):
    """pair_twin: eng-esp's direct-transfer model stands for eng-ned's (the same fingerprint),
    not once a setting it reads differs; and computed alone it is the very model linked."""
    from xlt_engine.engine.experiment.runs import (
        pair_twin,
        plan_stage,
        with_linear_head,
        with_section,
    )

    out, _ = ner_all

    def direct_plan(*sets):
        cfg = load_config(ner_cfg, [f"out={str(out)!r}", "target=ned", *sets])
        return plan_stage(with_section(with_linear_head(cfg), "finetune", init="pretrained"),
                          "finetune")  # fmt: skip

    assert pair_twin(direct_plan()) == out / "eng-esp" / "finetune-direct-linear"
    for change in ("seed=6", "finetune.train.lr=1e-3", "data.max_train=100", "model.voters=2"):
        assert pair_twin(direct_plan(change)) is None, change
    assert (
        pair_twin(plan_stage(load_config(ner_cfg, [f"out={str(out)!r}", "target=ned"]), "btf"))
        is None
    )  # fmt: skip  (reads the target's text)
    alone = tmp_path / "alone"
    res = run_all_cli(ner_cfg, alone, "target=ned", "finetune.init=pretrained", "model.head=linear",
                      stage="finetune")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "linked into" not in res.output  # nothing to take from in a fresh folder
    mine, linked = (p / "eng-ned" / "finetune-direct-linear" / "model" for p in (alone, out))
    assert sorted(f.name for f in mine.iterdir()) == sorted(f.name for f in linked.iterdir())
    for f in mine.iterdir():
        assert f.read_bytes() == (linked / f.name).read_bytes(), f.name


def run_all_cli(cfg: Path, out: Path, *sets: str, stage: str = "all"):
    """``xlt-engine run --stage <stage> --config cfg --out out --no-progress --set ...``."""
    args = ["run", "--stage", stage, "--config", str(cfg), "--out", str(out), "--no-progress"]
    return CliRunner().invoke(main, args + [a for item in sets for a in ("--set", item)])


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize(
    ("sets", "changed"),
    [
        (["selftrain.filter_unit=sequence"], ["selftrain.filter_unit: 'word' -> 'sequence'"]),
        (
            ["selftrain.rule.threshold=max_second_difference"],
            ["selftrain.rule.threshold: 'curvature' -> 'max_second_difference'"],
        ),
        (["selftrain.rule.grid=[0.6, 0.7, 0.8]"], ["selftrain.rule.grid: [] -> [0.6, 0.7, 0.8]"]),
        (
            ["finetune.train.lr=0.001"],
            ["finetune.train.lr: 0.003 -> 0.001", "upstream selftrain.teacher: fingerprint"],
        ),
        (
            ["btf.train.lr=0.01"],
            [
                "btf.train.lr: 0.001 -> 0.01",
                "upstream finetune.init: fingerprint",
                "upstream selftrain.base: fingerprint",
            ],
        ),
    ],
)
def test_all_with_changed_settings_stops_before_any_work(ner_cfg, ner_all, sets, changed):
    # the old rule reused any existing stage folder ("exists, not run again"): now a folder made
    # with other settings stops the run, naming each change, and nothing in it is touched
    out, _ = ner_all
    pair = out / "eng-esp"
    before = _tree(pair)
    res = run_all_cli(ner_cfg, out, "target=esp", *sets)
    assert res.exit_code == 1, res.output
    for line in changed:
        assert line in res.output, res.output
    assert "was made with other settings" in res.output and "--out" in res.output
    assert _tree(pair) == before


def test_all_with_changed_data_file_stops_naming_it(ner_cfg, ner_all, tmp_path):
    out, _ = ner_all
    root = Path(load_config(ner_cfg).data.root)
    edited = tmp_path / "esp.train"
    edited.write_bytes((root / "esp.train").read_bytes().replace(b" O\n", b" B-LOC\n", 1))
    pair = out / "eng-esp"
    before = _tree(pair)
    res = run_all_cli(ner_cfg, out, "target=esp", f"languages.esp.unlabeled={str(edited)!r}")
    assert res.exit_code == 1, res.output
    assert f"input languages.esp.unlabeled: {root / 'esp.train'} -> {edited}" in res.output
    assert str(pair / "btf") in res.output and str(pair / "selftrain") in res.output
    assert _tree(pair) == before


def test_a_data_file_changed_in_place_is_seen(tiny, conll, tmp_path):
    # same path, other content (same size): the sha256 of the file tells
    train = tmp_path / "eng.train"
    train.write_bytes(conll["eng.train"].read_bytes())
    sets = [f"data.root={SHARED_DATA}", f"model.path={tiny}", "model.max_len=48",
            "finetune.init=pretrained", f"languages.eng.train={train}",
            f"languages.eng.dev={conll['eng.dev']}", "finetune.batch_size=8",
            "finetune.train.max_steps=2", 'targets=["esp"]', "model.freeze_layers=1"]  # fmt: skip
    conll_toml, out = ROOT / "configs" / "conll.toml", tmp_path / "run"
    res = run_all_cli(conll_toml, out, *sets, stage="finetune")
    assert res.exit_code == 0, res.output
    model = (out / "eng-esp" / "finetune-direct" / "model" / "model.safetensors").read_bytes()
    raw = train.read_bytes()
    i = raw.index(b" I-ORG")
    train.write_bytes(raw[:i] + b" I-PER" + raw[i + 6 :])
    res = CliRunner().invoke(main, ["run", "--stage", "finetune", "--config", str(conll_toml),
                                    "--out", str(out), "--resume"]
                             + [a for item in sets for a in ("--set", item)])  # fmt: skip
    assert res.exit_code == 1
    assert f"input languages.eng.train: {train}: " in res.output and "sha256" in res.output
    assert (
        out / "eng-esp" / "finetune-direct" / "model" / "model.safetensors"
    ).read_bytes() == model


def _records(folder: Path) -> list[dict]:
    return [json.loads(x) for x in (folder / "selftrain.jsonl").read_text().splitlines()]


def test_rows_that_differ_after_the_soft_step_share_round_1(ner_cfg, ner_all, tmp_path):
    """-AT (a fixed alpha) takes Ours' round-1 teacher probabilities and soft student (linked,
    with their records) and that student's pass over the source rows (its own thresholds from
    it), and ends with the very weights it computes alone; a change that acts on the soft step
    (its lr) shares nothing."""
    out, _ = ner_all
    keep = ("btf", "finetune", "selftrain")
    for name in keep:
        shutil.copytree(out / "eng-esp" / name, tmp_path / "shared" / "eng-esp" / name)
    for name in keep[:2]:
        shutil.copytree(out / "eng-esp" / name, tmp_path / "alone" / "eng-esp" / name)
    fixed = ["target=esp", "selftrain.rule.threshold=fixed", "selftrain.rule.alpha=0.15"]
    res = res_at = run_all_cli(ner_cfg, tmp_path / "shared", *fixed, stage="selftrain")
    assert res.exit_code == 0, res.output
    ours = tmp_path / "shared" / "eng-esp" / "selftrain"
    at = tmp_path / "shared" / "eng-esp" / "selftrain-alpha0.15"
    assert f"teacher probabilities and soft student taken from {ours}" in res.output
    shared = [r for r in _records(at) if "shared_from" in r]
    assert [(r["round"], r["step"], r["shared_from"]) for r in shared] == [
        (1, "teacher", str(ours)),
        (1, "soft", str(ours)),
    ]
    assert [r["seconds"] for r in shared] == [r["seconds"] for r in _records(ours)[:2]]
    for f in ("round-1/teacher-probs.safetensors", "round-1/soft/model/model.safetensors"):
        assert os.path.samefile(at / f, ours / f), f  # linked: no second copy on disk
    assert (at / "round-2" / "soft" / "model").is_dir()  # its own round 2
    assert [r["steps"] > 0 for r in _records(at) if r["step"] == "hard"] == [True]

    res = run_all_cli(ner_cfg, tmp_path / "alone", *fixed, stage="selftrain")
    assert res.exit_code == 0, res.output
    alone = tmp_path / "alone" / "eng-esp" / "selftrain-alpha0.15"
    assert not any("shared_from" in r for r in _records(alone))
    # round 1's threshold step reads Ours' pass of the same soft student over the source rows
    # (no forward of its own) and applies its own rule: what it computes alone, byte for byte
    ths = {n: next(r for r in _records(f) if r["step"] == "threshold") for n, f in (("at", at),
           ("alone", alone), ("ours", ours))}  # fmt: skip
    assert ths["at"]["source_pass_from"] == str(ours / "round-1" / "source-ok.safetensors")
    assert ths["at"]["forward_seconds"] == 0.0 and ths["alone"]["forward_seconds"] > 0
    assert "source_pass_from" not in ths["alone"] and "source_pass_from" not in ths["ours"]
    assert ths["at"]["alpha"] == ths["alone"]["alpha"] == 0.15 != ths["ours"]["alpha"]
    assert "voters on the source rows taken from" in res_at.output
    for f in ("filter.safetensors", "threshold.json", "source-ok.safetensors"):
        assert (alone / "round-1" / f).read_bytes() == (at / "round-1" / f).read_bytes(), f
    for f in ("model.safetensors", "voters.safetensors"):
        assert (alone / "model" / f).read_bytes() == (at / "model" / f).read_bytes(), f

    def twin(*sets):
        return partial_twin(
            load_config(ner_cfg, [f"out={str(tmp_path / 'shared')!r}", *sets]), "selftrain"
        )

    assert twin(*fixed, "selftrain.rounds=3", "selftrain.hard.lr=0.1") == ours
    assert twin(*fixed, "selftrain.soft.lr=0.002") is None  # acts on the soft step
    assert twin(*fixed, "selftrain.max_unlabeled=100") is None


def test_selftrain_model_predicts_one_tag_per_input_word(ner_cfg, ner_all, conll, tmp_path):
    out, _ = ner_all
    pred = tmp_path / "esp.pred"
    res = CliRunner().invoke(
        main,
        [
            "run",
            "--stage",
            "predict",
            "--config",
            str(ner_cfg),
            "--out",
            str(out),  # the experiment's folder, as for --stage all (the pair is inside)
            "--set",
            "predict.model=selftrain",
            "--set",
            f"predict.input={conll['esp.test']}",
            "--set",
            f"predict.output={pred}",
            "--set",
            "target=esp",
        ],
    )
    assert res.exit_code == 0, res.output
    gold = read_conll(conll["esp.test"])
    lines = [x.split() for x in pred.read_text().splitlines() if x.strip()]
    lines = [x for x in lines if x[0] != "-DOCSTART-"]
    assert len(lines) == sum(len(s.tokens) for s in gold)
    assert [x[0] for x in lines] == [t for s in gold for t in s.tokens]
    assert all(len(x) == 4 for x in lines)  # word, POS, gold, then one prediction
    assert {x[3] for x in lines} <= {
        "O",
        "B-LOC",
        "I-LOC",
        "B-MISC",
        "I-MISC",
        "B-ORG",
        "I-ORG",
        "B-PER",
        "I-PER",
    }


def test_cls10_all_with_fixed_threshold_and_one_voter(tiny, tmp_path):
    cls = SHARED_DATA / "cls10"
    root = tmp_path / "data"
    root.mkdir()
    cls_slice(cls / "en/books/train.review", root / "en.train", 96)
    cls_slice(cls / "en/books/test.review", root / "en.test", 48)
    cls_slice(cls / "de/books/train.review", root / "de.train", 96)
    cls_slice(cls / "de/books/test.review", root / "de.test", 48)
    cfg = tmp_path / "cls.toml"
    cfg.write_text(
        f"""task = "classification"
source = "en"
targets = ["de"]
device = "cpu"
[data]
root = "{root}"
format = "cls10"
[model]
path = "{tiny}"
freeze_layers = 1  # the tiny model has 2 layers
max_len = 64
[languages.en]
train = "en.train"
test = "en.test"
[languages.de]
unlabeled = "de.train"
test = "de.test"
"""
        + FAST.replace("rounds = 1.5", "rounds = 2")
    )
    out = tmp_path / "run"
    res = CliRunner().invoke(
        main,
        [
            "run",
            "--stage",
            "all",
            "--config",
            str(cfg),
            "--out",
            str(out),
            "--fixed-threshold",
            "0.55",
            "--voters",
            "1",
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    pair = out / "en-de"
    st = pair / "selftrain-voters1-alpha0.55-rounds2"  # N = 2, not the paper's 1.5
    for r in (1, 2):
        assert json.loads((st / f"round-{r}" / "threshold.json").read_text())["alpha"] == 0.55
        counts = json.loads((st / f"round-{r}" / "filter.json").read_text())
        assert counts["target_rows"] == 96 and counts["source_rows"] == 96  # one row per review
    assert json.loads((st / "model" / "task.json").read_text())["num_voters"] == 1
    results = json.loads((out / "all.json").read_text())
    assert results["metric"] == "accuracy"
    assert all(0 <= results["targets"]["de"][c] <= 1 for c in ("direct", "btf", "selftrain"))


def test_threshold_stability_reads_a_run_back_from_its_config_json(ner_all):
    """lab/threshold_stability.py rebuilds the round's source rows from the stage's own
    config.json (load_config) and gets the very curve the run recorded."""
    import numpy as np

    from lab.threshold_stability import source_rule, weighted_curve

    folder = ner_all[0] / "eng-esp" / "selftrain"
    conf, correct, units, classes = source_rule(folder, 1)
    recorded = json.loads((folder / "round-1" / "threshold.json").read_text())
    filtered = json.loads((folder / "round-1" / "filter.json").read_text())
    assert len(conf) == len(correct) == len(units) == filtered["source_rows"]
    assert classes == len(json.loads((folder / "model" / "task.json").read_text())["labels"])
    curve = weighted_curve(conf, correct, np.ones_like(conf), recorded["thresholds"])
    want = np.array([np.nan if a is None else a for a in recorded["accuracy"]])
    np.testing.assert_allclose(curve, want, rtol=0, atol=1e-6)


def test_dev_sweep_links_what_the_setting_leaves_alone_and_scores_on_dev(
    ner_cfg, ner_all, tmp_path
):
    """lab/dev_sweep.py: one rounds study on the dev files per value of the soft lr;
    btf and the teachers are linked from the earlier run, not trained again; the value the run
    was made with takes its round 1 from there too, the other trains its own."""
    from lab import dev_sweep

    out, _ = ner_all
    reuse = tmp_path / "reuse"
    reuse.mkdir()
    (reuse / "seed-5").symlink_to(out)  # the study layout: <folder>/seed-<s>/<pair>
    esp_dev = conll_slice(SHARED_DATA / "conll2002/esp.testa", tmp_path / "esp.dev", 30)
    sweep, results = tmp_path / "sweep", tmp_path / "results"
    dev_sweep.main(["--config", str(ner_cfg), "--name", "t", "--seeds", "5",
                    "--sweep", "selftrain.soft.lr=3e-3,1e-3", "--max-rounds", "0.5",
                    "--out", str(sweep), "--reuse", str(reuse), "--results", str(results),
                    "--set", 'targets=["esp"]', "--set", f"languages.esp.dev={str(esp_dev)!r}"])  # fmt: skip
    report = json.loads(next(results.glob("dev_sweep_t_*.json")).read_text())
    assert report["key"] == "selftrain.soft.lr" and report["values"] == ["3e-3", "1e-3"]
    teacher = set()
    for value, shared in (("3e-3", True), ("1e-3", False)):
        pair = sweep / f"selftrain.soft.lr={value}" / "seed-5" / "eng-esp"
        for f in ("btf/base-model/model.safetensors", "finetune/model/model.safetensors"):
            assert (pair / f).stat().st_ino == (out / "eng-esp" / f).stat().st_ino, f
        st = pair / "selftrain-rounds0.5"
        assert json.loads((st / "config.json").read_text())["stage_config"]["soft"]["lr"] == float(
            value
        )
        took = [r for r in _records(st) if "shared_from" in r]
        assert bool(took) is shared, value
        # the earlier run's selftrain (soft lr 3e-3, N = 1.5) is linked where it was made with the
        # value (a round-1 twin), never into another value's folder
        assert (pair / "selftrain").is_dir() is shared, value
        run = report["runs"][value]
        study = json.loads((pair.parent.parent / "rounds-study-dev.json").read_text())
        assert study["split"] == "dev" and run["scores"] == study["scores"]
        assert list(run["scores"]) == ["N = 0 (teacher)", "N = 0.5"]
        # the last step is the run's own student: scored once, by run_all, not a second time
        assert not (pair / "evaluate-selftrain-rounds0.5-round-1-soft-dev").exists()
        scored = json.loads(
            (pair / "evaluate-selftrain-rounds0.5-dev" / "results.json").read_text()
        )
        assert run["scores"]["N = 0.5"]["esp"] == [scored["languages"]["esp"]["score"]]
        assert scored["languages"]["esp"]["file"] == str(esp_dev)
        teacher.add(run["scores"]["N = 0 (teacher)"]["esp"][0])
        assert [f["round"] for f in run["soft_fit"]] == [1] and run["soft_fit"][0]["loss"] > 0
    assert len(teacher) == 1  # the same linked teacher, scored on the same dev sentences
    md = next(results.glob("dev_sweep_t_*.md")).read_text()
    assert "| selftrain.soft.lr | N = 0 (teacher) | N = 0.5 | self-training time |" in md
    assert re.search(r"\| 1e-3 \| \d+\.\d\d ± 0\.00 \| \d+\.\d\d ± 0\.00 \|", md)
    with pytest.raises(SystemExit, match="KEY=V1,V2"):
        dev_sweep.parse_sweep("selftrain.soft.lr")


def test_threshold_choice_picks_the_row_best_on_dev_and_reports_its_test_score(
    ner_cfg, ner_all, tmp_path
):
    """lab/threshold_choice.py: the threshold study on dev then on test, the same
    models (a fixed-alpha row takes round 1 from the run's selftrain); the choice is the row
    of the best dev score, whatever the test scores say."""
    from lab import threshold_choice
    from xlt_engine.fileio import link_tree

    out, _ = ner_all
    study = tmp_path / "study"
    # the study layout (the fixture's folders left alone), its trained stages only: its
    # evaluations scored both targets, this study one
    link_tree(out, study / "seed-5", skip=lambda rel: rel.parts[-1].startswith("evaluate"))
    esp_dev = conll_slice(SHARED_DATA / "conll2002/esp.testa", tmp_path / "esp.dev", 30)
    results = tmp_path / "results"
    threshold_choice.main(["--config", str(ner_cfg), "--name", "t", "--seeds", "5",
                           "--alphas", "0.6", "--out", str(study), "--results", str(results),
                           "--set", 'targets=["esp"]',
                           "--set", f"languages.esp.dev={str(esp_dev)!r}"])  # fmt: skip
    report = json.loads(next(results.glob("threshold_choice_t_*.json")).read_text())
    dev = json.loads((study / "threshold-study-dev.json").read_text())
    test = json.loads((study / "threshold-study.json").read_text())
    assert list(report["rows"]) == ["alpha = 0.6", "automatic (curvature)"]
    pair = study / "seed-5" / "eng-esp"
    for row, folder in (
        ("alpha = 0.6", "selftrain-alpha0.6"),
        ("automatic (curvature)", "selftrain"),
    ):
        info = report["rows"][row]
        assert info["dev"] == dev["scores"][row] and info["test"] == test["scores"][row]
        for split, name in (("dev", f"evaluate-{folder}-dev"), ("test", f"evaluate-{folder}")):
            scored = json.loads((pair / name / "results.json").read_text())["languages"]["esp"]
            assert info[split] == {"esp": [scored["score"]]} and info[f"{split}_std"] == 0.0
        assert scored["file"] != str(esp_dev)  # the test folder read the test file
        (r1,) = info["round_1"]
        assert (
            r1["alpha"]
            == json.loads((pair / folder / "round-1" / "filter.json").read_text())["alpha"]
        )
    assert report["rows"]["alpha = 0.6"]["round_1"][0]["alpha"] == 0.6
    # the references: the teacher and the direct model, on the dev file then the test file
    assert list(report["references"]) == list(threshold_choice.REFERENCES)
    for row, model in zip(
        report["references"], ("finetune", "finetune-direct-linear"), strict=True
    ):
        info = report["references"][row]
        for split, name in (("dev", f"evaluate-{model}-dev"), ("test", f"evaluate-{model}")):
            scored = json.loads((pair / name / "results.json").read_text())["languages"]["esp"]
            assert info[split] == {"esp": [scored["score"]]}
            assert (scored["file"] == str(esp_dev)) == (split == "dev")
    took = [r for r in _records(pair / "selftrain-alpha0.6") if "shared_from" in r]
    assert took  # round 1 from the run's selftrain, not trained again
    assert report["chosen"] == threshold_choice.choose_row(dev["scores"])
    md = next(results.glob("threshold_choice_t_*.md")).read_text()
    assert f"Chosen on dev: **{report['chosen']}**" in md
    assert "| direct transfer | " in md and report["chosen"] not in threshold_choice.REFERENCES
    assert (
        threshold_choice.choose_row(
            {
                "a": {"x": [0.5, 0.7], "y": [0.6, 0.6]},
                "b": {"x": [0.7, 0.5], "y": [0.6, 0.6]},
                "c": {"x": [0.9, 0.1], "y": [0.2, 0.2]},
            }
        )
        == "a"
    )  # fmt: skip  (a and b tie at 0.6: the first; c's 0.35 is lower)
    assert threshold_choice.choose_row({"a": {"x": [0.1]}, "b": {"x": [0.3]}}) == "b"


def test_smoke_runs_every_stage_on_a_sample_into_its_own_folder(tiny, tmp_path):
    """--smoke: the real CoNLL files capped to a few hundred sentences, a few steps a stage."""
    out = tmp_path / "exp"
    args = ["run", "--stage", "all", "--smoke", "--config", str(ROOT / "configs" / "conll.toml"),
            "--out", str(out), "--no-progress", "--set", f"data.root={SHARED_DATA}",
            "--set", f"model.path={tiny}", "--set", 'targets=["esp"]',
            "--set", "model.freeze_layers=1", "--set", "keep_loop_checkpoints=true"]  # fmt: skip
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, (res.output, res.exception)
    pair = out / "smoke" / "eng-esp"
    for run in ("btf", "finetune", "selftrain/round-1/soft", "selftrain/round-2/soft"):
        assert (pair / run / "ckpt-00000004" / "state.pt").is_file(), run  # kept, as asked
    assert not (out / "eng-esp").exists()  # never mixed with the real run
    texts = (pair / "btf" / "texts" / "esp.txt").read_text().splitlines()
    assert len(texts) == 200  # data.max_unlabeled of 8,323 sentences
    fp = json.loads((pair / "finetune" / "fingerprint.json").read_text())["settings"]
    assert fp["data.max_train"] == 200 and fp["finetune.train.max_steps"] == 4
    results = json.loads((pair / "evaluate-selftrain" / "results.json").read_text())
    assert {s["sentences"] for s in results["languages"].values()} == {100}
    st = [json.loads(x) for x in (pair / "selftrain" / "selftrain.jsonl").read_text().splitlines()]
    soft = [r for r in st if r["step"] == "soft"]
    assert [r["steps"] for r in soft] == [4, 4]  # N = 1.5: rounds 1 and 2
    assert (out / "smoke" / "all.md").is_file()
    summary = res.output[res.output.index("summary:") :].splitlines()
    assert any(x.split()[:2] == ["[eng-esp]", "btf"] for x in summary[1:]), summary
    last, again = summary[-2:]
    assert str(out / "smoke" / "all.md") in last and last.endswith(" MiB"), last
    assert again.startswith("to repeat it (finished stages are reused): xlt-engine run --stage all")


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_report_of_a_run_has_every_section_and_the_results_numbers(ner_all, tmp_path, monkeypatch):
    import base64

    from xlt_engine.studies import figures

    out, _ = ner_all
    page = tmp_path / "report.html"
    res = CliRunner().invoke(main, ["report", str(out), "--out", str(page)])
    assert res.exit_code == 0, res.output
    text = page.read_text()
    assert f"report: {page} (" in res.output
    for section in ("<h2>results</h2>", "<h3>all.json: entity F1 (%)</h3>", "<h2>eng-esp</h2>",
                    "<h2>eng-ned</h2>", "<h4>btf</h4>", "<h4>finetune</h4>",
                    "<h4>finetune-direct-linear</h4>", "<h4>selftrain</h4>", "<h5>round-1</h5>",
                    "<h3>evaluations</h3>", "F1 (%) per entity type", "configs and provenance",
                    "pseudo-labeled target rows", "% of source gold",
                    "confusion of entity types (exact spans)",
                    "precision, recall and F1 (%) per language and entity type",
                    "target rows whose voters agree"):  # fmt: skip
        assert section in text, section
    # btf's and finetune's time, from run.json's wall, as selftrain's from summary.json
    btf = text.split("<h4>btf</h4>", 1)[1].split("<h4>", 1)[0]
    assert "Where the time went" in btf and "<td>training steps</td>" in btf
    assert "<td>other</td>" in btf
    # every number of the results table is all.json's
    results = json.loads((out / "all.json").read_text())
    table = text.split("<h3>all.json: entity F1 (%)</h3>", 1)[1].split("</table>", 1)[0]
    for target, row in results["targets"].items():
        cells = re.search(rf"<tr><td>{target}</td>(.*?)</tr>", table).group(1)
        got = re.findall(r"<td>([^<]*)</td>", cells)
        want = [f"{100 * row[c]:.2f}" for c in ("direct", "btf", "selftrain")]
        assert got[:3] == want
        assert got[3] == f"{100 * (row['selftrain'] - row['btf']):+.2f}"
    # the plots are real PNG images, and the page fetches nothing
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(images) >= 10
    assert all(min(_png_size(base64.b64decode(b))) > 50 for b in images)
    assert "http://" not in text and "https://" not in text and "<script" not in text
    # without matplotlib: the same tables, no image, and how to get the plots
    monkeypatch.setattr(figures, "load_pyplot", lambda: None)
    res = CliRunner().invoke(
        main, ["report", str(out / "eng-esp"), "--out", str(tmp_path / "p.html")]
    )
    assert res.exit_code == 0, res.output
    plain = (tmp_path / "p.html").read_text()
    assert "<img" not in plain and "pip install &#x27;xlt-engine[report]&#x27;" in plain
    assert "<h4>selftrain</h4>" in plain and "pip install" in res.output
    empty = tmp_path / "empty"
    empty.mkdir()
    res = CliRunner().invoke(main, ["report", str(empty), "--out", str(tmp_path / "e.html")])
    assert res.exit_code == 1 and f"{empty}: no run found" in res.output


CHECK_IMAGES = """<script>
window.addEventListener("load", () => {
  const imgs = [...document.images];
  const bad = imgs.filter((i) => !(i.complete && i.naturalWidth > 0 && i.naturalHeight > 0));
  document.title = `images ${imgs.length} broken ${bad.length}`;
});
</script>"""


def test_report_renders_in_headless_chromium(ner_all, tmp_path):
    """The page loads in a real browser with no console error and every image decodes (a script
    appended to a copy of the page counts them; the report itself has none)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    from xlt_engine.studies.report import write_report

    out, _ = ner_all
    page, images = write_report([out], tmp_path / "report.html")
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", CHECK_IMAGES + "</body>"))
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
           "--v=0", "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"<title>images {images} broken 0</title>" in proc.stdout, proc.stdout[:500]
    console = [x for x in proc.stderr.splitlines() if "CONSOLE" in x or "Uncaught" in x]
    assert not console, console


def test_report_escapes_every_value_a_run_writes(ner_all, tmp_path):
    """Every string value of every JSON / JSONL file of a real run made hostile (wrapped in a
    live <script> tag, and a quote-breaking attribute): the page holds none of them as markup,
    and it still builds (a value where a number was expected is shown as text)."""
    from xlt_engine.studies.report import build_report

    out, _ = ner_all
    copy = tmp_path / "run"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("*.safetensors", "*.pt", "cache"))
    evil = "<script>alert(1)</script>\"'><img src=x onerror=alert(2)>"

    def taint(x):
        if isinstance(x, str):
            return f"{x}{evil}"
        if isinstance(x, list):
            return [taint(v) for v in x]
        if isinstance(x, dict):
            return {k: taint(v) for k, v in x.items()}
        return x

    tainted = 0
    for path in [*copy.rglob("*.json"), *copy.rglob("*.jsonl")]:
        if path.suffix == ".json":
            path.write_text(json.dumps(taint(json.loads(path.read_text()))))
        else:
            rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
            path.write_text("".join(json.dumps(taint(r)) + "\n" for r in rows))
        tainted += 1
    # and numbers where numbers are read: a hostile alpha, rows and seconds
    for path in copy.rglob("round-1/threshold.json"):
        th = json.loads(path.read_text())
        path.write_text(json.dumps(th | {"alpha": evil, "rows": evil}))
    assert tainted > 20
    page, _ = build_report([copy])
    assert "<script" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # shown, as text


def test_a_resumed_stage_counts_the_seconds_of_every_run(tiny, tmp_path, monkeypatch):
    """run.json's ``seconds`` is the last run of a stage; ``seconds_all_runs`` adds the runs it
    continues (an interrupted run records its time as it stops), which is what a study's wall
    times read. A stage run again from nothing counts from nothing."""
    import dataclasses
    import time

    from xlt_engine.engine.experiment import registry
    from xlt_engine.engine.experiment.execute import run_stage
    from xlt_engine.engine.experiment.runs import stage_dir
    from xlt_engine.quickstart import Sizes, prepare

    cfg_path = prepare(tmp_path / "qs", seed=3, sizes=Sizes(train=60, dev=20, test=40))
    cfg = load_config(cfg_path, ["btf.train.max_steps=2", f"out={str(tmp_path / 'run')!r}"])
    real, get = registry.get("btf"), registry.get
    calls = []

    def run(stage_cfg, resume, echo, progress):  # the first run is stopped after 0.3 s
        calls.append(resume)
        time.sleep(0.3)
        if len(calls) == 1:
            raise KeyboardInterrupt
        # (the stand-in stopped before any checkpoint: the real stage starts from its step 0)
        return real.run(stage_cfg, resume=False, echo=echo, progress=progress)

    patched = dataclasses.replace(real, run=run)
    monkeypatch.setattr(registry, "get", lambda name: patched if name == "btf" else get(name))
    with pytest.raises(KeyboardInterrupt):
        run_stage(cfg, "btf", echo=None)
    folder = stage_dir(cfg, "btf")
    first = json.loads((folder / "run.json").read_text())
    assert "seconds" not in first and first["seconds_all_runs"] >= 0.3
    run_stage(cfg, "btf", resume=True, echo=None)
    info = json.loads((folder / "run.json").read_text())
    assert calls == [False, True]
    assert info["seconds_all_runs"] == pytest.approx(first["seconds_all_runs"] + info["seconds"])
    assert info["seconds"] >= 0.3
    # where it went: the loop's parts (loop-wall.json) and the rest of every run's seconds
    wall = info["wall"]
    assert set(wall) == {"training steps", "dev evaluation", "checkpoints", "other"}
    assert wall["training steps"] > 0 and wall["other"] >= 0.3 + 0.3  # the two sleeps
    assert sum(wall.values()) == pytest.approx(info["seconds_all_runs"], abs=2e-3)


def test_all_plans_the_teacher_the_config_names():
    """``selftrain.teacher = "finetune-direct"`` with btf on: the plan used to fine-tune only
    from btf, and the run stopped at self-training ("no such folder") after btf and fine-tuning
    had run. The teacher's own stage is planned before self-training; the default plan is as
    it was."""
    from tests.engine.experiment.test_config import CONLL
    from xlt_engine.engine.experiment.pipeline import EVERY_PART, Parts, plan_all

    def inits(sets, parts=EVERY_PART):
        steps = plan_all(load_config(CONLL, ["targets=['esp']", *sets]), parts)
        ft = [c.settings_of("finetune").init for c, s in steps if s == "finetune"]
        return ft, [s for _, s in steps].index("selftrain")

    assert inits([]) == (["pretrained", "btf"], 3)  # direct transfer's, the teacher's
    assert inits([], Parts(finetuned=False)) == (["pretrained", "btf"], 3)  # the teacher
    direct = ['selftrain.teacher="finetune-direct"', 'selftrain.base="pretrained"']
    ft, at = inits(direct)
    assert ft == ["pretrained", "btf", "pretrained"] and at == 4
    # without the + BTF column no step reads the model fine-tuned from btf: it is not made
    assert inits(direct, Parts(finetuned=False)) == (["pretrained", "pretrained"], 3)
    # - BTF: direct transfer's (a linear head) and the teacher (voters), both pretrained
    assert inits([], Parts(btf=False)) == (["pretrained", "pretrained"], 2)


def _two_cpus(tmp_path, monkeypatch, rounds: int):
    """A quickstart config maker (``config(out)``, tiny steps, a fixed alpha) and ``machine(native)``,
    which makes this CPU one with native bf16 or one without; the tiny model counts as wide, so
    precision "auto" picks bf16 on the first and fp32 on the second."""
    from xlt_engine import provenance
    from xlt_engine.engine.train import optim
    from xlt_engine.quickstart import Sizes, prepare

    cfg_path = prepare(tmp_path / "qs", seed=4, sizes=Sizes(train=60, dev=20, test=40))
    sets = ["btf.train.max_steps=2", "finetune.train.max_steps=12", f"selftrain.rounds={rounds}",
            "selftrain.soft.max_steps=3", "selftrain.hard.max_steps=3",
            "selftrain.rule.threshold=fixed", "selftrain.rule.alpha=0.2"]  # fmt: skip
    monkeypatch.setattr(optim, "CPU_BF16_MIN_WIDTH", 1)

    def machine(native: bool):
        monkeypatch.setattr(provenance, "cpu_info", lambda: {"model": "t", "native_bf16": native})

    def config(out: Path, *more: str):
        return load_config(cfg_path, [*sets, *more, f"out={str(out)!r}"])

    return config, machine


def test_a_stage_resumed_on_another_cpu_runs_in_the_precision_it_began_in(tmp_path, monkeypatch):
    """precision = "auto" follows the CPU: bf16 where it multiplies bf16 natively, else fp32.
    A self-training stage begun on such a CPU and resumed on one without finished its passes
    and steps in fp32: neither the one machine's result nor the other's. Now run.json records
    what the stage began with, a resumed stage decides "auto" as it did (and says so), and it
    ends with the uninterrupted run's student bit for bit; its records name their precision."""
    import shutil

    from xlt_engine.engine.experiment.execute import run_stage
    from xlt_engine.engine.experiment.runs import stage_dir
    from xlt_engine.engine.method import selftrain

    config, machine = _two_cpus(tmp_path, monkeypatch, rounds=1)
    machine(True)
    whole = config(tmp_path / "whole")
    for stage in ("btf", "finetune", "selftrain"):
        run_stage(whole, stage, echo=None)
    cut = config(tmp_path / "cut")
    shutil.copytree(tmp_path / "whole", tmp_path / "cut",
                    ignore=lambda d, names: [n for n in names if n.startswith("selftrain")])  # fmt: skip
    real_hard = selftrain.hard_step

    def stopped(*args, **kw):  # stopped where round 1's hard step begins
        raise KeyboardInterrupt

    monkeypatch.setattr(selftrain, "hard_step", stopped)
    with pytest.raises(KeyboardInterrupt):
        run_stage(cut, "selftrain", echo=None)
    folder = stage_dir(cut, "selftrain")
    began = json.loads((folder / "run.json").read_text())
    assert began["precision_basis"] == {"cpu_native_bf16": True}
    monkeypatch.setattr(selftrain, "hard_step", real_hard)
    machine(False)
    said = []
    run_stage(cut, "selftrain", resume=True, echo=said.append)
    assert (
        "selftrain: resumed as it began: precision 'auto' decides as on the CPU with native "
        "bf16 it began on (this one is without)" in said
    )
    info = json.loads((folder / "run.json").read_text())
    assert info["precision_basis"] == {"cpu_native_bf16": True}
    assert info["cpu"] == {"model": "t", "native_bf16": False}  # the machine it ran on
    whole_model = stage_dir(whole, "selftrain") / "model"
    for name in ("model.safetensors", "voters.safetensors"):
        a, b = load_file(str(whole_model / name)), load_file(str(folder / "model" / name))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    passes = [r for r in _records(folder) if "forward_seconds" in r]
    assert passes and {r["precision"] for r in passes} == {"bf16"}
    hard = folder / "round-1" / "hard" / "metrics.jsonl"
    assert {json.loads(x)["precision"] for x in hard.read_text().splitlines()} == {"bf16"}
    # a stage begun here, from nothing, decides by this machine
    fresh = config(tmp_path / "fresh")
    run_stage(fresh, "btf", echo=None)
    basis = json.loads((stage_dir(fresh, "btf") / "run.json").read_text())["precision_basis"]
    assert basis == {"cpu_native_bf16": False}


def test_a_row_that_takes_round_1_from_a_twin_made_on_another_cpu_goes_on_in_its_precision(
    tmp_path, monkeypatch
):
    """Soft only takes round 1 (teacher probabilities, soft student) from Ours' folder. With
    Ours made on a CPU with native bf16 and soft only run on one without, round 2 ran in fp32
    on bf16 work: neither machine's row. It now goes on as the twin began, and ends with the
    row made whole on the first machine bit for bit."""
    import shutil

    from xlt_engine.engine.experiment.execute import run_stage
    from xlt_engine.engine.experiment.runs import stage_dir

    config, machine = _two_cpus(tmp_path, monkeypatch, rounds=2)
    machine(True)
    whole = config(tmp_path / "whole", "selftrain.hard_steps=false")
    for stage in ("btf", "finetune"):
        run_stage(whole, stage, echo=None)
    run_stage(config(tmp_path / "whole"), "selftrain", echo=None)  # Ours
    shutil.copytree(tmp_path / "whole", tmp_path / "later")
    run_stage(whole, "selftrain", echo=None)  # soft only, all on the first machine
    machine(False)
    later = config(tmp_path / "later", "selftrain.hard_steps=false")
    said = []
    run_stage(later, "selftrain", echo=said.append)
    assert any("round 1" in x for x in said), said  # it did take the twin's round 1
    folder = stage_dir(later, "selftrain")
    info = json.loads((folder / "run.json").read_text())
    assert info["precision_basis"] == {"cpu_native_bf16": True}
    ours = json.loads((stage_dir(config(tmp_path / "later"), "selftrain") / "run.json").read_text())
    assert ours["precision_basis"] == {"cpu_native_bf16": True}
    made = [r for r in _records(folder) if r.get("round") == 2 and "precision" in r]
    assert made and {r["precision"] for r in made} == {"bf16"}
    soft2 = folder / "round-2" / "soft" / "metrics.jsonl"
    assert {json.loads(x)["precision"] for x in soft2.read_text().splitlines()} == {"bf16"}
    want = stage_dir(whole, "selftrain") / "model"
    for name in ("model.safetensors", "voters.safetensors"):
        a, b = load_file(str(want / name)), load_file(str(folder / "model" / name))
        assert all(torch.equal(a[k], b[k]) for k in a), name
