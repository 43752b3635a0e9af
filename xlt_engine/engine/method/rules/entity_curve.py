"""``entity_curve`` (a control): the paper's criterion on the curve over the source rows agreed
on a non-background class, for every non-background class; the paper's alpha for the
background. Without a background class, each label on its own curve."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from xlt_engine.engine.method.rules.base import PseudoRule, RuleContext, register_rule


@register_rule
@dataclass(frozen=True)
class EntityCurve(PseudoRule):
    name: str = "entity_curve"

    def choose(self, ctx: RuleContext) -> None:
        src = ctx.src
        C = len(src.names)
        groups = [ctx.others] if ctx.background is not None else [[c] for c in range(C)]
        for group in groups:
            in_group = np.isin(src.agreed, group)
            curve_conf = torch.from_numpy(np.where(in_group, src.conf, -1.0))
            choice = self.select(curve_conf, torch.from_numpy(src.correct & in_group), C)
            for c in group:
                ctx.alpha[c] = choice.alpha
                ctx.records[c] = {
                    "class": src.names[c],
                    "threshold": choice.alpha,
                    "how": "entity_curve",
                }
                if choice.fallback:
                    ctx.records[c]["fallback"] = choice.fallback
