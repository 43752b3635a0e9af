"""threshold_curve: accuracy, recall and coverage of a confidence score at K thresholds at once.

For thresholds t_1..t_K (any order, any values, also outside (0, 1)):

    covered(t)  = #(conf > t)                   coverage(t) = covered(t) / N
    hits(t)     = #(conf > t and correct)       accuracy(t) = hits(t) / covered(t)
    recall(t)   = hits(t) / #correct

A quantity with a zero denominator (no row above t, or no correct row) is NaN: it is undefined,
and a made-up 0 or 1 would bend the automatic threshold's curve.

One pass over N: ``threshold_curve_kernel`` gives each program a block of rows, compares them
with every threshold (K is small, about 50), reduces the hits per threshold in registers and adds
the block's counts to K int64 counters with atomics (integer adds, so the result does not depend
on the order). Memory: reads N confidences and N bools, writes 2K + 1 counters; compute is N*K
comparisons. The confidence is compared in its own precision widened to fp32 (fp64 stays fp64),
exactly as the numpy reference does.

Roofline: bytes = 5N (fp32 confidence and a bool), compute = N*K comparisons. N = 10M, K = 52:
50 MB, 15 us at H100's 3.35 TB/s (10 us at H200's 4.8 TB/s), and 5.2e8 comparisons and selects,
about 20 us at the fp32 non-tensor rate of either GPU, so the op is about balanced; it runs once
per self-training round and is not on a hot path.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from xlt_engine.kernels._dispatch import check_float, check_same_device, shape_str, use_triton
from xlt_engine.kernels._launch import config, launch

_OP = "threshold_curve"


class ThresholdCurve(NamedTuple):
    """Per threshold, float64 [K] each; unpacks as ``accuracy, recall, coverage``."""

    accuracy: torch.Tensor
    recall: torch.Tensor
    coverage: torch.Tensor


@triton.jit(do_not_specialize=["N"])  # one compile for every row count
def threshold_curve_kernel(
    conf_ptr,  # [N] confidence
    correct_ptr,  # [N] bool
    thr_ptr,  # [K] thresholds, fp32 (fp64 when the confidence is fp64)
    covered_ptr,  # [K] int64 output (zeroed): rows above each threshold
    hits_ptr,  # [K] int64 output (zeroed): correct rows above each threshold
    n_correct_ptr,  # [1] int64 output (zeroed)
    N,
    K,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    thr_dtype = thr_ptr.dtype.element_ty
    conf = tl.load(conf_ptr + offs_n, mask=n_ok, other=0.0).to(thr_dtype)
    correct = (tl.load(correct_ptr + offs_n, mask=n_ok, other=0) != 0) & n_ok
    tl.atomic_add(n_correct_ptr, tl.sum(correct.to(tl.int64), axis=0))
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < K
        thr = tl.load(thr_ptr + offs_k, mask=k_ok, other=0.0)
        above = (conf[:, None] > thr[None, :]) & n_ok[:, None]  # [BLOCK_N, BLOCK_K]
        covered = tl.sum(above.to(tl.int64), axis=0)
        hits = tl.sum((above & correct[:, None]).to(tl.int64), axis=0)
        tl.atomic_add(covered_ptr + offs_k, covered, mask=k_ok)
        tl.atomic_add(hits_ptr + offs_k, hits, mask=k_ok)


def threshold_curve_counts(
    conf: torch.Tensor, correct: torch.Tensor, thresholds: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch: conf [N], correct [N] bool, thresholds [K] (in the comparison dtype), contiguous.
    Returns covered [K], hits [K], n_correct [] as int64."""
    N, K = conf.shape[0], thresholds.shape[0]
    covered = torch.zeros(K, device=conf.device, dtype=torch.int64)
    hits = torch.zeros(K, device=conf.device, dtype=torch.int64)
    n_correct = torch.zeros(1, device=conf.device, dtype=torch.int64)
    cfg = config("threshold_curve", K)
    if N and K:
        launch(
            threshold_curve_kernel,
            (triton.cdiv(N, cfg["BLOCK_N"]),),
            conf,
            correct,
            thresholds,
            covered,
            hits,
            n_correct,
            N,
            K,
            **cfg,
        )
    return covered, hits, n_correct[0]


def _finish(covered, hits, n_correct, n: int) -> ThresholdCurve:
    covered, hits = covered.to(torch.float64), hits.to(torch.float64)
    nan = torch.full((), float("nan"), dtype=torch.float64, device=covered.device)
    accuracy = torch.where(covered > 0, hits / covered.clamp(min=1), nan)
    recall = torch.where(n_correct > 0, hits / n_correct.clamp(min=1).to(torch.float64), nan)
    return ThresholdCurve(accuracy, recall, covered / n)


def _check(conf, correct, thresholds) -> torch.Tensor:
    check_float(_OP, "confidence", conf)
    if not isinstance(correct, torch.Tensor) or correct.dtype != torch.bool:
        kind = correct.dtype if isinstance(correct, torch.Tensor) else type(correct).__name__
        raise ValueError(f"{_OP}: correct must be a bool tensor, got {kind}")
    if conf.dim() != 1 or correct.shape != conf.shape:
        raise ValueError(
            f"{_OP}: confidence and correct must both be [N], got {shape_str(conf)} and "
            f"{shape_str(correct)}"
        )
    if conf.shape[0] == 0:
        raise ValueError(f"{_OP}: confidence is empty: no rows to measure")
    if not isinstance(thresholds, torch.Tensor):
        thresholds = torch.tensor(list(thresholds), dtype=torch.float64, device=conf.device)
    check_float(_OP, "thresholds", thresholds)
    if thresholds.dim() != 1:
        raise ValueError(f"{_OP}: thresholds must be [K], got {shape_str(thresholds)}")
    if thresholds.device.type == "cpu" and bool(thresholds.isnan().any()):
        i = int(thresholds.isnan().nonzero()[0, 0])
        raise ValueError(f"{_OP}: thresholds[{i}] is NaN")
    check_same_device(_OP, confidence=conf, correct=correct, thresholds=thresholds)
    return thresholds


def threshold_curve(confidence: torch.Tensor, correct: torch.Tensor, thresholds) -> ThresholdCurve:
    """Accuracy, recall and coverage at each threshold (definitions in the module docstring).

    confidence [N] float, correct [N] bool on one device; thresholds [K] float tensor on that
    device, or a sequence of floats. Returns float64 tensors [K] on the same device.
    """
    thresholds = _check(confidence, correct, thresholds)
    if not use_triton(threshold_curve_kernel, confidence):
        return _curve_ref(confidence, correct, thresholds)
    cmp = torch.float64 if confidence.dtype == torch.float64 else torch.float32
    covered, hits, n_correct = threshold_curve_counts(
        confidence.detach().contiguous(),
        correct.contiguous(),
        thresholds.detach().to(cmp).contiguous(),
    )
    return _finish(covered, hits, n_correct, confidence.shape[0])


def threshold_curve_ref(
    confidence: torch.Tensor, correct: torch.Tensor, thresholds
) -> ThresholdCurve:
    """The torch version: sort the K thresholds, find for every row how many lie below its
    confidence (``searchsorted``), histogram those counts and take suffix sums. O(N log K) time,
    O(N + K) memory, so the CPU path also copes with N = 10M. Memory: reads N + N, writes N
    bucket indices."""
    return _curve_ref(confidence, correct, _check(confidence, correct, thresholds))


def _curve_ref(confidence, correct, thresholds: torch.Tensor) -> ThresholdCurve:
    cmp = torch.float64 if confidence.dtype == torch.float64 else torch.float32
    conf = confidence.detach().to(cmp)
    thr, order = thresholds.detach().to(cmp).sort()
    K = thr.shape[0]
    below = torch.searchsorted(thr, conf, side="left")  # thresholds strictly below each row
    below = torch.where(conf.isnan(), 0, below)  # NaN > t is false for every t
    rows = torch.bincount(below, minlength=K + 1)  # [K + 1]
    good = torch.bincount(below, weights=correct.to(torch.float64), minlength=K + 1)
    # covered(sorted t_j) = #(below > j): suffix sums from j + 1
    covered_sorted = rows.flip(0).cumsum(0).flip(0)[1:]
    hits_sorted = good.flip(0).cumsum(0).flip(0)[1:].round().to(torch.int64)
    covered = torch.empty_like(covered_sorted).scatter_(0, order, covered_sorted)
    hits = torch.empty_like(hits_sorted).scatter_(0, order, hits_sorted)
    return _finish(covered, hits, correct.sum(), confidence.shape[0])
