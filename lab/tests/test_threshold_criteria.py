"""lab/threshold_criteria.py: each criterion's pick on a recorded curve, a curve recorded
twice counted once, and a record without a curve left out."""

import json

from lab.threshold_criteria import COARSE, collect, main, picks


def _record(bend: float, alpha: float, method: str = "curvature") -> dict:
    t = [round(0.5 + 0.01 * i, 2) for i in range(50)] + [0.995, 0.999]
    acc = [0.8 if x <= bend else 0.8 + 0.5 * (x - bend) for x in t]  # one bend
    cov = [1 - x / 2 for x in t]
    return {"alpha": alpha, "method": method, "thresholds": t, "accuracy": acc,
            "coverage": cov, "rows": 1000}  # fmt: skip


def test_every_criterion_finds_a_single_bend_and_says_the_coverage_there(tmp_path):
    assert 0.7 in COARSE
    got = picks(_record(0.7, 0.7))
    assert set(got) == {"curvature", "curvature, no tail", "curvature, 0.05 steps",
                        "second difference"}  # fmt: skip
    for alpha, cov in got.values():
        assert alpha == 0.7 and cov == 1 - 0.7 / 2
    assert picks({"thresholds": [0.5, 0.6], "accuracy": [1, 1], "coverage": [1, 1]}) is None


def test_a_curve_recorded_twice_counts_once_and_the_table_names_the_fixed_alpha(tmp_path, capsys):
    for name, rec in (("a/cls/round-1", _record(0.8, 0.8)), ("b/cls/round-1", _record(0.8, 0.9,
                      "fixed")), ("c/conll/round-1", _record(0.6, 0.6)), ("d/round-1", {"alpha": 1})):  # fmt: skip
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "threshold.json").write_text(json.dumps(rec))
    rows = collect([tmp_path])
    assert [(r["curve"], r["task"]) for r in rows] == [("a/cls/round-1", "CLS"),
                                                       ("c/conll/round-1", "CoNLL")]  # fmt: skip
    md = tmp_path / "t.md"
    main([str(tmp_path), "--md", str(md)])
    text = md.read_text()
    assert "| a/cls/round-1 | 1,000 | 0.8 (curvature) | 0.8 (60%) |" in text
    assert "| CoNLL | 0.6 - 0.6, 0.6; 1 |" in text and text == capsys.readouterr().out
