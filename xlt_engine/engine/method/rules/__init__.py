"""Pseudo-label rules, one module each (``base.PseudoRule``: the paper's;
``per_class_precision.PerClassPrecision``, ``class_quota.ClassQuota``,
``entity_curve.EntityCurve``), registered by name in this order: the ``[selftrain.rule]``
table's ``name``. A rule of one's own is one class in one module (``base`` says how;
docs/manual.md, "Pseudo-label rules")."""

import importlib

from xlt_engine.engine.method.rules.base import (
    PseudoRule,
    RuleContext,
    SourceRows,
    make_rule,
    register_rule,
    rule_class,
    rule_names,
    switch_rule,
    unregister_rule,
    wilson_lower,
)

BUILT_IN = ("per_class_precision", "class_quota", "entity_curve")  # modules, in this order
for _module in BUILT_IN:
    importlib.import_module(f"{__name__}.{_module}")

__all__ = [
    "PseudoRule",
    "RuleContext",
    "SourceRows",
    "make_rule",
    "register_rule",
    "rule_class",
    "rule_names",
    "switch_rule",
    "unregister_rule",
    "wilson_lower",
]
