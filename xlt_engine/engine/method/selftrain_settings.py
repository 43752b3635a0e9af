"""The self-training method's settings (``[selftrain]``, and the library's ``SelftrainConfig``
derives from them): a module of their own, apart from ``settings``, because they hold the
pseudo-label rule, and the other stages' code (and so their fingerprints' code, ``code.py``)
should not depend on the rules."""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass, field
from typing import Literal

from xlt_engine.engine.method.pseudo_labels import SourceFilter
from xlt_engine.engine.method.rules import PseudoRule
from xlt_engine.engine.method.settings import BatchSettings, check_choices
from xlt_engine.engine.method.threshold import check_rounds
from xlt_engine.engine.train.config import TrainConfig

FilterUnit = Literal["word", "sequence"]
OnCollapse = Literal["warn", "error", "skip_hard"]
SoftLoss = Literal["mse", "kl"]
StudentInit = Literal["base", "teacher"]


@dataclass(frozen=True)
class SelftrainSettings(BatchSettings):
    """The self-training method's settings: the ``[selftrain]`` section and the library's
    ``SelftrainConfig`` both are these (defaults and checks written here only)."""

    rounds: float = 1.5  # N; a trailing .5 ends with a soft step
    soft: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=10, lr=3e-5))
    hard: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=10, lr=1e-6))
    filter_unit: FilterUnit = "word"
    source_filter: SourceFilter = "correct"  # which source rows the hard steps keep: correct
    # (the voters' mean predicts the gold label: the paper), confident (the voters agree on the
    # gold label above its class's threshold), off (all)
    rule: PseudoRule = field(default_factory=PseudoRule)  # how the thresholds are chosen: the
    # [selftrain.rule] table, its name (paper, per_class_precision, class_quota, entity_curve,
    # or a rule of one's own: method.rules), the paper's alpha settings (threshold, alpha,
    # grid) and the rule's own parameters
    on_collapse: OnCollapse = "warn"  # a round whose pseudo labels collapsed: warn, error
    # (stop before the hard step) or skip_hard (the soft student is the round's result)
    max_unlabeled: int | None = None  # down-sample the unlabeled target data (CLS: 10000)
    soft_loss: SoftLoss = "kl"  # the soft step's loss: kl (KL(teacher || student), the usual
    # distillation loss: the measured best, lab/results/gpu_h200_20261126) or mse (the paper's
    # eq. 1 on probabilities: configs/conll.toml, cls.toml and e5-small-conll-paper.toml set it)
    student_init: StudentInit = "base"  # the encoder each round's student starts from: base
    # (the Base Model, the paper) or teacher (the round's teacher's encoder); fresh voters both
    hard_steps: bool = True  # false: no round trains a hard step, its soft student is the
    # round's result (the ablation's "soft only" row: what the hard steps add)

    # the settings that moved into the [selftrain.rule] table: a config that still sets one is
    # told where it went
    MOVED: typing.ClassVar[dict[str, str]] = {
        "pseudo_rule": "rule.name",
        "threshold": "rule.threshold",
        "alpha": "rule.alpha",
        "grid": "rule.grid",
        "min_rows": "rule.min_rows",
        "class_precision": "rule.class_precision",
        "quota": "rule.quota",
    }

    def __post_init__(self):
        super().__post_init__()
        check_choices(self)
        check_rounds(self.rounds)
        if not isinstance(self.hard_steps, bool):
            raise ValueError(f"hard_steps must be true or false, got {self.hard_steps!r}")
        if not isinstance(self.rule, PseudoRule):
            raise ValueError(f"rule must be a PseudoRule, got {self.rule!r}")
        if self.max_unlabeled is not None and self.max_unlabeled < 1:
            raise ValueError(f"max_unlabeled must be >= 1, got {self.max_unlabeled}")

    def no_hard_step(self) -> str | None:
        """Why no round trains a hard step (``hard_steps = false``), or None."""
        return None if self.hard_steps else "hard_steps = false (soft steps only)"

    def other_inits(self) -> list[str]:
        """The students' starts other than this one (the ablation's ``init = ...`` rows)."""
        return [i for i in typing.get_args(StudentInit) if i != self.student_init]

    def soft_remedies(self) -> list[str]:
        """The settings that may keep a soft student from losing classes its teacher predicts,
        the measured one first."""
        fixes = []
        if self.soft_loss == "mse":
            fixes.append(
                'selftrain.soft_loss = "kl" (the MSE of probabilities barely moves a class the '
                "student gives near-zero probability; measured on multilingual-e5-small, 612-776 "
                "soft steps from the Base Model: kl kept 91-93% of the teacher's entity rows, mse "
                "21-24%, lab/README.md)"
            )
        if self.student_init == "base":
            fixes.append('selftrain.student_init = "teacher" (the student starts from its teacher)')
        fixes.append(
            "more soft steps (selftrain.soft.epochs) or a higher selftrain.soft.head_lr_scale"
        )
        return fixes

    @property
    def steps(self) -> list[tuple[int, str]]:
        """(round, "soft" | "hard") in order: N = 1.5 -> (1, soft), (1, hard), (2, soft)."""
        out = []
        for r in range(1, math.ceil(self.rounds) + 1):
            out.append((r, "soft"))
            if r <= self.rounds:
                out.append((r, "hard"))
        return out
