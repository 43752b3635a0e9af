"""voter_filter against a plain numpy implementation (property tests) and on edge cases."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tests.kernels.conftest import DEVICE, DTYPES
from xlt_engine.kernels import voter_filter

HYPOTHESIS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def numpy_voter_filter(z: np.ndarray, alpha):
    """The definition, written plainly in float64: loops, no vector tricks. ``alpha``: one
    threshold, or a sequence of one per class (the agreed class's applies)."""
    M, N, C = z.shape
    labels = np.full(N, -1, dtype=np.int64)
    conf = np.zeros(N)
    mean = np.zeros((N, C))
    for n in range(N):
        winners, tops = [], []
        for m in range(M):
            e = np.exp(z[m, n] - z[m, n].max())
            probs = e / e.sum()
            mean[n] += probs / M
            winners.append(int(np.argmax(z[m, n])))  # first index among ties
            tops.append(probs.max())
        conf[n] = min(tops)
        threshold = alpha if np.isscalar(alpha) else alpha[winners[0]]
        if len(set(winners)) == 1 and conf[n] > threshold:
            labels[n] = winners[0]
    return labels, conf, mean


@st.composite
def voter_logits(draw):
    M = draw(st.integers(1, 5))
    N = draw(st.integers(0, 40))
    C = draw(st.integers(1, 9))
    # few distinct values, so voters often agree and argmax ties are common
    elements = st.sampled_from([-3.0, -1.0, 0.0, 0.0, 0.5, 1.0, 2.0, 6.0])
    z = draw(hnp.arrays(np.float32, (M, N, C), elements=elements))
    alpha = draw(st.one_of(st.sampled_from([0.0, 1.0, 0.5]), st.floats(0, 1)))
    return z, alpha


@HYPOTHESIS
@given(case=voter_logits())
def test_matches_numpy(provider, case):
    z, alpha = case
    labels, conf, mean = voter_filter(torch.from_numpy(z).to(DEVICE), alpha)
    want_labels, want_conf, want_mean = numpy_voter_filter(z.astype(np.float64), alpha)
    assert labels.dtype == torch.int64 and conf.dtype == torch.float32
    np.testing.assert_allclose(conf.cpu().numpy(), want_conf, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(mean.cpu().numpy(), want_mean, rtol=1e-6, atol=1e-7)
    # fp32 and fp64 may disagree about `conf > alpha` only when they are a rounding apart
    decided = np.abs(want_conf - alpha) > 1e-6
    np.testing.assert_array_equal(labels.cpu().numpy()[decided], want_labels[decided])


def test_ties_and_alpha_edges(provider):
    z = torch.tensor(
        [
            [[1.0, 1.0, 0.0], [5.0, 0.0, 0.0], [0.0, 2.0, 2.0], [0.0, 0.0, 0.0]],
            [[1.0, 1.0, -9.0], [0.0, 5.0, 0.0], [0.0, 2.0, 2.0], [0.0, 0.0, 0.0]],
        ],
        device=DEVICE,
    )
    labels, conf, _ = voter_filter(z, 0.0)
    # row 0: both voters tie between 0 and 1, lowest index wins for both -> agree on 0
    # row 1: disagree; row 2: tie 1/2 for both -> 1; row 3: all equal -> 0
    assert labels.tolist() == [0, -1, 1, 0]
    assert voter_filter(z, 1.0)[0].tolist() == [-1, -1, -1, -1]  # nothing beats alpha = 1
    assert abs(conf[3].item() - 1 / 3) < 1e-7
    # exact 0.5 confidence: 0.5 > 0.5 is false
    two = torch.tensor([[[3.0, 3.0]], [[3.0, 3.0]]], device=DEVICE)
    assert voter_filter(two, 0.5)[0].item() == -1 and voter_filter(two, 0.49)[0].item() == 0


def test_saturated_confidence_equal_to_one_never_beats_alpha_one(provider):
    z = torch.tensor([[[100.0, -100.0]]], device=DEVICE)
    labels, conf, _ = voter_filter(z, 1.0)
    assert conf.item() == 1.0 and labels.item() == -1


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dtypes_and_tensor_alpha(provider, dtype):
    g = torch.Generator().manual_seed(0)
    z = (torch.randn(3, 1000, 9, generator=g) * 4).to(DEVICE, dtype)
    alpha = torch.tensor(0.6, device=DEVICE)
    labels, _conf, mean = voter_filter(z, alpha)
    want = numpy_voter_filter(z.float().cpu().double().numpy(), 0.6)
    decided = np.abs(want[1] - 0.6) > 1e-6
    np.testing.assert_array_equal(labels.cpu().numpy()[decided], want[0][decided])
    assert torch.allclose(mean.sum(-1), torch.ones(1000, device=DEVICE))
    assert (labels >= 0).any() and (labels == -1).any()  # the case exercises both outcomes


@st.composite
def per_class_case(draw):
    z, _ = draw(voter_logits())
    C = z.shape[2]
    alphas = draw(st.lists(st.sampled_from([0.0, 0.3, 0.5, 0.9, 1.0]), min_size=C, max_size=C))
    return z, np.array(alphas, dtype=np.float32)


@HYPOTHESIS
@given(case=per_class_case())
def test_per_class_alpha_matches_numpy(provider, case):
    """A [C] alpha: the agreed class's own threshold decides (Triton under the interpreter too:
    the provider fixture runs every test on both)."""
    z, alpha = case
    got = voter_filter(torch.from_numpy(z).to(DEVICE), torch.from_numpy(alpha).to(DEVICE))[0]
    want_labels, want_conf, _ = numpy_voter_filter(z.astype(np.float64), alpha.astype(np.float64))
    # fp32 and fp64 may disagree about `conf > alpha` only when they are a rounding apart
    decided = np.abs(want_conf[:, None] - alpha[None, :].astype(np.float64)).min(axis=1) > 1e-6
    np.testing.assert_array_equal(got.cpu().numpy()[decided], want_labels[decided])


def test_per_class_alpha_applies_the_agreed_class_threshold(provider):
    # three rows agreed on classes 0, 1, 2 with confidence about 0.84 each (one voter)
    z = torch.tensor([[[3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 3.0]]], device=DEVICE)
    conf = voter_filter(z, 0.0)[1]
    assert torch.allclose(conf, torch.full((3,), 0.9094, device=DEVICE), atol=1e-4)
    alpha = torch.tensor([0.95, 0.5, 1.0], device=DEVICE)
    assert voter_filter(z, alpha)[0].tolist() == [-1, 1, -1]
    # a [C] alpha of equal values is the scalar alpha
    same = torch.full((3,), 0.9, device=DEVICE)
    assert voter_filter(z, same)[0].tolist() == voter_filter(z, 0.9)[0].tolist() == [0, 1, 2]


def test_one_voter_is_a_plain_confidence_filter(provider):
    z = torch.tensor([[[2.0, 0.0], [0.0, 0.1], [-1.0, 3.0]]], device=DEVICE)
    labels, _conf, mean = voter_filter(z, 0.7)
    assert labels.tolist() == [0, -1, 1]
    assert torch.allclose(mean, z[0].softmax(-1))


@pytest.mark.parametrize(
    "z, alpha, message",
    [
        (torch.zeros(4, 3), 0.5, r"must be \[M, N, C\]"),
        (torch.zeros(0, 4, 3), 0.5, "M >= 1"),
        (torch.zeros(2, 4, 3, dtype=torch.long), 0.5, "must be float32"),
        (torch.zeros(2, 4, 3), 1.5, r"alpha must lie in \[0, 1\], got 1.5"),
        (torch.zeros(2, 4, 3), "0.5", "alpha must be a float"),
        (torch.zeros(2, 4, 3), torch.zeros(2), "1-element float tensor"),
        (torch.zeros(2, 4, 3), torch.zeros(4), r"one threshold per class \[3\]"),
        (torch.zeros(2, 4, 3), torch.zeros(3, dtype=torch.long), "float tensor"),
    ],
)
def test_bad_inputs(z, alpha, message):
    with pytest.raises(ValueError, match=message):
        voter_filter(z, alpha)
