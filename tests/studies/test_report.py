"""Report pieces that need no run folder (the whole report is tested on a real run in
tests/engine/experiment/test_pipeline.py)."""

import base64
import re

import pytest

from xlt_engine.studies.figures import Figures
from xlt_engine.studies.report import confusion_table


def _width(img_tag: str) -> int:
    data = base64.b64decode(re.search(r"base64,([^\"]+)", img_tag).group(1))
    return int.from_bytes(data[16:20], "big")


def test_training_curves_get_a_panel_per_dev_score_and_the_grad_norm():
    pytest.importorskip("matplotlib")
    figs = Figures()
    base = [{"x": s, "loss": 1 / s, "lr": 1e-3, "tokens_per_s": 100.0} for s in (2, 4, 6)]
    plain = figs.training(base, [], "finetune")
    normed = figs.training([{**r, "grad_norm": 1.0} for r in base], [], "finetune")
    dev = [{**r, "grad_norm": 1.0} for r in base]
    dev[1]["dev_entity_f1"] = 0.4  # only where eval_every evaluated
    with_dev = figs.training(dev, [(0, "round-1 soft")], "finetune")
    assert _width(plain) < _width(normed) < _width(with_dev) and figs.count == 3


def test_confusion_table_puts_missed_and_spurious_last():
    table = confusion_table({"(spurious)": {"PER": 2}, "PER": {"PER": 5, "(missed)": 1}})
    head = re.findall(r"<th>([^<]*)</th>", table)
    assert head == ["gold \\ predicted", "PER", "(missed)"]
    rows = re.findall(r"<tr><td>([^<]*)</td>((?:<td>[^<]*</td>)*)</tr>", table)
    assert [r[0] for r in rows] == ["PER", "(spurious)"]
    assert re.findall(r"<td>([^<]*)</td>", rows[1][1]) == ["2", "0"]


def test_a_rounds_class_thresholds_and_collapse_are_shown_escaped(tmp_path):
    import json

    from xlt_engine.studies.report import rounds_section

    rdir = tmp_path / "selftrain" / "round-1"
    rdir.mkdir(parents=True)
    hostile = "<script>alert(1)</script>"
    classes = [
        {"class": "O", "threshold": 0.995, "how": "paper", "source_rows": 9000,
         "source_precision": 0.999},
        {"class": hostile, "threshold": 1.0, "how": "precision", "source_rows": 3,
         "source_precision": None, "never_qualified": True},
    ]  # fmt: skip
    th = {"alpha": 0.995, "method": "curvature", "fallback": None, "rows": 9003,
          "rule": "per_class_precision", "classes": classes, "thresholds": [0.5, 0.995],
          "accuracy": [0.9, 0.99], "recall": [1.0, 0.5], "coverage": [1.0, 0.4]}  # fmt: skip
    (rdir / "threshold.json").write_text(json.dumps(th))
    f = {"collapse": [f"no pseudo label of {hostile}"], "on_collapse": "warn",
         "source_rows_kept": 10, "source_rows": 12, "source_rows_removed": 2, "pseudo_rows": 5,
         "target_rows": 9, "pseudo_units": 2, "target_units": 3,
         "pseudo_distribution": {"O": 5}, "source_distribution": {"O": 12}}  # fmt: skip
    (rdir / "filter.json").write_text(json.dumps(f))
    page = rounds_section(tmp_path / "selftrain", Figures())
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "pseudo-label rule per_class_precision" in page
    assert "<td>O</td><td>0.995</td><td>paper</td><td>9,000</td><td>0.999</td>" in page
    assert "<td>1</td><td>precision</td><td>3</td><td>–</td>" in page
    assert "<b>collapsed</b> (on_collapse = warn)" in page


def test_self_trainings_checks_are_a_table_and_a_plot_per_step(tmp_path):
    """The check after every step: all-rows and entity-row agreement, each class, the dev
    scores, one row per step in order, names escaped, one figure."""
    import json

    from xlt_engine.studies.report import checks_section

    folder = tmp_path / "selftrain"
    folder.mkdir()
    hostile = "<b>I-X</b>"

    def check(r, of, agree, entity, lost, dev):
        return {"round": r, "step": "check", "of": of, "teacher_agreement": agree,
                "entity_agreement": entity, "class_agreement": {"O": 0.99, hostile: lost},
                "dev": {"eng": {"score": dev}}}  # fmt: skip

    records = [
        {"round": 1, "step": "teacher"},
        check(1, "soft", 0.971, 0.42, 0.0, 0.43),
        {"round": 1, "step": "hard"},
        check(1, "hard", 0.98, 0.8, None, 0.8),
    ]
    (folder / "selftrain.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    figs = Figures()
    page = checks_section(folder, figs)
    assert "<b>" not in page and "&lt;b&gt;I-X&lt;/b&gt;" in page
    rows = re.findall(r"<tr><td>([^<]*)</td>((?:<td>[^<]*</td>)*)</tr>", page)
    assert [r[0] for r in rows] == ["round 1 soft", "round 1 hard"]
    assert re.findall(r"<td>([^<]*)</td>", rows[0][1]) == ["97.1", "42.0", "99.0", "0.0", "43.0"]
    assert re.findall(r"<td>([^<]*)</td>", rows[1][1]) == ["98.0", "80.0", "99.0", "–", "80.0"]
    assert figs.count == (0 if figs.plt is None else 1)
    assert checks_section(tmp_path, figs) == ""  # no log: no section


def test_where_a_self_trainings_time_went_is_a_table(tmp_path):
    """summary.json's ``wall``: a row per part with its seconds and share of the whole; none
    without the record (a run from before it), and a damaged value does not break the page."""
    import json

    from xlt_engine.studies.report import wall_section

    folder = tmp_path / "selftrain"
    folder.mkdir()
    assert wall_section(folder) == ""  # no summary yet
    wall = {"training steps": 60.0, "forward-only passes": 30.0, "threshold and filter arithmetic": 5.0,
            "forward": 20.0, "shared": 0.0, "other": 5.0}  # fmt: skip
    (folder / "summary.json").write_text(json.dumps({"wall": wall}))
    page = wall_section(folder)
    rows = re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td></tr>", page)
    assert rows == [("training steps", "60.0", "60%"), ("forward-only passes", "30.0", "30%"),
                    ("threshold and filter arithmetic", "5.0", "5%"), ("other", "5.0", "5%")]  # fmt: skip
    assert "model forwards: 20.0 s" in page
    (folder / "summary.json").write_text(json.dumps({"wall": {"training steps": "<x>"}}))
    assert "<x>" not in wall_section(folder)
    (folder / "summary.json").write_text(json.dumps({"rounds": 1}))
    assert wall_section(folder) == ""


def _height(img_tag: str) -> int:
    data = base64.b64decode(re.search(r"base64,([^\"]+)", img_tag).group(1))
    return int.from_bytes(data[20:24], "big")


def test_a_rounds_threshold_shows_the_criterion_it_read_beside_the_papers_words(tmp_path):
    """The curve the automatic threshold reads (issue 64, item 3): the criterion per grid
    point as recorded, its largest points, the paper's description; for a fixed alpha (- AT)
    what curvature would have chosen on the same curve; a damaged record gives no line."""
    import json

    from xlt_engine.engine.method.threshold import choose
    from xlt_engine.studies.report import rounds_section
    from xlt_engine.studies.threshold_view import threshold_criterion

    t = [round(0.5 + 0.05 * i, 2) for i in range(10)]  # 0.5 .. 0.95
    acc = [0.8 if x <= 0.7 else 0.8 + 0.5 * (x - 0.7) for x in t]  # one bend, at 0.7
    alpha, score, _ = choose(t, acc, "curvature")
    assert alpha == 0.7
    th = {"alpha": alpha, "method": "curvature", "thresholds": t, "accuracy": acc,
          "recall": [1.0] * 10, "coverage": [1.0] * 10,
          "score": [None if s != s else s for s in score], "rows": 100}  # fmt: skip
    got = threshold_criterion(th)
    assert got["top"][0] == {"threshold": 0.7, "score": pytest.approx(max(score[1:-1]))}
    assert got["scores"][0] is None and got["scores"][-1] is None  # no interior point there
    assert "section 3.2" in got["text"] and "over 10 grid points; largest at 0.7 (" in got["text"]
    fixed = {**th, "alpha": 0.9, "method": "fixed", "score": [None] * 10}
    other = threshold_criterion(fixed)
    assert (
        "fixed at 0.9 (- AT)" in other["text"] and "would choose 0.7 on this curve" in other["text"]
    )
    assert other["top"] == got["top"] and other["label"].endswith("not used")
    second = threshold_criterion({**th, "method": "max_second_difference"})
    assert second["label"] == "second derivative A''"
    for damaged in ({**th, "accuracy": acc[:4]}, {**th, "thresholds": "x"}, {**th, "score": ["a"] * 10},
                    {**th, "accuracy": [None] * 10, "method": "fixed"}, {"alpha": 0.5}):  # fmt: skip
        assert threshold_criterion(damaged) is None
    rdir = tmp_path / "selftrain" / "round-1"
    rdir.mkdir(parents=True)
    (rdir / "threshold.json").write_text(json.dumps(fixed))
    page = rounds_section(tmp_path / "selftrain", Figures())
    assert "would choose 0.7 on this curve" in page
    pytest.importorskip("matplotlib")
    figs = Figures()
    plain, both = figs.threshold(th, "t"), figs.threshold(th, "t", got)
    assert _height(both) > 1.5 * _height(plain) and figs.count == 2


def test_an_evaluation_shows_where_its_time_went(tmp_path):
    """run.json's ``wall`` of an evaluation (eval-wall.json's parts and the rest) is a table
    under its scores; a damaged one leaves the section without it."""
    import json

    from xlt_engine.studies.report import evaluation_section

    folder = tmp_path / "evaluate-finetune"
    folder.mkdir()
    res = {"model": "m", "metric": "accuracy", "languages": {"de": {"score": 0.9}},
           "transfer_gap": {}}  # fmt: skip
    (folder / "results.json").write_text(json.dumps(res))
    assert "Where the time went" not in evaluation_section(folder)
    wall = {"model load": 2.0, "reading": 1.0, "encoding": 3.0, "forward-only passes": 90.0,
            "scoring": 1.0, "other": 3.0}  # fmt: skip
    (folder / "run.json").write_text(json.dumps({"seconds": 100.0, "wall": wall}))
    page = evaluation_section(folder)
    assert "Where the time went" in page
    assert "<td>forward-only passes</td><td>90.0</td><td>90%</td>" in page
    (folder / "run.json").write_text(json.dumps({"wall": "x"}))
    assert "Where the time went" not in evaluation_section(folder)
