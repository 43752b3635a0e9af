"""supcon_loss against float64, the plain torch composition, and the formula written as a loop."""

import math

import pytest
import torch

from tests.kernels.conftest import DEVICE, DTYPES, assert_rule, assert_scaled, max_err
from xlt_engine.kernels import supcon_loss, supcon_loss_ref

ATOL = {torch.float32: 1e-7, torch.float16: 1e-5, torch.bfloat16: 1e-4}


def loop_loss(h: torch.Tensor, labels: torch.Tensor, tau: float) -> float:
    """Paper 003's Eq. 2, anchor by anchor in Python floats (an independent check of the
    reference): the mean over anchors with a positive of -1/|P| sum_p log softmax_{k != i}."""
    n = [[float(v) for v in row] for row in h.double()]
    n = [[v / max(math.sqrt(sum(x * x for x in row)), 1e-12) for v in row] for row in n]
    y = [int(v) for v in labels]
    total, anchors = 0.0, 0
    for i in range(len(n)):
        pos = [p for p in range(len(n)) if p != i and y[p] == y[i]]
        if not pos:
            continue
        s = [sum(a * b for a, b in zip(n[i], n[k], strict=True)) / tau for k in range(len(n))]
        others = [s[k] for k in range(len(n)) if k != i]
        m = max(others)
        lse = m + math.log(sum(math.exp(v - m) for v in others))
        total += -sum(s[p] - lse for p in pos) / len(pos)
        anchors += 1
    return total / anchors if anchors else 0.0


def make_inputs(B, D, classes, dtype, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    h = (torch.randn(B, D, generator=g) * scale).to(DEVICE, dtype).requires_grad_()
    labels = torch.randint(0, classes, (B,), generator=g).to(DEVICE)
    return h, labels


def loss_and_grad(fn, h, labels, tau, **kw):
    h.grad = None
    loss = fn(h, labels, tau, **kw)
    loss.backward()
    out = loss.detach().clone(), h.grad.clone()
    h.grad = None
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "B,D,classes",
    [(3, 16, 1), (7, 33, 3), (37, 70, 4), (130, 48, 5), (67, 129, 2)],
    ids=lambda v: str(v),
)
def test_forward_and_gradient(provider, dtype, B, D, classes):
    h, labels = make_inputs(B, D, classes, dtype)
    out = loss_and_grad(supcon_loss, h, labels, 0.3)
    hd = h.detach().double().requires_grad_()
    ref = loss_and_grad(supcon_loss_ref, hd, labels, 0.3)
    same = loss_and_grad(supcon_loss_ref, h, labels, 0.3, upcast=False)
    assert out[0].dtype == torch.float32 and out[1].dtype == dtype
    assert_rule("loss", out[0], ref[0], same[0], ATOL[dtype])
    assert_scaled("d embeddings", out[1], ref[1], same[1], ATOL[dtype])


@pytest.mark.parametrize("B,D,classes", [(1, 4, 1), (5, 3, 2), (9, 7, 3), (12, 5, 12)])
def test_reference_is_the_formula(B, D, classes):
    h, labels = make_inputs(B, D, classes, torch.float64, seed=B)
    want = loop_loss(h.detach().cpu(), labels.cpu(), 0.3)
    assert supcon_loss_ref(h, labels, 0.3).item() == pytest.approx(want, rel=1e-12, abs=1e-12)


def test_reference_gradient_is_exact():
    h, labels = make_inputs(9, 6, 3, torch.float64)
    assert torch.autograd.gradcheck(lambda x: supcon_loss_ref(x, labels, 0.5), (h,))


def test_kernel_equals_the_formula_in_fp32(provider):
    h, labels = make_inputs(70, 40, 4, torch.float32, seed=3)
    want = loop_loss(h.detach().cpu(), labels.cpu(), 0.1)
    assert supcon_loss(h, labels, 0.1).item() == pytest.approx(want, rel=2e-5)


def test_no_positive_anywhere_gives_zero_and_zero_gradient(provider):
    h, _ = make_inputs(19, 24, 1, torch.float32)
    labels = torch.arange(19, device=DEVICE)  # every label distinct
    loss, grad = loss_and_grad(supcon_loss, h, labels, 0.3)
    assert loss.item() == 0.0 and grad.abs().max().item() == 0.0
    loss, grad = loss_and_grad(supcon_loss, h[:1].detach().requires_grad_(), labels[:1], 0.3)
    assert loss.item() == 0.0 and grad.abs().max().item() == 0.0


def test_anchors_without_positive_add_nothing(provider):
    # rows 0-4 share label 0; row 5 is alone: it is a negative for the others, never an anchor
    h, _ = make_inputs(6, 16, 1, torch.float32, seed=2)
    labels = torch.tensor([0, 0, 0, 0, 0, 7], device=DEVICE)
    want = loop_loss(h.detach().cpu(), labels.cpu(), 0.3)
    loss, grad = loss_and_grad(supcon_loss, h, labels, 0.3)
    assert loss.item() == pytest.approx(want, rel=1e-5)
    assert grad[5].abs().max().item() > 0  # still pushed away as a negative


def test_ties_and_zero_rows(provider):
    """Identical embeddings (ties in every score) and an all-zero row (normalises to zero)."""
    h, labels = make_inputs(24, 32, 3, torch.float32, seed=5)
    h = h.detach()
    h[1] = h[0]
    h[2] = h[0]
    h[3] = 0.0
    h.requires_grad_()
    out = loss_and_grad(supcon_loss, h, labels, 0.3)
    ref = loss_and_grad(supcon_loss_ref, h.detach().double().requires_grad_(), labels, 0.3)
    assert torch.isfinite(out[1]).all()
    assert out[1][3].abs().max().item() > 0  # the zero row is still moved (1 / eps scaled)
    keep = torch.arange(24, device=DEVICE) != 3  # its gradient is that of F.normalize at 0
    assert max_err(out[0], ref[0]) < 1e-5 and max_err(out[1][keep], ref[1][keep]) < 1e-5


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_small_temperature_is_stable(provider, dtype):
    h, labels = make_inputs(40, 64, 3, dtype, seed=4, scale=100.0)
    out = loss_and_grad(supcon_loss, h, labels, 0.01)
    ref = loss_and_grad(supcon_loss_ref, h.detach().double().requires_grad_(), labels, 0.01)
    same = loss_and_grad(supcon_loss_ref, h, labels, 0.01, upcast=False)
    assert torch.isfinite(out[0]) and torch.isfinite(out[1]).all()
    assert_rule("loss", out[0], ref[0], same[0], 1e-4)
    assert_scaled("d embeddings", out[1], ref[1], same[1], 1e-4)


def test_gradient_scales_with_the_upstream_gradient(provider):
    h, labels = make_inputs(33, 20, 3, torch.float32, seed=6)
    _, g1 = loss_and_grad(supcon_loss, h, labels, 0.3)
    (supcon_loss(h, labels, 0.3) * -2.5).backward()
    torch.testing.assert_close(h.grad, g1 * -2.5, rtol=1e-5, atol=1e-8)


def test_without_grad_and_empty_batch(provider):
    h, labels = make_inputs(21, 20, 3, torch.float32, seed=7)
    with torch.no_grad():
        a = supcon_loss(h, labels, 0.3)
    assert a.item() == pytest.approx(supcon_loss(h, labels, 0.3).item(), rel=1e-6)
    empty = torch.zeros(0, 8, device=DEVICE, requires_grad=True)
    loss = supcon_loss(empty, torch.zeros(0, dtype=torch.long, device=DEVICE), 0.3)
    loss.backward()
    assert loss.item() == 0.0 and empty.grad.shape == (0, 8)


def test_fp64_goes_to_the_reference(provider):
    h, labels = make_inputs(10, 8, 2, torch.float64)
    assert supcon_loss(h, labels, 0.3).dtype == torch.float64


@pytest.mark.parametrize(
    "args,match",
    [
        ((torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), 0.0), "temperature"),
        ((torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), float("nan")), "temperature"),
        ((torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), float("inf")), "temperature"),
        ((torch.zeros(4, 3), torch.zeros(3, dtype=torch.long), 0.3), r"labels must be \[B\]"),
        ((torch.zeros(4), torch.zeros(4, dtype=torch.long), 0.3), r"\[B, D\]"),
        ((torch.zeros(4, 3), torch.zeros(4), 0.3), "integers"),
        ((torch.zeros(4, 3, dtype=torch.long), torch.zeros(4, dtype=torch.long), 0.3), "float"),
    ],
)
def test_bad_input_is_named(args, match):
    with pytest.raises(ValueError, match=match):
        supcon_loss(*args)
