"""Report pieces that need no run folder (the whole report is tested on a real run in
tests/engine/test_pipeline.py)."""

import base64
import re

import pytest

from xlt_engine.report import Figures, confusion_table


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
