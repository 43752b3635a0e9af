"""lab/threshold_stability.py: the weighted curve is the engine's curve, and a clear
bend is found on (nearly) every resample of the sentences."""

import numpy as np
import torch

from lab.threshold_stability import stability, weighted_curve
from xlt_engine.engine.method.threshold import DEFAULT_GRID
from xlt_engine.kernels import threshold_curve


def test_the_weighted_curve_with_unit_weights_is_the_engines_accuracy():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0, 1, 500)
    correct = (rng.uniform(0, 1, 500) < conf).astype(np.float64)
    conf[:7] = -1.0  # voters disagree: never covered
    ours = weighted_curve(conf, correct, np.ones(500), DEFAULT_GRID)
    acc, _, _ = threshold_curve(
        torch.from_numpy(conf), torch.from_numpy(correct > 0), torch.tensor(DEFAULT_GRID)
    )
    np.testing.assert_allclose(ours, acc.double().numpy(), rtol=1e-12)
    w = rng.integers(0, 3, 500).astype(np.float64)  # a resample: rows counted 0, 1, 2 times
    above = conf > 0.7
    assert weighted_curve(conf, correct, w, [0.7])[0] == (w * correct)[above].sum() / w[above].sum()


def test_a_clear_bend_wins_on_the_resamples():
    rng = np.random.default_rng(1)
    units = np.repeat(np.arange(400), 10)  # 400 sentences of 10 words
    conf = rng.uniform(0.5, 1.0, len(units))
    # precision flat at 0.6 below 0.8, then 1.0 above: the curve bends at 0.8
    correct = np.where(conf > 0.8, 1.0, (rng.uniform(0, 1, len(units)) < 0.6).astype(float))
    out = stability(conf, correct, units, 9, resamples=20, seed=0)
    one = out["curvature, 0.50-0.99 by 0.01"]
    assert 0.78 <= one["alpha"] <= 0.82
    assert sum(c for a, c in one["resampled"]) == 20
    assert sum(c for a, c in one["resampled"] if 0.78 <= a <= 0.82) >= 18
