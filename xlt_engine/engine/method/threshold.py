"""The automatic confidence threshold (the paper's section 3.2, equation 3; DESIGN.md
"select_threshold").

Over a grid of thresholds (default 0.50 to 0.99 by 0.01, then 0.995 and 0.999; points below
1/C dropped, since a max probability is never below 1/C), ``threshold_curve`` gives accuracy(t)
of the soft student on the source labeled data: with ``rule_curve_inputs``, the precision of
the pseudo-label rule (voters unanimous, all above t) at each t. Grid points where accuracy is undefined (no
sample above t) are skipped. Methods:

- ``curvature`` (default): the interior point of greatest curvature |A''| / (1 + A'^2)^1.5;
- ``max_second_difference``: the paper's equation read literally, the interior point of greatest
  (signed) second derivative A'';
- ``fixed``: a given alpha (the "-AT" ablation); the curve is still computed and logged.

Derivatives use three-point finite differences that respect uneven spacing (exact for a
quadratic). That keeps the spacing itself from looking like a bend, but not the tail from being
chosen: on an O-dominated NER curve (83% of the source words O) accuracy is nearly flat (0.982 at
0.5, 0.9996 at 0.999 for multilingual-e5-small) and the largest curvature falls on the grid's
0.99 / 0.995 / 0.999 tail (0.995 in 190 of 200 bootstrap resamples,
lab/results/threshold_stability_conll_e5small_cpu_20261124.md), where almost no entity word
of the target passes. ``grid = "even"`` in the self-training settings (0.50 to 0.99 by 0.01, no
tail) and the class-aware pseudo-label rules (``method.pseudo_labels``) are the remedies offered.
Ties go to the lowest threshold. With fewer than three defined points there is no interior point: the lowest defined
threshold is chosen and ``fallback`` says why.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from xlt_engine.kernels import threshold_curve

METHODS = ("curvature", "max_second_difference", "fixed")
EVEN_GRID = tuple(round(0.50 + 0.01 * i, 2) for i in range(50))  # 0.50 .. 0.99 by 0.01
DEFAULT_GRID = (*EVEN_GRID, 0.995, 0.999)  # and the tail


def threshold_grid(num_classes: int, grid: Sequence[float] | None = None) -> list[float]:
    """The sorted, de-duplicated grid with the points below 1/num_classes dropped."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    grid = DEFAULT_GRID if grid is None else grid
    bad = [t for t in grid if not 0 < t < 1]
    if bad:
        raise ValueError(f"thresholds must lie in (0, 1), got {bad}")
    kept = sorted({float(t) for t in grid if t >= 1 / num_classes})
    if not kept:
        raise ValueError(f"no grid point is at or above 1/{num_classes}")
    return kept


def finite_differences(t: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and second derivatives at the interior points t[1:-1] of an unevenly spaced
    curve (three-point formulas)."""
    h1 = t[1:-1] - t[:-2]
    h2 = t[2:] - t[1:-1]
    a0, a1, a2 = a[:-2], a[1:-1], a[2:]
    d1 = (-h2 / (h1 * (h1 + h2))) * a0 + ((h2 - h1) / (h1 * h2)) * a1 + (h1 / (h2 * (h1 + h2))) * a2
    d2 = 2 * (h2 * a0 - (h1 + h2) * a1 + h1 * a2) / (h1 * h2 * (h1 + h2))
    return d1, d2


@dataclass
class ThresholdChoice:
    alpha: float
    method: str
    thresholds: list[float]
    accuracy: list[float]  # NaN where undefined
    recall: list[float]
    coverage: list[float]
    score: list[float]  # the method's criterion per grid point (NaN where not computed)
    fallback: str | None = None

    def to_json(self) -> dict:
        """JSON-safe (NaN -> None)."""
        d = asdict(self)
        for key in ("accuracy", "recall", "coverage", "score"):
            d[key] = [None if math.isnan(x) else x for x in d[key]]
        return d

    def to_csv(self) -> str:
        """threshold, accuracy, recall, coverage, score, chosen: one row per grid point."""
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        w.writerow(["threshold", "accuracy", "recall", "coverage", "score", "chosen"])
        for i, t in enumerate(self.thresholds):
            vals = [self.accuracy[i], self.recall[i], self.coverage[i], self.score[i]]
            w.writerow([t, *("" if math.isnan(v) else repr(v) for v in vals), int(t == self.alpha)])
        return out.getvalue()


def choose(thresholds: Sequence[float], accuracy: Sequence[float], method: str = "curvature"):
    """(alpha, score per point, fallback) from a given accuracy curve (NaN points skipped)."""
    if method not in ("curvature", "max_second_difference"):
        raise ValueError(f"method must be curvature or max_second_difference, got {method!r}")
    t = np.asarray(thresholds, dtype=np.float64)
    a = np.asarray(accuracy, dtype=np.float64)
    score = np.full(len(t), np.nan)
    ok = np.flatnonzero(~np.isnan(a))
    if len(ok) < 3:
        if len(ok) == 0:  # an untrained student: no confidence above the lowest point
            why = "no sample is above any threshold: the lowest grid point stands"
            return float(t[0]), score.tolist(), why
        why = f"accuracy is defined at {len(ok)} threshold(s) only: no interior point"
        return float(t[ok[0]]), score.tolist(), why
    d1, d2 = finite_differences(t[ok], a[ok])
    crit = np.abs(d2) / (1 + d1**2) ** 1.5 if method == "curvature" else d2
    score[ok[1:-1]] = crit
    best = ok[1:-1][int(np.argmax(crit))]  # the first maximum: the lowest threshold on ties
    return float(t[best]), score.tolist(), None


def rule_curve_inputs(
    agreed: torch.Tensor, confidence: torch.Tensor, gold: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The curve's inputs for the pseudo-label rule, from ``voter_filter`` at alpha = 0 on the
    source rows (``agreed`` label or -1, the voters' smallest top probability) and the rows'
    ``gold`` labels: (confidence, correct) for ``select_threshold``.

    The rule accepts a row at threshold t when its voters agree and every voter's top
    probability is above t. So a row whose voters disagree is never covered (its confidence
    becomes -1, below any threshold), and a row is correct when the agreed label is the gold
    one. Then, at every t:

    - accuracy(t) = correct rows accepted / rows accepted: the precision of the labels the rule
      would give at t;
    - coverage(t) = rows accepted / all rows;
    - recall(t) = correct rows accepted / correct rows (rows agreed on their gold label).
    """
    accepted = torch.where(agreed >= 0, confidence, torch.full_like(confidence, -1.0))
    return accepted, agreed == gold


def check_alpha(alpha, what: str = "alpha must be") -> float:
    """A fixed confidence threshold: a number in [0, 1) (1 would admit nothing); ``what``
    begins the message (e.g. ``"--fixed-threshold must be"``)."""
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 <= alpha < 1:
        raise ValueError(f"{what} in [0, 1), got {alpha!r}")
    return float(alpha)


def check_rounds(rounds, name: str = "rounds") -> float:
    """Self-training's N: a multiple of 0.5 in [0.5, 1000] (a trailing .5 ends with a soft step)."""
    if not (
        isinstance(rounds, int | float) and 0.5 <= rounds <= 1000 and 2 * rounds == int(2 * rounds)
    ):
        raise ValueError(f"{name} must be a multiple of 0.5 in [0.5, 1000], got {rounds}")
    return float(rounds)


def select_threshold(
    confidence: torch.Tensor,
    correct: torch.Tensor,
    num_classes: int,
    method: str = "curvature",
    grid: Sequence[float] | None = None,
    alpha: float | None = None,
) -> ThresholdChoice:
    """Pick alpha from the soft student's ``confidence`` [N] on the source labeled data and
    whether each prediction is ``correct`` [N] (see the module docstring)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "fixed":
        check_alpha(alpha, "method 'fixed' needs alpha")
    ts = threshold_grid(num_classes, grid)
    grid_t = torch.tensor(ts, dtype=torch.float64, device=confidence.device)
    curve = threshold_curve(confidence, correct, grid_t)
    acc, rec, cov = (x.double().cpu().tolist() for x in curve)
    if method == "fixed":
        return ThresholdChoice(float(alpha), method, ts, acc, rec, cov, [math.nan] * len(ts))
    chosen, score, fallback = choose(ts, acc, method)
    return ThresholdChoice(chosen, method, ts, acc, rec, cov, score, fallback)
