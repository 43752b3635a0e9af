"""The studies over tiny runs: the ablation's rows, folders and tables, several sources, ``--rows``,
the threshold and rounds studies, and the merging of tables with an earlier study's rows."""

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from xlt_engine.cli import main
from xlt_engine.engine.experiment.config import ConfigError, load_config
from xlt_engine.engine.experiment.runs import stage_dir
from xlt_engine.studies.tables import ablation_table, study_table


def test_ablation_switches_name_their_own_folders(ner_cfg, tmp_path):
    cfg = load_config(
        ner_cfg,
        [
            "selftrain.rule.threshold=fixed",
            "selftrain.rule.alpha=0.9",
            "model.voters=1",
            f"out={str(tmp_path)!r}",
        ],
    )
    assert stage_dir(cfg, "selftrain").name == "selftrain-voters1-alpha0.9"
    assert stage_dir(cfg, "finetune").name == "finetune-voters1"
    linear = load_config(ner_cfg, ["model.head=linear", f"out={str(tmp_path)!r}"])
    assert stage_dir(linear, "selftrain").name == "selftrain-linear"
    assert stage_dir(linear, "finetune").name == "finetune-linear"
    with pytest.raises(ConfigError, match="voter_widths is for head = 'voters'"):
        load_config(ner_cfg, ["model.head=linear", "model.voter_widths=[100]"])
    res = CliRunner().invoke(
        main, ["run", "--stage", "selftrain", "--config", str(ner_cfg), "--no-selftrain"]
    )
    assert res.exit_code != 0 and "--no-selftrain goes with --stage all" in res.output


def test_ablate_table_has_every_row_with_mean_and_std(tiny, tmp_path):
    from xlt_engine.quickstart import Sizes, prepare

    cfg_path = prepare(tmp_path / "qs", seed=3, sizes=Sizes(train=60, dev=20, test=40))
    out = tmp_path / "ablate"
    res = CliRunner().invoke(
        main,
        [
            "ablate",
            "--config",
            str(cfg_path),
            "--seeds",
            "1,2",
            "--out",
            str(out),
            "--set",
            "btf.train.max_steps=4",
            "--set",
            "finetune.train.max_steps=8",
            "--set",
            "selftrain.soft.max_steps=4",
            "--set",
            "selftrain.hard.max_steps=4",
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    result = json.loads((out / "ablation.json").read_text())
    assert list(result["scores"]) == [
        "Ours", "- AT", "- VM", "- BTF", "- ST", "direct transfer", "soft only"
    ]  # fmt: skip
    assert all(len(v["tgt"]) == 2 for v in result["scores"].values())  # one score per seed
    table = (out / "ablation.md").read_text()
    assert table == ablation_table(result)
    assert re.search(r"\| - VM \| \d+\.\d\d ± \d+\.\d\d \| \d+\.\d\d ± \d+\.\d\d \|", table)
    pair = out / "seed-1" / "src-tgt"
    assert sorted(p.name for p in pair.iterdir() if p.name.startswith("selftrain")) == [
        "selftrain",
        "selftrain-alpha0.9",
        "selftrain-direct",
        "selftrain-linear",
        "selftrain-softonly",
    ]
    # soft only trains no hard step: each round's result is its soft student
    soft_only = [json.loads(x) for x in (pair / "selftrain-softonly" / "selftrain.jsonl").open()]
    assert {r.get("skipped") for r in soft_only if r["step"] == "hard"} == {
        "hard_steps = false (soft steps only)"
    }
    # -VM's student and teacher have the plain linear head; the direct row's model too
    st = json.loads((pair / "selftrain-linear" / "model" / "task.json").read_text())
    assert (st["num_voters"], st["widths"]) == (1, [0])
    assert (pair / "finetune-direct-linear" / "model").is_dir()  # the direct-transfer row
    assert (pair / "finetune-direct" / "model").is_dir()  # -BTF's teacher (voters head)
    # the -ST row is the +BTF model of the full run, the direct row its direct transfer
    full = json.loads((out / "seed-1" / "all.json").read_text())["targets"]["tgt"]
    assert (out / "seed-1" / "all-no-btf.md").is_file()  # each variant keeps its own table
    assert result["scores"]["- ST"]["tgt"][0] == full["btf"]
    assert result["scores"]["direct transfer"]["tgt"][0] == full["direct"]


def test_threshold_and_rounds_studies_are_tables_over_seeds(tiny, tmp_path):
    """ablate --study threshold: one row per fixed alpha and the automatic row; --study rounds:
    the student after every soft and hard step, each a real evaluation of that step's model."""
    from xlt_engine.quickstart import Sizes, prepare

    cfg_path = prepare(tmp_path / "qs", seed=3, sizes=Sizes(train=60, dev=20, test=40))
    out = tmp_path / "study"
    steps = ["btf.train.max_steps=4", "finetune.train.max_steps=8", "selftrain.soft.max_steps=4",
             "selftrain.hard.max_steps=4"]  # fmt: skip
    common = ["--config", str(cfg_path), "--seeds", "1,2", "--out", str(out), "--no-progress"]
    common += [a for s in steps for a in ("--set", s)]
    res = CliRunner().invoke(
        main, ["ablate", "--study", "threshold", "--alphas", "0.5,0.8", *common]
    )
    assert res.exit_code == 0, res.output
    result = json.loads((out / "threshold-study.json").read_text())
    assert list(result["scores"]) == ["alpha = 0.5", "alpha = 0.8", "automatic (curvature)"]
    assert all(len(v["tgt"]) == 2 for v in result["scores"].values())
    assert (out / "threshold-study.md").read_text() == study_table(
        result, (out / "threshold-study.md").read_text().split("; ", 1)[1].split("\n")[0]
    )
    pair = out / "seed-2" / "src-tgt"
    for a in ("0.5", "0.8"):  # each row is the run at that alpha
        th = json.loads((pair / f"selftrain-alpha{a}" / "round-1" / "threshold.json").read_text())
        assert th["alpha"] == float(a)
        got = json.loads((out / "seed-2" / f"all-alpha{a}.json").read_text())["targets"]["tgt"]
        assert result["scores"][f"alpha = {a}"]["tgt"][1] == got["selftrain"]
    log = json.loads((pair / "selftrain" / "summary.json").read_text())["log"]
    assert result["automatic_alphas"]["tgt"][1] == [
        x["alpha"] for x in log if x["step"] == "threshold"
    ]

    res = CliRunner().invoke(main, ["ablate", "--study", "rounds", "--max-rounds", "1.5", *common])
    assert res.exit_code == 0, res.output
    result = json.loads((out / "rounds-study.json").read_text())
    assert list(result["scores"]) == ["N = 0 (teacher)", "N = 0.5", "N = 1", "N = 1.5"]
    assert all(len(v["tgt"]) == 2 for v in result["scores"].values())
    full = json.loads((out / "seed-1" / "all-rounds1.5.json").read_text())["targets"]["tgt"]
    assert result["scores"]["N = 0 (teacher)"]["tgt"][0] == full["btf"]
    assert result["scores"]["N = 1.5"]["tgt"][0] == full["selftrain"]  # the final student
    pair = out / "seed-1" / "src-tgt"  # ... scored once: by run_all, not again by its step
    assert not (pair / "evaluate-selftrain-round-2-soft").exists()
    # N = 1.5 is the paper's default: the study's runs are the ablation's own (reused)
    assert not any(p.name.startswith("selftrain-rounds") for p in pair.iterdir())
    for r, which, score in (("round-1", "soft", "N = 0.5"), ("round-1", "hard", "N = 1")):
        ev = json.loads((pair / f"evaluate-selftrain-{r}-{which}" / "results.json").read_text())
        assert ev["model"] == str(pair / "selftrain" / r / which / "model")
        assert result["scores"][score]["tgt"][0] == ev["languages"]["tgt"]["score"]
    bad = CliRunner().invoke(main, ["ablate", "--study", "rounds", "--max-rounds", "1.2", *common])
    assert bad.exit_code != 0 and "--max-rounds must be a multiple of 0.5" in bad.output


def test_two_sources_one_teacher_each_and_a_row_per_source(ner_cfg, conll, tiny, tmp_path):
    """sources = [eng, esp] -> ned: btf reads both sources' text; one teacher per source, and
    round 1's soft labels are the mean of their probabilities; the source filter and the hard
    step see both sources' rows; ablate adds the method from each source alone."""
    from lab.study import row_stages
    from xlt_engine.data.task import encode, read_task_file
    from xlt_engine.data.tokenizer import load_tokenizer
    from xlt_engine.engine.train.inference import predict_logits
    from xlt_engine.model.heads import VotersModule
    from xlt_engine.model.task import load_task_model
    from xlt_engine.studies.ablate import ABLATION_ROWS, SINGLE_SOURCE_ROWS

    out = tmp_path / "multi"
    sets = ['sources=["eng", "esp"]', 'targets=["ned"]', "languages.esp.train=esp.train"]
    args = ["ablate", "--config", str(ner_cfg), "--seeds", "1", "--out", str(out), "--no-progress"]
    res = CliRunner().invoke(main, args + [a for s in sets for a in ("--set", s)])
    assert res.exit_code == 0, res.output
    result = json.loads((out / "ablation.json").read_text())
    pair = out / "seed-1" / "eng+esp-ned"
    alone_rows = [f"{r} ({lang} only)" for lang in ("eng", "esp") for r in SINGLE_SOURCE_ROWS]
    assert list(result["scores"]) == [*ABLATION_ROWS, *alone_rows]
    for lang in ("eng", "esp"):  # each source alone: its own runs and table
        alone = json.loads((out / "seed-1" / f"all-{lang}-only.json").read_text())
        for row, col in (("Ours", "selftrain"), ("- ST", "btf"), ("direct transfer", "direct")):
            got = result["scores"][f"{row} ({lang} only)"]["ned"]
            assert got == [alone["targets"]["ned"][col]] and got[0] is not None
        assert (out / "seed-1" / f"{lang}-ned" / "selftrain" / "model").is_dir()
    # the study's per-row wall time sums exactly the folders these rows were made in
    cfg = load_config(ner_cfg, [*sets, f"out={str(out / 'seed-1')!r}", "seed=1"])
    stages = row_stages(dataclasses.replace(cfg, target="ned"), 0.9)
    assert [r for r in stages if not r.startswith(("rule = ", "init = "))] == list(result["scores"])
    stages = {r: f for r, f in stages.items() if r in result["scores"]}  # the rows made
    made = {p.parent for p in (out / "seed-1").glob("*/*/run.json")}
    assert set().union(*map(set, stages.values())) == made  # and no stage more
    assert stages["Ours"][1:3] == [pair / "finetune-eng", pair / "finetune-esp"]  # its teachers
    finetuned = sorted(p.name for p in pair.iterdir() if p.name.startswith("finetune"))
    assert finetuned == ["finetune", "finetune-direct-eng", "finetune-direct-esp",
                         "finetune-direct-linear", "finetune-eng", "finetune-esp",
                         "finetune-linear-eng", "finetune-linear-esp"]  # fmt: skip
    # (-VM needs no linear-head model on the union: its teachers are one per source)
    assert sorted(p.name for p in (pair / "btf" / "texts").iterdir()) == [
        "eng.txt",
        "esp.txt",
        "ned.txt",
    ]
    fp = json.loads((pair / "selftrain" / "fingerprint.json").read_text())
    assert {"selftrain.teacher[eng]", "selftrain.teacher[esp]"} <= set(fp["upstream"])
    # the union model (+ BTF column) learned from both sources' files
    union = json.loads((pair / "finetune" / "fingerprint.json").read_text())["inputs"]
    assert {"languages.eng.train", "languages.esp.train"} <= set(union)
    # round 1: the mean of the two teachers' probabilities on the target text
    tok = load_tokenizer(tiny)
    root = Path(
        json.loads((pair / "selftrain" / "config.json").read_text())["experiment"]["data"]["root"]
    )
    teachers = [load_task_model(pair / f"finetune-{lang}" / "model") for lang in ("eng", "esp")]
    labels = teachers[0].labels
    ned = encode(read_task_file(root / "ned.train", "conll", unlabeled=True), tok, labels, 48)
    want = (
        sum(
            VotersModule.probs(predict_logits(t, ned, tok.pad_id, torch.device("cpu")))
            for t in teachers
        )
        / 2
    )
    probs = load_file(str(pair / "selftrain" / "round-1" / "teacher-probs.safetensors"))["probs"]
    torch.testing.assert_close(probs.float(), want, atol=1e-3, rtol=0)
    # the threshold, the source filter and the hard step read every source's rows
    rows = sum(
        int(encode(read_task_file(root / f, "conll"), tok, labels, 48).row_offsets[-1])
        for f in ("eng.train", "esp.train")
    )
    assert (
        json.loads((pair / "selftrain" / "round-1" / "filter.json").read_text())["source_rows"]
        == rows
    )


def test_ablate_rows_runs_only_the_stages_the_chosen_rows_read(ner_cfg, conll, tiny, tmp_path):
    """ablate --rows: those rows alone, in the table's order, and only the stages they read:
    here the two-source direct transfer and the method from English alone."""
    out = tmp_path / "rows"
    sets = ['sources=["eng", "esp"]', 'targets=["ned"]', "languages.esp.train=esp.train"]
    args = ["ablate", "--config", str(ner_cfg), "--seeds", "1", "--out", str(out), "--no-progress",
            *[a for s in sets for a in ("--set", s)]]  # fmt: skip
    res = CliRunner().invoke(main, [*args, "--rows", "Ours (eng only), direct transfer"])
    assert res.exit_code == 0, res.output
    result = json.loads((out / "ablation.json").read_text())
    assert list(result["scores"]) == ["direct transfer", "Ours (eng only)"]
    assert all(len(v["ned"]) == 1 for v in result["scores"].values())

    def made(pair):
        return sorted(p.name for p in (out / "seed-1" / pair).iterdir() if p.is_dir())

    assert made("eng+esp-ned") == ["evaluate-finetune-direct-linear", "finetune-direct-linear"]
    assert made("eng-ned") == ["btf", "evaluate-selftrain", "finetune", "selftrain"]
    alone = json.loads((out / "seed-1" / "all-eng-only.json").read_text())["targets"]["ned"]
    assert result["scores"]["Ours (eng only)"]["ned"] == [alone["selftrain"]]
    assert alone["direct"] is None and alone["btf"] is None  # no row reads them
    # a later --rows run adds to the table of the same settings, never drops its rows ...
    res = CliRunner().invoke(main, [*args, "--rows", "direct transfer"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "ablation.json").read_text()) == result
    assert "| Ours (eng only) |" in (out / "ablation.md").read_text()
    # ... and keeps a table of other settings beside the new one
    res = CliRunner().invoke(main, [*args, "--rows", "direct transfer", "--fixed-threshold", "0.8"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "ablation.old-1.json").read_text()) == result
    assert "| Ours (eng only) |" in (out / "ablation.old-1.md").read_text()
    now = json.loads((out / "ablation.json").read_text())
    assert list(now["scores"]) == ["direct transfer"] and now["fixed_alpha"] == 0.8
    bad = CliRunner().invoke(main, [*args, "--rows", "Ours,Ours (fra only)"])
    assert bad.exit_code != 0
    assert "rows: no row 'Ours (fra only)' for this config" in bad.output
    assert "'direct transfer (esp only)'" in bad.output  # names the rows there are
    bad = CliRunner().invoke(main, [*args, "--study", "threshold", "--rows", "Ours"])
    assert bad.exit_code != 0 and "--rows chooses rows of --study ablation" in bad.output


def test_ablation_table_keeps_the_rows_and_targets_an_earlier_run_scored(tmp_path):
    """with_earlier_rows: rows and targets a run did not score stay; what it scored replaces
    the earlier numbers; rows in the table's order; other settings: the old table kept aside."""
    from xlt_engine.studies.ablate import with_earlier_rows

    stem = tmp_path / "ablation"
    head = {"metric": "entity_f1", "seeds": [1, 2], "fixed_alpha": 0.9, "split": "test"}
    esp = {**head, "scores": {"Ours": {"esp": [0.5, 0.6]}, "- ST": {"esp": [0.4, 0.4]}}}
    assert with_earlier_rows(stem, esp, ["Ours", "- ST"]) is esp  # nothing there yet
    stem.with_suffix(".json").write_text(json.dumps(esp))
    stem.with_suffix(".md").write_text("esp table\n")
    ned = {**head, "scores": {"Ours": {"ned": [0.7, 0.8]}, "direct transfer": {"ned": [0.1, 0.2]}}}
    order = ["Ours", "- ST", "direct transfer"]
    merged = with_earlier_rows(stem, ned, order)
    assert merged["scores"] == {
        "Ours": {"esp": [0.5, 0.6], "ned": [0.7, 0.8]},
        "- ST": {"esp": [0.4, 0.4]},
        "direct transfer": {"ned": [0.1, 0.2]},
    }
    assert list(merged["scores"]) == order
    again = {**head, "scores": {"Ours": {"esp": [0.9, 0.9]}}}
    assert with_earlier_rows(stem, again, order)["scores"]["Ours"] == {"esp": [0.9, 0.9]}
    # a row the present config no longer has stays after the known ones
    assert list(with_earlier_rows(stem, ned, ["direct transfer"])["scores"]) == [
        "direct transfer", "Ours", "- ST"]  # fmt: skip
    for key, value in (("seeds", [1]), ("fixed_alpha", 0.8), ("split", "dev")):
        stem.with_suffix(".json").write_text(json.dumps(esp))
        other = {**ned, key: value}
        assert with_earlier_rows(stem, other, order) is other
        assert not stem.with_suffix(".json").exists()
    kept = sorted(p.name for p in tmp_path.iterdir())  # the first free number each time
    assert kept == ["ablation.old-1.json", "ablation.old-1.md", "ablation.old-2.json",
                    "ablation.old-3.json"]  # fmt: skip
    assert all(json.loads((tmp_path / k).read_text()) == esp for k in kept if k.endswith("json"))
    assert (tmp_path / "ablation.old-1.md").read_text() == "esp table\n"


def test_study_tables_keep_the_rows_of_an_earlier_study_in_the_folder(tmp_path):
    """A threshold study at other alphas adds its rows (by alpha, the automatic rows last) to
    the table of the folder; a longer rounds study adds its rounds; other seeds: kept aside."""
    from xlt_engine.studies import tables as pl

    stem = tmp_path / "threshold-study"
    head = {"study": "threshold", "metric": "entity_f1", "seeds": [1, 2], "split": "dev"}
    first = {**head, "alphas": [0.5, 0.9], "automatic_alphas": {"esp": [[0.51], [0.99]]},
             "scores": {"alpha = 0.5": {"esp": [0.5, 0.4]}, "alpha = 0.9": {"esp": [0.3, 0.2]},
                        "automatic (curvature)": {"esp": [0.6, 0.1]}}}  # fmt: skip
    stem.with_suffix(".json").write_text(json.dumps(first))
    second = {**head, "alphas": [0.7], "automatic_alphas": {"esp": [[0.52], [0.98]]},
              "scores": {"alpha = 0.7": {"esp": [0.45, 0.35]},
                         "automatic (curvature)": {"esp": [0.61, 0.11]}}}  # fmt: skip
    order = list(second["scores"])
    merged = pl.with_earlier_rows(stem, second, order, pl.STUDY_SAME, pl.threshold_union)
    assert merged["alphas"] == [0.5, 0.7, 0.9]
    assert list(merged["scores"]) == [
        "alpha = 0.5", "alpha = 0.7", "alpha = 0.9", "automatic (curvature)"]  # fmt: skip
    assert merged["scores"]["automatic (curvature)"] == {"esp": [0.61, 0.11]}  # the new run's
    assert merged["scores"]["alpha = 0.9"] == {"esp": [0.3, 0.2]}
    assert merged["automatic_alphas"] == {"esp": [[0.52], [0.98]]}
    other = {**second, "seeds": [1]}
    assert pl.with_earlier_rows(stem, other, order, pl.STUDY_SAME, pl.threshold_union) is other
    assert (tmp_path / "threshold-study.old-1.json").is_file()

    stem = tmp_path / "rounds-study"
    head = {"study": "rounds", "metric": "accuracy", "seeds": [1], "split": "test"}
    long = {**head, "max_rounds": 2, "scores": {
        r: {"de": [0.1 * i]} for i, r in enumerate(["N = 0 (teacher)", "N = 0.5", "N = 1",
                                                     "N = 1.5", "N = 2"])}}  # fmt: skip
    stem.with_suffix(".json").write_text(json.dumps(long))
    short = {**head, "max_rounds": 1, "scores": {
        "N = 0 (teacher)": {"de": [0.0], "fr": [0.9]}, "N = 0.5": {"fr": [0.8]},
        "N = 1": {"fr": [0.7]}}}  # fmt: skip
    merged = pl.with_earlier_rows(
        stem, short, list(short["scores"]), pl.STUDY_SAME, pl.rounds_union
    )
    assert merged["max_rounds"] == 2
    assert list(merged["scores"]) == list(long["scores"])
    assert merged["scores"]["N = 1"] == {"de": [0.2], "fr": [0.7]}
    assert merged["scores"]["N = 2"] == {"de": [0.4]}


def test_method_rows_cross_the_rules_with_the_students_start(ner_cfg, tmp_path):
    """Ours under each other rule, each other student start, and both: a variant each, into
    the self-training folder those settings name (btf and the teacher shared)."""
    from xlt_engine.engine.method.rules import rule_names
    from xlt_engine.studies.ablate import ablation_rows, ablation_variants, method_rows

    cfg = load_config(ner_cfg, [f"out={str(tmp_path)!r}"])
    rows = method_rows(cfg)
    others = [r for r in rule_names() if r != "paper"]
    assert list(rows) == [
        *(f"rule = {r}" for r in others),
        "init = teacher",
        *(f"init = teacher; rule = {r}" for r in others),
    ]
    assert rows["init = teacher; rule = class_quota"] == {
        "student_init": "teacher",
        "rule": "class_quota",
    }
    assert set(rows) <= set(ablation_rows(cfg))
    chosen = ["- ST", "init = teacher", "init = teacher; rule = class_quota"]
    variants, picks = ablation_variants(cfg, 0.9, chosen)
    pair = dataclasses.replace(cfg, target="esp")
    for row, folder in (("init = teacher", "selftrain-init_teacher"),
                        ("init = teacher; rule = class_quota",
                         "selftrain-class_quota-init_teacher")):  # fmt: skip
        name, column = picks[row]
        c, switches = variants[name]
        assert column == "selftrain" and switches["parts"].selftrain
        assert stage_dir(dataclasses.replace(c, target="esp"), "selftrain").name == folder
        assert stage_dir(dataclasses.replace(c, target="esp"), "finetune") == stage_dir(
            pair, "finetune"
        )
    # a config that starts from the teacher gets the paper's start as its row
    mine = load_config(ner_cfg, [f"out={str(tmp_path)!r}", "selftrain.student_init='teacher'"])
    assert rows.keys() - method_rows(mine).keys() == {
        "init = teacher",
        *(f"init = teacher; rule = {r}" for r in others),
    }
    assert method_rows(mine)["init = base"] == {"student_init": "base"}
