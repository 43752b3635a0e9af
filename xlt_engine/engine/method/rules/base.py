"""What a pseudo-label rule is: a frozen dataclass deriving from ``PseudoRule`` (the paper's),
named by its ``name`` field's default, holding its own parameters as fields, and choosing the
per-class thresholds in ``choose(ctx)``. ``register_rule`` adds one; the config's
``[selftrain.rule]`` table and the tensor-level API (``pseudo_labels.choose_thresholds``) take
the same object::

    @register_rule
    @dataclass(frozen=True)
    class TopShare(PseudoRule):
        name: str = "top_share"
        share: float = 0.3            # [selftrain.rule] share = 0.3

        def choose(self, ctx: RuleContext) -> None:
            for c in ctx.others:  ...  ctx.alpha[c] = ...; ctx.records[c] |= {...}

Every rule first computes the paper's alpha on the curve over all source rows (``threshold``,
``alpha``, ``grid``: the fields every rule has); ``choose`` starts from it for every class.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from xlt_engine.engine.method.threshold import EVEN_GRID, METHODS, check_alpha, select_threshold

if TYPE_CHECKING:
    import torch

WILSON_Z = 1.959964  # two-sided 95%


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


@dataclass
class RuleContext:
    """What ``PseudoRule.choose`` reads and fills: the source rows, the background class (NER's
    O; None: every label alike), the target rows' (agreed label or -1, confidence) for a rule
    that ``reads_target``, and per class the threshold (``alpha``, the paper's to start with),
    its record and the notes for the log."""

    src: SourceRows
    background: int | None
    target: tuple | None
    alpha: list[float]
    records: list[dict]
    notes: list[str] = field(default_factory=list)

    @property
    def others(self) -> list[int]:
        """Every class but the background."""
        return [c for c in range(len(self.src.names)) if c != self.background]


@dataclass(frozen=True)
class PseudoRule:
    """The paper's rule (``name = "paper"``): one alpha for every class, chosen on the curve of
    accuracy over threshold across all source rows (``threshold``: curvature, the paper's
    ``max_second_difference``, or ``fixed`` at ``alpha``; ``grid``: () the default grid 0.50 ..
    0.99 by 0.01, 0.995, 0.999, ``"even"`` 0.50 .. 0.99 only, or a list). Other rules derive
    from it, adding their parameters."""

    name: str = "paper"
    threshold: str = "curvature"  # one of threshold.METHODS
    alpha: float | None = None  # with threshold = "fixed" (the "-AT" ablation)
    grid: tuple[float, ...] | str = ()

    reads_target: ClassVar[bool] = False  # choose() needs the target rows (ctx.target)

    def __post_init__(self):
        own = _RULES.get(self.name)
        if own is None:
            raise ValueError(f"rule must be one of {', '.join(_RULES)}, got {self.name!r}")
        if type(self) is not own:
            raise ValueError(
                f"name: {self.name!r} is the rule {own.__name__} (make_rule({self.name!r}, ...) "
                "builds it)"
            )
        if self.threshold not in METHODS:
            raise ValueError(
                f"threshold must be one of {', '.join(METHODS)}, got {self.threshold!r}"
            )
        if self.threshold == "fixed":
            check_alpha(self.alpha, "threshold = 'fixed' needs alpha")
        elif self.alpha is not None:
            raise ValueError(f"alpha = {self.alpha} is read only with threshold = 'fixed'")
        if isinstance(self.grid, str):
            if self.grid != "even":
                raise ValueError(f"grid must be 'even' or a list of thresholds, got {self.grid!r}")
        elif bad := [t for t in self.grid if not 0 < t < 1]:
            raise ValueError(f"grid: thresholds must be in (0, 1), got {bad}")

    def grid_points(self) -> Sequence[float] | None:
        """The grid ``select_threshold`` takes (None: its default)."""
        if self.grid == "even":
            return EVEN_GRID
        return tuple(self.grid) if self.grid else None

    def select(self, accepted: torch.Tensor, correct: torch.Tensor, num_classes: int):
        """The alpha this rule's settings choose on a curve (``threshold.select_threshold`` with
        its method, grid and fixed alpha): ``accepted`` [N] the rows' confidence (< 0: not on
        the curve), ``correct`` [N] whether each is right."""
        grid = self.grid_points()
        return select_threshold(accepted, correct, num_classes, self.threshold, grid, self.alpha)

    def fixed(self, alpha: float) -> PseudoRule:
        """This rule with alpha fixed at ``alpha`` instead of chosen (the -AT ablation)."""
        return dataclasses.replace(self, threshold="fixed", alpha=alpha)

    def alternatives(self) -> list[str]:
        """The registered rules other than this one, in registration order."""
        return [n for n in rule_names() if n != self.name]

    def paper(self) -> PseudoRule:
        """The paper's rule with this rule's alpha settings (the curve every rule starts from)."""
        return PseudoRule(threshold=self.threshold, alpha=self.alpha, grid=self.grid)

    def choose(self, ctx: RuleContext) -> None:
        """Per-class thresholds into ``ctx.alpha`` (with ``ctx.records``, ``ctx.notes``); every
        class starts at the paper's alpha, which the paper's rule keeps."""

    def remedies(self) -> list[str]:
        """The rule settings that may avoid a collapsed round, other than the ones in use (for
        the guard's message): another rule, the even grid, a fixed alpha; a rule with
        parameters of its own adds theirs to ``super().remedies()``."""
        others = [n for n in self.alternatives() if n != PseudoRule.name]
        out = [
            " or ".join(f'selftrain.rule.name = "{r}"' for r in others) + " (thresholds per class)"
        ]
        if self.grid != "even" and not self.reads_target:
            out.append('selftrain.rule.grid = "even" (no 0.995 / 0.999 tail)')
        if self.threshold != "fixed":
            out.append('a fixed alpha (selftrain.rule.threshold = "fixed")')
        return out

    def name_setting(self) -> str:
        """``selftrain.rule.name = 'paper'``: the setting that chose this rule, for a message."""
        return f"selftrain.rule.name = {self.name!r}"

    def describe(self) -> str:
        """``class_quota (quota 0.5)``: the rule and its own parameters, for the log."""
        own = [f for f in dataclasses.fields(self) if f.name not in _COMMON]
        params = ", ".join(f"{f.name} {_short(getattr(self, f.name))}" for f in own)
        return f"{self.name} ({params})" if params else self.name


def _short(value) -> str:
    return format(value, "g") if isinstance(value, float) else str(value)


_COMMON = frozenset(f.name for f in dataclasses.fields(PseudoRule))
_RULES: dict[str, type[PseudoRule]] = {}


def register_rule(cls: type[PseudoRule]) -> type[PseudoRule]:
    """Add a rule (a class decorator): its name is its ``name`` field's default. A second rule
    of the same name replaces the first only when it is the same class's reload."""
    if not (
        isinstance(cls, type) and issubclass(cls, PseudoRule) and dataclasses.is_dataclass(cls)
    ):
        raise TypeError(f"{cls!r}: a rule is a frozen dataclass deriving from PseudoRule")
    name = {f.name: f for f in dataclasses.fields(cls)}["name"].default
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"{cls.__name__}: give the rule a name (name: str = 'my_rule')")
    old = _RULES.get(name)
    if old is not None and old.__qualname__ != cls.__qualname__:
        raise ValueError(f"a pseudo-label rule named {name!r} is registered already")
    _RULES[name] = cls
    return cls


def unregister_rule(name: str) -> None:
    if name != "paper":
        _RULES.pop(name, None)


def rule_names() -> tuple[str, ...]:
    return tuple(_RULES)


def registered_modules() -> set[str]:
    """The modules the registered rules are defined in, for fingerprints."""
    return {cls.__module__ for cls in _RULES.values()}


def rule_class(name: str) -> type[PseudoRule]:
    if name not in _RULES:
        raise ValueError(f"rule must be one of {', '.join(_RULES)}, got {name!r}")
    return _RULES[name]


def make_rule(name: str, **settings) -> PseudoRule:
    """The rule ``name`` with ``settings`` (its own parameters and the common ones)."""
    return rule_class(name)(name=name, **settings)


def switch_rule(rule: PseudoRule, name: str, **settings) -> PseudoRule:
    """Rule ``name`` with ``rule``'s alpha settings (threshold, alpha, grid) and its own
    parameters' defaults, or ``settings``."""
    common = {k: getattr(rule, k) for k in _COMMON if k != "name"}
    return make_rule(name, **(common | settings))


register_rule(PseudoRule)
