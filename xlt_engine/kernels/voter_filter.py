"""voter_filter: unanimous and confident pseudo labels from the Voters Module, in one pass.

For each row n and voter m: s_m = softmax(z_m), a_m = argmax z_m (lowest index among tied
maxima, as numpy and torch do), c_m = max s_m = 1 / sum_c exp(z_c - max z). Then

    label[n]      = a_1 if a_1 == a_2 == ... == a_M and min_m c_m > alpha[a_1], else -1
    confidence[n] = min_m c_m
    mean_probs[n] = (1/M) sum_m s_m

The argmax is taken on the logits, not on the rounded probabilities, so a near-tie that rounds to
equal probabilities still has one winner. ``alpha`` is one threshold for every class (a Python
float in [0, 1] or a 1-element tensor) or one per class (a ``[C]`` tensor: the agreed class's
own threshold applies, as the class-aware pseudo-label rules need); tensors live on the inputs'
device and are read by the kernel, so there is no host sync either way. With alpha = 1 no row
passes, with alpha = 0 every unanimous row does.

One kernel, ``voter_filter_fwd_kernel``: a program holds a block of rows and loops over the
voters, keeping the running agreement, minimum confidence and probability sum in registers.
Memory: reads M*N*C logits; writes N labels, N confidences and N*C mean probabilities. No voter's
probabilities are ever written out. Not differentiable (pseudo labels are targets).

Roofline (memory-bound): bytes = M*N*C*b + N*(8 + 4 + 4*C), b the logits' element size. M = 3,
N = 1M, C = 9, bf16: 102 MB, 30 us at H100's 3.35 TB/s and 21 us at H200's 4.8 TB/s; C = 2: 36 MB,
11 us and 8 us. The aim is 70% of the copy bandwidth measured by ``bench kernels``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from xlt_engine.kernels._dispatch import check_float, shape_str, use_triton
from xlt_engine.kernels._launch import config, launch

_OP = "voter_filter"


@triton.jit(do_not_specialize=["N", "stride_m"])  # one compile for every row count
def voter_filter_fwd_kernel(
    z_ptr,  # [M, N, C] voter logits, contiguous
    alpha_ptr,  # [C] fp32 confidence threshold of each class (a scalar alpha is expanded)
    labels_ptr,  # [N] int64 output: agreed label or -1
    conf_ptr,  # [N] fp32 output: min over voters of the max probability
    probs_ptr,  # [N, C] fp32 output: mean of the voters' probabilities
    M,
    N,
    C,
    stride_m,  # N * C, passed in so that Triton widens it to int64 when it passes 2^31
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_c = tl.arange(0, BLOCK_C)
    n_ok = offs_n < N
    ok = n_ok[:, None] & (offs_c < C)[None, :]
    idx = offs_n.to(tl.int64)[:, None] * C + offs_c[None, :]

    first = tl.zeros([BLOCK_R], dtype=tl.int32)
    agree = n_ok
    conf = tl.full([BLOCK_R], float("inf"), tl.float32)
    psum = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32)
    z_m = z_ptr  # voter m's logits: the pointer moves by stride_m, so no int32 product m*N*C
    for m in range(M):
        z = tl.load(z_m + idx, mask=ok, other=float("-inf")).to(tl.float32)
        z_m += stride_m
        z_max = tl.max(z, axis=1)
        z_max = tl.where(n_ok, z_max, 0.0)
        e = tl.exp(z - z_max[:, None])
        denom = tl.sum(e, axis=1)
        denom = tl.where(n_ok, denom, 1.0)
        psum += e / denom[:, None]
        conf = tl.minimum(conf, 1.0 / denom)
        # lowest index among the maxima (explicit, so no backend's tie rule matters)
        winner = tl.min(tl.where(z == z_max[:, None], offs_c[None, :], BLOCK_C), axis=1)
        if m == 0:
            first = winner
        else:
            agree = agree & (winner == first)
    # the agreed class's threshold (an all-NaN row has no winner: first = BLOCK_C, none read)
    alpha = tl.load(alpha_ptr + first, mask=n_ok & (first < C), other=1.0)
    label = tl.where(agree & (conf > alpha), first.to(tl.int64), -1)
    tl.store(labels_ptr + offs_n, label, mask=n_ok)
    tl.store(conf_ptr + offs_n, conf, mask=n_ok)
    tl.store(probs_ptr + idx, psum / M, mask=ok)


def voter_filter_fwd(
    z: torch.Tensor, alpha: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """z [M, N, C] contiguous, alpha [C] fp32 on z's device."""
    M, N, C = z.shape
    labels = torch.empty(N, device=z.device, dtype=torch.int64)
    conf = torch.empty(N, device=z.device, dtype=torch.float32)
    probs = torch.empty(N, C, device=z.device, dtype=torch.float32)
    if N:
        cfg = config("voter_filter", C)
        grid = (triton.cdiv(N, cfg["BLOCK_R"]),)
        launch(voter_filter_fwd_kernel, grid, z, alpha, labels, conf, probs, M, N, C, N * C, **cfg)
    return labels, conf, probs


def _alpha_tensor(alpha, classes: int, device: torch.device) -> torch.Tensor:
    """``alpha`` as a [C] fp32 tensor on ``device``: a scalar (float or 1-element tensor) is
    expanded, a [C] tensor is taken as it is (its values are the caller's: nothing is read on
    the host)."""
    if isinstance(alpha, torch.Tensor):
        if (
            alpha.numel() not in (1, classes)
            or alpha.dim() > 1
            or not alpha.dtype.is_floating_point
        ):
            raise ValueError(
                f"{_OP}: alpha must be a float, a 1-element float tensor or a float tensor of "
                f"one threshold per class [{classes}], got {alpha.dtype} {shape_str(alpha)}"
            )
        if alpha.device != device:
            raise ValueError(f"{_OP}: alpha is on {alpha.device}, the logits on {device}")
        return alpha.reshape(-1).to(torch.float32).expand(classes).contiguous()
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise ValueError(f"{_OP}: alpha must be a float in [0, 1], got {alpha!r}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"{_OP}: alpha must lie in [0, 1], got {alpha}")
    return torch.full((classes,), float(alpha), device=device, dtype=torch.float32)  # no H2D copy


def voter_filter(
    voter_logits: torch.Tensor, alpha: float | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pseudo labels where all M voters agree and each is more than ``alpha`` confident.

    voter_logits [M, N, C] float (any device); alpha a float, a 1-element tensor, or a [C]
    float tensor of per-class thresholds (the agreed class's applies), on the logits' device.
    Returns labels [N] int64 (-1 = filtered out),
    confidence [N] fp32 (minimum over voters of the top probability) and mean_probs [N, C] fp32.
    """
    check_float(_OP, "voter_logits", voter_logits)
    if voter_logits.dim() != 3 or voter_logits.shape[0] < 1 or voter_logits.shape[2] < 1:
        raise ValueError(
            f"{_OP}: voter_logits must be [M, N, C] with M >= 1 and C >= 1, got "
            f"{shape_str(voter_logits)}"
        )
    alpha_t = _alpha_tensor(alpha, voter_logits.shape[2], voter_logits.device)
    with torch.no_grad():
        if voter_logits.dtype == torch.float64 or not use_triton(
            voter_filter_fwd_kernel, voter_logits
        ):
            return voter_filter_ref(voter_logits, alpha_t)
        return voter_filter_fwd(voter_logits.detach().contiguous(), alpha_t)


def voter_filter_ref(
    voter_logits: torch.Tensor, alpha: float | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The torch composition, in fp32 (fp64 kept). Memory: reads M*N*C, writes the M*N*C
    per-voter probabilities, then the N and N*C outputs."""
    z = voter_logits.detach()
    z = z.to(torch.float64 if z.dtype == torch.float64 else torch.float32)
    probs = z.softmax(-1)  # [M, N, C]
    conf_m = probs.amax(-1)  # [M, N]
    # lowest index among tied maxima of the logits
    C = z.shape[-1]
    ar = torch.arange(C, device=z.device)
    winner = torch.where(z == z.amax(-1, keepdim=True), ar, C).amin(-1)  # [M, N]
    agree = (winner == winner[:1]).all(0)
    conf = conf_m.amin(0)
    if isinstance(alpha, torch.Tensor):  # one per class ([1]: the same for all)
        # [N]: the agreed class's threshold (an all-NaN row's winner is C: its conf is NaN)
        alpha_v = alpha.reshape(-1).to(conf.dtype).expand(C)[winner[0].clamp(max=C - 1)]
    else:
        alpha_v = alpha
    labels = torch.where(agree & (conf > alpha_v), winner[0], -1)
    return labels.to(torch.int64), conf.to(torch.float32), probs.mean(0).to(torch.float32)
