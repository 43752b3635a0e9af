"""The collapse guard of a round: the findings said in one block before the hard step, what
``on_collapse`` does with them (warn, stop with ``CollapseError``, or skip the hard step), and
the settings that may avoid a collapse or a soft student that lost classes."""

from __future__ import annotations

from xlt_engine.engine.method.selftrain.context import SelftrainContext
from xlt_engine.engine.method.selftrain_settings import SelftrainSettings


class CollapseError(ValueError):
    """A round's pseudo labels collapsed and ``on_collapse = "error"`` stops the run."""


def guard(ctx: SelftrainContext, r: int, findings: list[str], threshold: dict) -> str | None:
    """The collapse guard (``on_collapse``), before round ``r``'s hard step: ``findings``
    (``pseudo_labels.check_collapse``) are said in a clear block; ``warn`` goes on,
    ``error`` stops with the block (filter.json and all before it stay: the run resumes),
    ``skip_hard`` skips the hard step. Returns why round ``r`` trains no hard step (soft steps
    only, or a collapse under ``skip_hard``), or None."""
    cfg = ctx.cfg
    soft_only = cfg.no_hard_step()
    if not findings:
        return soft_only
    msg = (
        f"round {r}: the pseudo labels collapsed ({cfg.rule.name_setting()}, alpha = "
        f"{threshold['alpha']:g}, source_filter = {cfg.source_filter!r}):\n  - "
        + "\n  - ".join(findings)
        + "\n  a hard step on these labels teaches the student (almost) only the classes they "
        f"hold. Settings that may avoid it: {remedies(cfg)}; selftrain.on_collapse = "
        '"skip_hard" keeps the soft student as the round\'s result, "error" stops here'
    )
    ctx.collapsed.append({"round": r, "findings": findings, "action": cfg.on_collapse})
    if cfg.on_collapse == "error" and not soft_only:  # soft only: no hard step to stop
        raise CollapseError(f"{msg}\n(stopped before the hard step: resume with --resume)")
    ctx.warn(msg)
    if soft_only or cfg.on_collapse != "skip_hard":
        return soft_only
    return "the pseudo labels collapsed (on_collapse = skip_hard)"


def remedies(cfg: SelftrainSettings) -> str:
    """The settings a collapsed round may be avoided with, other than the ones in use."""
    out = cfg.rule.remedies()  # the rule's own: another rule, its grid, its parameters
    if cfg.source_filter == "confident":
        out.append('selftrain.source_filter = "correct" (the paper\'s)')
    return "; ".join(out)


def soft_lost_message(cfg: SelftrainSettings, lost: list[str], record: dict) -> str:
    """What to say when a soft step's student lost classes its teacher predicts: a student that
    learned "an entity" but not which kind, whose pseudo labels cannot hold those classes; and
    the settings that change it, the measured one first."""
    share = record.get("entity_agreement")
    kept = f" (it follows the teacher on {100 * share:.1f}% of its entity rows)" if share else ""
    fixes = cfg.soft_remedies()
    return (
        f"the soft student predicts none of {', '.join(lost)}, which its teacher gives{kept}. "
        "Settings that may avoid it: " + "; ".join(fixes)
    )
