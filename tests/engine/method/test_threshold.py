"""select_threshold: the grid, uneven-spacing finite differences, the curvature and literal
second-difference rules, NaN points skipped, and the logged curve."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from xlt_engine.engine.method.threshold import (
    DEFAULT_GRID,
    choose,
    finite_differences,
    rule_curve_inputs,
    select_threshold,
    threshold_grid,
)
from xlt_engine.kernels import voter_filter


def test_default_grid_and_points_below_one_over_c():
    assert (
        len(DEFAULT_GRID) == 52
        and DEFAULT_GRID[0] == 0.5
        and DEFAULT_GRID[-3:] == (0.99, 0.995, 0.999)
    )
    assert threshold_grid(2) == list(DEFAULT_GRID)  # 0.5 = 1/2 is kept
    assert threshold_grid(3, [0.2, 0.3, 0.34, 0.5, 0.5]) == [0.34, 0.5]
    with pytest.raises(ValueError, match=r"must lie in \(0, 1\)"):
        threshold_grid(2, [0.5, 1.0])
    with pytest.raises(ValueError, match="no grid point"):
        threshold_grid(2, [0.1, 0.2])


@given(
    st.lists(st.floats(0.01, 0.2), min_size=2, max_size=12),
    st.floats(-3, 3),
    st.floats(-3, 3),
    st.floats(-3, 3),
)
@settings(max_examples=60, deadline=None)
def test_finite_differences_are_exact_for_quadratics_on_uneven_grids(steps, a, b, c):
    t = np.concatenate([[0.3], 0.3 + np.cumsum(steps)])
    y = a * t**2 + b * t + c
    d1, d2 = finite_differences(t, y)
    np.testing.assert_allclose(d1, 2 * a * t[1:-1] + b, atol=1e-7)
    np.testing.assert_allclose(d2, np.full(len(t) - 2, 2 * a), atol=1e-6)


def test_curvature_picks_the_kink_even_with_the_uneven_tail():
    t = list(DEFAULT_GRID)
    acc = [0.6 + 1.2 * (x - 0.5) if x <= 0.8 else 0.96 + 0.05 * (x - 0.8) for x in t]  # bend at 0.8
    alpha, score, fallback = choose(t, acc)
    assert alpha == 0.8 and fallback is None
    assert math.isnan(score[0]) and math.isnan(score[-1])  # ends are not interior
    # on the linear tail (0.99, 0.995, 0.999) the uneven spacing gives no spurious bend
    assert score[-2] == pytest.approx(0, abs=1e-6)


def test_literal_second_difference_is_signed():
    t = [0.5, 0.6, 0.7, 0.8, 0.9]
    acc = [0.5, 0.9, 0.7, 0.71, 0.72]  # a sharp peak (A'' < 0) at 0.6, a valley at 0.7
    assert choose(t, acc, "curvature")[0] == 0.6  # |A''| largest at the peak
    assert choose(t, acc, "max_second_difference")[0] == 0.7  # the largest signed A''


def test_nan_points_are_skipped_and_too_few_fall_back():
    t = [0.5, 0.6, 0.7, 0.8, 0.9]
    acc = [0.5, 0.6, 0.9, float("nan"), float("nan")]
    alpha, score, _ = choose(t, acc)
    assert alpha == 0.6 and math.isnan(score[2])
    alpha, _, fallback = choose(t, [0.7, 0.8, float("nan"), float("nan"), float("nan")])
    assert alpha == 0.5 and "no interior point" in fallback
    alpha, _, fallback = choose(t, [float("nan")] * 5)  # nothing above any: the lowest stands
    assert alpha == 0.5 and "no sample is above any threshold" in fallback


def test_select_threshold_on_confidences_matches_a_numpy_curve():
    g = torch.Generator().manual_seed(0)
    conf = 0.5 + 0.5 * torch.rand(5000, generator=g)
    correct = torch.rand(5000, generator=g) < conf.pow(3)  # more confident, more often right
    choice = select_threshold(conf, correct, num_classes=2)
    t = np.array(choice.thresholds)
    c, k = conf.numpy().astype(np.float64), correct.numpy()
    acc = np.array([k[c > x].mean() if (c > x).any() else np.nan for x in t])
    np.testing.assert_allclose(choice.accuracy, acc, rtol=1e-12)
    assert choice.alpha == choose(t, acc)[0] and choice.alpha in t
    rows = choice.to_csv().splitlines()
    assert rows[0] == "threshold,accuracy,recall,coverage,score,chosen" and len(rows) == 53
    assert sum(int(r.split(",")[-1]) for r in rows[1:]) == 1
    js = choice.to_json()
    assert js["score"][0] is None and js["alpha"] == choice.alpha


def test_fixed_alpha_still_logs_the_curve():
    conf = torch.tensor([0.55, 0.65, 0.95, 0.99])
    correct = torch.tensor([False, True, True, True])
    choice = select_threshold(conf, correct, num_classes=2, method="fixed", alpha=0.9)
    assert choice.alpha == 0.9 and choice.accuracy[0] == pytest.approx(0.75)  # 4 above 0.5
    assert choice.accuracy[10] == pytest.approx(1.0)  # above 0.6: 3 rows, all right
    with pytest.raises(ValueError, match="needs alpha"):
        select_threshold(conf, correct, num_classes=2, method="fixed")
    with pytest.raises(ValueError, match="method must be one of"):
        select_threshold(conf, correct, num_classes=2, method="elbow")


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 4), st.integers(2, 5))
def test_the_curve_is_the_precision_of_the_pseudo_label_rule(seed, voters, classes):
    """accuracy(t) = the precision of the labels voter_filter gives at t, coverage(t) = the
    share it labels. Before, a row whose voters disagreed, all above t, counted as covered and
    wrong, so the curve sat below the rule's precision."""
    g = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(voters, 200, classes, generator=g)
    gold = torch.randint(0, classes, (200,), generator=g)
    agreed, conf, _ = voter_filter(logits, 0.0)
    choice = select_threshold(*rule_curve_inputs(agreed, conf, gold), classes)
    correct_agreed = int((agreed == gold).sum())
    for i, t in enumerate(choice.thresholds):
        labels, _, _ = voter_filter(logits, t)
        given = labels >= 0
        assert choice.coverage[i] == pytest.approx(given.float().mean().item())
        if not given.any():
            assert math.isnan(choice.accuracy[i])
            continue
        hits = int((labels[given] == gold[given]).sum())
        assert choice.accuracy[i] == pytest.approx(hits / int(given.sum()))
        if correct_agreed:
            assert choice.recall[i] == pytest.approx(hits / correct_agreed)


def test_voters_that_disagree_confidently_are_not_covered():
    # row 0: voters agree on 0 (right); row 1: voters split 0 / 1, each at 0.99
    big = 10.0
    logits = torch.tensor([[[big, 0.0], [big, 0.0]], [[big, 0.0], [0.0, big]]])  # [M, N, C]
    agreed, conf, _ = voter_filter(logits, 0.0)
    assert agreed.tolist() == [0, -1] and conf.min() > 0.99
    choice = select_threshold(*rule_curve_inputs(agreed, conf, torch.tensor([0, 0])), 2)
    assert choice.coverage[0] == 0.5 and choice.accuracy[0] == 1.0
