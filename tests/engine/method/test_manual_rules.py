"""docs/manual.md's "Pseudo-label rules": its tensor-level block runs as printed, given the
tensors its comments describe (the voters' logits on source and target rows, the gold labels,
the class counts), for every rule its comment names, and its TOML table loads as a config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from xlt_engine.engine.experiment.stages.selftrain import SelftrainSection

ROOT = Path(__file__).resolve().parents[3]
LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def _block(opening: str) -> str:
    text = (ROOT / "docs" / "manual.md").read_text(encoding="utf-8")
    start = text.index(opening)
    start = text.index("\n", start) + 1
    return text[start : text.index("\n```", start) + 1]


@pytest.mark.parametrize("rule", ["per_class_precision", "paper", "class_quota", "entity_curve"])
def test_the_manuals_rule_api_block_runs_as_printed(rule):
    code = _block("```python\nfrom xlt_engine.engine import (\n    check_collapse,")
    code = (
        "from xlt_engine.engine import (\n    check_collapse," + code.split("check_collapse,", 1)[1]
    )
    assert 'make_rule("per_class_precision", min_rows=30)' in code
    g = torch.Generator().manual_seed(0)
    src_gold = torch.randint(0, len(LABELS), (400,), generator=g)
    src_logits = torch.randn(3, 400, len(LABELS), generator=g)
    src_logits[:, torch.arange(400), src_gold] += 4.0  # voters mostly right on the source
    tgt_logits = torch.randn(3, 300, len(LABELS), generator=g) * 3
    counts = dict.fromkeys(LABELS, 60)
    scope = {"labels": LABELS, "src_logits": src_logits, "src_gold": src_gold,
             "tgt_logits": tgt_logits, "pseudo_counts": counts, "student_counts": counts,
             "src_counts": counts, "src_kept_counts": counts}  # fmt: skip
    if rule == "class_quota":  # the block's last comment: this rule reads the target
        code = code.replace(
            "th = choose_thresholds(src_logits, src_gold, rule,",
            "th = choose_thresholds(src_logits, src_gold, rule, target=voter_filter(tgt_logits, "
            "0.0)[:2],",
        )
        code = "from xlt_engine.kernels import voter_filter\n" + code
    code = code.replace('make_rule("per_class_precision", min_rows=30)', f"make_rule({rule!r})")
    exec(compile(code, "docs/manual.md (pseudo-label rules)", "exec"), scope)
    assert scope["th"].alpha.__len__() == len(LABELS)
    assert scope["labels_t"].shape == (300,) and scope["keep"].shape == (400,)
    assert scope["problems"] == []  # balanced counts: no collapse


def test_the_manuals_rule_table_loads(tmp_path):
    from tests.engine.experiment.test_config import MINIMAL
    from xlt_engine.engine.experiment.config import load_config

    cfg = tmp_path / "x.toml"
    cfg.write_text(
        MINIMAL + "[selftrain]\n" + _block('```toml\n[selftrain.rule]\nname = "class_quota"')
    )
    rule = load_config(cfg).section(SelftrainSection).rule
    assert rule.name == "class_quota" and rule.quota == 0.4
