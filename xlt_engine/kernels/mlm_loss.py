"""fused_mlm_loss: the MLM decoder projection fused with cross-entropy, never holding ``[N, V]``.

Maths, for a row n with target y (rows with ``labels == ignore_index`` are left out; K is the
number of the others):

    z = h W^T + b                    logits  [V]
    lse = log sum_v exp(z_v)
    loss = (1/K) sum_n (lse_n - z_{n,y_n})
    G = (softmax(z) - onehot(y)) / K [N, V]   d loss / d z
    dh = G W,  dW = G^T h,  db = sum_n G_n

Design: the three matmuls go through cuBLAS (``torch.mm``, fp32 accumulation), one Triton kernel
does everything between them. The weight is first copied, in the compute dtype, into a buffer of
V_pad = V rounded up to 64 rows whose extra rows are zero (under autocast this is the cast that
had to happen anyway; no copy when V is a multiple of 64 and the dtype already right), so every matmul has dimensions in multiples of 64: with mBERT's odd
V = 119,547, cuBLAS chose sm_75 kernels on an H100 (logits 1.22 ms, dh 0.87 ms at 614 rows; 0.18
and 0.15 ms padded). Rows are taken in chunks whose logits fit a budget (1 GiB by default, in the
compute dtype, V_pad per row, so every row starts 128-byte aligned). For each chunk:

1. ``torch.mm(h_c, W_pad^T)`` writes the chunk's logits (the V_pad - V extra columns are 0);
2. ``mlm_rows_kernel`` (one program per row) adds the bias, computes the row max and
   log-sum-exp online, the row loss ``lse - z_y``, and overwrites the row's first V logits in
   place with ``G = (softmax - onehot) * (1/K)`` (the one-hot term is subtracted in fp32 before
   rounding);
3. ``dh_c = G W_pad`` and ``dW += G^T h_c`` (cuBLAS, V_pad rows, the extra ones 0 and cut off),
   ``db += sum_rows G`` (fp32). dW is fp32 when chunks accumulate into it or the weight is an
   fp32 master; where torch has a GEMM with an fp32 output of bf16/fp16 inputs (CUDA:
   ``torch.addmm(..., out_dtype=torch.float32)``, see ``has_fp32_out_gemm``) it accumulates
   straight into fp32, else each chunk's product is added in fp32.

So the gradients are computed in the forward pass; backward only scales them, in place, by the
incoming gradient. 1/K is read from device memory: no host sync anywhere. Ignored rows get loss 0 and a
zero gradient row; their hidden rows are zeroed before ``dW`` so that NaN or inf there changes
nothing. A label outside ``[0, V)`` that is not ``ignore_index`` makes the loss and every
gradient NaN (a ``ValueError`` instead when the labels are on the CPU, or with
``check_labels=True``, which costs a host sync on a GPU).

Roofline (N masked rows, V = 119,547, H = 768, bf16; H100 SXM: 989 TFLOP/s dense bf16 and
3.35 TB/s HBM3; H200: 989 TFLOP/s and 4.8 TB/s):

- matmuls: 2NVH flops each, 6NVH with ``dW`` and 4NVH without (BTF freezes the embeddings).
  N = 8,192: 4.51e12 flops = 4.56 ms (3.04 ms without ``dW``); N = 614: 0.34 ms (0.23 ms).
  Their arithmetic intensity is at least H = 768 flop/byte, above both GPUs' ridge (295 and
  206), so they are compute-bound.
- ``mlm_rows_kernel``: reads each logit twice and writes it once, 3 x N x V_pad x 2 bytes.
  N = 8,192: 5.9 GB = 1.75 ms on H100, 1.22 ms on H200; N = 614: 0.13 ms / 0.09 ms.
- ``db``: reads G once, N x V x 2 bytes. N = 8,192: 0.58 ms on H100, 0.41 ms on H200. It stays a
  pass of its own: folding it into the ``dW`` GEMM (a column of ones beside h) gives a dW with
  a row stride of H + 8, which autograd copies to the weight's layout (a V x H fp32 pass, more
  than it saves below N ~ 3,000), and the row kernel would need N x V atomic adds.
- fixed cost per step, independent of N: the padded weight, V x H read in the weight's dtype and
  written in bf16 (0.55 GB from fp32 = 0.16 ms on H100) - none while the weight is unchanged
  (BTF's frozen tied weight is padded once, ``padded_weight``); with ``dW``, backward's in-place
  scale of the fp32 dW (read and written, 0.73 GB = 0.22 ms on H100, 0.15 ms on H200). The
  scale of dh (N x H) and db (V) is small.

Total at N = 8,192 on H100: 7.3 ms with a trained ``dW`` (5.4 ms without). Measured there
(benchmarks/results/gpu_h100_20261123/, before the fp32-output GEMM, the cached padded weight
and the in-place scale): 12.1 ms forward + backward with ``dW`` (eager bf16 PyTorch 42.8 ms,
3.5x), 8.0 ms without (eager 32.8 ms); at BTF's 614 rows 1.52 ms (eager 3.64 ms, 2.4x); peak
extra memory 1.75 GB against eager's 5.6 GB at N = 8,192 and 1.9 GB against 44.8 GB at N = 64K.
Eager loses mostly to the same odd-V matmul kernels. ``xlt-engine bench kernels`` prints
measured time over this roofline (its roofline column: ``bench.py``).

Limits: float32, float16 and bfloat16 (float64 goes to the reference). Under autocast the
matmuls run in the autocast dtype; gradients come back in each input's own dtype (fp32 master
weights get an fp32 dW). fp16 logits overflow above 65,504 as they do in eager PyTorch.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from xlt_engine.kernels._dispatch import (
    check_float,
    check_int,
    check_same_device,
    free_checks,
    shape_str,
    use_triton,
)
from xlt_engine.kernels._launch import config, launch

_OP = "fused_mlm_loss"
DEFAULT_CHUNK_BYTES = 1 << 30  # logits buffer per chunk, in the compute dtype
ROW_ALIGN = 64  # elements: rows of the logits buffer start 128-byte aligned in bf16


@triton.jit
def mlm_rows_kernel(
    z_ptr,  # [rows, stride_z] logits of the chunk; overwritten with G when NEED_GRAD
    bias_ptr,  # [V] contiguous (unused when HAS_BIAS is false)
    labels_ptr,  # [rows] int64 labels of the chunk
    inv_count_ptr,  # [1] fp32: 1 / max(K, 1)
    loss_ptr,  # [rows] fp32 output: lse - z_y (0 for ignored rows, NaN for a bad label)
    V,
    stride_z,
    ignore_index,
    HAS_BIAS: tl.constexpr,
    NEED_GRAD: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0)
    z_row = z_ptr + row.to(tl.int64) * stride_z  # rows x stride can pass 2^31
    y = tl.load(labels_ptr + row)
    ignored = y == ignore_index
    y_ok = (y >= 0) & (y < V)
    offs = tl.arange(0, BLOCK_V)
    # pass 1: online max and sum of exponentials, one running pair per lane
    m = tl.full([BLOCK_V], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_V], dtype=tl.float32)
    for v0 in range(0, V, BLOCK_V):
        v = v0 + offs
        ok = v < V
        z = tl.load(z_row + v, mask=ok, other=float("-inf")).to(tl.float32)
        if HAS_BIAS:
            z += tl.load(bias_ptr + v, mask=ok, other=0.0).to(tl.float32)
        m_new = tl.maximum(m, z)
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # no -inf - -inf in empty lanes
        s = s * tl.exp(m - m_ref) + tl.exp(z - m_ref)
        m = m_new
    m_row = tl.max(m, axis=0)
    m_row_ref = tl.where(m_row == float("-inf"), 0.0, m_row)
    lse = m_row + tl.log(tl.sum(s * tl.exp(m - m_row_ref), axis=0))
    z_y = tl.load(z_row + y, mask=y_ok & ~ignored, other=0.0).to(tl.float32)
    if HAS_BIAS:
        z_y += tl.load(bias_ptr + y, mask=y_ok & ~ignored, other=0.0).to(tl.float32)
    loss = tl.where(y_ok, lse - z_y, float("nan"))
    tl.store(loss_ptr + row, tl.where(ignored, 0.0, loss))
    if NEED_GRAD:
        # pass 2: G = (softmax - onehot) / K in place; NaN for a bad label, 0 for ignored rows
        scale = tl.where(y_ok, tl.load(inv_count_ptr), float("nan"))
        for v0 in range(0, V, BLOCK_V):
            v = v0 + offs
            ok = v < V
            z = tl.load(z_row + v, mask=ok, other=0.0).to(tl.float32)
            if HAS_BIAS:
                z += tl.load(bias_ptr + v, mask=ok, other=0.0).to(tl.float32)
            g = (tl.exp(z - lse) - tl.where(v == y, 1.0, 0.0)) * scale
            g = tl.where(ignored, 0.0, g)
            tl.store(z_row + v, g.to(z_ptr.dtype.element_ty), mask=ok)


def chunk_rows_for(n: int, v: int, dtype: torch.dtype, chunk_rows: int | None) -> int:
    """Rows per chunk: ``chunk_rows`` when given, else as many as fit DEFAULT_CHUNK_BYTES."""
    if chunk_rows is None:
        row_bytes = triton.cdiv(v, ROW_ALIGN) * ROW_ALIGN * dtype.itemsize
        chunk_rows = max(1, DEFAULT_CHUNK_BYTES // row_bytes)
    return max(1, min(chunk_rows, n))


def padded_weight(weight: torch.Tensor, dtype: torch.dtype, v_pad: int) -> torch.Tensor:
    """The weight in the compute dtype with ``v_pad`` rows, the extra ones zero, so that every
    matmul has dimensions in multiples of 64: with an odd V (mBERT's 119,547) cuBLAS fell back
    to sm_75 kernels, 3-4x slower on an H100. Under autocast this copy is the cast autocast
    would make anyway; a weight already in the compute dtype costs one extra copy (0.13 ms for
    mBERT's on an H100), and none when V is a multiple of 64."""
    V, H = weight.shape
    if V == v_pad and weight.dtype == dtype and weight.is_contiguous():
        return weight
    key = (weight._version, dtype, v_pad, torch.is_inference_mode_enabled())
    ref, cached_key, cached = _PADDED
    if ref is not None and ref() is weight and cached_key == key:
        return cached  # the same weight, unchanged since (btf freezes it): no V x H pass
    w_pad = torch.empty(v_pad, H, device=weight.device, dtype=dtype)
    w_pad[:V].copy_(weight)
    w_pad[V:].zero_()
    _PADDED[:] = [weakref.ref(weight), key, w_pad]
    return w_pad


# the last padded copy: (a weak reference to its weight, (the weight's version counter, dtype,
# rows, inference mode), the copy); an in-place change of the weight (an optimizer step, a
# load) bumps its version, a new weight fails the reference, and either makes a new copy
_PADDED: list = [None, None, None]


def fused_mlm_loss_fwd(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    ignore_index: int,
    need: tuple[bool, bool, bool],
    chunk_rows: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """The chunked loop. ``hidden`` and ``bias`` are in the compute dtype, ``weight`` in any float
    dtype (it is cast while it is padded); any strides. Returns the loss (0-d fp32) and dh [N, H]
    (compute dtype), dW [V, H] (fp32 with several chunks or, given an fp32-output GEMM, an fp32
    weight; else the compute dtype), db [V] fp32, each None
    when ``need`` says so; the gradients are of the mean loss."""
    N, H = hidden.shape
    V = weight.shape[0]
    device, dtype = hidden.device, hidden.dtype
    need_dh, need_dw, need_db = need
    need_grad = any(need)
    labels = labels.to(torch.int64).contiguous()
    valid = labels != ignore_index
    inv_count = (1.0 / valid.sum().clamp(min=1).to(torch.float32)).reshape(1)
    if need_dw:  # a zero G row times a NaN hidden row would still be NaN in dW
        hidden = hidden.masked_fill(~valid[:, None], 0.0)
    has_bias = bias is not None
    bias = bias.contiguous() if has_bias else None
    rows = chunk_rows_for(N, V, dtype, chunk_rows)
    n_chunks = triton.cdiv(N, rows)
    v_pad = triton.cdiv(V, ROW_ALIGN) * ROW_ALIGN
    w_pad = padded_weight(weight, dtype, v_pad)
    buf = torch.empty(rows, v_pad, device=device, dtype=dtype)
    row_loss = torch.zeros(N, device=device, dtype=torch.float32)
    dh = torch.empty(N, H, device=device, dtype=dtype) if need_dh else None
    mixed = dtype != torch.float32 and has_fp32_out_gemm(device)
    # dW in fp32 when chunks accumulate into it, or when the weight itself is fp32 (autocast's
    # master weights) and the device writes an fp32 GEMM output straight from bf16/fp16 inputs
    fp32_dw = n_chunks > 1 or (mixed and weight.dtype == torch.float32)
    dw_dtype = torch.float32 if fp32_dw else dtype
    new = torch.empty if n_chunks else torch.zeros  # the first chunk writes dW whole
    dw = new(v_pad, H, device=device, dtype=dw_dtype) if need_dw else None
    db = torch.zeros(V, device=device, dtype=torch.float32) if need_db else None
    cfg = config("mlm_rows", dtype.itemsize)
    wt = w_pad.t()
    for start in range(0, N, rows):
        end = min(start + rows, N)
        h_c, zp = hidden[start:end], buf[: end - start]
        z = zp[:, :V]
        torch.mm(h_c, wt, out=zp)  # the padding columns are h . 0 = 0 and stay so
        launch(
            mlm_rows_kernel,
            (end - start,),
            z,
            bias if has_bias else z,
            labels[start:end],
            inv_count,
            row_loss[start:end],
            V,
            v_pad,
            ignore_index,
            HAS_BIAS=has_bias,
            NEED_GRAD=need_grad,
            **cfg,
        )
        if need_dh:
            torch.mm(zp, w_pad, out=dh[start:end])
        if need_dw:
            _add_dw(dw, zp.t(), h_c, first=start == 0, mixed=mixed)
        if need_db:
            db.add_(z.sum(0, dtype=torch.float32))
    if need_dw:
        dw = dw[:V]  # the padding rows are 0^T h = 0
    loss = row_loss.sum() * inv_count[0]
    return loss, dh, dw, db


def _add_dw(dw: torch.Tensor, g_t: torch.Tensor, h: torch.Tensor, first: bool, mixed: bool):
    """``dw (+)= g_t @ h``: the first chunk writes ``dw`` (allocated uninitialised), the others
    add to it. An fp32 ``dw`` of bf16/fp16 inputs takes the fp32-output GEMM where the device has
    one (``mixed``: no [V, H] temporary in the compute dtype and no second pass to add it), else
    the chunk's product is added in fp32."""
    if dw.dtype == g_t.dtype:
        if first:
            torch.mm(g_t, h, out=dw)
        else:
            dw.addmm_(g_t, h)
    elif mixed:
        if first:
            torch.mm(g_t, h, out_dtype=torch.float32, out=dw)
        else:
            torch.addmm(dw, g_t, h, out_dtype=torch.float32, out=dw)
    elif first:
        dw.copy_(torch.mm(g_t, h))
    else:
        dw.add_(torch.mm(g_t, h))


_FP32_OUT_GEMM: dict[str, bool] = {}


def has_fp32_out_gemm(device: torch.device) -> bool:
    """Whether torch on this device type computes ``mm`` and ``addmm`` of bf16 inputs into an
    fp32 output (``out_dtype=torch.float32``: CUDA since torch 2.8; not the CPU). Probed once per
    device type with the two calls ``_add_dw`` makes, on 64 x 64 tensors; a missing kernel
    raises at dispatch, so the probe reads nothing back from the device."""
    key = device.type
    if key not in _FP32_OUT_GEMM and _tracing_or_capturing(device):
        return False  # no probe while torch.compile traces (fake tensors) or a CUDA graph records
    if key not in _FP32_OUT_GEMM:
        a = torch.zeros(64, 64, device=device, dtype=torch.bfloat16)
        c = torch.zeros(64, 64, device=device, dtype=torch.float32)
        try:
            torch.mm(a, a, out_dtype=torch.float32, out=c)
            torch.addmm(c, a, a, out_dtype=torch.float32, out=c)
            _FP32_OUT_GEMM[key] = True
        except (RuntimeError, NotImplementedError, TypeError):
            _FP32_OUT_GEMM[key] = False
    return _FP32_OUT_GEMM[key]


def _tracing_or_capturing(device: torch.device) -> bool:
    if torch.compiler.is_compiling():
        return True
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


class FusedMLMLossFunction(torch.autograd.Function):
    """Forward computes loss and gradients together; backward scales the stored gradients."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, ignore_index, compute_dtype, chunk_rows):
        need = (
            ctx.needs_input_grad[0],
            ctx.needs_input_grad[1],
            bias is not None and ctx.needs_input_grad[2],
        )
        h, w, b = _cast(compute_dtype, hidden, weight, bias)
        loss, dh, dw, db = fused_mlm_loss_fwd(h, w, b, labels, ignore_index, need, chunk_rows)
        ctx.grads = (dh, dw, db)
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        if ctx.grads is None:
            raise RuntimeError(
                f"{_OP}: a second backward through one loss (retain_graph): its gradients are "
                "computed in the forward pass and scaled in place by the first; compute the loss "
                "again"
            )
        dh, dw, db = ctx.grads
        ctx.grads = None  # the buffers are scaled in place: this backward runs once
        out = []
        for grad, dtype in zip((dh, dw, db), ctx.dtypes, strict=True):
            # in place, on the device (no host read of grad_loss, no second [V, H] buffer)
            out.append(None if grad is None else grad.mul_(grad_loss).to(dtype))
        return out[0], out[1], out[2], None, None, None, None


def _cast(dtype, hidden, weight, bias):
    """hidden and bias in the compute dtype (a copy only where the dtype differs, as autocast
    does); the weight as it is, since ``fused_mlm_loss_fwd`` casts it into its padded copy."""
    return (hidden.to(dtype), weight, bias.to(dtype) if bias is not None else None)


def _check_inputs(hidden, weight, bias, labels, ignore_index, check_labels) -> None:
    for name, t in (("hidden", hidden), ("weight", weight)):
        check_float(_OP, name, t)
    if bias is not None:
        check_float(_OP, "bias", bias)
    check_int(_OP, "labels", labels)
    check_same_device(_OP, hidden=hidden, weight=weight, bias=bias, labels=labels)
    if hidden.dim() != 2 or weight.dim() != 2:
        raise ValueError(
            f"{_OP}: hidden must be [N, H] and weight [V, H], got hidden {shape_str(hidden)}, "
            f"weight {shape_str(weight)}"
        )
    N, H = hidden.shape
    V = weight.shape[0]
    if weight.shape[1] != H:
        raise ValueError(
            f"{_OP}: hidden {shape_str(hidden)} and weight {shape_str(weight)} disagree on H"
        )
    if bias is not None and tuple(bias.shape) != (V,):
        raise ValueError(f"{_OP}: bias must be [V] = [{V}], got {shape_str(bias)}")
    if tuple(labels.shape) != (N,):
        raise ValueError(f"{_OP}: labels must be [N] = [{N}], got {shape_str(labels)}")
    if V == 0:
        raise ValueError(f"{_OP}: weight has no rows (V = 0)")
    if check_labels is None:
        check_labels = free_checks(labels.device)
    if check_labels:  # on a GPU this is a host sync, hence opt-in there
        bad = (labels != ignore_index) & ((labels < 0) | (labels >= V))
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"{_OP}: labels[{i}] = {int(labels[i])} is outside [0, {V}) and is not "
                f"ignore_index ({ignore_index})"
            )


def fused_mlm_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    ignore_index: int = -100,
    *,
    chunk_rows: int | None = None,
    check_labels: bool | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of ``hidden @ weight.T + bias`` against ``labels``, fused.

    hidden [N, H], weight [V, H] (the tied word embeddings), bias [V] or None: float tensors on one
    device; labels [N] integers in ``[0, V)`` or ``ignore_index``. Returns a 0-d fp32 tensor,
    differentiable w.r.t. hidden, weight and bias (any strides). ``chunk_rows`` bounds the logits
    buffer of the fused path (default: 1 GiB of logits in the compute dtype). See the module
    docstring for the design and ``xlt_engine.kernels`` for the dispatch rule.
    """
    _check_inputs(hidden, weight, bias, labels, ignore_index, check_labels)
    if hidden.dtype == torch.float64 or not use_triton(mlm_rows_kernel, hidden):
        return fused_mlm_loss_ref(hidden, weight, bias, labels, ignore_index)
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        compute_dtype = torch.get_autocast_dtype(device_type)
    else:
        compute_dtype = hidden.dtype
    if not (
        torch.is_grad_enabled()
        and any(t is not None and t.requires_grad for t in (hidden, weight, bias))
    ):  # inference: the loss alone, no gradient kernels
        h, w, b = _cast(compute_dtype, hidden, weight, bias)
        return fused_mlm_loss_fwd(h, w, b, labels, ignore_index, (False,) * 3, chunk_rows)[0]
    with torch.autocast(device_type, enabled=False):
        return FusedMLMLossFunction.apply(
            hidden, weight, bias, labels, ignore_index, compute_dtype, chunk_rows
        )


def fused_mlm_loss_ref(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    ignore_index: int = -100,
    upcast: bool = True,
) -> torch.Tensor:
    """The torch composition. upcast=True computes in fp32 (fp64 stays fp64); upcast=False runs
    in the inputs' dtype, as an eager bf16 model would. Memory: reads NH + VH, writes the full
    NV logits (and cross_entropy's NV log-probabilities)."""
    if upcast:
        dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        hidden, weight = hidden.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    logits = F.linear(hidden, weight, bias)  # [N, V]
    total = F.cross_entropy(logits, labels.long(), ignore_index=ignore_index, reduction="sum")
    count = (labels != ignore_index).sum().clamp(min=1)  # all ignored -> 0, not NaN
    return total / count
