"""Apply a pre-registered preset decision to two arms of lab/study.py reports: the preset as
shipped (``--base``) and the preset with one change (``--variant``). The rules are the ones
written in lab/results/cls_btf_cause_20261128/README.md before their rows ran; this module only
reads them off the records, so the verdict is the same whoever runs it.

- ``cls``: Ours' test accuracy over (de, fr) x seeds 1-3. The variant is adopted when its mean
  is at least 0.25 points above the base's; 0.25 or more below keeps the base; in between is a
  tie, adopted only when the variant's - ST mean is higher and its Ours seed std not larger.
- ``conll``: Ours' target dev entity F1 (the last self-training step's dev check in the report's
  ``details``) over (esp, ned) x seeds 1-3, margin 0.5; a tie keeps the base.
- ``cls_rule`` (lab/results/cls_rule_prereg_20261129.md): one arm's two rows, not two arms of
  a preset. The row ``rule = class_quota`` against Ours (the paper's rule) of the same runs
  (same settings; the two rows share round 1's soft student), test accuracy over (de, fr) x
  seeds 1-3, margin 0.25; a tie keeps the paper's rule. Ours is read only from the reports
  that hold the class_quota row (each cell beside its twin); ``--variant`` may be left out:
  the base's reports are read for both rows.
- ``conll_rule`` (lab/results/conll_rule_prereg_20261130.md): the same pairing on CoNLL at full
  size, read like ``conll``: the class_quota row's target dev entity F1 (its last self-training
  step) against Ours' of the same runs over (esp, ned) x seeds 1-3, margin 0.5; a tie keeps the
  paper's rule.

Prints each arm's cells and means (and, where the reports record it, the precision each Ours
cell ran in), what the arms differ by, and the verdict. Exit status 0 when the rule decides, 3
when a cell it reads is missing (the missing cells are named), 2 on bad input.

    python -m lab.decide cls --base lab/results/cls_cpu_full_20261127/reports/*.json \
      --variant lab/results/cls_warm_st_20261128/reports/*.json
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from lab import tables


@dataclass(frozen=True)
class Rule:
    targets: tuple[str, ...]
    seeds: tuple[int, ...]
    margin: float  # points (%)
    metric: str  # "test": the report's row score; "dev": the last self-training dev check
    tie: str  # "st_and_std": - ST higher and Ours std not larger adopts; "keep": the base stays
    variant_row: str = "Ours"  # another row: the variant is that row of the base's own runs

    @property
    def paired(self) -> bool:
        """The variant is another row of the base's own runs (each cell beside its twin)."""
        return self.variant_row != "Ours"


RULES = {
    "cls": Rule(("de", "fr"), (1, 2, 3), 0.25, "test", "st_and_std"),
    "conll": Rule(("esp", "ned"), (1, 2, 3), 0.5, "dev", "keep"),
    "cls_rule": Rule(("de", "fr"), (1, 2, 3), 0.25, "test", "keep", "rule = class_quota"),
    "conll_rule": Rule(("esp", "ned"), (1, 2, 3), 0.5, "dev", "keep", "rule = class_quota"),
}
UNDECIDED = 3


def _step_order(folder: str) -> tuple[int, int]:
    """``selftrain/round-2/soft`` -> (2, 0); the hard step after its round's soft step."""
    m = re.fullmatch(r"[^/]+/round-(\d+)/(soft|hard)", folder)
    if not m:
        raise ValueError(f"unexpected self-training check folder {folder!r}")
    return int(m.group(1)), 0 if m.group(2) == "soft" else 1


def dev_scores(
    reports: list[tuple[Path, dict]], targets: tuple[str, ...], row: str = "Ours"
) -> dict:
    """``{target: {seed: F1}}``: per (target, seed) of ``targets`` the target dev score of
    ``row``'s last self-training step, from the ``(path, report)`` pairs' ``details`` (a pair
    given twice must agree)."""
    found: dict = {}
    for path, report in reports:
        if row not in report["rows"]:
            continue
        for d in report["details"]:
            target = d["pair"].split("-")[-1]
            if target not in targets:
                continue
            steps = [
                (name, check)
                for name, check in d.get("checks", {}).items()
                if row in tables.rows_of(name, d, report["rows"])
            ]
            if not steps:
                continue
            name, last = max(steps, key=lambda s: _step_order(s[0]))
            dev = last.get("dev", {}).get(target)
            if dev is None:
                raise ValueError(
                    f"{path}: seed {d['seed']} {d['pair']}: {name} has no {target} dev check "
                    f"(it has {sorted(last.get('dev', {}))})"
                )
            had = found.setdefault(target, {}).get(d["seed"])
            if had is not None and abs(had - dev["score"]) > 1e-9:
                raise ValueError(
                    f"{path}: {row} {target} seed {d['seed']} dev is {dev['score']}, before {had}"
                )
            found[target][d["seed"]] = dev["score"]
    return found


@dataclass
class Arm:
    label: str
    settings: tuple
    ours: dict  # {target: {seed: score}}: the row the rule reads (``row``)
    st: dict
    precision: dict  # {target: {seed: "bf16" | "fp32" | "bf16, fp32"}}: Ours' cells, as recorded
    row: str = "Ours"
    report: dict = field(default_factory=dict)  # the first report read (its settings stand for all)


def ours_precision(
    reports: list[tuple[Path, dict]], targets: tuple[str, ...], row: str = "Ours"
) -> dict:
    """What each ``row`` cell's stages ran in (lab.study's ``details[].precision``, in reports
    made since 2026-11-29; older ones say nothing and their cells are left out): precision
    "auto" follows the machine, so the arms' cells may come from both."""
    found: dict = {}
    for _, report in reports:
        if row not in report["rows"]:
            continue
        for d in report["details"]:
            target = d["pair"].split("-")[-1]
            ran = {p for v in (d.get("precision") or {}).values() for p in v.split(", ")}
            if target in targets and ran:
                found.setdefault(target, {})[d["seed"]] = ", ".join(sorted(ran))
    return found


REPORT_KEYS = ("config", "overrides", "seeds", "rows", "details")


def read_arm(
    label: str,
    paths: list[Path],
    evaluated: list[str],
    rule: Rule,
    row: str = "Ours",
    only_with: str | None = None,
) -> Arm:
    """An arm's ``row`` (and - ST) cells over the reports ``paths``; with ``only_with``, only
    the reports that hold that row too are read (a paired rule: each cell beside its twin)."""
    reports = []
    for path in paths:
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not JSON ({e})") from None
        lacking = [k for k in REPORT_KEYS if k not in report]
        if lacking:
            raise ValueError(f"{path}: not a lab/study.py report (no {', '.join(lacking)})")
        if only_with is None or only_with in report["rows"]:
            reports.append((path, report))
    if not reports:
        raise ValueError(f"{label}: no report holds the row {only_with!r}")
    paths = [path for path, _ in reports]
    if rule.metric == "dev" and any(s.split(",")[0].strip() == row for s in evaluated):
        raise ValueError(f"an {row} cell evaluated apart has a test score; this rule reads dev F1")
    scores, _, _ = tables.collect(paths)  # also checks that the reports share their settings
    tables.add_evaluated(scores, evaluated)
    settings = tables.learning_settings(reports[0][1])
    ours = dev_scores(reports, rule.targets, row) if rule.metric == "dev" else scores.get(row, {})
    precision = ours_precision(reports, rule.targets, row)
    return Arm(label, settings, ours, scores.get("- ST", {}), precision, row, reports[0][1])


def cells(values: dict, rule: Rule) -> tuple[list[float], list[str]]:
    """The rule's cells that ``values`` has (in %), and the (target seed) it lacks."""
    have, missing = [], []
    for t in rule.targets:
        for s in rule.seeds:
            v = values.get(t, {}).get(s)
            if v is None:
                missing.append(f"{t} seed {s}")
            else:
                have.append(100 * v)
    return have, missing


def _summary(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.2f} (1)"
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f} ({len(values)})"


def decide(rule: Rule, base: Arm, variant: Arm) -> tuple[str, list[str]]:
    """(verdict, its reasons); verdict is ``adopt``, ``keep`` or ``undecided``."""
    b, b_missing = cells(base.ours, rule)
    v, v_missing = cells(variant.ours, rule)
    missing = [f"{base.label} {base.row} {m}" for m in b_missing]
    missing += [f"{variant.label} {variant.row} {m}" for m in v_missing]
    if missing:
        return "undecided", [f"missing: {', '.join(missing)}"]
    diff = statistics.fmean(v) - statistics.fmean(b)
    rows = base.row if base.row == variant.row else f"{variant.row} − {base.row}"
    why = [f"{rows}: {variant.label} − {base.label} = {diff:+.2f} (margin {rule.margin})"]
    eps = 1e-9
    if diff >= rule.margin - eps:
        return "adopt", why
    if diff <= -rule.margin + eps:
        return "keep", why
    why.append("within the margin: a tie")
    if rule.tie == "keep":
        return "keep", [*why, "a tie keeps the base"]
    bs, bs_missing = cells(base.st, rule)
    vs, vs_missing = cells(variant.st, rule)
    st_missing = [f"{base.label} - ST {m}" for m in bs_missing]
    st_missing += [f"{variant.label} - ST {m}" for m in vs_missing]
    if st_missing:
        return "undecided", [*why, f"the tie reads - ST; missing: {', '.join(st_missing)}"]
    st_diff = statistics.fmean(vs) - statistics.fmean(bs)
    std_b, std_v = statistics.stdev(b), statistics.stdev(v)
    why.append(f"- ST: {variant.label} − {base.label} = {st_diff:+.2f}")
    why.append(f"Ours seed std: {variant.label} {std_v:.2f}, {base.label} {std_b:.2f}")
    if st_diff > eps and std_v <= std_b + eps:
        return "adopt", why
    return "keep", why


def render(rule_name: str, rule: Rule, base: Arm, variant: Arm) -> tuple[str, str]:
    extra = [o for o in variant.settings[1] if o not in base.settings[1]]
    dropped = [o for o in base.settings[1] if o not in variant.settings[1]]
    if base.settings[0] != variant.settings[0]:
        raise ValueError(
            f"the arms use different configs: {base.settings[0]} and {variant.settings[0]}"
        )
    differ = tables.settings_differ(base.report, variant.report)
    if rule.paired and differ:
        raise ValueError(
            f"rule {rule_name} compares two rows of the same runs, and the arms' settings differ "
            f"(the {variant.label} arm adds {extra}, drops {dropped}; {'; '.join(differ)})"
        )
    if not rule.paired and not differ:
        raise ValueError("the arms have the same learning settings: nothing to decide")
    metric = "test accuracy" if rule.metric == "test" else "target dev F1, last self-training step"
    if rule.paired:
        what = f"The {variant.label} arm is the row {rule.variant_row!r} of the same runs"
    elif extra or dropped:
        what = f"The {variant.label} arm adds {extra or 'nothing'}" + (
            f" and drops {dropped}" if dropped else ""
        )
    else:  # the same command, another version of the preset
        what = f"The {variant.label} arm ran the preset with other settings: {'; '.join(differ)}"
    lines = [
        f"Rule {rule_name}: "
        + (f"{variant.row!r} against {base.row}, " if rule.paired else f"{base.row}' ")
        + f"{metric} over {', '.join(rule.targets)} x seeds "
        f"{', '.join(map(str, rule.seeds))}; config {base.settings[0]}",
        what,
        "",
        "| arm | row | "
        + " | ".join(f"{t} s{s}" for t in rule.targets for s in rule.seeds)
        + " | mean ± std (n) |",
        "|" + "---|" * (3 + len(rule.targets) * len(rule.seeds)),
    ]
    rows = [(None, "ours")] + ([("- ST", "st")] if rule.tie == "st_and_std" else [])
    for arm in (base, variant):
        for row, attr in rows:
            row = row or arm.row
            values = getattr(arm, attr)
            cell = [
                f"{100 * values[t][s]:.2f}" if s in values.get(t, {}) else "–"
                for t in rule.targets
                for s in rule.seeds
            ]
            have, _ = cells(values, rule)
            lines.append(f"| {arm.label} | {row} | " + " | ".join(cell) + f" | {_summary(have)} |")
    if base.precision or variant.precision:  # said only where a report records it
        for arm in (base, variant):
            cell = [arm.precision.get(t, {}).get(s, "?") for t in rule.targets for s in rule.seeds]
            lines.append(f"| {arm.label} | {arm.row} ran in | " + " | ".join(cell) + " | |")
    verdict, why = decide(rule, base, variant)
    lines += ["", *(f"- {w}" for w in why), "", f"Verdict: {verdict}"]
    return "\n".join(lines), verdict


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("rule", choices=sorted(RULES))
    p.add_argument("--base", nargs="+", type=Path, required=True, help="the shipped arm's reports")
    p.add_argument(
        "--variant",
        nargs="+",
        type=Path,
        help="the changed arm's (cls_rule: the base's when left out)",
    )
    p.add_argument(
        "--base-evaluated",
        action="append",
        default=[],
        metavar="ROW,TARGET,SEED=R",
        help="a base cell evaluated apart (lab.tables --evaluated); repeatable",
    )
    p.add_argument(
        "--variant-evaluated",
        action="append",
        default=[],
        metavar="ROW,TARGET,SEED=R",
        help="a variant cell evaluated apart; repeatable",
    )
    p.add_argument("--base-label", default="shipped")
    p.add_argument("--variant-label", default="variant")
    args = p.parse_args(argv)
    rule = RULES[args.rule]
    if args.variant is None:
        if not rule.paired:
            p.error(f"rule {args.rule} compares two arms: --variant is required")
        args.variant = args.base
    only_with = rule.variant_row if rule.paired else None
    try:
        base = read_arm(args.base_label, args.base, args.base_evaluated, rule, only_with=only_with)
        variant = read_arm(
            args.variant_label,
            args.variant,
            args.variant_evaluated,
            rule,
            rule.variant_row,
            only_with=only_with,
        )
        text, verdict = render(args.rule, rule, base, variant)
    except (ValueError, OSError) as e:
        print(f"lab.decide: {e}", file=sys.stderr)
        return 2
    print(text)
    return UNDECIDED if verdict == "undecided" else 0


if __name__ == "__main__":
    sys.exit(main())
