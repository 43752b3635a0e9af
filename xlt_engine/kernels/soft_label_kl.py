"""soft_label_kl: the distillation form of the soft step's loss, KL(p || softmax(z)) summed over
classes and averaged over valid rows (and voters).

Maths: for student logits z (one row, C classes), log s = z - logsumexp(z), teacher
probabilities p and weight w = 1 / (M * K), with K valid rows and M voters,

    loss = w * sum_{m, valid rows} sum_c [p_c log p_c - p_c log s_c]     (0 log 0 = 0)
    dz = w * (s * sum_c p_c - p)           (s - p when p sums to one)

Unlike the MSE on probabilities (``soft_label_mse``), whose gradient in z is damped by the
softmax Jacobian, a class the student gives little probability still gets the teacher's full
pull. The teacher is fixed: ``teacher_probs`` may not require grad (its gradient, log p - log s
+ 1, is infinite at p = 0).

z may carry a leading voter dimension M that p does not have (``z [M, ..., C]``, ``p [..., C]``).
One kernel, ``soft_label_kl_fwd_kernel``, does forward and backward as ``soft_label_mse``'s
does: each program takes a block of rows, loads the teacher row and its p log p once and loops
over the voters; the log-softmax is never written. Memory and roofline are ``soft_label_mse``'s
(about 25 flops per element: memory-bound).

Padding rows, an empty mask and the count K are handled as in ``soft_label_mse`` (never read;
loss 0 and zero gradients; no host sync).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from xlt_engine.kernels._dispatch import use_triton
from xlt_engine.kernels._launch import launch
from xlt_engine.kernels.soft_label_mse import (
    row_block,
    row_launch,
    row_layout,
    soft_inputs,
    voter_exp,
)

_OP = "soft_label_kl"


@triton.jit(do_not_specialize=["R", "stride_m"])  # one compile for every row count
def soft_label_kl_fwd_kernel(
    z_ptr,  # [M, R, C] student logits, contiguous
    p_ptr,  # [R, C] teacher probabilities, contiguous
    mask_ptr,  # [R] bool (unused when HAS_MASK is false)
    scale_ptr,  # [1] fp32: w = 1 / (M * max(K, 1))
    partial_ptr,  # [n_programs] fp32 output: this program's rows' KL, summed
    dz_ptr,  # [M, R, C] output, z's dtype
    M,
    R,
    C,
    stride_m,  # R * C, passed in so that Triton widens it to int64 when it passes 2^31
    HAS_MASK: tl.constexpr,
    NEED_DZ: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid, r_ok, ok, idx, store_ok = row_block(mask_ptr, R, C, HAS_MASK, BLOCK_R, BLOCK_C)
    p = tl.load(p_ptr + idx, mask=ok, other=0.0).to(tl.float32)
    has_p = p > 0.0
    p_sum = tl.sum(p, axis=1)
    p_log_p = tl.sum(tl.where(has_p, p * tl.log(tl.where(has_p, p, 1.0)), 0.0), axis=1)
    scale = tl.load(scale_ptr)
    kl = tl.zeros([BLOCK_R], dtype=tl.float32)
    z_m, dz_m = z_ptr, dz_ptr  # voter m's rows: pointers move by stride_m, no int32 m*R*C
    for _ in range(M):
        z, z_max, e, denom = voter_exp(z_m, idx, ok, r_ok)
        log_s = z - (z_max + tl.log(denom))[:, None]
        cross = tl.sum(p * tl.where(has_p, log_s, 0.0), axis=1)  # p = 0: no term, even at -inf
        kl += tl.where(r_ok, p_log_p - cross, 0.0)
        if NEED_DZ:
            s = e / denom[:, None]
            dz = tl.where(ok, scale * (s * p_sum[:, None] - p), 0.0)
            # rows outside the mask get an exact zero gradient
            tl.store(dz_m + idx, dz.to(dz_ptr.dtype.element_ty), mask=store_ok)
        z_m += stride_m
        dz_m += stride_m
    tl.store(partial_ptr + pid, tl.sum(kl, axis=0))


def soft_label_kl_fwd(
    z: torch.Tensor, p: torch.Tensor, mask: torch.Tensor | None, need_dz: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """z [M, R, C], p [R, C], mask [R] or None, all contiguous. Returns the loss (0-d fp32) and
    dz [M, R, C] in z's dtype (None when not needed)."""
    M, R, C = z.shape
    scale, cfg, n_prog, partial = row_launch(_OP, z, mask, M)
    dz = torch.empty_like(z) if need_dz else None
    if n_prog == 0:
        partial.zero_()
    else:
        launch(
            soft_label_kl_fwd_kernel,
            (n_prog,),
            z,
            p,
            mask if mask is not None else p,
            scale,
            partial,
            dz if need_dz else z,
            M,
            R,
            C,
            R * C,
            HAS_MASK=mask is not None,
            NEED_DZ=need_dz,
            **cfg,
        )
    return partial.sum() * scale[0], dz


class SoftLabelKLFunction(torch.autograd.Function):
    """Forward computes the loss and its gradient; backward scales it."""

    @staticmethod
    def forward(ctx, z, p, mask):
        loss, dz = soft_label_kl_fwd(z, p, mask, ctx.needs_input_grad[0])
        ctx.dz = dz
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        dz = ctx.dz * grad_loss if ctx.dz is not None else None  # a 0-d fp32 factor keeps dtype
        return dz, None, None


def soft_label_kl(
    student_logits: torch.Tensor, teacher_probs: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """KL(teacher_probs || softmax(student_logits)) summed over classes, averaged over valid rows
    (and voters).

    student_logits [..., C] or [M, ..., C] (M voters, averaged over); teacher_probs [..., C]
    (fixed: it may not require grad); mask [...] bool (True = row counts) or None. Float tensors
    on one device; the maths runs in fp32 (fp64 inputs go to the reference). Returns a 0-d fp32
    tensor (fp64 for fp64 inputs), differentiable w.r.t. the logits; 0 when no row is valid.
    """
    M, R, C = soft_inputs(_OP, student_logits, teacher_probs, mask)
    if teacher_probs.requires_grad and torch.is_grad_enabled():
        raise ValueError(
            f"{_OP}: teacher_probs requires grad; the teacher is fixed (detach it): the "
            "gradient in p, log p - log s + 1, is infinite where p is 0"
        )
    if (
        student_logits.dtype == torch.float64
        or teacher_probs.dtype == torch.float64
        or not use_triton(soft_label_kl_fwd_kernel, student_logits)
    ):
        return soft_label_kl_ref(student_logits, teacher_probs, mask)
    z3, p2, m1 = row_layout(student_logits, teacher_probs, mask, M, R, C)
    if torch.is_grad_enabled() and student_logits.requires_grad:
        return SoftLabelKLFunction.apply(z3, p2, m1)
    return soft_label_kl_fwd(z3, p2, m1, False)[0]


def soft_label_kl_ref(
    student_logits: torch.Tensor,
    teacher_probs: torch.Tensor,
    mask: torch.Tensor | None = None,
    upcast: bool = True,
) -> torch.Tensor:
    """The torch composition (upcast=True: fp32, fp64 kept; upcast=False: the inputs' dtype).
    Memory: reads M*R*C + R*C, writes the M*R*C log-softmax and the per-class terms."""
    z, p = student_logits, teacher_probs
    if upcast:
        dtype = torch.float64 if torch.float64 in (z.dtype, p.dtype) else torch.float32
        z, p = z.to(dtype), p.to(dtype)
    p = p.to(z.dtype)
    M = z.shape[0] if z.dim() == p.dim() + 1 else 1
    if mask is not None:
        z = torch.where(mask[..., None], z, 0.0)  # padding may hold inf/NaN: out of the graph
    log_q = z.log_softmax(-1)
    # 0 log 0 = 0, and a class the teacher gives 0 adds nothing even where log q is -inf
    kl = (torch.special.xlogy(p, p) - torch.where(p > 0, p * log_q, 0.0)).sum(-1)  # [M, ...]
    if mask is None:
        return kl.sum() / max(kl.numel(), 1)  # no rows: 0, not the NaN of an empty mean
    kl = torch.where(mask, kl, 0.0)
    return kl.sum() / (mask.sum().clamp(min=1) * M)
