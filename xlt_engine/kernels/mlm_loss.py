"""fused_mlm_loss: the MLM decoder projection fused with cross-entropy, over masked rows only.

Maths, for a row n with target y (rows with ``labels == ignore_index`` are left out; K is the
number of the others):

    z = h W^T + b                    logits  [V]
    lse = log sum_v exp(z_v)
    loss = (1/K) sum_n (lse_n - z_{n,y_n})
    G = (softmax(z) - onehot(y)) / K [N, V]   d loss / d z
    dh = G W,  dW = G^T h,  db = sum_n G_n

The ``[N, V]`` logits never exist in full. Rows are processed in chunks of ``chunk_rows``; for
each chunk four kernels run:

1. ``fused_mlm_loss_fwd_kernel``: tiles of ``h W^T + b`` accumulated in fp32, written to an fp32
   chunk buffer ``[chunk, V]``; the epilogue stores each tile's row max and sum of exponentials and
   the target logit (in fp32, from the accumulator, before any rounding).
2. ``fused_mlm_loss_lse_kernel``: merges the per-tile statistics into ``lse`` and the row loss.
3. ``fused_mlm_loss_dh_kernel``: ``dh = G W`` with G rebuilt tile by tile from the fp32 logits
   and lse (the target-class term ``p_y - 1`` is formed in fp32).
4. ``fused_mlm_loss_dw_kernel``: ``dW = G^T h`` and ``db``, accumulated across chunks in an fp32
   buffer (rounded to the weight's dtype once, at the end).

So the gradients are computed during the forward pass; backward only scales them by the incoming
gradient. Extra memory is ``chunk x V x 4`` bytes for the logits, ``N x H x 4`` for dh and, when
there is more than one chunk, ``V x H x 4`` for the dW accumulator.

Ignored rows cost nothing: a stable argsort puts the valid rows first (on the device, no host
sync) and every kernel stops at the number of valid rows, which it reads from device memory. A
batch with no valid row gives loss 0 and zero gradients.

Limits: the Triton path takes float32, float16 and bfloat16 (float64 goes to the reference).
Under autocast the matmuls run in the autocast dtype; gradients come back in each input's own
dtype (fp32 master weights get an fp32 dW). Labels outside ``[0, V)`` are a ``ValueError`` when
the labels are on the CPU; on a GPU that check would need a host sync, so an out-of-range label
makes the loss NaN instead (pass ``check_labels=True`` to pay for the check).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from xlt_engine.kernels._dispatch import (
    check_float,
    check_int,
    check_same_device,
    is_interpreted,
    shape_str,
    use_triton,
)

_OP = "fused_mlm_loss"
DEFAULT_CHUNK_BYTES = 1 << 30  # fp32 logits buffer per chunk


@triton.jit
def _mma(a, b, acc, IEEE: tl.constexpr):
    """acc += a @ b with fp32 accumulation; IEEE keeps fp32 inputs exact (no TF32)."""
    if IEEE:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


@triton.jit
def fused_mlm_loss_fwd_kernel(
    hidden_ptr,  # [N, H] rows in their original order
    weight_ptr,  # [V, H]
    bias_ptr,  # [V] (unused when HAS_BIAS is false)
    labels_ptr,  # [N] int64
    rows_ptr,  # [N] int32: original row of each sorted position, valid rows first
    n_valid_ptr,  # [1] int32: how many rows are not ignored
    logits_ptr,  # [chunk, V] fp32 output, chunk-local rows
    part_max_ptr,  # [chunk, n_vtiles] fp32: max of each row over one V tile
    part_sum_ptr,  # [chunk, n_vtiles] fp32: sum of exp(z - that max) over the tile
    target_ptr,  # [chunk] fp32: z at the target class
    chunk_start,  # sorted position of the chunk's first row
    chunk_rows,  # rows in this chunk
    V,
    H,
    stride_hn,  # how far to move in hidden for one row
    stride_hh,  # ... and for one hidden unit
    stride_wv,
    stride_wh,
    n_vtiles,
    HAS_BIAS: tl.constexpr,
    IEEE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_v = tl.program_id(1)
    n_valid = tl.load(n_valid_ptr)
    local = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # chunk-local row
    pos = chunk_start + local  # sorted position
    if chunk_start + pid_n * BLOCK_N >= n_valid:
        return  # every row of this tile is ignored
    row_ok = (local < chunk_rows) & (pos < n_valid)
    rows = tl.load(rows_ptr + pos, mask=row_ok, other=0).to(tl.int64)
    offs_v = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    v_ok = offs_v < V

    acc = tl.zeros([BLOCK_N, BLOCK_V], dtype=tl.float32)
    for h0 in range(0, H, BLOCK_H):
        offs_h = h0 + tl.arange(0, BLOCK_H)
        h_ok = offs_h < H
        a = tl.load(
            hidden_ptr + rows[:, None] * stride_hn + offs_h[None, :] * stride_hh,
            mask=row_ok[:, None] & h_ok[None, :],
            other=0.0,
        )  # [BLOCK_N, BLOCK_H]
        w = tl.load(
            weight_ptr + offs_v[None, :] * stride_wv + offs_h[:, None] * stride_wh,
            mask=v_ok[None, :] & h_ok[:, None],
            other=0.0,
        )  # [BLOCK_H, BLOCK_V] = W^T tile
        acc = _mma(a, w, acc, IEEE)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_v, mask=v_ok, other=0.0).to(tl.float32)[None, :]
    acc = tl.where(v_ok[None, :], acc, float("-inf"))

    local64 = local.to(tl.int64)
    tl.store(
        logits_ptr + local64[:, None] * V + offs_v[None, :],
        acc,
        mask=row_ok[:, None] & v_ok[None, :],
    )
    tile_max = tl.max(acc, axis=1)
    tile_sum = tl.sum(tl.exp(acc - tile_max[:, None]), axis=1)
    tl.store(part_max_ptr + local64 * n_vtiles + pid_v, tile_max, mask=row_ok)
    tl.store(part_sum_ptr + local64 * n_vtiles + pid_v, tile_sum, mask=row_ok)

    label = tl.load(labels_ptr + rows, mask=row_ok, other=-1)
    hit = label[:, None] == offs_v[None, :]
    target = tl.sum(tl.where(hit, acc, 0.0), axis=1)
    in_tile = (label >= pid_v * BLOCK_V) & (label < pid_v * BLOCK_V + BLOCK_V)
    tl.store(target_ptr + local, target, mask=row_ok & in_tile)


@triton.jit
def fused_mlm_loss_lse_kernel(
    part_max_ptr,  # [chunk, n_vtiles] fp32
    part_sum_ptr,  # [chunk, n_vtiles] fp32
    target_ptr,  # [chunk] fp32
    n_valid_ptr,  # [1] int32
    lse_ptr,  # [chunk] fp32 output
    row_loss_ptr,  # [N] fp32 output, by sorted position
    chunk_start,
    chunk_rows,
    n_vtiles,
    BLOCK_N: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    pid = tl.program_id(0)
    n_valid = tl.load(n_valid_ptr)
    local = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = (local < chunk_rows) & (chunk_start + local < n_valid)
    m = tl.full([BLOCK_N], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_N], dtype=tl.float32)
    for t0 in range(0, n_vtiles, BLOCK_T):
        offs_t = t0 + tl.arange(0, BLOCK_T)
        ok = row_ok[:, None] & (offs_t < n_vtiles)[None, :]
        idx = local.to(tl.int64)[:, None] * n_vtiles + offs_t[None, :]
        pm = tl.load(part_max_ptr + idx, mask=ok, other=float("-inf"))
        ps = tl.load(part_sum_ptr + idx, mask=ok, other=0.0)
        m_new = tl.maximum(m, tl.max(pm, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing loaded yet
        s = s * tl.exp(m - m_safe) + tl.sum(ps * tl.exp(pm - m_safe[:, None]), axis=1)
        m = m_new
    lse = tl.where(row_ok, m + tl.log(tl.where(row_ok, s, 1.0)), 0.0)
    target = tl.load(target_ptr + local, mask=row_ok, other=0.0)
    tl.store(lse_ptr + local, lse, mask=local < chunk_rows)
    tl.store(row_loss_ptr + chunk_start + local, tl.where(row_ok, lse - target, 0.0), mask=row_ok)


@triton.jit
def fused_mlm_loss_dh_kernel(
    logits_ptr,  # [chunk, V] fp32
    lse_ptr,  # [chunk] fp32
    weight_ptr,  # [V, H]
    labels_ptr,  # [N] int64
    rows_ptr,  # [N] int32
    n_valid_ptr,  # [1] int32
    inv_count_ptr,  # [1] fp32: 1 / max(n_valid, 1)
    dh_ptr,  # [N, H] fp32 output, original row order
    chunk_start,
    chunk_rows,
    V,
    H,
    stride_wv,
    stride_wh,
    IEEE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_h = tl.program_id(1)
    n_valid = tl.load(n_valid_ptr)
    if chunk_start + pid_n * BLOCK_N >= n_valid:
        return
    inv_count = tl.load(inv_count_ptr)
    local = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    pos = chunk_start + local
    row_ok = (local < chunk_rows) & (pos < n_valid)
    rows = tl.load(rows_ptr + pos, mask=row_ok, other=0).to(tl.int64)
    label = tl.load(labels_ptr + rows, mask=row_ok, other=-1)
    lse = tl.load(lse_ptr + local, mask=row_ok, other=0.0)
    offs_h = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    h_ok = offs_h < H
    local64 = local.to(tl.int64)

    acc = tl.zeros([BLOCK_N, BLOCK_H], dtype=tl.float32)
    for v0 in range(0, V, BLOCK_V):
        offs_v = v0 + tl.arange(0, BLOCK_V)
        v_ok = offs_v < V
        z = tl.load(
            logits_ptr + local64[:, None] * V + offs_v[None, :],
            mask=row_ok[:, None] & v_ok[None, :],
            other=float("-inf"),
        )
        # G tile in fp32: softmax minus the one-hot target, scaled by 1/K
        g = tl.exp(z - lse[:, None]) - tl.where(label[:, None] == offs_v[None, :], 1.0, 0.0)
        g = g * inv_count
        w = tl.load(
            weight_ptr + offs_v[:, None] * stride_wv + offs_h[None, :] * stride_wh,
            mask=v_ok[:, None] & h_ok[None, :],
            other=0.0,
        )  # [BLOCK_V, BLOCK_H]
        acc = _mma(g.to(w.dtype), w, acc, IEEE)
    tl.store(
        dh_ptr + rows[:, None] * H + offs_h[None, :], acc, mask=row_ok[:, None] & h_ok[None, :]
    )


@triton.jit
def fused_mlm_loss_dw_kernel(
    logits_ptr,  # [chunk, V] fp32
    lse_ptr,  # [chunk] fp32
    hidden_ptr,  # [N, H]
    labels_ptr,  # [N] int64
    rows_ptr,  # [N] int32
    n_valid_ptr,  # [1] int32
    inv_count_ptr,  # [1] fp32
    dw_ptr,  # [V, H] output: fp32 accumulator, or the weight's dtype when there is one chunk
    db_ptr,  # [V] fp32 output
    chunk_start,
    chunk_rows,
    V,
    H,
    stride_hn,
    stride_hh,
    ACCUMULATE: tl.constexpr,  # add to dw/db (chunks after the first)
    DW: tl.constexpr,  # compute dW (false when the weight is frozen)
    DB: tl.constexpr,  # compute db (only the programs with pid_h == 0 write it)
    IEEE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    pid_v = tl.program_id(0)
    pid_h = tl.program_id(1)
    n_valid = tl.load(n_valid_ptr)
    n_rows = tl.minimum(n_valid - chunk_start, chunk_rows)  # valid rows in this chunk
    if ACCUMULATE:  # noqa: SIM102 (a constexpr test around a run-time one)
        if n_rows <= 0:
            return  # nothing to add to what earlier chunks wrote
    inv_count = tl.load(inv_count_ptr)
    offs_v = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    v_ok = offs_v < V
    offs_h = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    h_ok = offs_h < H

    acc = tl.zeros([BLOCK_V, BLOCK_H], dtype=tl.float32)
    gb = tl.zeros([BLOCK_V], dtype=tl.float32)
    for r0 in range(0, n_rows, BLOCK_N):
        local = r0 + tl.arange(0, BLOCK_N)
        row_ok = local < n_rows
        rows = tl.load(rows_ptr + chunk_start + local, mask=row_ok, other=0).to(tl.int64)
        label = tl.load(labels_ptr + rows, mask=row_ok, other=-1)
        lse = tl.load(lse_ptr + local, mask=row_ok, other=0.0)
        z = tl.load(
            logits_ptr + local.to(tl.int64)[:, None] * V + offs_v[None, :],
            mask=row_ok[:, None] & v_ok[None, :],
            other=float("-inf"),
        )
        g = tl.exp(z - lse[:, None]) - tl.where(label[:, None] == offs_v[None, :], 1.0, 0.0)
        g = g * inv_count  # [BLOCK_N, BLOCK_V] fp32
        if DB:
            gb += tl.sum(g, axis=0)
        if DW:
            h = tl.load(
                hidden_ptr + rows[:, None] * stride_hn + offs_h[None, :] * stride_hh,
                mask=row_ok[:, None] & h_ok[None, :],
                other=0.0,
            )  # [BLOCK_N, BLOCK_H]
            acc = _mma(tl.trans(g).to(h.dtype), h, acc, IEEE)
    if DW:
        idx = offs_v.to(tl.int64)[:, None] * H + offs_h[None, :]
        ok = v_ok[:, None] & h_ok[None, :]
        if ACCUMULATE:
            acc += tl.load(dw_ptr + idx, mask=ok, other=0.0)
        tl.store(dw_ptr + idx, acc.to(dw_ptr.dtype.element_ty), mask=ok)
    if DB:  # noqa: SIM102 (a constexpr test around a run-time one)
        if pid_h == 0:
            if ACCUMULATE:
                gb += tl.load(db_ptr + offs_v, mask=v_ok, other=0.0)
            tl.store(db_ptr + offs_v, gb, mask=v_ok)


def _blocks(ieee: bool) -> dict:
    # Starting points for Hopper-class GPUs; fp32 (IEEE) tiles are smaller as they need more
    # registers. Untuned on hardware so far (see the benchmark's notes).
    if ieee:
        return dict(fwd=(64, 64, 32, 4), dh=(64, 64, 64, 4), dw=(64, 64, 64, 4))
    return dict(fwd=(128, 128, 64, 8), dh=(64, 128, 128, 8), dw=(128, 128, 64, 8))


def fused_mlm_loss_fwd(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    ignore_index: int,
    need: tuple[bool, bool, bool],
    chunk_rows: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Launch the kernels. Inputs are already in one compute dtype. Returns the loss (0-d fp32)
    and dh [N, H] fp32, dW [V, H] (fp32, or the weight's dtype with one chunk), db [V] fp32,
    each None when ``need`` says so; the gradients are of the mean loss."""
    N, H = hidden.shape
    V = weight.shape[0]
    device = hidden.device
    ieee = hidden.dtype == torch.float32 or is_interpreted(fused_mlm_loss_fwd_kernel)
    blocks = _blocks(hidden.dtype == torch.float32)
    bn, bv, bh, warps = blocks["fwd"]
    if chunk_rows is None:
        chunk_rows = max(bn, DEFAULT_CHUNK_BYTES // (4 * V) // bn * bn)
    chunk_rows = max(1, min(chunk_rows, N))
    n_chunks = triton.cdiv(N, chunk_rows) if N else 0

    labels = labels.to(torch.int64).contiguous()
    ignored = labels == ignore_index
    rows = torch.argsort(ignored.to(torch.int8), stable=True).to(torch.int32)  # valid rows first
    n_valid = (~ignored).sum(dtype=torch.int32).reshape(1)
    inv_count = 1.0 / n_valid.clamp(min=1).to(torch.float32)

    n_vtiles = triton.cdiv(V, bv)
    logits = torch.empty(chunk_rows, V, device=device, dtype=torch.float32)
    part_max = torch.empty(chunk_rows, n_vtiles, device=device, dtype=torch.float32)
    part_sum = torch.empty_like(part_max)
    target = torch.empty(chunk_rows, device=device, dtype=torch.float32)
    lse = torch.empty(chunk_rows, device=device, dtype=torch.float32)
    row_loss = torch.zeros(N, device=device, dtype=torch.float32)
    need_dh, need_dw, need_db = need
    dh = torch.zeros(N, H, device=device, dtype=torch.float32) if need_dh else None
    dw_dtype = torch.float32 if n_chunks > 1 else weight.dtype
    dw = torch.empty(V, H, device=device, dtype=dw_dtype) if need_dw else None
    db = torch.empty(V, device=device, dtype=torch.float32) if need_db else None
    has_bias = bias is not None

    for c in range(n_chunks):
        start = c * chunk_rows
        rows_here = min(chunk_rows, N - start)
        # a valid label outside [0, V) is never hit: its target stays NaN and so does the loss
        target.fill_(float("nan"))
        fused_mlm_loss_fwd_kernel[(triton.cdiv(rows_here, bn), n_vtiles)](
            hidden,
            weight,
            bias if has_bias else weight,
            labels,
            rows,
            n_valid,
            logits,
            part_max,
            part_sum,
            target,
            start,
            rows_here,
            V,
            H,
            hidden.stride(0),
            hidden.stride(1),
            weight.stride(0),
            weight.stride(1),
            n_vtiles,
            HAS_BIAS=has_bias,
            IEEE=ieee,
            BLOCK_N=bn,
            BLOCK_V=bv,
            BLOCK_H=bh,
            num_warps=warps,
            num_stages=3,
        )
        fused_mlm_loss_lse_kernel[(triton.cdiv(rows_here, 64),)](
            part_max,
            part_sum,
            target,
            n_valid,
            lse,
            row_loss,
            start,
            rows_here,
            n_vtiles,
            BLOCK_N=64,
            BLOCK_T=64,
            num_warps=4,
        )
        if need_dh:
            dn, dv, dhb, dwarps = blocks["dh"]
            fused_mlm_loss_dh_kernel[(triton.cdiv(rows_here, dn), triton.cdiv(H, dhb))](
                logits,
                lse,
                weight,
                labels,
                rows,
                n_valid,
                inv_count,
                dh,
                start,
                rows_here,
                V,
                H,
                weight.stride(0),
                weight.stride(1),
                IEEE=ieee,
                BLOCK_N=dn,
                BLOCK_V=dv,
                BLOCK_H=dhb,
                num_warps=dwarps,
                num_stages=3,
            )
        if need_dw or need_db:
            wv, wh, wn, wwarps = blocks["dw"]
            grid = (triton.cdiv(V, wv), triton.cdiv(H, wh) if need_dw else 1)
            fused_mlm_loss_dw_kernel[grid](
                logits,
                lse,
                hidden,
                labels,
                rows,
                n_valid,
                inv_count,
                dw if need_dw else logits,
                db if need_db else lse,
                start,
                rows_here,
                V,
                H,
                hidden.stride(0),
                hidden.stride(1),
                ACCUMULATE=c > 0,
                DW=need_dw,
                DB=need_db,
                IEEE=ieee,
                BLOCK_N=wn,
                BLOCK_V=wv,
                BLOCK_H=wh,
                num_warps=wwarps,
                num_stages=3,
            )
    if n_chunks == 0:  # no rows at all
        if need_dw:
            dw.zero_()
        if need_db:
            db.zero_()
    loss = row_loss.sum() * inv_count[0]
    return loss, dh, dw, db


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
        dh, dw, db = ctx.grads
        out = []
        for grad, dtype in zip((dh, dw, db), ctx.dtypes, strict=True):
            out.append(None if grad is None else (grad * grad_loss).to(dtype))
        return out[0], out[1], out[2], None, None, None, None


def _cast(dtype, hidden, weight, bias):
    """The inputs in the compute dtype (a copy only where the dtype differs, as autocast does)."""
    return (
        hidden.to(dtype).contiguous(),
        weight.to(dtype),
        bias.to(dtype) if bias is not None else None,
    )


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
        check_labels = labels.device.type == "cpu"
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
    differentiable w.r.t. hidden, weight and bias. ``chunk_rows`` bounds the logits buffer of the
    Triton path (default: 1 GiB of fp32 logits). See the module docstring for the dispatch rule.
    """
    _check_inputs(hidden, weight, bias, labels, ignore_index, check_labels)
    if hidden.dtype == torch.float64 or not use_triton(fused_mlm_loss_fwd_kernel, hidden):
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
