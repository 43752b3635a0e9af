"""fused_mlm_loss against float64, with torch in the same precision as the yardstick."""

import pytest
import torch

from tests.kernels.conftest import DEVICE, DTYPES, assert_mlm_grads, assert_rule, max_err
from xlt_engine.kernels import fused_mlm_loss, fused_mlm_loss_ref

N, H, V = 37, 48, 5003  # deliberately odd; V spans three 2,048-wide row blocks
ATOL = {torch.float32: 1e-6, torch.float16: 1e-4, torch.bfloat16: 1e-3}
REL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}


def make_inputs(dtype, ignored_frac=0.0, n=N, h=H, v=V, scale=2.5, seed=0, strided=False):
    """Random MLM inputs. scale 2.5 gives logits of std 2.5: a peaked softmax whose non-target
    mass is a visible part of every gradient. strided: hidden transposed in memory, weight every
    other column of a wider tensor, bias every third element."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g) * scale
    weight = torch.randn(v, h, generator=g) / h**0.5
    bias = torch.randn(v, generator=g) * 0.1
    labels = torch.randint(0, v, (n,), generator=g)
    labels[torch.rand(n, generator=g) < ignored_frac] = -100
    if ignored_frac == 1.0:
        labels[:] = -100
    leaves = [t.to(DEVICE, dtype) for t in (hidden, weight, bias)]
    if strided:
        hidden, weight, bias = leaves
        leaves = [
            hidden.t().contiguous().t(),
            torch.stack([weight, torch.full_like(weight, float("nan"))], -1).flatten(1)[:, ::2],
            torch.stack([bias, bias * 0 + 7, bias * 0 - 7], -1).flatten()[::3],
        ]
        assert not any(t.is_contiguous() for t in leaves)
    return (*[t.requires_grad_() for t in leaves], labels.to(DEVICE))


def loss_and_grads(fn, hidden, weight, bias, labels, **kw):
    for t in (hidden, weight, bias):
        t.grad = None
    loss = fn(hidden, weight, bias, labels, **kw)
    loss.backward()
    grads = [t.grad.clone() for t in (hidden, weight, bias)]
    for t in (hidden, weight, bias):
        t.grad = None
    return loss.detach(), grads


def reference(hidden, weight, bias, labels):
    leaves = [t.detach().double().requires_grad_() for t in (hidden, weight, bias)]
    return loss_and_grads(fused_mlm_loss_ref, *leaves, labels)


def check_against_float64(inputs, dtype, **kw):
    out, grads = loss_and_grads(fused_mlm_loss, *inputs, **kw)
    ref, ref_grads = reference(*inputs)
    same, same_grads = loss_and_grads(fused_mlm_loss_ref, *inputs, upcast=False)
    assert out.dtype == torch.float32
    assert_rule("loss", out, ref, same, ATOL[dtype])
    for g, t in zip(grads, inputs[:3], strict=True):
        assert g.dtype == t.dtype and g.shape == t.shape
    assert_mlm_grads(grads, ref_grads, same_grads, inputs, REL[dtype])
    return out, grads


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("ignored", [0.0, 0.5])
def test_forward_and_every_gradient(provider, dtype, ignored):
    check_against_float64(make_inputs(dtype, ignored), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_all_rows_ignored_gives_zero_loss_and_zero_gradients(provider, dtype):
    inputs = make_inputs(dtype, 1.0)
    out, grads = loss_and_grads(fused_mlm_loss, *inputs)
    assert out.item() == 0.0
    assert all(g.abs().max().item() == 0.0 for g in grads)


@pytest.mark.parametrize("v", [5003, 4096])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_shapes_spanning_several_blocks_and_chunks(use_triton, dtype, v):
    """N = 300 rows in three chunks (the last one short), H = 200, V = 5003: several row blocks
    of the row kernel, a partial last block, and dW/db accumulated across chunks. V = 4,096 (a
    multiple of 64) takes the path that uses the weight as it is, with no padded copy."""
    inputs = make_inputs(dtype, 0.2, n=300, h=200, v=v, scale=1.5, seed=4)
    check_against_float64(inputs, dtype, chunk_rows=128)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_strided_hidden_weight_and_bias(provider, dtype):
    """Non-contiguous inputs give the contiguous inputs' result (the old kernels read a strided
    bias as if it were contiguous: a silently wrong loss)."""
    strided = make_inputs(dtype, 0.3, strided=True, seed=5)
    plain = [t.detach().contiguous().requires_grad_() for t in strided[:3]] + [strided[3]]
    out, grads = check_against_float64(strided, dtype)
    out2, grads2 = loss_and_grads(fused_mlm_loss, *plain)
    assert max_err(out, out2) <= ATOL[dtype]
    for g, g2 in zip(grads, grads2, strict=True):
        assert max_err(g, g2) <= REL[dtype] * g2.double().abs().max().item()


@pytest.mark.parametrize("bad", [V, V + 1, V + 2, V + 3, V + 4, -1, -2])
def test_labels_outside_the_vocabulary_give_nan_not_inf(use_triton, bad):
    """Without the (host-syncing) label check, a label outside [0, V) that is not ignore_index
    makes the loss and the gradients NaN, as documented (labels V..V+4 gave +inf before)."""
    hidden, weight, bias, labels = make_inputs(torch.float32, 0.3)
    labels = labels.clone()
    labels[3] = bad
    out, grads = loss_and_grads(fused_mlm_loss, hidden, weight, bias, labels, check_labels=False)
    assert out.isnan().item()
    assert all(g.isnan().any().item() for g in grads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("chunk_rows", [1, 8, 16])
def test_chunking_gives_the_same_result(use_triton, dtype, chunk_rows):
    """Several chunks accumulate dW/db in fp32 across chunks, including chunks whose rows are
    all ignored (the valid rows are sorted first)."""
    inputs = make_inputs(dtype, ignored_frac=0.5, n=33, v=257)
    _, one_grads = loss_and_grads(fused_mlm_loss, *inputs)
    many, many_grads = loss_and_grads(fused_mlm_loss, *inputs, chunk_rows=chunk_rows)
    ref, ref_grads = reference(*inputs)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert max_err(many, ref) <= tol
    for a, b, r in zip(one_grads, many_grads, ref_grads, strict=True):
        assert max_err(b, r) <= max(2 * max_err(a, r), tol)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_logits_of_magnitude_1e4(provider, dtype):
    # hidden scaled so that |logits| reaches ~1e4: the softmax is one-hot, nothing overflows
    inputs = make_inputs(dtype, 0.25, scale=1.5e3, v=1009)
    out, grads = loss_and_grads(fused_mlm_loss, *inputs)
    ref, ref_grads = reference(*inputs)
    same, same_grads = loss_and_grads(fused_mlm_loss_ref, *inputs, upcast=False)
    logits = inputs[0].detach().double() @ inputs[1].detach().double().T
    assert logits.abs().max() > 5e3
    assert torch.isfinite(out) and all(torch.isfinite(g).all() for g in grads)
    # One rounding of a logit of size |z| moves a near-tied softmax by ~eps |z|; that is the
    # conditioning of the problem, whoever computes it, so it sets the absolute tolerance.
    eps_z = torch.finfo(dtype).eps * logits.abs().max().item()
    assert_rule("loss", out, ref, same, eps_z)
    w_max = inputs[1].detach().abs().max().item()
    for name, g, r, s in zip(("dh", "dw", "db"), grads, ref_grads, same_grads, strict=True):
        scale = w_max if name == "dh" else inputs[0].detach().abs().max().item()
        assert_rule(name, g, r, s, eps_z * (scale if name != "db" else 1.0) / 10)


def test_ignored_rows_are_never_read(use_triton):
    """The kernels stop at the valid rows: NaN in ignored rows of hidden changes nothing."""
    hidden, weight, bias, labels = make_inputs(torch.float32, 0.5, v=503)
    out, grads = loss_and_grads(fused_mlm_loss, hidden, weight, bias, labels)
    poisoned = hidden.detach().clone()
    poisoned[labels == -100] = float("nan")
    poisoned.requires_grad_()
    out2, grads2 = loss_and_grads(fused_mlm_loss, poisoned, weight, bias, labels)
    assert torch.equal(out, out2)
    assert torch.equal(grads[1], grads2[1]) and torch.equal(grads[2], grads2[2])
    assert torch.equal(grads2[0][labels == -100], torch.zeros_like(grads2[0][labels == -100]))


@pytest.mark.parametrize("with_bias", [True, False])
def test_frozen_weight(provider, with_bias):
    """BTF freezes the tied word embeddings: no dW is asked for, dh and db are still right."""
    hidden, weight, bias, labels = make_inputs(torch.float32, 0.3, v=503)
    weight.requires_grad_(False)
    bias = bias if with_bias else None
    out = fused_mlm_loss(hidden, weight, bias, labels)
    out.backward()
    ref_h = hidden.detach().double().requires_grad_()
    ref_b = bias.detach().double().requires_grad_() if with_bias else None
    ref = fused_mlm_loss_ref(ref_h, weight.double(), ref_b, labels)
    ref.backward()
    assert weight.grad is None
    assert max_err(out, ref) < 1e-5
    assert max_err(hidden.grad, ref_h.grad) <= 1e-6 * ref_h.grad.abs().max().item()
    if with_bias:
        assert max_err(bias.grad, ref_b.grad) <= 1e-6 * ref_b.grad.abs().max().item()


def test_autocast_keeps_master_weights_fp32(provider):
    if DEVICE == "cpu" and provider == "torch":
        pytest.skip("the CPU reference computes in fp32 under autocast too (covered elsewhere)")
    hidden, weight, bias, labels = make_inputs(torch.float32, 0.3, v=503)
    h16 = hidden.detach().to(torch.bfloat16).requires_grad_()
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        out = fused_mlm_loss(h16, weight, bias, labels)
    out.backward()
    assert out.dtype == torch.float32
    assert h16.grad.dtype == torch.bfloat16
    assert weight.grad.dtype == torch.float32 and bias.grad.dtype == torch.float32
    ref, ref_grads = reference(h16, weight, bias, labels)
    assert max_err(out, ref) < 2e-2
    assert max_err(weight.grad, ref_grads[1]) < 2e-3


def test_inference_needs_no_grad(provider):
    inputs = make_inputs(torch.float32, 0.3, v=503)
    with torch.no_grad():
        out = fused_mlm_loss(*inputs)
    assert not out.requires_grad
    assert max_err(out, reference(*inputs)[0]) < 1e-5


def test_matches_torch_composition_over_20_training_steps(provider):
    """A tiny linear MLM head (projection + tied-style weight + bias) trained with Adam for 20
    steps with the fused loss and with the torch composition: the losses agree step by step (the
    loss falls to an eighth by then, so a wrong gradient has moved the two runs apart)."""
    n, h, v = 64, 32, 311
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, h, generator=g).to(DEVICE)
    labels = torch.randint(0, v, (n,), generator=g)
    labels[torch.rand(n, generator=g) < 0.3] = -100
    labels = labels.to(DEVICE)
    init = [torch.randn(h, h, generator=g) / h**0.5, torch.randn(v, h, generator=g) / h**0.5]

    def run(loss_fn):
        proj, weight = (t.clone().to(DEVICE).requires_grad_() for t in init)
        bias = torch.zeros(v, device=DEVICE, requires_grad=True)
        opt = torch.optim.Adam([proj, weight, bias], lr=1e-2)
        losses = []
        for _ in range(20):
            loss = loss_fn(torch.tanh(x @ proj), weight, bias, labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses

    fused, composed = run(fused_mlm_loss), run(fused_mlm_loss_ref)
    assert composed[-1] < 0.2 * composed[0]  # it learns
    for step, (a, b) in enumerate(zip(fused, composed, strict=True)):
        assert abs(a - b) <= 1e-4 * abs(b) + 1e-5, f"step {step}: {a} vs {b}"


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda h, w, b, y: (h[0], w, b, y), "hidden must be [N, H]"),
        (lambda h, w, b, y: (h, w[:, :-1], b, y), "disagree on H"),
        (lambda h, w, b, y: (h, w, b[:-1], y), "bias must be [V]"),
        (lambda h, w, b, y: (h, w, b, y[:-1]), "labels must be [N]"),
        (lambda h, w, b, y: (h, w, b, y.float()), "labels must hold integers"),
        (lambda h, w, b, y: (h.long(), w, b, y), "hidden must be float32"),
        (lambda h, w, b, y: (h, w, b, y.clone().fill_(V)), f"labels[0] = {V} is outside"),
        (lambda h, w, b, y: (h, w, b, y.clone().fill_(-1)), "labels[0] = -1 is outside"),
    ],
)
def test_bad_inputs_raise_clear_errors(change, message):
    inputs = make_inputs(torch.float32)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        fused_mlm_loss(*change(*inputs))


def test_no_rows_at_all(provider):
    hidden, weight, bias, labels = make_inputs(torch.float32, n=0, v=33)
    loss = fused_mlm_loss(hidden, weight, bias, labels)
    loss.backward()
    assert loss.item() == 0.0
    assert weight.grad.abs().max().item() == 0.0 and bias.grad.abs().max().item() == 0.0


def test_the_padded_weight_is_reused_until_the_weight_changes():
    """A frozen weight (btf) is padded and cast once, not every step; an in-place change (an
    optimizer step, a load) or another weight makes a new copy, which holds the new values."""
    from xlt_engine.kernels.mlm_loss import padded_weight

    w = torch.randn(503, 16)
    a = padded_weight(w, torch.bfloat16, 512)
    assert padded_weight(w, torch.bfloat16, 512) is a  # unchanged: the same copy
    assert torch.equal(a[:503], w.to(torch.bfloat16)) and not a[503:].any()
    assert padded_weight(w, torch.float32, 512) is not a  # another dtype
    with torch.no_grad():
        w.add_(1.0)  # in place: the version counter moves
    b = padded_weight(w, torch.bfloat16, 512)
    assert b is not a and torch.equal(b[:503], w.to(torch.bfloat16))
    other = w.clone()  # equal values, another tensor
    assert padded_weight(other, torch.bfloat16, 512) is not b
    with torch.inference_mode():  # a copy made here cannot be saved for backward later
        c = padded_weight(other, torch.bfloat16, 512)
    assert padded_weight(other, torch.bfloat16, 512) is not c


def test_a_frozen_weight_over_steps_with_the_cached_copy(use_triton):
    """Three steps on one frozen weight through the fused path equal the torch composition."""
    hidden, weight, bias, labels = make_inputs(torch.float32, 0.2, v=503)
    weight.requires_grad_(False)
    for _ in range(3):
        h = hidden.detach().requires_grad_()
        fused_mlm_loss(h, weight, bias.detach(), labels).backward()
        ref_h = hidden.detach().double().requires_grad_()
        fused_mlm_loss_ref(ref_h, weight.double(), bias.detach().double(), labels).backward()
        assert max_err(h.grad, ref_h.grad) <= 1e-6 * ref_h.grad.abs().max().item()
        hidden = hidden + 0.1


def test_backward_scales_by_the_incoming_gradient_once(use_triton):
    """The gradients, computed in the forward pass, are scaled in place by backward's incoming
    gradient (3.0 here: three times those of the plain loss); a second backward through the
    same loss is refused with a clear error instead of scaling them twice."""
    hidden, weight, bias, labels = make_inputs(torch.float32, 0.2, v=503)
    fused_mlm_loss(hidden, weight, bias, labels).backward()
    plain = [t.grad.clone() for t in (hidden, weight, bias)]
    for t in (hidden, weight, bias):
        t.grad = None
    loss = fused_mlm_loss(hidden, weight, bias, labels)
    (3.0 * loss).backward(retain_graph=True)
    for t, g in zip((hidden, weight, bias), plain, strict=True):
        assert torch.allclose(t.grad, 3.0 * g, rtol=1e-6, atol=1e-9)
    with pytest.raises(RuntimeError, match="a second backward through one loss"):
        loss.backward()


def test_fp32_dw_without_an_fp32_output_gemm_is_exact(use_triton):
    """The CPU has no GEMM of bf16 inputs into an fp32 output (CUDA does): the probe says so,
    and the fallback writes the first chunk's product and adds the others in fp32, so one chunk
    and several give an fp32 dW of an fp32 master weight under autocast, both right."""
    from xlt_engine.kernels.mlm_loss import has_fp32_out_gemm

    if DEVICE == "cpu":
        assert not has_fp32_out_gemm(torch.device("cpu"))
    hidden, weight, bias, labels = make_inputs(torch.float32, 0.3, v=503)
    grads = []
    for chunk_rows in (None, 7):
        weight.grad = None
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            fused_mlm_loss(hidden, weight, bias, labels, chunk_rows=chunk_rows).backward()
        assert weight.grad.dtype == torch.float32
        grads.append(weight.grad.clone())
    ref = reference(hidden, weight, bias, labels)[1][1]
    scale = ref.abs().max().item()  # bf16 matmuls: about 3 significant digits
    assert max_err(grads[0], ref) < 1e-2 * scale and max_err(grads[1], ref) < 1e-2 * scale


def test_the_fp32_output_gemm_probe_is_not_taken_while_compiling(monkeypatch):
    """Under torch.compile's tracing the probe would run on fake tensors (whose meta kernels
    exist on every device) and cache a wrong answer: it answers False there and caches nothing."""
    from xlt_engine.kernels import mlm_loss

    monkeypatch.setattr(mlm_loss, "_FP32_OUT_GEMM", {})
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert not mlm_loss.has_fp32_out_gemm(torch.device("cpu"))
    assert mlm_loss._FP32_OUT_GEMM == {}


def test_traces_as_one_graph_on_cpu_and_still_checks_labels_eagerly():
    """On the host the label check reads values, free there in eager code but a graph break
    under torch.compile (a model compiled on CPU would split at every loss): traced, the check
    is left out; eager calls keep it."""
    hidden, weight, bias, labels = make_inputs(torch.float32)
    compiled = torch.compile(fused_mlm_loss, backend="aot_eager", fullgraph=True)
    loss = compiled(hidden, weight, bias, labels)
    expect = fused_mlm_loss_ref(hidden, weight, bias, labels)
    assert max_err(loss, expect) < 1e-6
    with pytest.raises(ValueError, match="is outside"):
        fused_mlm_loss(hidden, weight, bias, labels.clone().fill_(V))
