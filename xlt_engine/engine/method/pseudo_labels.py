"""The pseudo-label rule of self-training, in one place (DESIGN.md, "Pseudo-label rules"): how the
thresholds are chosen from the soft student's voters on the source data, how they are applied to
the voters on the target data (through ``kernels.voter_filter``, the one place a threshold is
applied, on the logits' device), which source rows the hard step keeps, and whether a round's
pseudo labels collapsed. Tensor-level and file-free, so another trainer can use the rule::

    rule = make_rule("per_class_precision", min_rows=30)
    th = choose_thresholds(src_logits, src_gold, rule, background=labels.index("O"))
    labels, confidence, mean_probs = pseudo_label(tgt_logits, th)        # -1: no label
    keep = source_keep(src_logits, src_gold, th, "correct")

Shapes: voter logits ``[M, N, C]`` (any float dtype, any device), gold ``[N]`` int64; the
thresholds are one per class (``Thresholds.alpha``, ``[C]``; 1.0 admits nothing).

Rules (``rules``: one module each, registered by name; the config's ``[selftrain.rule]`` table
is the same object): ``paper`` (``rules.base.PseudoRule``: one alpha for every class, chosen on
the curve over all source rows: curvature, the paper's second difference, or fixed; on NER the
curve is ~83% O words, nearly flat, and lands at the top of the grid, 0.99-0.999, where almost
no entity word of the target passes), ``per_class_precision``, ``class_quota`` (it reads the
target's voter outputs, ``target=``) and ``entity_curve`` (a control); each module says how it
chooses. A rule of one's own: ``rules.base``.

Without a background class (sequence classification: CLS, MARC, XNLI) every label is a class of
its own: ``per_class_precision`` and ``class_quota`` treat every label alike, ``entity_curve``
gives each label the criterion on its own curve.

Source filter (``source_keep``): ``correct`` keeps a source row whose gold label the mean of the
voters' probabilities predicts (the paper: rows "not predicted correctly" are discarded);
``confident`` keeps it only when the voters agree on its gold label above that class's threshold;
``off`` keeps every row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal, get_args

import torch

from xlt_engine.engine.method.rules import PseudoRule, RuleContext, SourceRows
from xlt_engine.engine.method.threshold import ThresholdChoice, rule_curve_inputs, threshold_grid
from xlt_engine.kernels import voter_filter

SourceFilter = Literal["correct", "confident", "off"]
SOURCE_FILTERS: tuple[str, ...] = get_args(SourceFilter)
PAPER_RULE = PseudoRule()  # the default rule: the paper's
# the collapse guard's limits (DESIGN.md; the issue that set them measured real rounds)
ONE_CLASS_SHARE = 0.99  # pseudo labels this share one class ...
STUDENT_SHARE = 0.95  # ... while the student's own argmax gives that class less than this
ENTITY_RATIO = 0.25  # the pseudo labels' non-background share below this x the student's
PREDICTED_SHARE = 0.01  # a class the student predicts on this share of rows and none pass
SOURCE_KEPT = 0.5  # the source side keeps less than this of its non-background rows


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


def background_class(labels: Sequence[str]) -> int | None:
    """The class pseudo labels are mostly of on NER ("O"), or None (sequence classification)."""
    return list(labels).index("O") if "O" in labels else None


def _outputs(voter_logits: torch.Tensor):
    """voter_filter at alpha = 0: (agreed label or -1, confidence, mean probabilities)."""
    return voter_filter(voter_logits, 0.0)


def choose_thresholds(
    voter_logits: torch.Tensor,
    gold: torch.Tensor,
    rule: PseudoRule = PAPER_RULE,
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


def thresholds_from(
    agreed: torch.Tensor,
    conf: torch.Tensor,
    gold: torch.Tensor,
    num_classes: int,
    rule: PseudoRule = PAPER_RULE,
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
    if rule.reads_target and target is None:
        raise ValueError(f"{rule.name} chooses its thresholds from the target rows: give target")
    gold = gold.to(agreed.device)
    accepted, correct = rule_curve_inputs(agreed, conf, gold)  # the paper's curve: all rows
    base = rule.select(accepted, correct, C)
    ts = threshold_grid(C, rule.grid_points())
    a = agreed.cpu().numpy()
    s = accepted.double().cpu().numpy()
    ok = correct.cpu().numpy()
    alpha = [base.alpha] * C
    classes = [{"class": names[c], "threshold": base.alpha, "how": "paper"} for c in range(C)]
    src = SourceRows(a, s, ok, ts, names)
    ctx = RuleContext(src, background, target, alpha, classes)
    rule.choose(ctx)
    # every class: the source rows the voters agree on as it, above its threshold, and their
    # precision (the record a reader checks the rule against)
    for c in range(C):
        n, k = src.counts(c, [alpha[c]])
        classes[c].setdefault("source_rows", int(n[0]))
        classes[c].setdefault("source_correct", int(k[0]))
        classes[c].setdefault("source_precision", float(k[0] / n[0]) if n[0] else None)
    return Thresholds(rule.name, [float(x) for x in alpha], base, classes, ctx.notes)


def source_thresholds(
    agreed: torch.Tensor,
    conf: torch.Tensor,
    gold: torch.Tensor,
    num_classes: int,
    rule: PseudoRule,
    background: int | None = None,
    names: Sequence[str] | None = None,
) -> Thresholds:
    """The threshold step's thresholds from the source rows alone (``thresholds_from``). A rule
    that reads the target (class_quota) sets its class thresholds from the target rows in the
    filter: here the paper's alpha and each class's source record at it, under the rule's
    name, with a note that says so."""
    if not rule.reads_target:
        return thresholds_from(agreed, conf, gold, num_classes, rule, background, names=names)
    th = thresholds_from(agreed, conf, gold, num_classes, rule.paper(), background, names=names)
    th.rule = rule.name
    th.notes.append(f"{rule.name}: the class thresholds come from the target rows (filter.json)")
    return th


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
