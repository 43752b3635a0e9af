"""threshold_curve against a plain numpy implementation (property tests) and edge cases."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tests.kernels.conftest import DEVICE
from xlt_engine.kernels import threshold_curve, threshold_curve_ref

HYPOTHESIS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def numpy_curve(conf: np.ndarray, correct: np.ndarray, thresholds: np.ndarray):
    """The definitions, one threshold at a time, in float64."""
    acc, rec, cov = [], [], []
    for t in thresholds:
        above = conf.astype(np.float64) > float(t)
        covered, hits = above.sum(), (above & correct).sum()
        acc.append(hits / covered if covered else np.nan)
        rec.append(hits / correct.sum() if correct.sum() else np.nan)
        cov.append(covered / len(conf))
    return np.array(acc), np.array(rec), np.array(cov)


@st.composite
def curves(draw):
    N = draw(st.integers(1, 300))
    grid = [0.0, 0.25, 0.5, 0.5, 0.75, 0.99, 1.0]  # duplicates: ties with thresholds happen
    conf = draw(
        hnp.arrays(
            np.float32, N, elements=st.one_of(st.sampled_from(grid), st.floats(0, 1, width=32))
        )
    )
    correct = draw(hnp.arrays(np.bool_, N))
    thresholds = draw(
        st.lists(
            st.one_of(st.sampled_from([*grid, -0.5, 1.5]), st.floats(-2, 2, width=32)),
            min_size=1,
            max_size=70,
        )
    )
    return conf, correct, np.array(thresholds, dtype=np.float32)


@HYPOTHESIS
@given(case=curves())
def test_matches_numpy(provider, case):
    conf, correct, thresholds = case
    got = threshold_curve(
        torch.from_numpy(conf).to(DEVICE),
        torch.from_numpy(correct).to(DEVICE),
        torch.from_numpy(thresholds).to(DEVICE),
    )
    for name, g, w in zip(
        ("accuracy", "recall", "coverage"), got, numpy_curve(conf, correct, thresholds), strict=True
    ):
        assert g.dtype == torch.float64, name
        np.testing.assert_allclose(g.cpu().numpy(), w, rtol=1e-12, atol=0, err_msg=name)


def test_thresholds_outside_zero_one_and_unsorted(provider):
    conf = torch.tensor([0.1, 0.6, 0.9, 0.95], device=DEVICE)
    correct = torch.tensor([False, True, True, False], device=DEVICE)
    acc, rec, cov = threshold_curve(conf, correct, [2.0, -1.0, 0.5, 0.9])
    assert cov.tolist() == [0.0, 1.0, 0.75, 0.25]
    assert np.isnan(acc[0].item()) and acc[1].item() == 0.5 and acc[3].item() == 0.0
    assert rec.tolist() == [0.0, 1.0, 1.0, 0.0]


def test_no_correct_row_gives_nan_recall(provider):
    conf = torch.tensor([0.2, 0.7], device=DEVICE)
    acc, rec, cov = threshold_curve(conf, torch.zeros(2, dtype=torch.bool, device=DEVICE), [0.5])
    assert np.isnan(rec.item()) and acc.item() == 0.0 and cov.item() == 0.5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_other_dtypes(provider, dtype):
    g = torch.Generator().manual_seed(1)
    conf = torch.rand(5000, generator=g).to(dtype)
    correct = torch.rand(5000, generator=g) < conf.float()
    thresholds = torch.linspace(0.5, 0.99, 50)
    got = threshold_curve(conf.to(DEVICE), correct.to(DEVICE), thresholds.to(DEVICE))
    cmp = np.float64 if dtype == torch.float64 else np.float32
    want = numpy_curve(
        conf.to(torch.float64).numpy().astype(cmp), correct.numpy(), thresholds.numpy()
    )
    for g_, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g_.cpu().numpy(), w, rtol=1e-12)


def test_reference_handles_ten_million_rows_in_one_pass():
    """The CPU path must not build an [N, K] matrix: 10M rows x 52 thresholds would be 520 MB."""
    g = torch.Generator().manual_seed(0)
    conf = torch.rand(10_000_000, generator=g)
    correct = torch.rand(10_000_000, generator=g) < conf
    thresholds = torch.cat([torch.arange(50, 100) / 100, torch.tensor([0.995, 0.999])])
    acc, _rec, cov = threshold_curve_ref(conf, correct, thresholds)
    assert abs(cov[0].item() - 0.5) < 1e-3 and abs(cov[-1].item() - 0.001) < 1e-4
    # for conf ~ U(0,1) and P(correct | conf) = conf: accuracy above t is (1 + t) / 2
    assert abs(acc[0].item() - 0.75) < 1e-3


@pytest.mark.parametrize(
    "conf, correct, thresholds, message",
    [
        (torch.rand(4), torch.ones(4), [0.5], "correct must be a bool tensor"),
        (torch.rand(4), torch.ones(3, dtype=torch.bool), [0.5], r"both be \[N\]"),
        (torch.rand(0), torch.ones(0, dtype=torch.bool), [0.5], "empty"),
        (torch.rand(4), torch.ones(4, dtype=torch.bool), [[0.5]], r"thresholds must be \[K\]"),
        (
            torch.rand(4),
            torch.ones(4, dtype=torch.bool),
            [0.5, float("nan")],
            r"thresholds\[1\] is NaN",
        ),
    ],
)
def test_bad_inputs(conf, correct, thresholds, message):
    with pytest.raises(ValueError, match=message):
        threshold_curve(conf, correct, thresholds)
