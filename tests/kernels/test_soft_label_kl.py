"""soft_label_kl against float64 and the plain torch composition, as soft_label_mse is tested."""

import pytest
import torch
import torch.nn.functional as F

from tests.kernels.conftest import DEVICE, DTYPES, assert_scaled, max_err
from tests.kernels.test_soft_label_mse import make_inputs
from xlt_engine.kernels import soft_label_kl, soft_label_kl_ref

# relative to each output's magnitude (the loss is a few units, its gradient ~1e-2 per element):
# the kernel sums p log p - p log s per row, the reference each term over the whole tensor
REL = {torch.float32: 1e-6, torch.float16: 1e-4, torch.bfloat16: 1e-3}


def loss_and_grad(fn, z, p, mask, **kw):
    z.grad = None
    loss = fn(z, p.detach(), mask, **kw)
    loss.backward()
    out = (loss.detach().clone(), z.grad.clone())
    z.grad = None
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("voters", [None, 1, 5])
@pytest.mark.parametrize("C", [2, 3, 9])
@pytest.mark.parametrize("mask_kind", [None, "half", "none"])
def test_forward_and_gradient(provider, dtype, voters, C, mask_kind):
    z, p, mask = make_inputs(dtype, voters, C, mask_kind)
    out = loss_and_grad(soft_label_kl, z, p, mask)
    ref = loss_and_grad(soft_label_kl_ref, z.detach().double().requires_grad_(), p.double(), mask)
    same = loss_and_grad(soft_label_kl_ref, z, p, mask, upcast=False)
    assert out[0].dtype == torch.float32 and out[1].dtype == dtype
    if mask_kind == "none":  # no valid row: 0 and zero gradients, never NaN
        assert out[0].item() == 0.0 and out[1].abs().max().item() == 0.0
        return
    assert out[0].item() > 0  # a real divergence, not a zero that passes any tolerance
    for name, a, r, s in zip(("loss", "d logits"), out, ref, same, strict=True):
        assert_scaled(name, a, r, s, REL[dtype])


@pytest.mark.parametrize("voters", [None, 3])
def test_equals_torch_kl_div_and_its_gradient_is_q_minus_p(provider, voters):
    z, p, mask = make_inputs(torch.float32, voters, 9, "half", rows=(300,))
    out = soft_label_kl(z, p.detach(), mask)
    log_q = z.log_softmax(-1)[..., mask, :] if voters else z.log_softmax(-1)[mask]
    target = p.detach()[mask].expand_as(log_q)
    composed = F.kl_div(log_q, target, reduction="sum") / log_q[..., 0].numel()
    assert torch.allclose(out, composed, rtol=2e-6, atol=0)
    out.backward()
    q = z.detach().softmax(-1)
    rows = int(mask.sum()) * (z.shape[0] if voters else 1)
    expect = torch.where(mask[..., None], (q - p.detach()) / rows, 0.0)
    assert torch.allclose(z.grad, expect, rtol=1e-5, atol=1e-9)


def test_a_class_the_teacher_gives_zero_adds_nothing_even_at_minus_inf(provider):
    z = torch.tensor([[0.0, 1.0, float("-inf")]], device=DEVICE, requires_grad=True)
    p = torch.tensor([[0.25, 0.75, 0.0]], device=DEVICE)
    loss = soft_label_kl(z, p)
    q = torch.tensor([0.0, 1.0]).softmax(-1)
    expect = (p[0, :2].cpu() * (p[0, :2].cpu().log() - q.log())).sum()
    assert torch.isfinite(loss) and abs(loss.item() - expect.item()) < 1e-6
    loss.backward()
    assert torch.isfinite(z.grad).all() and z.grad[0, 2].item() == 0.0


def test_padding_rows_may_hold_anything(provider):
    z, p, mask = make_inputs(torch.float32, 3, 9, "half")
    clean = loss_and_grad(soft_label_kl, z, p, mask)
    dirty = z.detach().clone()
    dirty[:, ~mask] = float("nan")
    dirty[0, ~mask, 0] = float("inf")
    dirty.requires_grad_()
    out = loss_and_grad(soft_label_kl, dirty, p, mask)
    assert torch.equal(out[0], clean[0])
    assert torch.equal(out[1], clean[1]) and out[1][:, ~mask].abs().max().item() == 0.0


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_logits_of_magnitude_1e4(provider, dtype):
    """Saturated softmaxes: the loss is ~1e4 and the gradient q - p stays O(1) per row."""
    z, p, mask = make_inputs(dtype, 3, 9, "half", scale=1e4)
    out = loss_and_grad(soft_label_kl, z, p, mask)
    ref = loss_and_grad(soft_label_kl_ref, z.detach().double().requires_grad_(), p.double(), mask)
    same = loss_and_grad(soft_label_kl_ref, z, p, mask, upcast=False)
    assert torch.isfinite(out[0]) and torch.isfinite(out[1]).all()
    assert max_err(out[0], ref[0]) <= 1e-6 * ref[0].abs().item()  # fp32 maths whatever z's dtype
    assert_scaled("d logits", out[1], ref[1], same[1], REL[dtype])


def test_no_grad_and_a_teacher_that_requires_grad(provider):
    z, p, mask = make_inputs(torch.float32, 3, 2, "half")
    with torch.no_grad():
        value = soft_label_kl(z, p, mask)  # no graph: a teacher with requires_grad is fine
    assert not value.requires_grad
    with pytest.raises(ValueError, match="teacher_probs requires grad; the teacher is fixed"):
        soft_label_kl(z, p, mask)
    loss = soft_label_kl(z, p.detach(), mask)
    loss.backward()
    assert z.grad is not None and torch.allclose(loss.detach(), value)


def test_bad_shapes_name_the_op():
    with pytest.raises(ValueError, match="soft_label_kl: student_logits .* must equal"):
        soft_label_kl(torch.zeros(4, 3), torch.zeros(4, 2))


def test_no_rows_at_all(provider):
    z = torch.zeros(3, 0, 2, device=DEVICE, requires_grad=True)
    loss = soft_label_kl(z, torch.zeros(0, 2, device=DEVICE))
    loss.backward()
    assert loss.item() == 0.0 and z.grad.shape == z.shape
