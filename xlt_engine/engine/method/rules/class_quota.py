"""``class_quota`` (class-balanced self-training, Zou et al. 2018): per class, the most
confident ``quota`` share of the *target* rows the voters agree on as that class (the threshold
is the confidence of the first row left out; ties at it are left out too). It reads the target's
voter outputs (``target=``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from xlt_engine.engine.method.rules.base import PseudoRule, RuleContext, register_rule


@register_rule
@dataclass(frozen=True)
class ClassQuota(PseudoRule):
    name: str = "class_quota"
    quota: float = 0.5  # the share of each class's agreed target rows kept

    reads_target: ClassVar[bool] = True

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.quota <= 1:
            raise ValueError(f"quota must be in (0, 1], got {self.quota}")

    def choose(self, ctx: RuleContext) -> None:
        t_agreed, t_conf = (x.cpu().numpy() for x in ctx.target)
        for c, name in enumerate(ctx.src.names):
            mine = np.sort(t_conf[t_agreed == c])[::-1].astype(np.float64)  # most confident first
            keep = math.ceil(self.quota * len(mine))
            cut = float(mine[keep]) if keep < len(mine) else 0.0
            if len(mine) == 0:
                cut = 1.0
            ctx.alpha[c] = cut
            ctx.records[c] = {"class": name, "threshold": cut, "how": "quota"}
            ctx.records[c] |= {"target_agreed": len(mine), "target_kept": int((mine > cut).sum())}
