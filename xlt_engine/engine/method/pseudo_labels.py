"""The pseudo-label rule of self-training, in one place (DESIGN.md, "Pseudo-label rules"): how the
thresholds are chosen from the soft student's voters on the source data, how they are applied to
the voters on the target data (through ``kernels.voter_filter``, the one place a threshold is
applied, on the logits' device), which source rows the hard step keeps, and whether a round's
pseudo labels collapsed. Tensor-level and file-free, so another trainer can use the rule::

    rule = PseudoRule(name="per_class_precision")
    th = choose_thresholds(src_logits, src_gold, rule, background=labels.index("O"))
    labels, confidence, mean_probs = pseudo_label(tgt_logits, th)        # -1: no label
    keep = source_keep(src_logits, src_gold, th, "correct")

Shapes: voter logits ``[M, N, C]`` (any float dtype, any device), gold ``[N]`` int64; the
thresholds are one per class (``Thresholds.alpha``, ``[C]``; 1.0 admits nothing).

Rules (``PseudoRule.name``):

- ``paper``: one alpha for every class, chosen on the curve over all source rows
  (``threshold.select_threshold``: curvature, the paper's second difference, or fixed). On NER
  the curve is ~83% O words, nearly flat, and lands at the top of the grid (0.99-0.999), where
  almost no entity word of the target passes.
- ``per_class_precision``: the background class (O) keeps the paper's alpha; every other class c
  gets the lowest grid threshold at which the source rows the voters agree on as c number at
  least ``min_rows`` and the Wilson lower bound (95%) of their precision is at least
  ``class_precision``. A class that never qualifies gets 1.0 (no pseudo labels) and a note says so.
- ``class_quota`` (class-balanced self-training, Zou et al. 2018): per class, the most confident
  ``quota`` share of the *target* rows the voters agree on as that class (the threshold is the
  confidence of the first row left out; ties at it are left out too). It reads the target's
  voter outputs (``target=``).
- ``entity_curve`` (a control): the paper's criterion on the curve over the source rows agreed on
  a non-background class, for every non-background class; the paper's alpha for the background.

Without a background class (sequence classification: CLS, MARC, XNLI) every label is a class of
its own: ``per_class_precision`` and ``class_quota`` treat every label alike, ``entity_curve``
gives each label the criterion on its own curve.

Source filter (``source_keep``): ``correct`` keeps a source row whose gold label the mean of the
voters' probabilities predicts (the paper: rows "not predicted correctly" are discarded);
``confident`` keeps it only when the voters agree on its gold label above that class's threshold;
``off`` keeps every row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal, get_args

import numpy as np
import torch

from xlt_engine.engine.method.threshold import (
    EVEN_GRID,
    ThresholdChoice,
    rule_curve_inputs,
    select_threshold,
    threshold_grid,
)
from xlt_engine.kernels import voter_filter

RuleName = Literal["paper", "per_class_precision", "class_quota", "entity_curve"]
SourceFilter = Literal["correct", "confident", "off"]
RULES: tuple[str, ...] = get_args(RuleName)
SOURCE_FILTERS: tuple[str, ...] = get_args(SourceFilter)
WILSON_Z = 1.959964  # two-sided 95%
# the collapse guard's limits (DESIGN.md; the issue that set them measured real rounds)
ONE_CLASS_SHARE = 0.99  # pseudo labels this share one class ...
STUDENT_SHARE = 0.95  # ... while the student's own argmax gives that class less than this
ENTITY_RATIO = 0.25  # the pseudo labels' non-background share below this x the student's
PREDICTED_SHARE = 0.01  # a class the student predicts on this share of rows and none pass
SOURCE_KEPT = 0.5  # the source side keeps less than this of its non-background rows


@dataclass(frozen=True)
class PseudoRule:
    """How pseudo-label thresholds are chosen (``selftrain.pseudo_rule`` and its settings).

    ``method``/``alpha``/``grid``: the paper's alpha (``select_threshold``); ``grid`` None is the
    default grid (0.50 .. 0.99 by 0.01, 0.995, 0.999), ``"even"`` 0.50 .. 0.99 only."""

    name: str = "paper"
    method: str = "curvature"
    alpha: float | None = None
    grid: Sequence[float] | str | None = None
    min_rows: int = 30
    class_precision: float = 0.9
    quota: float = 0.5

    def __post_init__(self):
        if self.name not in RULES:
            raise ValueError(f"pseudo_rule must be one of {', '.join(RULES)}, got {self.name!r}")
        if self.min_rows < 1:
            raise ValueError(f"min_rows must be >= 1, got {self.min_rows}")
        if not 0 < self.class_precision < 1:
            raise ValueError(f"class_precision must be in (0, 1), got {self.class_precision}")
        if not 0 < self.quota <= 1:
            raise ValueError(f"quota must be in (0, 1], got {self.quota}")
        if isinstance(self.grid, str) and self.grid != "even":
            raise ValueError(f"grid must be 'even' or a list of thresholds, got {self.grid!r}")

    def grid_points(self) -> Sequence[float] | None:
        """The grid ``select_threshold`` takes (None: its default)."""
        if self.grid == "even":
            return EVEN_GRID
        return tuple(self.grid) if self.grid else None


@dataclass
class Thresholds:
    """One confidence threshold per class (``alpha``, ``[C]``; 1.0: no pseudo label of it),
    how each was reached (``classes``: one record per class), the paper's alpha on the all-rows
    curve (``base``, always computed and logged) and notes for the log (classes that never
    qualified)."""

    rule: str
    alpha: list[float]
    base: ThresholdChoice
    classes: list[dict]
    notes: list[str] = field(default_factory=list)

    def tensor(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """``alpha`` as a [C] fp32 tensor (``voter_filter``'s per-class alpha)."""
        return torch.tensor(self.alpha, dtype=torch.float32, device=device)

    def to_json(self) -> dict:
        return {
            "rule": self.rule,
            "alpha": self.base.alpha,  # the paper's alpha (the background's under every rule)
            "class_alpha": list(self.alpha),
            "classes": self.classes,
            "notes": self.notes,
            "curve": self.base.to_json(),
        }


def wilson_lower(correct: np.ndarray, total: np.ndarray, z: float = WILSON_Z) -> np.ndarray:
    """The Wilson score interval's lower bound of correct / total (0 where total is 0)."""
    n = np.asarray(total, dtype=np.float64)
    k = np.asarray(correct, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        centre = p + z * z / (2 * n)
        spread = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        low = (centre - spread) / (1 + z * z / n)
    return np.where(n > 0, low, 0.0)


def counts_above(conf: np.ndarray, hit: np.ndarray, grid: Sequence[float]):
    """For each t of ``grid``: the rows with ``conf`` > t, and those of them with ``hit``
    (exact counts, by sorting)."""
    order = np.argsort(conf, kind="stable")
    c, h = conf[order], hit[order].astype(np.int64)
    hits_from = np.concatenate([np.cumsum(h[::-1])[::-1], [0]])  # hits at or after position i
    start = np.searchsorted(c, np.asarray(grid, dtype=np.float64), side="right")
    return len(c) - start, hits_from[start]


def background_class(labels: Sequence[str]) -> int | None:
    """The class pseudo labels are mostly of on NER ("O"), or None (sequence classification)."""
    return list(labels).index("O") if "O" in labels else None


def _outputs(voter_logits: torch.Tensor):
    """voter_filter at alpha = 0: (agreed label or -1, confidence, mean probabilities)."""
    return voter_filter(voter_logits, 0.0)


def choose_thresholds(
    voter_logits: torch.Tensor,
    gold: torch.Tensor,
    rule: PseudoRule = PseudoRule(),
    *,
    background: int | None = None,
    target: tuple[torch.Tensor, torch.Tensor] | None = None,
    names: Sequence[str] | None = None,
) -> Thresholds:
    """The per-class thresholds of ``rule`` from the soft student's voter logits on the source
    rows (``[M, N, C]``) and their ``gold`` labels (``[N]``). ``background``: the index of the
    background class (NER's O; None: every label alike). ``target``: the target rows' (agreed
    label or -1, confidence), as ``voter_filter(target_logits, 0.0)`` gives them; only
    ``class_quota`` reads it. ``names``: class names for the records (default: indices)."""
    agreed, conf, _ = _outputs(voter_logits)
    return thresholds_from(
        agreed, conf, gold, voter_logits.shape[2], rule, background, target, names
    )


@dataclass(frozen=True)
class SourceRows:
    """The source rows' voter outputs as the rules read them: the agreed class (or -1), the
    confidence of accepted rows, whether each is right, the threshold grid, the class names."""

    agreed: np.ndarray
    conf: np.ndarray
    correct: np.ndarray
    grid: list[float]
    names: list[str]

    def counts(self, c: int, thresholds) -> tuple[np.ndarray, np.ndarray]:
        """Rows agreed as class ``c`` above each threshold, and how many of them are right."""
        mine = self.agreed == c
        return counts_above(np.where(mine, self.conf, -1.0), self.correct & mine, thresholds)


def _by_precision(
    src: SourceRows, rule: PseudoRule, classes_: list[int], alpha, records
) -> list[str]:
    """per_class_precision: each class's lowest grid threshold at which its agreed source rows
    number ``min_rows`` or more with a Wilson lower bound of ``class_precision``; 1.0 (no
    pseudo labels) for a class that never qualifies, with a note."""
    notes, ts = [], src.grid
    for c in classes_:
        n, k = src.counts(c, ts)
        low = wilson_lower(k, n)
        good = np.flatnonzero((n >= rule.min_rows) & (low >= rule.class_precision))
        rec = {"class": src.names[c], "how": "precision"}
        if len(good):
            i = int(good[0])
            alpha[c] = ts[i]
            rec |= {"threshold": ts[i], "source_rows": int(n[i]), "source_correct": int(k[i])}
            rec |= {"source_precision": float(k[i] / n[i]), "wilson_lower": float(low[i])}
        else:
            alpha[c] = 1.0
            best = int(np.argmax(np.where(n >= rule.min_rows, low, -1.0)))
            rec |= {"threshold": 1.0, "never_qualified": True}
            rec |= {"best_rows": int(n[best]), "best_wilson_lower": float(low[best])}
            notes.append(
                f"class {src.names[c]}: no threshold of the grid gives {rule.min_rows} or more "
                f"source rows with a precision lower bound of {rule.class_precision:g} "
                f"(best: {float(low[best]):.3f} over {int(n[best])} rows at {ts[best]:g}): "
                "it gets no pseudo labels"
            )
        records[c] = rec
    return notes


def _by_entity_curve(src: SourceRows, rule: PseudoRule, groups, alpha, records) -> None:
    """entity_curve: the paper's criterion on the curve of the rows agreed as a group's classes
    (NER: every entity class together), one threshold per group."""
    C = len(src.names)
    for group in groups:
        in_group = np.isin(src.agreed, group)
        curve_conf = torch.from_numpy(np.where(in_group, src.conf, -1.0))
        choice = select_threshold(
            curve_conf, torch.from_numpy(src.correct & in_group), C, rule.method,
            rule.grid_points(), rule.alpha,
        )  # fmt: skip
        for c in group:
            alpha[c] = choice.alpha
            records[c] = {"class": src.names[c], "threshold": choice.alpha, "how": "entity_curve"}
            if choice.fallback:
                records[c]["fallback"] = choice.fallback


def _by_quota(target, rule: PseudoRule, names: list[str], alpha, records) -> None:
    """class_quota: per class, the confidence above which the most confident ``quota`` share of
    the target rows agreed as it lie."""
    t_agreed, t_conf = (x.cpu().numpy() for x in target)
    for c in range(len(names)):
        mine = np.sort(t_conf[t_agreed == c])[::-1].astype(np.float64)  # most confident first
        keep = math.ceil(rule.quota * len(mine))
        cut = float(mine[keep]) if keep < len(mine) else 0.0
        if len(mine) == 0:
            cut = 1.0
        alpha[c] = cut
        records[c] = {"class": names[c], "threshold": cut, "how": "quota"}
        records[c] |= {"target_agreed": len(mine), "target_kept": int((mine > cut).sum())}


def thresholds_from(
    agreed: torch.Tensor,
    conf: torch.Tensor,
    gold: torch.Tensor,
    num_classes: int,
    rule: PseudoRule = PseudoRule(),
    background: int | None = None,
    target: tuple[torch.Tensor, torch.Tensor] | None = None,
    names: Sequence[str] | None = None,
) -> Thresholds:
    """``choose_thresholds`` from the source rows' voter outputs (``agreed`` [N] label or -1,
    ``conf`` [N], ``gold`` [N]) instead of their logits."""
    C = num_classes
    names = [str(i) for i in range(C)] if names is None else list(names)
    if len(names) != C:
        raise ValueError(f"names: {len(names)} names for {C} classes")
    if gold.shape != agreed.shape:
        raise ValueError(f"gold {tuple(gold.shape)} does not match the {agreed.shape[0]} rows")
    if background is not None and not 0 <= background < C:
        raise ValueError(f"background: class {background} is not one of the {C} classes")
    if rule.name == "class_quota" and target is None:
        raise ValueError("class_quota chooses its thresholds from the target rows: give target")
    gold = gold.to(agreed.device)
    accepted, correct = rule_curve_inputs(agreed, conf, gold)  # the paper's curve: all rows
    grid = rule.grid_points()
    base = select_threshold(accepted, correct, C, rule.method, grid, rule.alpha)
    ts = threshold_grid(C, grid)
    a = agreed.cpu().numpy()
    s = accepted.double().cpu().numpy()
    ok = correct.cpu().numpy()
    alpha = [base.alpha] * C
    classes = [{"class": names[c], "threshold": base.alpha, "how": "paper"} for c in range(C)]
    notes: list[str] = []
    others = [c for c in range(C) if c != background]
    src = SourceRows(a, s, ok, ts, names)
    if rule.name == "per_class_precision":
        notes = _by_precision(src, rule, others, alpha, classes)
    elif rule.name == "entity_curve":
        groups = [others] if background is not None else [[c] for c in range(C)]
        _by_entity_curve(src, rule, groups, alpha, classes)
    elif rule.name == "class_quota":
        _by_quota(target, rule, names, alpha, classes)
    # every class: the source rows the voters agree on as it, above its threshold, and their
    # precision (the record a reader checks the rule against)
    for c in range(C):
        n, k = src.counts(c, [alpha[c]])
        classes[c].setdefault("source_rows", int(n[0]))
        classes[c].setdefault("source_correct", int(k[0]))
        classes[c].setdefault("source_precision", float(k[0] / n[0]) if n[0] else None)
    return Thresholds(rule.name, [float(x) for x in alpha], base, classes, notes)


def pseudo_label(
    voter_logits: torch.Tensor, thresholds: Thresholds | torch.Tensor | float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pseudo labels of the target rows: ``voter_filter`` with the per-class thresholds, on
    the logits' device. Returns labels [N] int64 (-1: none), confidence [N] fp32 (the smallest
    of the voters' top probabilities) and mean_probs [N, C] fp32."""
    if isinstance(thresholds, Thresholds):
        thresholds = thresholds.tensor(voter_logits.device)
    return voter_filter(voter_logits, thresholds)


def source_ok(
    agreed: torch.Tensor,
    conf: torch.Tensor,
    predicted: torch.Tensor,
    gold: torch.Tensor,
    alpha: torch.Tensor,
    how: str,
) -> torch.Tensor:
    """Which source rows pass the source filter ``how`` ([N] bool): ``correct`` (``predicted``,
    the argmax of the voters' mean probabilities, is the gold label), ``confident`` (the voters
    agree on the gold label above its class's threshold in ``alpha`` [C]) or ``off``."""
    if how not in SOURCE_FILTERS:
        raise ValueError(f"source_filter must be one of {', '.join(SOURCE_FILTERS)}, got {how!r}")
    gold = gold.to(agreed.device)
    if how == "off":
        return torch.ones_like(gold, dtype=torch.bool)
    if how == "correct":
        return predicted.to(agreed.device) == gold
    a = alpha.to(agreed.device, torch.float32)[gold.clamp(min=0)]
    return (agreed == gold) & (conf > a)


def source_keep(
    voter_logits: torch.Tensor, gold: torch.Tensor, thresholds: Thresholds, how: str = "correct"
) -> torch.Tensor:
    """``source_ok`` from the source rows' voter logits [M, N, C]."""
    agreed, conf, mean = _outputs(voter_logits)
    return source_ok(agreed, conf, mean.argmax(-1), gold, thresholds.tensor(agreed.device), how)


def check_collapse(
    pseudo: dict[str, int],
    student: dict[str, int],
    source_rows: dict[str, int],
    source_kept: dict[str, int],
    background: str | None,
) -> list[str]:
    """What collapsed in a round, one sentence each ([] for a healthy round), from class counts:
    the target pseudo labels (``pseudo``), the soft student's argmax on the target rows
    (``student``), the source rows before the round's filter and those it keeps. A round has
    collapsed when 99% or more of its pseudo labels are one class that the student's argmax
    gives under 95% of the rows (or there is no pseudo label at all); the non-background share
    of the pseudo labels is under a quarter of the student's; a class the student predicts on
    1% or more of the rows gets no pseudo label; or the source side keeps under half of its
    non-background rows (every row when there is no background class)."""
    found = []
    n_pseudo, n_student = sum(pseudo.values()), sum(student.values())
    if n_student and n_pseudo == 0:
        found.append(f"no target row got a pseudo label (of {n_student:,})")
    if n_pseudo and n_student:
        top = max(pseudo, key=lambda c: pseudo[c])
        share, own = pseudo[top] / n_pseudo, student.get(top, 0) / n_student
        if share >= ONE_CLASS_SHARE and own < STUDENT_SHARE:
            found.append(
                f"{100 * share:.1f}% of the {n_pseudo:,} pseudo labels are {top}, which the "
                f"student's own argmax gives to {100 * own:.1f}% of the target rows"
            )
    if background is not None and n_pseudo and n_student:
        ent_p = 1 - pseudo.get(background, 0) / n_pseudo
        ent_s = 1 - student.get(background, 0) / n_student
        if ent_s > 0 and ent_p < ENTITY_RATIO * ent_s:
            found.append(
                f"the pseudo labels are {100 * ent_p:.2f}% non-{background}, the student's "
                f"argmax {100 * ent_s:.2f}% (under a quarter of it)"
            )
    missing = [
        c
        for c, n in student.items()
        if n_student and n >= PREDICTED_SHARE * n_student and pseudo.get(c, 0) == 0
    ]
    if missing:
        found.append(
            f"no pseudo label of {', '.join(missing)}, which the student predicts on 1% or more "
            "of the target rows each"
        )
    considered = [c for c in source_rows if c != background]
    before = sum(source_rows[c] for c in considered)
    kept = sum(source_kept.get(c, 0) for c in considered)
    if before and kept < SOURCE_KEPT * before:
        what = f"non-{background}" if background is not None else "source"
        found.append(f"the source filter keeps {kept:,} of {before:,} {what} rows (under half)")
    return found


def rule_settings(rule: PseudoRule) -> dict:
    """The rule's settings, JSON-safe, for threshold.json."""
    d = asdict(rule)
    d["grid"] = rule.grid if isinstance(rule.grid, str) or rule.grid is None else list(rule.grid)
    return d
