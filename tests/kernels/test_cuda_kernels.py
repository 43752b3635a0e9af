"""The Triton kernels compiled for a GPU, at the shapes they serve: mBERT's vocabulary
(V = 119,547), bf16, no host synchronisation. Skipped without CUDA (the CPU runs cover the same
maths under Triton's interpreter)."""

import pytest
import torch

from tests.conftest import requires_cuda
from tests.kernels.conftest import assert_mlm_grads, assert_rule, assert_scaled, max_err
from xlt_engine.kernels import (
    fused_mlm_loss,
    fused_mlm_loss_ref,
    soft_label_kl,
    soft_label_kl_ref,
    soft_label_mse,
    soft_label_mse_ref,
    supcon_loss,
    supcon_loss_ref,
    threshold_curve,
    threshold_curve_ref,
    voter_filter,
    voter_filter_ref,
)

pytestmark = [pytest.mark.cuda, requires_cuda]
MBERT_V, MBERT_H = 119547, 768


def mlm_inputs(n, dtype, ignored=0.15, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    hidden = torch.randn(n, MBERT_H, device="cuda", generator=g)
    weight = torch.randn(MBERT_V, MBERT_H, device="cuda", generator=g) * 0.05
    bias = torch.randn(MBERT_V, device="cuda", generator=g) * 0.1
    labels = torch.randint(0, MBERT_V, (n,), device="cuda", generator=g)
    labels[torch.rand(n, device="cuda", generator=g) < ignored] = -100
    return [t.to(dtype).requires_grad_() for t in (hidden, weight, bias)] + [labels]


def run(fn, hidden, weight, bias, labels, **kw):
    for t in (hidden, weight, bias):
        t.grad = None
    loss = fn(hidden, weight, bias, labels, **kw)
    loss.backward()
    out = [loss.detach()] + [t.grad.clone() for t in (hidden, weight, bias)]
    for t in (hidden, weight, bias):
        t.grad = None
    return out


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("chunk_rows", [None, 512])
@pytest.mark.parametrize("frozen", [False, True], ids=["dW", "frozen W"])
def test_fused_mlm_loss_at_mbert_shapes(dtype, chunk_rows, frozen):
    """Loss and every gradient (and each gradient's softmax part on its own) against float64,
    tolerances scaled to each output's magnitude; frozen: the weight needs no gradient (BTF)."""
    inputs = mlm_inputs(1500, dtype)
    ref = run(
        fused_mlm_loss_ref, *[t.detach().double().requires_grad_() for t in inputs[:3]], inputs[3]
    )
    same = run(fused_mlm_loss_ref, *inputs, upcast=False)
    if frozen:
        inputs[1].requires_grad_(False)
        loss = fused_mlm_loss(*inputs, chunk_rows=chunk_rows)
        loss.backward()
        assert inputs[1].grad is None
        out = [loss.detach(), inputs[0].grad, None, inputs[2].grad]
    else:
        out = run(fused_mlm_loss, *inputs, chunk_rows=chunk_rows)
    atol = {torch.float32: 1e-6, torch.float16: 1e-4, torch.bfloat16: 1e-3}[dtype]
    rel = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}[dtype]
    assert_rule("loss", out[0], ref[0], same[0], atol)
    assert_mlm_grads(out[1:], ref[1:], same[1:], inputs, rel)


@pytest.mark.parametrize("chunk_rows", [None, 512])
def test_fused_mlm_loss_fp32_master_weights_take_the_fp32_output_gemm(chunk_rows):
    """Under bf16 autocast with fp32 master weights, dW comes from cuBLAS's fp32-output GEMM
    (torch >= 2.8 has it on CUDA: a silent fallback would show here) and matches float64 as
    closely as torch's own bf16 composition does."""
    from xlt_engine.kernels.mlm_loss import has_fp32_out_gemm

    assert has_fp32_out_gemm(torch.device("cuda"))
    inputs = mlm_inputs(1500, torch.float32)
    ref = run(
        fused_mlm_loss_ref, *[t.detach().double().requires_grad_() for t in inputs[:3]], inputs[3]
    )
    with torch.autocast("cuda", dtype=torch.bfloat16):
        same = run(fused_mlm_loss_ref, *inputs, upcast=False)
        out = run(fused_mlm_loss, *inputs, chunk_rows=chunk_rows)
    assert out[2].dtype == torch.float32
    assert_rule("loss", out[0], ref[0], same[0], 1e-3)
    assert_mlm_grads(out[1:], ref[1:], same[1:], inputs, 1e-2)


def test_fused_mlm_loss_all_ignored_on_gpu():
    inputs = mlm_inputs(300, torch.bfloat16, ignored=1.1)
    out = run(fused_mlm_loss, *inputs)
    assert out[0].item() == 0.0 and all(g.abs().max().item() == 0 for g in out[1:])


def test_no_host_sync_inside_the_ops():
    hidden, weight, bias, labels = mlm_inputs(700, torch.bfloat16)
    z = torch.randn(3, 5000, 9, device="cuda", requires_grad=True)
    p = torch.randn(5000, 9, device="cuda").softmax(-1)
    mask = torch.rand(5000, device="cuda") < 0.7
    conf = torch.rand(100_000, device="cuda")
    correct = torch.rand(100_000, device="cuda") < conf
    thresholds = torch.linspace(0.5, 0.99, 50, device="cuda")
    alpha = torch.full((1,), 0.6, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fused_mlm_loss(hidden, weight, bias, labels, check_labels=False).backward()
        soft_label_mse(z, p, mask).backward()
        supcon_loss(hidden, labels % 3, 0.3).backward()
        voter_filter(z.detach(), alpha)
        threshold_curve(conf, correct, thresholds)
    finally:
        torch.cuda.set_sync_debug_mode(0)


def test_fused_mlm_loss_out_of_range_label_gives_nan_not_garbage():
    hidden, weight, bias, labels = mlm_inputs(64, torch.float32)
    labels[3] = MBERT_V + 5
    assert torch.isnan(fused_mlm_loss(hidden, weight, bias, labels, check_labels=False))
    with pytest.raises(ValueError, match=r"labels\[3\]"):
        fused_mlm_loss(hidden, weight, bias, labels, check_labels=True)


def test_fused_mlm_loss_extra_memory_stays_bounded():
    """64K rows at mBERT shapes: the eager path needs 64K x 119,547 logits (15.6 GB in bf16);
    the fused op holds one chunk of logits (1 GiB by default), dh, a zeroed copy of hidden, the
    fp32 dW accumulator and one chunk's dW."""
    inputs = mlm_inputs(65536, torch.bfloat16, ignored=0.0)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    loss = fused_mlm_loss(*inputs)
    loss.backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    bound = (1 << 30) + 65536 * MBERT_H * 4 + MBERT_V * MBERT_H * (4 + 2) + (256 << 20)
    assert extra <= bound, f"{extra / 2**30:.2f} GiB"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_soft_label_mse_many_rows(dtype):
    z = (torch.randn(3, 1_000_003, 9, device="cuda") * 3).to(dtype).requires_grad_()
    p = torch.randn(1_000_003, 9, device="cuda").softmax(-1)
    mask = torch.rand(1_000_003, device="cuda") < 0.8
    loss = soft_label_mse(z, p, mask)
    loss.backward()
    zd = z.detach().double().requires_grad_()
    ref = soft_label_mse_ref(zd, p.double(), mask)
    ref.backward()
    zs = z.detach().clone().requires_grad_()
    same = soft_label_mse_ref(zs, p, mask, upcast=False)
    same.backward()
    assert_rule("loss", loss, ref, same, 1e-7)
    assert_rule("dz", z.grad, zd.grad, zs.grad, 1e-9)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_soft_label_kl_many_rows(dtype):
    z = (torch.randn(3, 1_000_003, 9, device="cuda") * 3).to(dtype).requires_grad_()
    p = torch.randn(1_000_003, 9, device="cuda").softmax(-1)
    mask = torch.rand(1_000_003, device="cuda") < 0.8
    loss = soft_label_kl(z, p, mask)
    loss.backward()
    zd = z.detach().double().requires_grad_()
    ref = soft_label_kl_ref(zd, p.double(), mask)
    ref.backward()
    zs = z.detach().clone().requires_grad_()
    same = soft_label_kl_ref(zs, p, mask, upcast=False)
    same.backward()
    assert_rule("loss", loss, ref, same, 1e-6 * ref.abs().item())
    assert_rule("dz", z.grad, zd.grad, zs.grad, 1e-9)


def test_voter_filter_and_threshold_curve_match_their_references():
    z = torch.randn(3, 2_000_001, 9, device="cuda") * 3
    got, want = voter_filter(z, 0.7), voter_filter_ref(z, 0.7)
    decided = (want[1] - 0.7).abs() > 1e-6
    assert torch.equal(got[0][decided], want[0][decided])
    assert max_err(got[1], want[1]) < 1e-6 and max_err(got[2], want[2]) < 1e-6
    conf, correct = got[1], got[0] >= 0
    thresholds = torch.linspace(0.3, 0.99, 52, device="cuda")
    for a, b in zip(
        threshold_curve(conf, correct, thresholds),
        threshold_curve_ref(conf, correct, thresholds),
        strict=True,
    ):
        torch.testing.assert_close(a, b, equal_nan=True, rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("B,D,tau", [(1024, 768, 0.3), (4096, 1024, 0.3), (333, 768, 0.05)])
def test_supcon_loss_at_paper_shapes(dtype, B, D, tau):
    """Loss and gradient against float64 (B up to 4K, D up to 1,024), 3 labels as XNLI."""
    g = torch.Generator(device="cuda").manual_seed(B)
    h = torch.randn(B, D, device="cuda", generator=g).to(dtype).requires_grad_()
    labels = torch.randint(0, 3, (B,), device="cuda", generator=g)
    out = []
    for fn, x, kw in (
        (supcon_loss, h, {}),
        (supcon_loss_ref, h.detach().double().requires_grad_(), {}),
        (supcon_loss_ref, h, {"upcast": False}),
    ):
        x.grad = None
        loss = fn(x, labels, tau, **kw)
        loss.backward()
        out.append((loss.detach(), x.grad.clone()))
    (loss, grad), (ref, ref_grad), (same, same_grad) = out
    atol = {torch.float32: 1e-6, torch.float16: 1e-4, torch.bfloat16: 1e-3}[dtype]
    assert_rule("loss", loss, ref, same, atol)
    assert_scaled("d embeddings", grad, ref_grad, same_grad, atol)
