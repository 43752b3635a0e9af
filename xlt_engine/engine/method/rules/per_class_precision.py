"""``per_class_precision``: the background class (O) keeps the paper's alpha; every other class c
gets the lowest grid threshold at which the source rows the voters agree on as c number at least
``min_rows`` and the Wilson lower bound (95%) of their precision is at least
``class_precision``. A class that never qualifies gets 1.0 (no pseudo labels) and a note says
so."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xlt_engine.engine.method.rules.base import PseudoRule, RuleContext, register_rule, wilson_lower


@register_rule
@dataclass(frozen=True)
class PerClassPrecision(PseudoRule):
    name: str = "per_class_precision"
    min_rows: int = 30  # source rows a class's threshold must leave
    class_precision: float = 0.9  # their precision's Wilson lower bound

    def __post_init__(self):
        super().__post_init__()
        if self.min_rows < 1:
            raise ValueError(f"min_rows must be >= 1, got {self.min_rows}")
        if not 0 < self.class_precision < 1:
            raise ValueError(f"class_precision must be in (0, 1), got {self.class_precision}")

    def choose(self, ctx: RuleContext) -> None:
        src, ts = ctx.src, ctx.src.grid
        for c in ctx.others:
            n, k = src.counts(c, ts)
            low = wilson_lower(k, n)
            good = np.flatnonzero((n >= self.min_rows) & (low >= self.class_precision))
            rec = {"class": src.names[c], "how": "precision"}
            if len(good):
                i = int(good[0])
                ctx.alpha[c] = ts[i]
                rec |= {"threshold": ts[i], "source_rows": int(n[i]), "source_correct": int(k[i])}
                rec |= {"source_precision": float(k[i] / n[i]), "wilson_lower": float(low[i])}
            else:
                ctx.alpha[c] = 1.0
                best = int(np.argmax(np.where(n >= self.min_rows, low, -1.0)))
                rec |= {"threshold": 1.0, "never_qualified": True}
                rec |= {"best_rows": int(n[best]), "best_wilson_lower": float(low[best])}
                ctx.notes.append(
                    f"class {src.names[c]}: no threshold of the grid gives {self.min_rows} or "
                    f"more source rows with a precision lower bound of {self.class_precision:g} "
                    f"(best: {float(low[best]):.3f} over {int(n[best])} rows at {ts[best]:g}): "
                    "it gets no pseudo labels"
                )
            ctx.records[c] = rec

    def remedies(self) -> list[str]:
        return [
            *super().remedies(),
            "a lower selftrain.rule.class_precision or min_rows (classes that never qualify "
            "get no pseudo label)",
        ]
