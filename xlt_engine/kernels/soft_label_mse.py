"""soft_label_mse: the soft step's loss, ``mean((softmax(z) - p)^2)`` over valid rows and classes.

Maths: for student logits z (one row, C classes), s = softmax(z), teacher probabilities p and
weight w = 1 / (M * K * C), with K valid rows and M voters,

    loss = w * sum_{m, valid rows, c} (s_c - p_c)^2
    g = 2 w (s - p)                      d loss / d s
    dz = s * (g - <g, s>)                softmax Jacobian applied to g
    dp = -sum_m g                        (only when the teacher probabilities require grad)

z may carry a leading voter dimension M that p does not have (``z [M, ..., C]``,
``p [..., C]``): each voter fits the same teacher and the loss is averaged over voters.

One kernel, ``soft_label_mse_fwd_kernel``, does forward and backward: each program takes a block
of rows (C is tiny, 2 for sentiment and 9 for BIO NER, so a program holds hundreds of rows),
loads the teacher row once and loops over the voters. Memory: reads M*R*C logits, R*C teacher
probabilities and R mask bytes, writes M*R*C gradients and one partial sum per program; the
softmax is never written. Backward only scales the stored gradient.

Roofline (memory-bound: about 20 flops per element): bytes = M*R*C*b (z) + R*C*4 (p) + R (mask)
+ M*R*C*b (dz), b the logits' element size. M = 3, R = 1M rows, C = 9, bf16: 145 MB, 43 us at
H100's 3.35 TB/s and 30 us at H200's 4.8 TB/s; C = 2: 33 MB, 10 us and 7 us. The aim is 70% of the
copy bandwidth measured by ``bench kernels``.

Rows outside the mask are never read, so padding may hold anything. A mask with no valid row gives
loss 0 and zero gradients. The count K is read from device memory: no host sync.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from xlt_engine.kernels._dispatch import check_float, check_same_device, shape_str, use_triton
from xlt_engine.kernels._launch import config, launch

_OP = "soft_label_mse"


@triton.jit
def row_block(mask_ptr, R, C, HAS_MASK: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's block of rows of an [R, C] layout (the soft losses' row kernels): the
    valid rows (in range and, with ``HAS_MASK``, in the mask), the valid elements, their int64
    offsets, and where a gradient is stored (every row in range: masked rows get a zero)."""
    pid = tl.program_id(0)
    offs_r = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_c = tl.arange(0, BLOCK_C)
    r_ok = offs_r < R
    if HAS_MASK:
        r_ok = r_ok & (tl.load(mask_ptr + offs_r, mask=r_ok, other=0) != 0)
    c_ok = offs_c < C
    ok = r_ok[:, None] & c_ok[None, :]
    idx = offs_r.to(tl.int64)[:, None] * C + offs_c[None, :]  # [BLOCK_R, BLOCK_C]
    store_ok = (offs_r < R)[:, None] & c_ok[None, :]
    return pid, r_ok, ok, idx, store_ok


@triton.jit
def voter_exp(z_ptr, idx, ok, r_ok):
    """One voter's logits of the block in fp32, their row max and ``exp(z - max)`` with its row
    sum (1 on rows never loaded, whose max is set to 0: no -inf - -inf)."""
    z = tl.load(z_ptr + idx, mask=ok, other=float("-inf")).to(tl.float32)
    z_max = tl.where(r_ok, tl.max(z, axis=1), 0.0)
    e = tl.exp(z - z_max[:, None])
    denom = tl.where(r_ok, tl.sum(e, axis=1), 1.0)
    return z, z_max, e, denom


@triton.jit(do_not_specialize=["R", "stride_m"])  # one compile for every row count
def soft_label_mse_fwd_kernel(
    z_ptr,  # [M, R, C] student logits, contiguous
    p_ptr,  # [R, C] teacher probabilities, contiguous
    mask_ptr,  # [R] bool (unused when HAS_MASK is false)
    scale_ptr,  # [1] fp32: w = 1 / (M * max(K, 1) * C)
    partial_ptr,  # [n_programs] fp32 output: sum of squared errors of this program's rows
    dz_ptr,  # [M, R, C] output, z's dtype
    dp_ptr,  # [R, C] fp32 output (only when NEED_DP)
    M,
    R,
    C,
    stride_m,  # R * C, passed in so that Triton widens it to int64 when it passes 2^31
    HAS_MASK: tl.constexpr,
    NEED_DZ: tl.constexpr,
    NEED_DP: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid, r_ok, ok, idx, store_ok = row_block(mask_ptr, R, C, HAS_MASK, BLOCK_R, BLOCK_C)
    p = tl.load(p_ptr + idx, mask=ok, other=0.0).to(tl.float32)
    scale = tl.load(scale_ptr)
    sq = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32)
    dp = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32)
    z_m, dz_m = z_ptr, dz_ptr  # voter m's rows: pointers move by stride_m, no int32 m*R*C
    for _ in range(M):
        _z, _z_max, e, denom = voter_exp(z_m, idx, ok, r_ok)
        s = e / denom[:, None]
        d = tl.where(ok, s - p, 0.0)
        sq += d * d
        if NEED_DZ or NEED_DP:
            g = 2.0 * scale * d
            if NEED_DZ:
                dz = s * (g - tl.sum(g * s, axis=1)[:, None])
                # rows outside the mask get an exact zero gradient
                tl.store(dz_m + idx, dz.to(dz_ptr.dtype.element_ty), mask=store_ok)
            if NEED_DP:
                dp -= g
        z_m += stride_m
        dz_m += stride_m
    tl.store(partial_ptr + pid, tl.sum(tl.sum(sq, axis=1), axis=0))
    if NEED_DP:
        tl.store(dp_ptr + idx, dp, mask=store_ok)


def row_launch(op: str, z: torch.Tensor, mask: torch.Tensor | None, per_row: int):
    """What a soft loss's row kernel is launched with: the weight ``1 / (max(K, 1) * per_row)``
    as a [1] fp32 tensor (K valid rows, counted on the device: no host sync), the launch
    configuration, the number of programs and their partial sums' buffer."""
    R, C = z.shape[1], z.shape[2]
    count = mask.sum(dtype=torch.int64) if mask is not None else torch.full((), R, device=z.device)
    scale = (1.0 / (count.clamp(min=1).to(torch.float32) * per_row)).reshape(1)
    cfg = config(op, C)
    n_prog = triton.cdiv(R, cfg["BLOCK_R"])
    partial = torch.empty(max(n_prog, 1), device=z.device, dtype=torch.float32)
    return scale, cfg, n_prog, partial


def row_layout(z: torch.Tensor, p: torch.Tensor, mask: torch.Tensor | None, M: int, R: int, C: int):
    """The row kernels' layout: z [M, R, C], p [R, C], mask [R] (copies only for strided
    inputs)."""
    m1 = mask.reshape(R).contiguous() if mask is not None else None
    return z.reshape(M, R, C).contiguous(), p.reshape(R, C).contiguous(), m1


def soft_label_mse_fwd(
    z: torch.Tensor, p: torch.Tensor, mask: torch.Tensor | None, need_dz: bool, need_dp: bool
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """z [M, R, C], p [R, C], mask [R] or None, all contiguous. Returns the loss (0-d fp32),
    dz [M, R, C] in z's dtype and dp [R, C] fp32 (None when not needed)."""
    M, R, C = z.shape
    scale, cfg, n_prog, partial = row_launch(_OP, z, mask, M * C)
    dz = torch.empty_like(z) if need_dz else None
    dp = torch.empty(R, C, device=z.device, dtype=torch.float32) if need_dp else None
    if n_prog == 0:
        partial.zero_()
    else:
        launch(
            soft_label_mse_fwd_kernel,
            (n_prog,),
            z,
            p,
            mask if mask is not None else p,
            scale,
            partial,
            dz if need_dz else z,
            dp if need_dp else p,
            M,
            R,
            C,
            R * C,
            HAS_MASK=mask is not None,
            NEED_DZ=need_dz,
            NEED_DP=need_dp,
            **cfg,
        )
    return partial.sum() * scale[0], dz, dp


class SoftLabelMSEFunction(torch.autograd.Function):
    """Forward computes the loss and its gradients; backward scales them."""

    @staticmethod
    def forward(ctx, z, p, mask):
        loss, dz, dp = soft_label_mse_fwd(
            z, p, mask, ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        )
        ctx.grads = (dz, dp)
        ctx.p_dtype = p.dtype
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        dz, dp = ctx.grads
        if dz is not None:
            dz = dz * grad_loss  # a 0-d fp32 factor keeps dz's dtype
        if dp is not None:
            dp = (dp * grad_loss).to(ctx.p_dtype)
        return dz, dp, None


def soft_inputs(op: str, z, p, mask) -> tuple[int, int, int]:
    """Check a soft-label loss's inputs (student logits [..., C] or [M, ..., C], teacher
    probabilities [..., C], mask [...] bool or None); return M (voters), R (rows), C (classes)."""
    check_float(op, "student_logits", z)
    check_float(op, "teacher_probs", p)
    check_same_device(op, student_logits=z, teacher_probs=p, mask=mask)
    if p.dim() < 1 or p.shape[-1] < 1:
        raise ValueError(f"{op}: teacher_probs must be [..., C] with C >= 1, got {shape_str(p)}")
    if z.shape == p.shape:
        M = 1
    elif z.dim() == p.dim() + 1 and z.shape[1:] == p.shape:
        M = z.shape[0]
    else:
        raise ValueError(
            f"{op}: student_logits {shape_str(z)} must equal teacher_probs {shape_str(p)} or "
            f"add one leading voter dimension [M, ...]"
        )
    if M < 1:
        raise ValueError(f"{op}: the voter dimension of student_logits is empty")
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            kind = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ValueError(f"{op}: mask must be a bool tensor, got {kind}")
        if mask.shape != p.shape[:-1]:
            raise ValueError(
                f"{op}: mask {shape_str(mask)} must have teacher_probs' shape without the class "
                f"dimension, [{', '.join(str(d) for d in p.shape[:-1])}]"
            )
    C = p.shape[-1]
    return M, p.numel() // C, C


def soft_label_mse(
    student_logits: torch.Tensor, teacher_probs: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean of ``(softmax(student_logits) - teacher_probs)^2`` over valid rows and classes.

    student_logits [..., C] or [M, ..., C] (M voters, averaged over); teacher_probs [..., C];
    mask [...] bool (True = row counts) or None. Float tensors on one device; the maths runs in
    fp32 (fp64 inputs go to the reference). Returns a 0-d fp32 tensor (fp64 for fp64 inputs),
    differentiable w.r.t. both tensors; 0 when no row is valid.
    """
    M, R, C = soft_inputs(_OP, student_logits, teacher_probs, mask)
    if (
        student_logits.dtype == torch.float64
        or teacher_probs.dtype == torch.float64
        or not use_triton(soft_label_mse_fwd_kernel, student_logits)
    ):
        return soft_label_mse_ref(student_logits, teacher_probs, mask)
    z3, p2, m1 = row_layout(student_logits, teacher_probs, mask, M, R, C)
    if torch.is_grad_enabled() and (student_logits.requires_grad or teacher_probs.requires_grad):
        loss = SoftLabelMSEFunction.apply(z3, p2, m1)
    else:
        loss = soft_label_mse_fwd(z3, p2, m1, False, False)[0]
    return loss


def soft_label_mse_ref(
    student_logits: torch.Tensor,
    teacher_probs: torch.Tensor,
    mask: torch.Tensor | None = None,
    upcast: bool = True,
) -> torch.Tensor:
    """The torch composition (upcast=True: fp32, fp64 kept; upcast=False: the inputs' dtype).
    Memory: reads M*R*C + R*C, writes the M*R*C softmax and the squared errors."""
    z, p = student_logits, teacher_probs
    if upcast:
        dtype = torch.float64 if torch.float64 in (z.dtype, p.dtype) else torch.float32
        z, p = z.to(dtype), p.to(dtype)
    M = z.shape[0] if z.dim() == p.dim() + 1 else 1
    C = p.shape[-1]
    if mask is None:
        sq = (z.softmax(-1) - p.to(z.dtype)) ** 2  # p broadcasts over voters
        return sq.sum() / max(sq.numel(), 1)  # no rows: 0, not the NaN of an empty mean
    keep = mask[..., None]
    z = torch.where(keep, z, 0.0)  # padding rows may hold inf/NaN: keep them out of the graph
    sq = torch.where(keep, (z.softmax(-1) - p.to(z.dtype)) ** 2, 0.0)  # [M, ..., C]
    count = mask.sum().clamp(min=1) * (M * C)
    return sq.sum() / count
