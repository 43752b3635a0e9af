"""lab/study.py's per-pair details: the dev score of each fine-tuned model and each
self-training round's counts, with the soft student's fidelity where the run recorded it."""

import json
from pathlib import Path

import pytest

from lab.study import classes, merge_studies, pair_details, render, with_statistics


def test_pair_details_reads_dev_scores_and_rounds(tmp_path):
    run = tmp_path / "eng-esp"
    for name, score in {"finetune": 0.5, "finetune-direct-linear": 0.75}.items():
        (run / name).mkdir(parents=True)
        (run / name / "dev.json").write_text(json.dumps({"score": score, "metric": "entity_f1"}))
    base = {
        "alpha": 0.9,
        "source_rows": 10,
        "source_rows_kept": 8,
        "target_rows": 12,
        "pseudo_rows": 5,
        "pseudo_distribution": {"O": 5, "B-PER": 0},
        "voter_agreement": 1.0,
    }
    fidelity = {
        "teacher_distribution": {"O": 9, "B-PER": 3},
        "student_distribution": {"O": 12, "B-PER": 0},
        "teacher_agreement": 0.75,
    }
    for folder, record in {"selftrain": {**base, **fidelity}, "selftrain-direct": base}.items():
        (run / folder / "round-1").mkdir(parents=True)
        (run / folder / "round-1" / "filter.json").write_text(json.dumps(record))
    d = pair_details(run)
    assert d["dev"] == {"finetune": 0.5, "finetune-direct-linear": 0.75}
    assert d["rounds"]["selftrain/round-1"] == {
        k: v for k, v in {**base, **fidelity}.items() if k != "voter_agreement"
    }
    # a run from before the fidelity record: its other counts, nothing invented
    assert d["rounds"]["selftrain-direct/round-1"] == {
        k: v for k, v in base.items() if k != "voter_agreement"
    }
    assert d["checks"] == {}  # no check records: none invented


def test_pair_details_reads_each_steps_check_in_order(tmp_path):
    run = tmp_path / "eng-esp"
    (run / "selftrain-init_teacher").mkdir(parents=True)
    check = {"step": "check", "teacher_agreement": 0.97, "entity_agreement": 0.4,
             "class_agreement": {"O": 1.0, "B-PER": 0.4}, "dev": {"esp": {"score": 0.6}}}  # fmt: skip
    log = [{"round": 1, "step": "soft"}, {**check, "round": 1, "of": "soft"},
           {**check, "round": 1, "of": "hard", "entity_agreement": 0.9}]  # fmt: skip
    (run / "selftrain-init_teacher" / "selftrain.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in log)
    )
    checks = pair_details(run)["checks"]
    assert list(checks) == [
        "selftrain-init_teacher/round-1/soft",
        "selftrain-init_teacher/round-1/hard",
    ]
    assert checks["selftrain-init_teacher/round-1/hard"]["entity_agreement"] == 0.9
    assert checks["selftrain-init_teacher/round-1/soft"]["dev"] == {"esp": {"score": 0.6}}


def test_pair_details_says_what_precision_each_stage_ran_in(tmp_path):
    """precision "auto" follows the machine: each stage's precision comes from its records
    (training logs at any depth, self-training's records, an evaluation's results), mixed ones
    named both, a stage without records left out; the report prints it per pair."""
    run = tmp_path / "en-fr"
    logs = {
        "btf/metrics.jsonl": [{"step": 10, "precision": "bf16"}],
        "btf/head-warmup/metrics.jsonl": [{"step": 10, "precision": "fp32"}],
        "finetune/metrics.jsonl": [{"step": 10, "precision": "bf16"}, {"step": 20}],
        "selftrain/selftrain.jsonl": [{"step": "soft"}, {"step": "teacher", "precision": "bf16"}],
        "selftrain/round-1/soft/metrics.jsonl": [{"step": 10, "precision": "bf16"}],
    }
    for name, records in logs.items():
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text("".join(json.dumps(r) + "\n" for r in records))
    (run / "evaluate-finetune").mkdir()
    (run / "evaluate-finetune" / "results.json").write_text(json.dumps({"precision": "fp32"}))
    (run / "finetune-direct").mkdir()  # begun, nothing recorded yet
    got = pair_details(run)["precision"]
    assert got == {"btf": "bf16, fp32", "evaluate-finetune": "fp32", "finetune": "bf16",
                   "selftrain": "bf16"}  # fmt: skip
    report = _report([1], {"Ours": [0.6]}, 60, "aaa")
    report["details"][0]["precision"] = got
    assert "Precision (what each stage's records say): btf bf16, fp32, evaluate-finetune fp32, " \
        "finetune bf16, selftrain bf16" in render(report)  # fmt: skip
    merged = merge_studies_of([report, _report([2], {"Ours": [0.5]}, 60, "aaa")], tmp_path)
    assert [d.get("precision") for d in merged["details"]] == [got, {}]


def merge_studies_of(reports: list[dict], folder: Path) -> dict:
    paths = []
    for i, r in enumerate(reports):
        paths.append(folder / f"r{i}.json")
        paths[-1].write_text(json.dumps(r))
    return merge_studies(paths, "merged")


def test_classes_lists_the_classes_with_rows():
    assert classes({"O": 32259, "B-LOC": 0, "B-ORG": 4925}) == "O 32,259, B-ORG 4,925"
    assert classes({"O": 0, "B-LOC": 0}) == "–"


def _report(seeds, scores, seconds, sha, overrides=("device=cpu",)):
    env = {"git_sha": sha, "torch": "2.13.0+cpu", "xlt_engine": "0.1.0"}
    rows = {
        row: {"scores": {"esp": s, "ned": [x / 2 for x in s]}, "seconds": seconds}
        for row, s in scores.items()
    }
    return with_statistics({
        "name": "x", "date": "2026-11-24", "command": f"python -m lab.study --seeds {seeds}",
        "config": "configs/e5-small-conll.toml", "overrides": list(overrides), "how": "small",
        "metric": "entity_f1", "seeds": seeds, "fixed_alpha": 0.9, "rows": rows,
        "details": [{"seed": s, "pair": "eng-esp", "dev": {}, "rounds": {}} for s in seeds],
        "study_seconds": seconds * 2, "machine": "x86_64, 2 threads", "environment": env,
    })  # fmt: skip


def test_merge_puts_seeds_in_order_and_recomputes_mean_and_std(tmp_path):
    a = tmp_path / "a.json"
    b = tmp_path / "b.json"
    a.write_text(json.dumps(_report([3, 1], {"Ours": [0.6, 0.2], "- ST": [0.5, 0.1]}, 60, "aaa")))
    b.write_text(
        json.dumps(_report([2], {"Ours": [0.4], "- ST": [0.3]}, 120, "bbb") | {"note": "paused"})
    )
    merged = merge_studies([a, b], "merged") | {"note": "two runs"}
    assert merged["seeds"] == [1, 2, 3]
    ours = merged["rows"]["Ours"]
    assert ours["scores"] == {"esp": [0.2, 0.4, 0.6], "ned": [0.1, 0.2, 0.3]}
    assert ours["mean_std"]["esp"] == pytest.approx([0.4, 0.2])  # sample std of 0.2, 0.4, 0.6
    assert ours["average"] == pytest.approx([0.15, 0.3, 0.45])
    assert ours["seconds"] == 180 and merged["study_seconds"] == 360
    assert [d["seed"] for d in merged["details"]] == [1, 2, 3]
    md = render(merged)
    assert (
        "Merged from studies of the same settings" in md
        and "(seeds [2], rows Ours, - ST; xlt-engine bbb" in md
    )
    assert "--seeds [2]` Note: paused" in md and md.endswith("\ntwo runs\n")
    assert "| Ours | 40.00 ± 20.00 | 20.00 ± 10.00 | 30.00 ± 15.00 |" in md
    assert "| Ours | 15.00 | 30.00 | 45.00 | 3.0 min |" in md


def test_merge_refuses_other_settings_and_a_seed_twice(tmp_path):
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    a.write_text(json.dumps(_report([1], {"Ours": [0.6]}, 60, "a")))
    b.write_text(json.dumps(_report([2], {"Ours": [0.4]}, 60, "b", overrides=["device=cuda"])))
    c.write_text(json.dumps(_report([1], {"Ours": [0.4]}, 60, "c")))
    with pytest.raises(ValueError, match=r"b.json: overrides is \['device=cuda'\]"):
        merge_studies([a, b], "m")
    with pytest.raises(
        ValueError, match=r"row 'Ours', seed 1: .*a.json gives .*not the same model"
    ):
        merge_studies([a, c], "m")


def test_merge_compares_the_settings_each_study_ran_and_keeps_them(tmp_path):
    """Studies that record what they ran (``resolved``) merge only when it is the same, though
    their commands match (a preset changed between them); the merge keeps it."""
    ran = {"btf": {"epoch_size": 1600, "head_warmup_epochs": 0.0}}
    changed = {"btf": {"epoch_size": 1600, "head_warmup_epochs": 2.0}}
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    a.write_text(json.dumps(_report([1], {"Ours": [0.6]}, 60, "a") | {"resolved": ran}))
    b.write_text(json.dumps(_report([2], {"Ours": [0.4]}, 60, "b") | {"resolved": ran}))
    c.write_text(json.dumps(_report([3], {"Ours": [0.4]}, 60, "c") | {"resolved": changed}))
    assert merge_studies([a, b], "m")["resolved"] == ran
    with pytest.raises(ValueError, match=r"c.json: other settings than .*a.json "
                                         r"\(btf.head_warmup_epochs: 0.0 / 2.0\)"):  # fmt: skip
        merge_studies([a, c], "m")
    assert "resolved" not in merge_studies_of([_report([1], {"Ours": [0.6]}, 60, "a")], tmp_path)
    # each row's stages (what lab.tables compares it on) kept where every study says the same
    stages = ["btf", "evaluate", "finetune", "selftrain"]
    for path, said in ((a, stages), (b, stages)):
        r = json.loads(path.read_text())
        r["rows"]["Ours"]["stages"] = said
        path.write_text(json.dumps(r))
    assert merge_studies([a, b], "m")["rows"]["Ours"]["stages"] == stages
    r = json.loads(b.read_text())
    del r["rows"]["Ours"]["stages"]
    b.write_text(json.dumps(r))
    assert "stages" not in merge_studies([a, b], "m")["rows"]["Ours"]  # one does not say


def test_merge_adds_rows_run_later_on_the_same_seeds(tmp_path):
    """A later run with other rows on the same seeds: the rows in the ablation's order, a row
    in both kept once (and checked equal: the same models), its wall time counted once."""
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    first = _report([1, 2], {"Ours": [0.2, 0.1], "- ST": [0.6, 0.7], "direct transfer": [0.5, 0.6]}, 60, "aaa")  # fmt: skip
    first["details"][0]["dev"] = {"finetune": 0.8}
    counts = {"source_rows": 10, "source_rows_kept": 8, "target_rows": 12, "pseudo_rows": 5,
              "pseudo_distribution": {"O": 5}}  # fmt: skip
    first["details"][0]["rounds"] = {"selftrain/round-1": {"alpha": 0.99, **counts}}
    later = _report([1, 2], {"- AT": [0.3, 0.4], "- BTF": [0.5, 0.5], "- ST": [0.6, 0.7]}, 90, "bbb")  # fmt: skip
    later["how"] = "small, -AT alpha 0.9"
    later["details"][0]["dev"] = {"finetune": 0.8, "finetune-pretrained": 0.7}
    later["details"][0]["rounds"] = {"selftrain-fixed/round-1": {"alpha": 0.9, **counts}}
    first["details"][0]["row_folders"] = {"Ours": ["selftrain"], "- ST": ["finetune"]}
    later["details"][0]["row_folders"] = {"- AT": ["selftrain-fixed"], "- ST": ["finetune"]}
    a.write_text(json.dumps(first))
    b.write_text(json.dumps(later))
    with pytest.raises(ValueError, match="how is 'small, -AT alpha 0.9'"):
        merge_studies([a, b], "m")
    merged = merge_studies([a, b], "m", how="small; -AT alpha 0.9")
    assert merged["how"] == "small; -AT alpha 0.9" and merged["seeds"] == [1, 2]
    assert list(merged["rows"]) == ["Ours", "- AT", "- BTF", "- ST", "direct transfer"]
    assert merged["rows"]["- AT"]["scores"]["esp"] == [0.3, 0.4]
    assert merged["rows"]["- ST"]["seconds"] == 60 and merged["rows"]["- AT"]["seconds"] == 90
    assert merged["study_seconds"] == 300
    seed1 = merged["details"][0]
    assert seed1["dev"] == {"finetune": 0.8, "finetune-pretrained": 0.7}
    assert set(seed1["rounds"]) == {"selftrain/round-1", "selftrain-fixed/round-1"}
    assert seed1["row_folders"] == {"Ours": ["selftrain"], "- ST": ["finetune"],
                                    "- AT": ["selftrain-fixed"]}  # fmt: skip
    md = render(merged)
    assert "(seeds [1, 2], rows - AT, - BTF, - ST; xlt-engine bbb" in md
    assert "| - AT | 22.50 | 30.00 | 1.5 min |" in md  # esp and ned (half) averaged

    # the shared row from another model, a row short of a seed, a row half repeated
    other = _report([1, 2], {"- AT": [0.3, 0.4], "- ST": [0.6, 0.65]}, 90, "c")
    b.write_text(json.dumps(other))
    with pytest.raises(ValueError, match=r"row '- ST', seed 2: .* gives \{'esp': 0.7"):
        merge_studies([a, b], "m")
    b.write_text(json.dumps(_report([1], {"- AT": [0.3]}, 90, "c")))
    with pytest.raises(ValueError, match=r"row '- AT' has no score for seed\(s\) \[2\]"):
        merge_studies([a, b], "m")
    b.write_text(json.dumps(_report([2, 3], {"Ours": [0.1, 0.3], "- ST": [0.7, 0.5], "direct transfer": [0.6, 0.6]}, 90, "c")))  # fmt: skip
    with pytest.raises(ValueError, match=r"row 'Ours' repeats some of its seeds .* adds \[3\]"):
        merge_studies([a, b], "m")


def test_a_merged_study_merges_again_with_a_row_run_after_it(tmp_path):
    """A row run after a merge joins the merged report: its sources stay the first studies
    (flat), the shared rows are checked against the merge, and wall times add up."""
    a, b, m, c = (tmp_path / f"{x}.json" for x in "abmc")
    a.write_text(json.dumps(_report([1, 2], {"Ours": [0.2, 0.1], "- ST": [0.6, 0.7]}, 60, "aaa")))
    b.write_text(json.dumps(_report([1, 2], {"- AT": [0.3, 0.4], "- ST": [0.6, 0.7]}, 90, "bbb")))
    m.write_text(json.dumps(merge_studies([a, b], "ab")))
    c.write_text(json.dumps(_report([1, 2], {"- VM": [0.5, 0.2], "- ST": [0.6, 0.7]}, 30, "ccc")))
    merged = merge_studies([m, c], "abc")
    assert list(merged["rows"]) == ["Ours", "- AT", "- VM", "- ST"]
    assert [x["file"] for x in merged["merged_from"]] == [str(a), str(b), str(c)]
    assert [x["command"] for x in merged["merged_from"]] == [
        "python -m lab.study --seeds [1, 2]"
    ] * 3
    assert merged["rows"]["- VM"]["seconds"] == 30 and merged["rows"]["- ST"]["seconds"] == 60
    assert merged["study_seconds"] == 120 + 180 + 60
    assert "(seeds [1, 2], rows - VM, - ST; xlt-engine ccc" in render(merged)
    c.write_text(json.dumps(_report([1, 2], {"- VM": [0.5, 0.2], "- ST": [0.6, 0.8]}, 30, "c")))
    with pytest.raises(ValueError, match=r"row '- ST', seed 2: .*m.json gives"):
        merge_studies([m, c], "abc")


def test_resolved_command_keeps_each_option_once_as_it_took_effect():
    """A wrapper's own --name, --seeds, --out and --set come before the caller's, and the
    later win: the resolved command has each once and parses back to the same study."""
    import shlex

    from lab.study import build_parser, resolved_command

    argv = ["--config", "c.toml", "--name", "wrap", "--seeds", "1", "--out", "runs/a",
            "--how", "old", "--set", "targets=['esp']", "--set", "selftrain.soft.lr=3e-4",
            "--set", "device=cpu", "--name", "mine", "--seeds", "1,2,3", "--out", "runs/b",
            "--set", "targets=['ned']", "--set", "selftrain.soft.lr = 1e-4", "--how", "new",
            "--rows", "Ours,- ST"]  # fmt: skip
    args = build_parser().parse_args(argv)
    again = build_parser().parse_args(shlex.split(resolved_command(args))[3:])
    for key in ("config", "name", "seeds", "out", "rows", "how", "fixed_threshold"):
        assert getattr(again, key) == getattr(args, key), key
    assert again.overrides == ["device=cpu", "targets=['ned']", "selftrain.soft.lr = 1e-4"]
    assert resolved_command(args).count("--name") == 1


def test_steps_lists_the_teacher_then_each_step_with_its_round_collapse(tmp_path):
    from lab.steps import render

    run = tmp_path / "eng-ned"
    (run / "evaluate-finetune-dev").mkdir(parents=True)
    (run / "evaluate-finetune-dev" / "results.json").write_text(
        json.dumps({"languages": {"eng": {"score": 0.85}, "ned": {"score": 0.71}}})
    )
    st = run / "selftrain"
    (st / "round-1").mkdir(parents=True)
    (st / "round-1" / "filter.json").write_text(json.dumps({"collapse": ["no entity label"]}))
    check = {"step": "check", "round": 1, "teacher_agreement": 0.96, "entity_agreement": 0.62,
             "dev": {"eng": {"score": 0.39}, "ned": {"score": 0.40}}}  # fmt: skip
    (st / "selftrain.jsonl").write_text(json.dumps({**check, "of": "soft"}) + "\n")
    text = render([run], "partial", "python -m lab.steps ...")
    assert "| + BTF (the teacher) | – | – | 85.00 | 71.00 | – |" in text
    assert "| selftrain/round-1/soft | 96.00 | 62.00 | 39.00 | 40.00 | yes |" in text


def test_a_stages_wall_time_counts_every_run_of_it(tmp_path):
    """A resumed stage's wall time is all its runs (``seconds_all_runs``), a linked twin's the
    twin's own, a stage from before the record its last run; a round 1 taken from another
    folder adds the seconds it took there."""
    from lab.study import seconds_of

    def stage(name, info, log=()):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "run.json").write_text(json.dumps(info))
        if log:
            (folder / "selftrain.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
        return folder

    assert seconds_of(stage("resumed", {"seconds": 40.0, "seconds_all_runs": 100.0})) == 100.0
    assert seconds_of(stage("old", {"seconds": 40.0})) == 40.0
    twin = {"seconds": 30.0, "seconds_all_runs": 5.0, "shared_from": "x"}
    assert seconds_of(stage("twin", twin)) == 30.0
    shared = [{"step": "soft", "seconds": 7.0, "shared_from": "y"}, {"step": "hard", "seconds": 1}]
    assert seconds_of(stage("partial", {"seconds": 10.0, "seconds_all_runs": 12.0}, shared)) == 19.0
    with pytest.raises(ValueError, match="never finished"):
        seconds_of(stage("stopped", {"seconds_all_runs": 3.0}))


def test_a_stage_made_once_and_linked_into_other_pairs_counts_once_in_its_row(tmp_path):
    """With targets de, fr and jp, direct transfer's fine-tuning is made in en-de and linked into
    en-fr and en-jp (run.json ``shared_from``), and one evaluation scores every target. The row's
    wall time summed the three folders: 304.3 min for a study of 51.0 (CLS, seeds 2-3). Each
    stage now counts once in a row; rows still count a stage they share each."""
    from lab.study import row_seconds

    def stage(path, seconds, shared_from=None):
        path.mkdir(parents=True)
        info = {"seconds": seconds, **({"shared_from": str(shared_from)} if shared_from else {})}
        (path / "run.json").write_text(json.dumps(info))
        return path

    de = stage(tmp_path / "en-de" / "finetune", 2000.0)
    ev = stage(tmp_path / "en-de" / "evaluate", 900.0)
    linked = [stage(tmp_path / p / n, s, src) for p in ("en-fr", "en-jp")
              for n, s, src in (("finetune", 2000.0, de), ("evaluate", 900.0, ev))]  # fmt: skip
    chained = stage(tmp_path / "en-xx" / "finetune", 2000.0, linked[0])  # a twin of a twin
    other = stage(tmp_path / "en-fr" / "selftrain", 50.0)
    rows = {"direct transfer": [de, ev, *linked, chained], "Ours": [de, linked[0], other]}
    assert row_seconds(rows) == {"direct transfer": 2900.0, "Ours": 2050.0}


def test_the_report_shows_a_self_training_table_only_for_pairs_that_self_trained():
    """A study of direct transfer alone printed an empty self-training table under each seed
    and pair; a pair whose rows self-trained still gets its table with each round."""
    from lab.study import render

    folder = Path(__file__).resolve().parents[1] / "results" / "cls_cpu_full_20261127" / "reports"
    direct = json.loads((folder / "study_cls_direct_s23_20261127.json").read_text())
    assert "| self-training round | alpha" not in render(direct)
    ours = json.loads((folder / "study_gpu_tables_cls_de_s1_20261127.json").read_text())
    text = render(ours)
    assert (
        text.count("| self-training round | alpha") == 1 and "| selftrain-rounds2/round-2 |" in text
    )


@pytest.mark.parametrize("dev", [{}, {"esp": {"score": 0.6}}])
def test_every_table_of_the_report_has_as_many_cells_as_its_header(dev):
    """The checks table with and without dev scores (CLS has none): a header of four cells over
    rows of three broke the table (study_cls_warm_de_s3_20261128.md)."""
    report = _report([1], {"Ours": [0.6]}, 60, "aaa")
    check = {"teacher_agreement": 0.98, "entity_agreement": None, "dev": dev}
    report["details"][0]["checks"] = {"selftrain/round-1/soft": check}
    md = render(report)
    tables, rows = [], []
    for line in [*md.splitlines(), ""]:
        if line.startswith("|"):
            rows.append(line.strip("|").split("|"))
        elif rows:
            tables.append(rows)
            rows = []
    widths = [{len(r) for r in t} for t in tables]
    assert len(tables) >= 2 and all(len(w) == 1 for w in widths), widths
    step = next(t for t in tables if t[0][0].strip() == "step")
    assert [c.strip() for c in step[0]][-1] == ("dev esp" if dev else "entity rows")
    assert [c.strip() for c in step[2]] == ["selftrain/round-1/soft", "98.00", "–"] + (
        ["60.00"] if dev else []
    )
