"""Who reads each self-training setting, counted from the source (issue 67): for every setting
of ``[selftrain]`` and ``[selftrain.rule]``, the package files that read it by name, the files
that declare it, the generic movers and the files that only carry settings.

A file reads a setting by name when it holds one of:

- an attribute of a settings object (``cfg.soft_loss``, ``rule.name``) or ``getattr`` with the
  name as a literal, or the name as a keyword of ``dataclasses.replace`` / ``with_section(cfg,
  "selftrain", ...)`` / ``with_rule`` on one;
- the dotted key in a string: a message or a dict key (``"selftrain.soft_loss"``,
  ``"selftrain.rule.name"``); not in a docstring. A sub-table (``rule``, ``soft``, ``hard``)
  is not itself a setting: its fields are.

What is a settings object is inferred within each function, without running anything: a
parameter annotated with a self-training settings class (``SelftrainSection``,
``SelftrainSettings``; ``SelftrainConfig``, the method's config, for the settings it inherits, not
the paths a stage makes from ``base`` and ``teacher``) or a rule class (``PseudoRule`` and the registered
rules), ``ctx.cfg`` of a ``SelftrainContext``, ``cfg.section(SelftrainSection)``, ``<one>.rule``,
``make_rule(...)``, ``self`` in those classes' own methods, and names (or ``self.<name>`` in a
class's methods, or a dataclass field) assigned from or annotated as any of these. A setting is
declared by the table's classes (``SelftrainSection`` and its bases, the rule classes).
A generic mover passes a settings object whole to a fixed list of functions that read no
setting by name (``settings_of``, ``flat``, ``dataclasses.asdict`` / ``fields`` /
``replace`` without keywords); a file that calls a settings object's own method
(``rule.select(...)``, ``rule.describe()``) uses it through its API, naming no setting; a
carrier holds settings objects and neither reads, moves nor calls any. ``ExperimentConfig`` references in ``engine/method`` and ``engine/train`` are counted too.

    python -m tools.setting_readers [--root .] [--all]
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import re
from pathlib import Path

SETTINGS = {"SelftrainSection", "SelftrainSettings"}  # the [selftrain] table's classes
METHOD = {"SelftrainConfig"}  # the method's config: the table's settings (inherited) and the
# inputs a stage derives from them (``teacher``: a path, from the table's model name)
KINDS = ("sel", "cfg", "rule")  # settings objects (not the context that holds one)
SHARED = {"BatchSettings", "FreezeSettings", "FreezeOverride"}  # bases of the section: their
# own methods read its fields (``self`` only: other stages' settings share these classes)
CONTEXT = {"SelftrainContext"}  # its ``cfg`` is the run's SelftrainConfig
BASE_RULE = {"name", "threshold", "alpha", "grid"}  # PseudoRule's fields: every rule has them
MOVERS = {"settings_of", "flat", "asdict", "fields", "replace", "astuple"}
LOWER = ("xlt_engine/engine/method/", "xlt_engine/engine/train/")


def setting_names() -> tuple[list[str], list[str], set[str], set[str]]:
    """The ``[selftrain]`` settings, the ``[selftrain.rule]`` settings (every registered rule's
    fields), the rule classes' names, and the table's settings the method's config does not
    inherit (``base``, ``teacher``: it holds paths made from them)."""
    from xlt_engine.engine.experiment.stages.selftrain import SelftrainSection
    from xlt_engine.engine.method.rules import rule_class, rule_names
    from xlt_engine.engine.method.selftrain import SelftrainConfig

    tables = {"rule", "soft", "hard"}  # sub-tables ([selftrain.rule]...): their fields count
    sel = [f.name for f in dataclasses.fields(SelftrainSection) if f.name not in tables]
    rules = [rule_class(n) for n in rule_names()]
    rule = sorted({f.name for r in rules for f in dataclasses.fields(r)})
    inherited = {f.name for f in dataclasses.fields(SelftrainConfig)} & {
        f.name for f in dataclasses.fields(SelftrainSection)
    }
    own = {n for n in sel if n not in inherited or n in ("base", "teacher")}
    return sel, rule, {r.__name__ for r in rules} | {"PseudoRule"}, own


class Reader(ast.NodeVisitor):
    """One file's reads (dotted keys), moves and settings-object sightings."""

    def __init__(
        self,
        sel_fields: set[str],
        rule_fields: set[str],
        rule_classes: set[str],
        section_only: set[str] = frozenset(),
    ):
        self.sel_fields, self.rule_fields, self.rule_classes = sel_fields, rule_fields, rule_classes
        self.method_fields = sel_fields - section_only  # what SelftrainConfig inherits
        self.reads: dict[str, list[int]] = {}
        self.moves: list[int] = []
        self.uses: list[int] = []  # calls of a settings object's own methods
        self.holds = 0  # settings objects seen
        self.scopes: list[dict[str, str]] = [{}]  # name -> "sel" | "cfg" | "rule" | "ctx"
        self.classes: list[str] = []
        self.members: dict[str, dict[str, str]] = {}  # class -> self.<attr> -> kind

    # --- what an expression is -------------------------------------------------------------
    def kind_of_annotation(self, ann) -> str | None:
        if ann is None:
            return None
        text = ast.unparse(ann)
        words = set(re.findall(r"[A-Za-z_]\w*", text))
        if words & SETTINGS:
            return "sel"
        if words & METHOD:
            return "cfg"
        if words & self.rule_classes:
            return "rule"
        if words & CONTEXT:
            return "ctx"
        return None

    def kind(self, node) -> str | None:
        if isinstance(node, ast.Name):
            for scope in reversed(self.scopes):
                if node.id in scope:
                    return scope[node.id]
            return None
        if isinstance(node, ast.Attribute):
            mine = self.members.get(self.classes[-1], {}) if self.classes else {}
            if isinstance(node.value, ast.Name) and node.value.id == "self" and node.attr in mine:
                return mine[node.attr]  # self.ctx = ctx in __init__, read in another method
            base = self.kind(node.value)
            if base == "ctx" and node.attr == "cfg":
                return "cfg"
            if base in ("sel", "cfg") and node.attr == "rule":
                return "rule"
            return None
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
            if name == "section" and node.args and ast.unparse(node.args[0]) in SETTINGS:
                return "sel"
            if name in ("make_rule", "switch_rule"):
                return "rule"
            if name in SETTINGS:
                return "sel"
            if name in METHOD:
                return "cfg"
            if name in self.rule_classes:
                return "rule"
        return None

    def read(self, key: str, line: int) -> None:
        self.reads.setdefault(key, []).append(line)

    # --- scopes ------------------------------------------------------------------------------
    def visit_ClassDef(self, node):
        self.classes.append(node.name)
        for stmt in node.body:  # a settings class's own fields are declarations, not reads
            self.visit(stmt)
        self.classes.pop()

    def visit_FunctionDef(self, node):
        scope = {}
        args = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
        for a in args:
            if k := self.kind_of_annotation(a.annotation):
                scope[a.arg] = k
        if args and args[0].arg == "self" and self.classes:
            own = self.classes[-1]
            if own in SETTINGS | SHARED:
                scope["self"] = "sel"
            elif own in METHOD:
                scope["self"] = "cfg"
            elif own in self.rule_classes:
                scope["self"] = "rule"
            elif own in CONTEXT:
                scope["self"] = "ctx"
        self.holds += len(scope)
        self.scopes.append(scope)
        for stmt in node.body:
            self.visit(stmt)
        self.scopes.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def bind(self, target, value) -> None:
        if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple):
            for t, v in zip(target.elts, value.elts, strict=False):  # a, b = x.cfg, x.device
                self.bind(t, v)
        elif (
            isinstance(target, ast.Attribute)
            and isinstance(target.value, ast.Name)
            and target.value.id == "self"
            and self.classes
            and (k := self.kind(value))
        ):
            self.members.setdefault(self.classes[-1], {})[target.attr] = k
            self.holds += 1
        elif isinstance(target, ast.Name):
            if k := self.kind(value):
                self.scopes[-1][target.id] = k
                self.holds += 1
            else:
                self.scopes[-1].pop(target.id, None)
        else:
            self.visit(target)

    def visit_Assign(self, node):
        self.visit(node.value)
        for t in node.targets:
            self.bind(t, node.value)

    def visit_Expr(self, node):  # a docstring is not a message
        if not (isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
            self.generic_visit(node)

    def visit_AnnAssign(self, node):
        if node.value is not None:
            self.visit(node.value)
        k = self.kind_of_annotation(node.annotation) or (node.value and self.kind(node.value))
        if not (isinstance(node.target, ast.Name) and k):
            return
        if self.classes and len(self.scopes) == 1:  # a class body's field (a dataclass's)
            self.members.setdefault(self.classes[-1], {})[node.target.id] = k
        else:
            self.scopes[-1][node.target.id] = k
        self.holds += 1

    # --- reads -------------------------------------------------------------------------------
    def attr_key(self, base_kind: str | None, attr: str) -> str | None:
        if base_kind == "cfg" and attr in self.method_fields:  # an inherited table setting
            return f"selftrain.{attr}"
        if base_kind == "sel" and attr in self.sel_fields:
            return f"selftrain.{attr}"
        if base_kind == "rule" and attr in self.rule_fields:
            return f"selftrain.rule.{attr}"
        return None

    def visit_Attribute(self, node):
        if key := self.attr_key(self.kind(node.value), node.attr):
            self.read(key, node.lineno)
        self.generic_visit(node)

    def visit_Call(self, node):
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
        first = node.args[0] if node.args else None
        k = self.kind(first) if first is not None else None
        if name == "getattr" and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant):
            if key := self.attr_key(k, str(node.args[1].value)):
                self.read(key, node.lineno)
        elif name == "replace" and k and node.keywords:
            for kw in node.keywords:
                if kw.arg and (key := self.attr_key(k, kw.arg)):
                    self.read(key, node.lineno)
        elif name == "with_section" and len(node.args) >= 2:
            if ast.unparse(node.args[1]) in ("'selftrain'", '"selftrain"'):
                for kw in node.keywords:
                    if kw.arg and kw.arg in self.sel_fields:
                        self.read(f"selftrain.{kw.arg}", node.lineno)
        elif name == "with_rule":
            for kw in node.keywords:
                if kw.arg and kw.arg in self.rule_fields:
                    self.read(f"selftrain.rule.{kw.arg}", node.lineno)
        own = self.kind(f.value) if isinstance(f, ast.Attribute) else None
        if own in KINDS and self.attr_key(own, f.attr) is None:  # rule.select(...): a use
            self.uses.append(node.lineno)
        whole = not (name == "replace" and node.keywords)  # replace(x, a=1) names a
        if name in MOVERS and whole and any(self.kind(a) in KINDS for a in node.args):
            self.moves.append(node.lineno)
        self.generic_visit(node)

    def visit_Constant(self, node):
        if not isinstance(node.value, str):
            return
        for m in re.finditer(r"selftrain\.rule\.(\w+)", node.value):
            if m.group(1) in self.rule_fields:
                self.read(f"selftrain.rule.{m.group(1)}", node.lineno)
        for m in re.finditer(r"selftrain\.(\w+)\b(?!\.)", node.value):
            if m.group(1) in self.sel_fields:
                self.read(f"selftrain.{m.group(1)}", node.lineno)


def declarations(trees: dict[str, ast.AST], sel: list[str], rule: list[str], classes: set[str]):
    """Setting -> the files whose settings classes declare it (a class-body field)."""
    out: dict[str, set[str]] = {}
    for f, tree in trees.items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef):
                continue
            kind = "sel" if node.name in SETTINGS | {"BatchSettings", "FreezeOverride"} else None
            kind = "rule" if node.name in classes else kind
            if kind is None:
                continue
            for stmt in node.body:
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                    name = stmt.target.id
                    if kind == "rule" and node.name != "PseudoRule" and name in BASE_RULE:
                        continue  # a rule's own default (its name), not a new setting
                    if kind == "sel" and name in sel:
                        out.setdefault(f"selftrain.{name}", set()).add(f)
                    if kind == "rule" and name in rule:
                        out.setdefault(f"selftrain.rule.{name}", set()).add(f)
    return out


def count(root: Path):
    """Per setting: the reader files and the declaring files; the movers, the carriers and the
    ``ExperimentConfig`` references below the experiment layer."""
    sel, rule, classes, section_only = setting_names()
    pkg = root / "xlt_engine"
    trees = {
        str(p.relative_to(root)): ast.parse(p.read_text(encoding="utf-8"))
        for p in sorted(pkg.rglob("*.py"))
    }
    readers: dict[str, set[str]] = {f"selftrain.{s}": set() for s in sel}
    readers |= {f"selftrain.rule.{s}": set() for s in rule}
    movers, users, carriers, below = {}, {}, [], []
    for f, tree in trees.items():
        r = Reader(set(sel), set(rule), classes, section_only)
        r.visit(tree)
        for key in r.reads:
            readers.setdefault(key, set()).add(f)
        if r.moves:
            movers[f] = r.moves
        if r.uses and not r.reads:
            users[f] = r.uses
        if r.holds and not r.reads and not r.moves and not r.uses:
            carriers.append(f)
        if f.startswith(LOWER):
            below += [f"{f}:{n.lineno}" for n in ast.walk(tree)
                      if isinstance(n, ast.Name) and n.id == "ExperimentConfig"]  # fmt: skip
    declared = declarations(trees, sel, rule, classes)
    return readers, declared, movers, users, carriers, below


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=Path("."))
    p.add_argument("--all", action="store_true", help="list every setting's readers")
    args = p.parse_args()
    readers, declared, movers, users, carriers, below = count(args.root.resolve())
    most = max(len(v) for v in readers.values())
    print(f"self-training settings: {len(readers)}; readers per setting at most {most}")
    for key in sorted(readers, key=lambda k: (-len(readers[k]), k)):
        files = readers[key] - declared.get(key, set())
        if args.all or len(readers[key]) == most or len(readers[key]) > 3:
            print(f"  {key}: {len(readers[key])} reader file(s): {', '.join(sorted(readers[key]))}"
                  + (f" (outside its declaration: {len(files)})" if files != readers[key] else ""))  # fmt: skip
    counts = [len(declared.get(k, ())) for k in readers]
    print(f"declarations per setting: at most {max(counts)}, at least {min(counts)}"
          + "".join(f"\n  {k}: {', '.join(sorted(v))}" for k, v in declared.items() if len(v) > 1))  # fmt: skip
    print(f"generic movers: {len(movers)}"
          + "".join(f"\n  {f} (lines {', '.join(map(str, v))})" for f, v in movers.items()))  # fmt: skip
    print(f"files that use settings only through their methods: {len(users)}"
          + "".join(f"\n  {f} (lines {', '.join(map(str, v))})" for f, v in users.items()))  # fmt: skip
    print(f"carrier-only files: {len(carriers)}" + "".join(f"\n  {f}" for f in carriers))
    print(f"ExperimentConfig references in engine/method and engine/train: {len(below)}"
          + "".join(f"\n  {x}" for x in below))  # fmt: skip


if __name__ == "__main__":
    main()
