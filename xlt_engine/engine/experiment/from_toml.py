"""TOML tables -> the config tree's frozen dataclasses (``experiment.config``): each value
converted to its field's type (literals, unions, tuples, nested dataclasses, the pseudo-label
rule's table), every problem collected with its dotted key rather than the first raised, and
``--set key=value`` overrides parsed and applied to the table before it is built."""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
import warnings
from typing import Literal

import tomllib

from xlt_engine.engine.method.rules import PseudoRule, rule_class, rule_names, switch_rule


def _type_name(tp) -> str:
    if typing.get_origin(tp) is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "none")


def _convert(tp, value, key: str, problems: list[str]):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if value is None and len(inner) < len(args):  # unset (null in a stage's config.json)
            return None
        for candidate in inner:  # the first type that takes the value (int | "all")
            trial: list[str] = []
            converted = _convert(candidate, value, key, trial)
            if not trial:
                return converted
        if len(inner) == 1:
            problems.extend(trial)
        else:
            names = " or ".join(_type_name(a) for a in inner)
            problems.append(f"{key}: expected {names}, got {value!r}")
        return None
    if origin is Literal:  # its choices are checked by the section (check_choices)
        return _convert(type(args[0]), value, key, problems)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            problems.append(f"{key}: expected a table, got {value!r}")
            return None
        return build_table(tp, value, key + ".", problems)
    if origin is tuple:
        if not isinstance(value, list):
            problems.append(f"{key}: expected a list, got {value!r}")
            return None
        return tuple(_convert(args[0], v, f"{key}[{i}]", problems) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{key}: expected a table, got {value!r}")
            return None
        return {k: _convert(args[1], v, f"{key}.{k}", problems) for k, v in value.items()}
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):  # TOML reads inf and nan: no setting means them
                problems.append(f"{key}: expected a finite number, got {value!r}")
                return None
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp in (str, bool):
        if isinstance(value, tp):
            return value
    else:
        raise TypeError(f"config type {tp} is not supported")
    problems.append(f"{key}: expected {_type_name(tp)}, got {value!r}")
    return None


def build_table(cls, table: dict, prefix: str, problems: list[str], base=None, given=None):
    """``cls`` from ``table`` (its problems added to ``problems``; None when it cannot be
    built); ``given``: fields built already (an experiment's stage sections)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    given = given or {}
    n_before = len(problems)
    blocked = False  # a required setting missing or a value of the wrong type: not built
    hidden = getattr(cls, "HIDDEN_KEYS", ())  # the experiment's name and built sections
    moved = getattr(cls, "MOVED", {})
    for k in table:
        if k in moved:
            home = moved[k].rsplit(".", 1)[0]
            problems.append(f"{prefix}{k}: now {prefix}{moved[k]} (the [{prefix}{home}] table)")
        elif k not in fields or k in hidden:
            extra = cls.extra_keys() if hasattr(cls, "extra_keys") else ()
            known = ", ".join([*(n for n in fields if n not in hidden), *extra])
            problems.append(f"{prefix}{k}: unknown key (known here: {known})")
    kwargs = dict(given)
    for name, f in fields.items():
        if name in given or name in hidden:
            continue
        if name not in table:
            no_default = (
                f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            )
            if no_default and base is None:
                problems.append(f"{prefix}{name}: missing")
                blocked = True
            continue
        default = None
        if _is_rule(hints[name]):  # [selftrain.rule]: its name says which class it builds
            kwargs[name] = _build_rule(table[name], f"{prefix}{name}", problems, base, f)
            continue
        if dataclasses.is_dataclass(hints[name]) and isinstance(table[name], dict):
            if f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            if base is not None:
                default = getattr(base, name)
        if default is not None:  # a section starts from its default values (e.g. lr per stage)
            kwargs[name] = build_table(
                hints[name], table[name], f"{prefix}{name}.", problems, default
            )
            if kwargs[name] is None:  # reported: its default stands in, so that this
                kwargs[name] = default  # section's own values are still checked below
        else:
            n = len(problems)
            value = _convert(hints[name], table[name], prefix + name, problems)
            if len(problems) == n:
                kwargs[name] = value
            elif base is None and not _has_default(cls, name):
                blocked = True  # else its default stands in, so that the others are checked
    if blocked:
        return None
    built = _construct(cls, base, kwargs, prefix, problems)
    return built if len(problems) == n_before else None


def _is_rule(tp) -> bool:
    return isinstance(tp, type) and issubclass(tp, PseudoRule)


def _build_rule(value, key: str, problems: list[str], base, field_) -> PseudoRule:
    """A pseudo-label rule from its table: ``name`` picks the rule (``method.rules``), the other
    keys are its settings (the alpha settings every rule has, and its own); a rule switched by
    name keeps the alpha settings it is switched from."""
    start = getattr(base, field_.name) if base is not None else field_.default_factory()
    if not isinstance(value, dict):
        problems.append(f"{key}: expected a table, got {value!r}")
        return start
    name = value.get("name", start.name)
    try:
        cls = rule_class(name)
    except ValueError as err:
        problems.append(f"{key}.name: {err}")
        return start
    if type(start) is not cls:
        start = switch_rule(start, name)
    own = {f.name for f in dataclasses.fields(cls)}
    for k in [k for k in value if k not in own]:  # another rule's setting: say whose
        whose = [
            n for n in rule_names() if k in {f.name for f in dataclasses.fields(rule_class(n))}
        ]
        if whose:
            problems.append(
                f"{key}.{k}: a setting of the rule {' / '.join(whose)}, not of "
                f"{name!r} ({key}.name)"
            )
            value = {x: v for x, v in value.items() if x != k}
    built = build_table(cls, value, key + ".", problems, start)
    return start if built is None else built


def _construct(cls, base, kwargs: dict, prefix: str, problems: list[str]):
    """``cls(**kwargs)`` (or ``base`` with ``kwargs`` replaced); each problem its checks find
    is added to ``problems``: a setting named by a problem goes back to its default and the
    others are checked again, so one pass reports every bad value of a section."""
    where = prefix.rstrip(".") or "config"
    kwargs = dict(kwargs)
    start = base if base is not None else None
    for _ in range(len(kwargs) + 1):
        try:
            return dataclasses.replace(start, **kwargs) if start is not None else cls(**kwargs)
        except (ValueError, TypeError) as err:
            problems.append(f"{where}: {err}")
            named = [k for k in kwargs if re.match(rf"{re.escape(k)}\b", str(err))]
            if not named or (start is None and not _has_default(cls, named[0])):
                return None
            kwargs.pop(named[0])  # its default (or the base's value) stands in
    return None


def _has_default(cls, name: str) -> bool:
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def parse_override(item: str) -> tuple[list[str], object]:
    """``a.b.c=value`` -> (["a", "b", "c"], value read as TOML, else the raw string)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ValueError(
            f"--set {item!r}: expected key=value with a dotted key, e.g. btf.train.lr=1e-5"
        )
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.split("."), value


def apply_overrides(table: dict, overrides: list[str]) -> dict:
    """``overrides`` (``--set`` items, in order) set in ``table``. A key set twice keeps the
    last value, as a shell script that adds its caller's ``--set`` after its own expects, with
    a warning that names both."""
    seen: dict[str, str] = {}
    for item in overrides:
        path, value = parse_override(item)
        key = ".".join(path)
        if key in seen:
            warnings.warn(
                f"--set {key} is given twice: {item!r} replaces {seen[key]!r}", stacklevel=2
            )
        seen[key] = item
        node = table
        for i, part in enumerate(path[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {item!r}: {'.'.join(path[: i + 1])} is not a table")
        node[path[-1]] = value
    return table
