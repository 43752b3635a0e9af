"""soft_label_mse against float64 and the plain torch composition."""

import pytest
import torch
import torch.nn.functional as F

from tests.kernels.conftest import DEVICE, DTYPES, assert_rule, max_err
from xlt_engine.kernels import soft_label_mse, soft_label_mse_ref

ATOL = {torch.float32: 1e-8, torch.float16: 1e-6, torch.bfloat16: 1e-5}


def make_inputs(dtype, voters, C, mask_kind, rows=(37, 5), scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = ((voters,) if voters else ()) + rows + (C,)
    z = (torch.randn(shape, generator=g) * scale).to(DEVICE, dtype).requires_grad_()
    p = torch.randn((*rows, C), generator=g).softmax(-1).to(DEVICE).requires_grad_()
    mask = {
        None: None,
        "half": torch.rand(rows, generator=g) < 0.5,
        "none": torch.zeros(rows, dtype=torch.bool),
    }[mask_kind]
    return z, p, mask.to(DEVICE) if mask is not None else None


def loss_and_grads(fn, z, p, mask, **kw):
    z.grad = p.grad = None
    loss = fn(z, p, mask, **kw)
    loss.backward()
    out = tuple(t.clone() if t is not None else None for t in (loss.detach(), z.grad, p.grad))
    z.grad = p.grad = None
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("voters", [None, 1, 5])
@pytest.mark.parametrize("C", [2, 3, 9])
@pytest.mark.parametrize("mask_kind", [None, "half", "none"])
def test_forward_and_gradients(provider, dtype, voters, C, mask_kind):
    z, p, mask = make_inputs(dtype, voters, C, mask_kind)
    out = loss_and_grads(soft_label_mse, z, p, mask)
    zd, pd = z.detach().double().requires_grad_(), p.detach().double().requires_grad_()
    ref = loss_and_grads(soft_label_mse_ref, zd, pd, mask)
    same = loss_and_grads(soft_label_mse_ref, z, p, mask, upcast=False)
    assert out[0].dtype == torch.float32 and out[1].dtype == dtype
    for name, a, r, s in zip(("loss", "d logits", "d teacher"), out, ref, same, strict=True):
        assert_rule(name, a, r, s, ATOL[dtype])
    if mask_kind == "none":  # no valid row: 0 and zero gradients, never NaN
        assert out[0].item() == 0.0 and out[1].abs().max().item() == 0.0


@pytest.mark.parametrize("voters", [None, 3])
def test_equals_the_torch_composition_in_fp32(provider, voters):
    z, p, mask = make_inputs(torch.float32, voters, 9, "half", rows=(300,))
    out = soft_label_mse(z, p, mask)
    pz = z.softmax(-1)[..., mask, :] if voters else z.softmax(-1)[mask]
    composed = F.mse_loss(pz, p[mask].expand_as(pz))
    assert torch.allclose(out, composed, rtol=2e-6, atol=0)
    out.backward()
    zc = z.detach().clone().requires_grad_()
    pzc = zc.softmax(-1)[..., mask, :] if voters else zc.softmax(-1)[mask]
    F.mse_loss(pzc, p.detach()[mask].expand_as(pzc)).backward()
    assert torch.allclose(z.grad, zc.grad, rtol=1e-5, atol=1e-9)


def test_padding_rows_may_hold_anything(provider):
    z, p, mask = make_inputs(torch.float32, 3, 9, "half")
    clean = loss_and_grads(soft_label_mse, z, p, mask)
    dirty = z.detach().clone()
    dirty[:, ~mask] = float("nan")
    dirty[0, ~mask, 0] = float("inf")
    dirty.requires_grad_()
    out = loss_and_grads(soft_label_mse, dirty, p, mask)
    assert torch.equal(out[0], clean[0])
    assert torch.equal(out[1], clean[1]) and out[1][:, ~mask].abs().max().item() == 0.0


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_logits_of_magnitude_1e4(provider, dtype):
    z, p, mask = make_inputs(dtype, 3, 9, "half", scale=1e4)
    out = loss_and_grads(soft_label_mse, z, p, mask)
    ref = loss_and_grads(
        soft_label_mse_ref, z.detach().double().requires_grad_(), p.detach().double(), mask
    )
    assert torch.isfinite(out[0]) and torch.isfinite(out[1]).all()
    assert max_err(out[0], ref[0]) <= 1e-6
    assert max_err(out[1], ref[1]) <= 1e-6


def test_no_grad_and_teacher_without_grad(provider):
    z, p, mask = make_inputs(torch.float32, 3, 2, "half")
    with torch.no_grad():
        value = soft_label_mse(z, p, mask)
    assert not value.requires_grad
    loss = soft_label_mse(z, p.detach(), mask)
    loss.backward()
    assert z.grad is not None and torch.allclose(loss.detach(), value)


@pytest.mark.parametrize(
    "z_shape, p_shape, mask_shape, message",
    [
        ((4, 3), (4, 2), None, "must equal teacher_probs"),
        ((2, 2, 4, 3), (4, 3), None, "must equal teacher_probs"),
        ((4, 3), (4, 3), (5,), r"mask \[5\] must have teacher_probs' shape"),
        ((0, 4, 3), (4, 3), None, "voter dimension"),
    ],
)
def test_bad_shapes(z_shape, p_shape, mask_shape, message):
    mask = torch.ones(mask_shape, dtype=torch.bool) if mask_shape else None
    with pytest.raises(ValueError, match=message):
        soft_label_mse(torch.zeros(z_shape), torch.zeros(p_shape), mask)


def test_bad_mask_dtype():
    with pytest.raises(ValueError, match="mask must be a bool tensor"):
        soft_label_mse(torch.zeros(4, 3), torch.zeros(4, 3), torch.ones(4))


def test_no_rows_at_all(provider):
    z = torch.zeros(3, 0, 2, device=DEVICE, requires_grad=True)
    loss = soft_label_mse(z, torch.zeros(0, 2, device=DEVICE))
    loss.backward()
    assert loss.item() == 0.0 and z.grad.shape == z.shape
