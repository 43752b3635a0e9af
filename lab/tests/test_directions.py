"""lab/directions.py: the paper's ablation directions read off study reports, seed by
seed, with the verdicts and the pseudo-label collapses a reader needs to weigh them."""

import json

import pytest

from lab.directions import collapsed_round, main, render, study_directions


def _study(rows, rounds_by_seed, seeds=(1, 2, 3), pair="eng-esp"):
    target = pair.rpartition("-")[2]
    return {
        "seeds": list(seeds),
        "metric": "entity_f1",
        "rows": {row: {"scores": {target: scores}} for row, scores in rows.items()},
        "details": [
            {"seed": s, "pair": pair, "dev": {}, "rounds": rounds_by_seed.get(s, {})} for s in seeds
        ],
    }


def _round(**counts):
    return {"alpha": 0.9, "pseudo_distribution": {"O": 0, "B-PER": 0, **counts}}


def test_directions_are_per_seed_differences_with_verdicts(tmp_path):
    rows = {
        "Ours": [0.60, 0.40, 0.50],
        "- ST": [0.50, 0.50, 0.60],  # ST: +10, -10, -10 -> mean below: does not hold
        "- AT": [0.55, 0.30, 0.45],  # AT: +5, +10, +5 -> holds
        "- VM": [0.70, 0.20, 0.40],  # VM: -10, +20, +10 -> holds on average
        "- BTF": [0.60, 0.40, 0.50],  # equal on every seed
    }
    path = tmp_path / "s.json"
    path.write_text(json.dumps(_study(rows, {})))
    (t,) = study_directions("Spanish", path)["targets"]
    d = t["directions"]
    assert d["ST helps"]["diffs"] == pytest.approx([10, -10, -10])
    assert d["ST helps"]["verdict"] == "does not hold"
    assert d["ST helps"]["above"] == 1
    assert d["AT helps"]["verdict"] == "holds"
    assert d["AT helps"]["mean_std"][0] == pytest.approx(20 / 3)
    assert d["VM helps"]["verdict"] == "holds on average"
    assert d["VM helps"]["mean_std"][1] == pytest.approx(15.2752523, rel=1e-6)  # sample std
    assert d["BTF helps"]["verdict"] == "no difference"
    # direct transfer was not run: named, not computed
    assert d["+ BTF over direct transfer"] == {
        "rows": ["- ST", "direct transfer"],
        "not_run": ["direct transfer"],
    }


def test_a_pseudo_label_collapse_is_none_or_almost_all_one_class():
    assert collapsed_round({"O": 0, "B-PER": 0})  # nothing passed alpha
    assert collapsed_round({"O": 30581, "B-PER": 4})  # 99.99% O
    assert not collapsed_round({"O": 31764, "B-LOC": 341, "B-PER": 981})  # 96% O
    assert collapsed_round({"negative": 155, "positive": 0})


def test_collapses_name_each_rows_first_collapsed_round_per_seed(tmp_path):
    rounds = {
        1: {
            "selftrain/round-1": _round(O=100, **{"B-PER": 30}),
            "selftrain/round-2": _round(O=100),  # Ours collapses in round 2
            "selftrain-alpha0.9/round-1": _round(),  # - AT: nothing passed
            "selftrain-linear/round-1": _round(O=50, **{"B-PER": 50}),
        },
        2: {
            "selftrain-rounds2/round-1": _round(O=10, **{"B-PER": 10}),  # a rounds-2 folder
            "selftrain-alpha0.9/round-1": _round(O=10, **{"B-PER": 10}),
            "selftrain-linear/round-1": _round(O=1000, **{"B-PER": 1}),
        },
    }
    rows = {"Ours": [0.5, 0.7], "- AT": [0.2, 0.6], "- VM": [0.6, 0.1], "- ST": [0.5, 0.5]}
    path = tmp_path / "s.json"
    path.write_text(json.dumps(_study(rows, rounds, seeds=(1, 2))))
    (t,) = study_directions("x", path)["targets"]
    assert t["collapses"] == {
        "Ours": [2, 0],
        "- AT": [1, 0],
        "- VM": [0, 1],
    }  # - BTF was not run: no entry
    # each self-training run against + BTF (- ST) on its seed, with its collapse
    got = {(v["row"], v["seed"]): (round(v["diff"], 6), v["collapsed"]) for v in t["versus_st"]}
    assert got == {
        ("Ours", 1): (0.0, True),
        ("Ours", 2): (20.0, False),
        ("- AT", 1): (-30.0, True),
        ("- AT", 2): (10.0, False),
        ("- VM", 1): (10.0, False),
        ("- VM", 2): (-40.0, True),
    }
    text = render([{"label": "x", "file": "s.json", "seeds": [1, 2], "targets": [t]}], "t")
    assert "| kept more than one class | 3 | +13.33 ± 5.77 | 3 |" in text
    assert "| collapsed | 3 | -23.33 ± 20.82 | 0 |" in text


def test_collapses_read_the_folders_each_row_read_where_the_report_recorded_them(tmp_path):
    """A report that records each row's folders (lab.study's ``row_folders``) maps a round to
    its row whatever the folder is called (a source filter in the name, say)."""
    mixed = _round(O=5, **{"B-PER": 5})  # in a folder no row of this report read
    rounds = {1: {"selftrain-srcall/round-1": _round(O=10), "selftrain/round-1": mixed}}
    study = _study({"Ours": [0.5], "- ST": [0.4]}, rounds, seeds=(1,))
    study["details"][0]["row_folders"] = {"Ours": ["selftrain-srcall"], "- ST": ["finetune"]}
    path = tmp_path / "s.json"
    path.write_text(json.dumps(study))
    (t,) = study_directions("x", path)["targets"]
    assert t["collapses"] == {"Ours": [1]}


def test_rows_with_other_seeds_are_refused(tmp_path):
    study = _study({"Ours": [0.5, 0.4, 0.3]}, {})
    study["rows"]["- ST"] = {"scores": {"esp": [0.5, 0.4]}}
    path = tmp_path / "s.json"
    path.write_text(json.dumps(study))
    with pytest.raises(ValueError, match=r"s\.json.*'Ours' and '- ST' hold 3 and 2 scores"):
        study_directions("x", path)


def test_the_command_writes_one_table_over_studies(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "selftrain.soft.lr=1e-4" / "b.json"  # '=' in a path
    b.parent.mkdir()
    a.write_text(json.dumps(_study({"Ours": [0.6, 0.4, 0.5], "- ST": [0.5, 0.5, 0.6]}, {})))
    b.write_text(
        json.dumps(_study({"Ours": [0.2, 0.3, 0.4], "- ST": [0.1, 0.2, 0.3]}, {}, pair="eng-ned"))
    )
    out = tmp_path / "results"
    report = main(["--name", "t", "--results", str(out), "--study", f"Spanish={a}",
                   "--study", f"Dutch={b}"])  # fmt: skip
    assert [s["label"] for s in report["studies"]] == ["Spanish", "Dutch"]
    (md,) = out.glob("directions_t_*.md")
    text = md.read_text()
    assert (
        "| Spanish | esp | ST helps (Ours vs - ST) | -3.33 ± 11.55 | +10.00 / -10.00 / -10.00 |"
        in text
    )
    assert "| Dutch | ned | ST helps (Ours vs - ST) | +10.00 ± 0.00 |" in text
    assert "holds |" in text
    with pytest.raises(SystemExit):
        main(["--name", "t", "--results", str(out), "--study", str(a)])  # no label
    assert "give LABEL=PATH" in capsys.readouterr().err
