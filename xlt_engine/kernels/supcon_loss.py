"""supcon_loss: the supervised contrastive loss of Label Alignment (paper 003, Eq. 2).

Maths: for sentence representations h [B, D] and labels y [B], with n_i = h_i / ||h_i|| and
S_ik = n_i . n_k / tau,

    P(i)    = {p != i : y_p = y_i}                     the anchor's positives
    lse_i   = log sum_{k != i} exp(S_ik)
    loss_i  = -1/|P(i)| sum_{p in P(i)} (S_ip - lse_i) = lse_i - mean_{p in P(i)} S_ip
    loss    = mean of loss_i over the anchors with |P(i)| >= 1   (0 when there is none)

Gradient: with A the anchors that count and c = 1 / |A|,

    G_ik = c [i in A] (exp(S_ik - lse_i) - [k in P(i)] / |P(i)|)     (k != i; G_ii = 0)
    dn   = (G + G^T) n / tau          S is symmetric, so row i gets G_ik + G_ki
    dh_i = (dn_i - n_i (n_i . dn_i)) / ||h_i||                          the normalisation

Kernels (one program per block of rows or per tile):

- ``supcon_norm_kernel``: n = h / max(||h||, eps) per row and 1 / max(||h||, eps), both fp32.
  The dots run in full fp32 for fp32 input and in TF32 on tensor cores for bf16 / fp16 input:
  never on n rounded to 16 bits, whose error S / tau multiplies (at tau = 0.01 the bf16
  composition's loss was off by 0.04).
- ``supcon_fwd_kernel``: per block of anchors, loop over blocks of the other rows: the S tile by
  ``tl.dot`` over D in chunks, an online log-sum-exp without the diagonal, the sum and count of the
  positives. Writes lse, the positives' sum and count: 3 floats per row, never S.
- ``supcon_bwd_kernel``: per [anchor block, row block] tile: S again, then W = G + G^T from the
  row statistics of both blocks, written to W [B, B] fp32. ``dn = W @ n / tau`` is one GEMM
  (cuBLAS), then ``supcon_norm_bwd_kernel`` applies the normalisation's Jacobian per row.

Memory: forward reads B*D once per anchor block (from L2) and writes 3B floats; backward writes
and reads the B x B W once (4 MB at B = 1,024; 64 MB at B = 4,096) where the eager composition
holds several B x B temporaries (S, the masked S, the softmax, the positive mask, their grads).
fp32 accumulation throughout; labels compare as int64. The count |A| stays on the device: no
host sync.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from xlt_engine.kernels._dispatch import (
    check_float,
    check_int,
    check_same_device,
    shape_str,
    use_triton,
)
from xlt_engine.kernels._launch import config, launch

_OP = "supcon_loss"
EPS = 1e-12  # as F.normalize: a zero vector normalises to zero, never NaN


@triton.jit
def supcon_norm_kernel(
    h_ptr,  # [B, D] contiguous
    n_ptr,  # [B, D] output, h's dtype
    rnorm_ptr,  # [B] fp32 output: 1 / max(||h_i||, EPS)
    D,
    eps,
    BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_D)
    ok = offs < D
    h = tl.load(h_ptr + row * D + offs, mask=ok, other=0.0).to(tl.float32)
    r = 1.0 / tl.maximum(tl.sqrt(tl.sum(h * h, axis=0)), eps)
    tl.store(n_ptr + row * D + offs, (h * r).to(n_ptr.dtype.element_ty), mask=ok)
    tl.store(rnorm_ptr + row, r)


@triton.jit
def _scores(
    n_ptr,
    offs_i,
    offs_k,
    i_ok,
    k_ok,
    D,
    inv_tau,
    IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """S tile [BLOCK_M, BLOCK_N] = n_i . n_k / tau, fp32, over D in BLOCK_D chunks."""
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        d_ok = offs_d < D
        a = tl.load(
            n_ptr + offs_i.to(tl.int64)[:, None] * D + offs_d[None, :],
            mask=i_ok[:, None] & d_ok[None, :],
            other=0.0,
        )
        b = tl.load(
            n_ptr + offs_k.to(tl.int64)[:, None] * D + offs_d[None, :],
            mask=k_ok[:, None] & d_ok[None, :],
            other=0.0,
        )
        if IEEE:
            acc = tl.dot(a, tl.trans(b), acc, input_precision="ieee")
        else:
            acc = tl.dot(a, tl.trans(b), acc)
    return acc * inv_tau


@triton.jit(do_not_specialize=["B"])  # one compile for every row count
def supcon_fwd_kernel(
    n_ptr,  # [B, D] normalised rows
    y_ptr,  # [B] int64 labels
    lse_ptr,  # [B] fp32 output: log sum_{k != i} exp(S_ik)
    pos_sum_ptr,  # [B] fp32 output: sum of S_ip over the positives
    pos_cnt_ptr,  # [B] fp32 output: |P(i)|
    B,
    D,
    inv_tau,
    IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    offs_i = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    i_ok = offs_i < B
    y_i = tl.load(y_ptr + offs_i, mask=i_ok, other=0)
    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    ssum = tl.zeros([BLOCK_M], dtype=tl.float32)
    pos_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    pos_cnt = tl.zeros([BLOCK_M], dtype=tl.float32)
    for k0 in range(0, B, BLOCK_N):
        offs_k = k0 + tl.arange(0, BLOCK_N)
        k_ok = offs_k < B
        s = _scores(n_ptr, offs_i, offs_k, i_ok, k_ok, D, inv_tau, IEEE, BLOCK_M, BLOCK_N, BLOCK_D)
        other = k_ok[None, :] & (offs_i[:, None] != offs_k[None, :])
        y_k = tl.load(y_ptr + offs_k, mask=k_ok, other=0)
        pos = other & (y_i[:, None] == y_k[None, :])
        pos_sum += tl.sum(tl.where(pos, s, 0.0), axis=1)
        pos_cnt += tl.sum(pos.to(tl.float32), axis=1)
        s = tl.where(other, s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing yet
        ssum = ssum * tl.exp(m - safe) + tl.sum(tl.exp(s - safe[:, None]), axis=1)
        m = m_new
    lse = tl.where(ssum > 0, m + tl.log(ssum), float("-inf"))
    tl.store(lse_ptr + offs_i, lse, mask=i_ok)
    tl.store(pos_sum_ptr + offs_i, pos_sum, mask=i_ok)
    tl.store(pos_cnt_ptr + offs_i, pos_cnt, mask=i_ok)


@triton.jit(do_not_specialize=["B"])  # one compile for every row count
def supcon_bwd_kernel(
    n_ptr,  # [B, D] normalised rows
    y_ptr,  # [B] int64 labels
    lse_ptr,  # [B] fp32 (0 for rows that do not count)
    coef_ptr,  # [B] fp32: c / |P(i)| for anchors that count, else 0
    scale_ptr,  # [B] fp32: c for anchors that count, else 0
    w_ptr,  # [B, B] fp32 output: G + G^T
    B,
    D,
    inv_tau,
    IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    offs_i = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    i_ok = offs_i < B
    k_ok = offs_k < B
    s = _scores(n_ptr, offs_i, offs_k, i_ok, k_ok, D, inv_tau, IEEE, BLOCK_M, BLOCK_N, BLOCK_D)
    y_i = tl.load(y_ptr + offs_i, mask=i_ok, other=0)
    y_k = tl.load(y_ptr + offs_k, mask=k_ok, other=-1)
    other = i_ok[:, None] & k_ok[None, :] & (offs_i[:, None] != offs_k[None, :])
    pos = other & (y_i[:, None] == y_k[None, :])
    lse_i = tl.load(lse_ptr + offs_i, mask=i_ok, other=0.0)
    lse_k = tl.load(lse_ptr + offs_k, mask=k_ok, other=0.0)
    c_i = tl.load(scale_ptr + offs_i, mask=i_ok, other=0.0)
    c_k = tl.load(scale_ptr + offs_k, mask=k_ok, other=0.0)
    q_i = tl.load(coef_ptr + offs_i, mask=i_ok, other=0.0)
    q_k = tl.load(coef_ptr + offs_k, mask=k_ok, other=0.0)
    # G_ik + G_ki: S is symmetric, so both come from this tile and the two rows' statistics
    w = c_i[:, None] * tl.exp(s - lse_i[:, None]) + c_k[None, :] * tl.exp(s - lse_k[None, :])
    w -= tl.where(pos, q_i[:, None] + q_k[None, :], 0.0)
    w = tl.where(other, w, 0.0)
    tl.store(
        w_ptr + offs_i.to(tl.int64)[:, None] * B + offs_k[None, :],
        w,
        mask=i_ok[:, None] & k_ok[None, :],
    )


@triton.jit
def supcon_norm_bwd_kernel(
    n_ptr,  # [B, D] normalised rows
    rnorm_ptr,  # [B] fp32
    dn_ptr,  # [B, D] fp32: d loss / d n
    dh_ptr,  # [B, D] output, h's dtype
    D,
    BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_D)
    ok = offs < D
    n = tl.load(n_ptr + row * D + offs, mask=ok, other=0.0).to(tl.float32)
    dn = tl.load(dn_ptr + row * D + offs, mask=ok, other=0.0)
    r = tl.load(rnorm_ptr + row)
    dh = (dn - n * tl.sum(n * dn, axis=0)) * r
    tl.store(dh_ptr + row * D + offs, dh.to(dh_ptr.dtype.element_ty), mask=ok)


def _row_stats(lse, pos_sum, pos_cnt):
    """Per-anchor loss terms from the kernel's row statistics: (loss, lse made safe, c / |P(i)|,
    c per anchor), with c = 1 / |A|; rows outside A get zeros."""
    valid = pos_cnt > 0
    n_valid = valid.sum().clamp(min=1).to(torch.float32)
    cnt = pos_cnt.clamp(min=1)
    lse = torch.where(valid, lse, 0.0)
    per = torch.where(valid, lse - pos_sum / cnt, 0.0)
    scale = valid.to(torch.float32) / n_valid
    return per.sum() / n_valid, lse, scale / cnt, scale


def supcon_fwd(n: torch.Tensor, y: torch.Tensor, tau: float, ieee: bool):
    """Row statistics (lse, positives' sum and count, each [B] fp32) of normalised fp32 rows n;
    ``ieee``: dots in full fp32, else TF32 (for 16-bit inputs)."""
    B, D = n.shape
    cfg = config("supcon", D)
    lse, pos_sum, pos_cnt = (torch.empty(B, device=n.device, dtype=torch.float32) for _ in "abc")
    launch(
        supcon_fwd_kernel,
        (triton.cdiv(B, cfg["BLOCK_M"]),),
        n,
        y,
        lse,
        pos_sum,
        pos_cnt,
        B,
        D,
        1.0 / tau,
        IEEE=ieee,
        **cfg,
    )
    return lse, pos_sum, pos_cnt


def supcon_normalize(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 rows n = h / max(||h||, eps) and 1 / max(||h||, eps)."""
    B, D = h.shape
    n = torch.empty(B, D, device=h.device, dtype=torch.float32)
    rnorm = torch.empty(B, device=h.device, dtype=torch.float32)
    launch(supcon_norm_kernel, (B,), h, n, rnorm, D, EPS, **config("supcon_rows", D))
    return n, rnorm


class SupConFunction(torch.autograd.Function):
    """Forward: normalise, row statistics, the loss. Backward: W = G + G^T, dn = W n / tau, the
    normalisation's Jacobian."""

    @staticmethod
    def forward(ctx, h, y, tau):
        n, rnorm = supcon_normalize(h)
        ieee = h.dtype == torch.float32
        lse, pos_sum, pos_cnt = supcon_fwd(n, y, tau, ieee)
        loss, lse, coef, scale = _row_stats(lse, pos_sum, pos_cnt)
        ctx.save_for_backward(n, rnorm, y, lse, coef, scale)
        ctx.tau, ctx.ieee, ctx.h_dtype = tau, ieee, h.dtype
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        n, rnorm, y, lse, coef, scale = ctx.saved_tensors
        B, D = n.shape
        g = grad_loss.to(torch.float32)
        w = torch.empty(B, B, device=n.device, dtype=torch.float32)
        cfg = config("supcon", D)
        launch(
            supcon_bwd_kernel,
            (triton.cdiv(B, cfg["BLOCK_M"]), triton.cdiv(B, cfg["BLOCK_N"])),
            n,
            y,
            lse,
            coef * g,
            scale * g,
            w,
            B,
            D,
            1.0 / ctx.tau,
            IEEE=ctx.ieee,
            **cfg,
        )
        dn = torch.mm(w, n) * (1.0 / ctx.tau)
        dh = torch.empty(B, D, device=n.device, dtype=ctx.h_dtype)
        launch(supcon_norm_bwd_kernel, (B,), n, rnorm, dn, dh, D, **config("supcon_rows", D))
        return dh, None, None


def _check(h, labels, temperature) -> None:
    check_float(_OP, "embeddings", h)
    check_int(_OP, "labels", labels)
    check_same_device(_OP, embeddings=h, labels=labels)
    if h.dim() != 2 or h.shape[1] < 1:
        raise ValueError(f"{_OP}: embeddings must be [B, D] with D >= 1, got {shape_str(h)}")
    if labels.shape != h.shape[:1]:
        raise ValueError(
            f"{_OP}: labels must be [B] = [{h.shape[0]}] (one per embedding), got "
            f"{shape_str(labels)}"
        )
    t = float(temperature)
    if not (t > 0 and t != float("inf")):
        raise ValueError(f"{_OP}: temperature must be a finite number > 0, got {temperature!r}")


def supcon_loss(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020; paper 003's Label Alignment, Eq. 2).

    embeddings [B, D] float (L2-normalised inside), labels [B] int, temperature tau > 0. The
    mean over the anchors with at least one positive (another row of the same label) of
    ``-1/|P(i)| sum_{p in P(i)} log(exp(h_i.h_p/tau) / sum_{k != i} exp(h_i.h_k/tau))``; an anchor
    with no positive adds nothing, and a batch with none gives 0 (and zero gradients).
    Returns a 0-d fp32 tensor (fp64 for fp64 input, which goes to the reference),
    differentiable w.r.t. ``embeddings``. Accumulates in fp32; B up to a few thousand (the
    backward holds a B x B fp32 matrix).
    """
    _check(embeddings, labels, temperature)
    tau = float(temperature)
    if embeddings.dtype == torch.float64 or not use_triton(supcon_fwd_kernel, embeddings):
        return supcon_loss_ref(embeddings, labels, tau)
    h = embeddings.contiguous()
    y = labels.to(torch.int64).contiguous()
    if h.shape[0] == 0:
        return (h.sum() * 0.0).to(torch.float32)  # keeps the graph: zero gradients
    if torch.is_grad_enabled() and h.requires_grad:
        return SupConFunction.apply(h, y, tau)
    n, _ = supcon_normalize(h)
    return _row_stats(*supcon_fwd(n, y, tau, h.dtype == torch.float32))[0]


def supcon_loss_ref(
    embeddings: torch.Tensor, labels: torch.Tensor, temperature: float, upcast: bool = True
) -> torch.Tensor:
    """The torch composition (upcast=True: fp32, fp64 kept; upcast=False: the inputs' dtype).
    Memory: several [B, B] temporaries (scores, masked scores, positives, their gradients)."""
    h = embeddings
    if upcast:
        h = h.to(torch.float64 if h.dtype == torch.float64 else torch.float32)
    B = h.shape[0]
    n = torch.nn.functional.normalize(h, dim=-1, eps=EPS)
    s = (n @ n.T) / temperature  # [B, B]
    eye = torch.eye(B, dtype=torch.bool, device=h.device)
    pos = (labels[:, None] == labels[None, :]) & ~eye
    cnt = pos.sum(1)
    valid = cnt > 0
    # rows that do not count see zeros (finite lse, zero gradient), not an all -inf row
    off = torch.where(valid[:, None], s.masked_fill(eye, float("-inf")), 0.0)
    lse = torch.logsumexp(off, dim=1)
    per = lse - torch.where(pos, s, 0.0).sum(1) / cnt.clamp(min=1)
    per = torch.where(valid, per, 0.0)
    out = per.sum() / valid.sum().clamp(min=1)
    return out if upcast else out.to(torch.float32)
