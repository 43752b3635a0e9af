"""The pseudo-label rule (engine/method/pseudo_labels.py) on plain tensors, no files: each rule's
thresholds on constructed curves whose answer is known, the source filters, the collapse
guard's findings, and the public functions end to end from voter logits."""

import math

import numpy as np
import pytest
import torch

from xlt_engine.engine import (
    PseudoRule,
    Thresholds,
    check_collapse,
    choose_thresholds,
    pseudo_label,
    select_threshold,
    source_keep,
)
from xlt_engine.engine.method.pseudo_labels import source_ok, thresholds_from
from xlt_engine.engine.method.rules import make_rule
from xlt_engine.engine.method.rules.base import counts_above, wilson_lower
from xlt_engine.engine.method.threshold import (
    DEFAULT_GRID,
    EVEN_GRID,
    rule_curve_inputs,
    threshold_grid,
)
from xlt_engine.kernels import voter_filter


def wilson_plain(k: int, n: int, z: float = 1.959964) -> float:
    """The Wilson score interval's lower bound, written from the textbook formula."""
    p = k / n
    return (p + z * z / (2 * n) - z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / (
        1 + z * z / n
    )


def rows(*groups):
    """(agreed, conf, gold) tensors from groups of (count, agreed, conf, gold)."""
    a, c, g = [], [], []
    for n, agreed, conf, gold in groups:
        a += [agreed] * n
        c += [conf] * n
        g += [gold] * n
    return torch.tensor(a), torch.tensor(c, dtype=torch.float32), torch.tensor(g)


def test_wilson_lower_bound_and_counts_above_match_plain_definitions():
    assert wilson_lower(np.array([9]), np.array([10]))[0] == pytest.approx(0.5958, abs=1e-4)
    assert wilson_lower(np.array([40]), np.array([40]))[0] == pytest.approx(40 / (40 + 1.959964**2))
    assert wilson_lower(np.array([0]), np.array([0]))[0] == 0.0
    for k, n in ((3, 7), (29, 30), (150, 200)):
        assert wilson_lower(np.array([k]), np.array([n]))[0] == pytest.approx(wilson_plain(k, n))
    rng = np.random.default_rng(0)
    conf, hit = rng.random(300), rng.random(300) < 0.7
    grid = [0.1, 0.5, 0.5, 0.93, 0.999]
    n, k = counts_above(conf, hit, grid)
    assert n.tolist() == [int((conf > t).sum()) for t in grid]
    assert k.tolist() == [int(((conf > t) & hit).sum()) for t in grid]


def test_paper_rule_gives_every_class_the_alpha_of_the_all_rows_curve():
    rng = np.random.default_rng(1)
    agreed = torch.from_numpy(rng.integers(-1, 3, 400))
    conf = torch.from_numpy(rng.uniform(0.34, 1.0, 400).astype(np.float32))
    gold = torch.where(
        torch.rand(400, generator=torch.Generator().manual_seed(0)) < conf, agreed, 0
    )
    th = thresholds_from(agreed, conf, gold.clamp(min=0), 3, PseudoRule(), background=0)
    want = select_threshold(*rule_curve_inputs(agreed, conf, gold.clamp(min=0)), 3)
    assert th.base.to_json() == want.to_json()
    assert th.alpha == [want.alpha] * 3 and th.rule == "paper" and th.notes == []
    assert [c["how"] for c in th.classes] == ["paper"] * 3


def test_per_class_precision_takes_the_lowest_threshold_whose_lower_bound_qualifies():
    # O: 500 right at 0.999. Class 1: 40 right at 0.95 and 40 wrong at 0.605, so only a
    # threshold at or above 0.61 leaves 40 / 40 (Wilson lower bound 0.912 >= 0.9). Class 2: 20
    # right rows, fewer than min_rows = 30: it never qualifies.
    agreed, conf, gold = rows(
        (500, 0, 0.999, 0), (40, 1, 0.95, 1), (40, 1, 0.605, 0), (20, 2, 0.9, 2)
    )
    names = ["O", "B-X", "B-Y"]
    th = thresholds_from(agreed, conf, gold, 3, make_rule("per_class_precision"), 0, names=names)
    assert th.alpha[0] == th.base.alpha  # O keeps the paper's alpha
    assert th.alpha[1] == 0.61 and th.alpha[2] == 1.0
    one = th.classes[1]
    assert (one["source_rows"], one["source_correct"], one["source_precision"]) == (40, 40, 1.0)
    assert one["wilson_lower"] == pytest.approx(wilson_plain(40, 40))
    assert th.classes[2]["never_qualified"] and len(th.notes) == 1
    assert th.notes[0].startswith("class B-Y: no threshold of the grid gives 30 or more")
    # a looser setting lets class 2 in at the lowest grid point (0.5: 20 / 20 right)
    loose = make_rule("per_class_precision", min_rows=20, class_precision=0.8)
    th = thresholds_from(agreed, conf, gold, 3, loose, 0, names=names)
    assert th.alpha[2] == 0.5 and wilson_plain(20, 20) >= 0.8 and th.notes == []


def test_per_class_precision_agrees_with_a_brute_force_search():
    rng = np.random.default_rng(2)
    N, C = 3000, 4
    agreed = rng.integers(-1, C, N)
    conf = rng.uniform(0.25, 1.0, N)
    right = rng.random(N) < conf**3  # precision rises with confidence
    gold = np.where(right, np.maximum(agreed, 0), (np.maximum(agreed, 0) + 1) % C)
    rule = make_rule("per_class_precision", min_rows=25, class_precision=0.75)
    th = thresholds_from(
        torch.from_numpy(agreed), torch.from_numpy(conf).float(), torch.from_numpy(gold), C, rule, 0
    )
    conf32 = conf.astype(np.float32).astype(np.float64)
    for c in range(1, C):
        want = 1.0
        for t in threshold_grid(C):
            sel = (agreed == c) & (conf32 > t)
            n, k = int(sel.sum()), int((sel & (gold == c)).sum())
            if n >= 25 and wilson_plain(k, n) >= 0.75:
                want = t
                break
        assert th.alpha[c] == want, c
    assert len(set(th.alpha[1:])) > 1  # the classes differ: the case decides something


def test_class_quota_keeps_the_most_confident_share_of_each_class_on_the_target():
    src = rows((10, 0, 0.99, 0), (10, 1, 0.9, 1))
    # target: class 0 [0.9, 0.8, 0.7, 0.6] -> 2 kept (cut 0.7); class 1 [0.95, 0.8, 0.8, 0.6]
    # -> the tie at the cut (0.8) is left out: 1 kept; class 2 has no agreed row: threshold 1
    t_agreed = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, -1])
    t_conf = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.95, 0.8, 0.8, 0.6, 0.99])
    th = thresholds_from(*src, 3, make_rule("class_quota"), 0, target=(t_agreed, t_conf))
    assert th.alpha == pytest.approx([0.7, 0.8, 1.0])
    assert [c["target_kept"] for c in th.classes] == [2, 1, 0]
    assert [c["target_agreed"] for c in th.classes] == [4, 4, 0]
    with pytest.raises(ValueError, match="class_quota chooses its thresholds from the target"):
        thresholds_from(*src, 3, make_rule("class_quota"), 0)
    full = thresholds_from(
        *src, 3, make_rule("class_quota", quota=1.0), 0, target=(t_agreed, t_conf)
    )
    assert full.alpha[:2] == [0.0, 0.0]  # everything agreed is kept


def test_entity_curve_applies_the_criterion_to_the_rows_agreed_on_an_entity_class():
    rng = np.random.default_rng(3)
    N = 2000
    agreed = torch.from_numpy(rng.choice([-1, 0, 0, 0, 1, 2], N))
    conf = torch.from_numpy(rng.uniform(0.34, 1.0, N)).float()
    right = torch.from_numpy(rng.random(N)) < conf.double() ** 4
    gold = torch.where(right, agreed.clamp(min=0), 0)
    th = thresholds_from(agreed, conf, gold, 3, make_rule("entity_curve"), 0)
    ent = agreed >= 1
    want = select_threshold(torch.where(ent, conf, -1.0), (agreed == gold) & ent, 3)
    assert th.alpha == [th.base.alpha, want.alpha, want.alpha]
    assert th.base.alpha != want.alpha  # the entity curve bends elsewhere: the case decides
    # without a background class (sequence classification) each label has its own curve
    own = thresholds_from(agreed, conf, gold, 3, make_rule("entity_curve"), None)
    for c in range(3):
        mine = agreed == c
        got = select_threshold(torch.where(mine, conf, -1.0), (agreed == gold) & mine, 3)
        assert own.alpha[c] == got.alpha


def test_the_even_grid_has_no_tail():
    assert EVEN_GRID == tuple(DEFAULT_GRID[:50]) and max(EVEN_GRID) == 0.99
    assert PseudoRule(grid="even").grid_points() == EVEN_GRID
    with pytest.raises(ValueError, match="grid must be 'even'"):
        PseudoRule(grid="odd")
    with pytest.raises(ValueError, match="rule must be one of"):
        PseudoRule(name="mine")
    with pytest.raises(ValueError, match="make_rule"):  # a rule is its own class
        PseudoRule(name="class_quota")
    for name, bad, match in (
        ("per_class_precision", dict(min_rows=0), "min_rows"),
        ("per_class_precision", dict(class_precision=1.0), "class_precision"),
        ("class_quota", dict(quota=0.0), "quota"),
    ):
        with pytest.raises(ValueError, match=match):
            make_rule(name, **bad)


def test_source_filters_correct_confident_and_off():
    agreed = torch.tensor([0, 1, 1, -1, 2])
    conf = torch.tensor([0.99, 0.7, 0.95, 0.4, 0.9])
    predicted = torch.tensor([0, 1, 1, 2, 0])
    gold = torch.tensor([0, 1, 1, 2, 2])
    alpha = torch.tensor([0.995, 0.8, 0.5])
    assert source_ok(agreed, conf, predicted, gold, alpha, "correct").tolist() == [
        True, True, True, True, False,
    ]  # fmt: skip
    # confident: agreed on the gold label above that class's threshold (O's 0.995 drops row 0)
    assert source_ok(agreed, conf, predicted, gold, alpha, "confident").tolist() == [
        False, False, True, False, True,
    ]  # fmt: skip
    assert source_ok(agreed, conf, predicted, gold, alpha, "off").all()
    with pytest.raises(ValueError, match="source_filter must be one of"):
        source_ok(agreed, conf, predicted, gold, alpha, "gold")


def test_public_functions_work_on_voter_logits_alone():
    """What another trainer does: thresholds from the source voters, labels for the target."""
    g = torch.Generator().manual_seed(4)
    M, N, C = 3, 600, 5
    centre = torch.randn(N, C, generator=g) * 3
    src = centre + 0.5 * torch.randn(M, N, C, generator=g)  # [M, N, C]
    gold = torch.where(torch.rand(N, generator=g) < 0.8, centre.argmax(-1), 0)
    tgt = torch.randn(N, C, generator=g) * 3 + 0.5 * torch.randn(M, N, C, generator=g)
    for rule in (PseudoRule(), make_rule("per_class_precision", min_rows=10, class_precision=0.5)):
        th = choose_thresholds(src, gold, rule, background=0)
        assert isinstance(th, Thresholds) and len(th.alpha) == C
        labels, confidence, mean = pseudo_label(tgt, th)
        assert labels.shape == confidence.shape == (N,) and mean.shape == (N, C)
        assert labels.dtype == torch.int64 and mean.dtype == torch.float32
        want = voter_filter(tgt, torch.tensor(th.alpha))[0]
        assert torch.equal(labels, want) and (labels >= 0).any()
        given = labels >= 0
        assert (confidence[given] > torch.tensor(th.alpha)[labels[given]]).all()
        keep = source_keep(src, gold, th)  # the paper's filter: predicted right
        assert torch.equal(keep, voter_filter(src, 0.0)[2].argmax(-1) == gold)
        assert th.to_json()["class_alpha"] == th.alpha
    quota = choose_thresholds(
        src, gold, make_rule("class_quota"), background=0, target=voter_filter(tgt, 0.0)[:2]
    )
    labels = pseudo_label(tgt, quota)[0]
    agreed = voter_filter(tgt, 0.0)[0]
    for c in range(C):  # about half of each class's agreed rows (ties left out)
        assert (labels == c).sum() <= math.ceil(0.5 * (agreed == c).sum())


NAMES = ["O", "B-PER", "I-PER"]


def test_the_collapse_guard_fires_on_an_all_o_round():
    pseudo = {"O": 1000, "B-PER": 0, "I-PER": 0}
    student = {"O": 900, "B-PER": 60, "I-PER": 40}
    source = {"O": 800, "B-PER": 120, "I-PER": 80}
    found = check_collapse(pseudo, student, source, source, "O")
    assert len(found) == 3
    assert found[0].startswith("100.0% of the 1,000 pseudo labels are O, which the student's own")
    assert found[1].startswith("the pseudo labels are 0.00% non-O, the student's argmax 10.00%")
    assert found[2].startswith("no pseudo label of B-PER, I-PER")
    # a source side stripped of its entities is named too
    kept = {"O": 800, "B-PER": 50, "I-PER": 40}
    assert check_collapse(pseudo, student, source, kept, "O")[3] == (
        "the source filter keeps 90 of 200 non-O rows (under half)"
    )
    assert check_collapse({"O": 0, "B-PER": 0, "I-PER": 0}, student, source, source, "O")[0] == (
        "no target row got a pseudo label (of 1,000)"
    )


def test_the_collapse_guard_is_silent_on_a_healthy_round():
    student = {"O": 900, "B-PER": 60, "I-PER": 40}
    source = {"O": 800, "B-PER": 120, "I-PER": 80}
    assert check_collapse({"O": 700, "B-PER": 40, "I-PER": 5}, student, source, source, "O") == []
    # a student that itself predicts O almost everywhere: 99.5% O pseudo labels are no collapse
    own = {"O": 990, "B-PER": 6, "I-PER": 4}
    assert check_collapse({"O": 995, "B-PER": 3, "I-PER": 2}, own, source, source, "O") == []
    # the edges: an entity share of exactly a quarter of the student's, and half of the source
    quarter = {"O": 975, "B-PER": 15, "I-PER": 10}  # 2.5% against the student's 10%
    half = {"O": 800, "B-PER": 60, "I-PER": 40}
    assert check_collapse(quarter, student, source, half, "O") == []


def test_the_collapse_guard_on_sequence_classification():
    student = {"neg": 480, "pos": 520}
    assert check_collapse({"neg": 200, "pos": 210}, student, student, student, None) == []
    found = check_collapse({"neg": 1, "pos": 400}, student, student, {"neg": 300, "pos": 100}, None)
    assert found[0].startswith("99.8% of the 401 pseudo labels are pos")
    assert found[1] == "the source filter keeps 400 of 1,000 source rows (under half)"


def test_the_readme_example_runs_on_plain_tensors():
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    (code,) = [
        c for c in re.findall(r"```python\n(.*?)\n```", readme, re.S) if "choose_thresh" in c
    ]
    g = torch.Generator().manual_seed(5)
    centre = torch.randn(400, 3, generator=g) * 3
    scope = {
        "labels": ["O", "B-PER", "I-PER"],
        "src_logits": centre + 0.3 * torch.randn(3, 400, 3, generator=g),
        "src_gold": centre.argmax(-1),
        "tgt_logits": torch.randn(3, 300, 3, generator=g) * 3,
        "pseudo_counts": {"O": 100, "B-PER": 0, "I-PER": 0},
        "student_counts": {"O": 80, "B-PER": 10, "I-PER": 10},
        "src_counts": {"O": 300, "B-PER": 50, "I-PER": 50},
        "src_kept_counts": {"O": 300, "B-PER": 50, "I-PER": 50},
    }
    exec(code, scope)
    assert scope["labels_t"].shape == (300,) and scope["keep"].shape == (400,)
    assert len(scope["th"].alpha) == 3 and scope["problems"]


def test_without_a_background_class_every_label_gets_its_own_threshold():
    """Sequence classification (CLS, MARC, XNLI): no O; per_class_precision sets every label's
    threshold by its own precision, none keeps the paper's alpha."""
    agreed, conf, gold = rows(
        (40, 0, 0.95, 0), (40, 0, 0.605, 1),  # label 0 qualifies from 0.61
        (60, 1, 0.7, 1), (5, 1, 0.545, 0),  # label 1: 60 / 65 up to 0.54, 60 / 60 from 0.55
    )  # fmt: skip
    th = thresholds_from(agreed, conf, gold, 2, make_rule("per_class_precision"), None)
    assert th.alpha == [0.61, 0.55]
    assert [c["how"] for c in th.classes] == ["precision", "precision"]
