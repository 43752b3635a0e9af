"""Classes that read attributes another module sets (issue 67: compose, don't inherit state).

For every class of the package: the ``self.X`` it reads in its methods, against what the class
and its bases define (``self.X = ...`` in a method, a class-level assignment or annotation such as
a dataclass field, a method or property, a ``__slots__`` name). Two counts:

- **undeclared**: a read that neither the class nor any base defines: the attribute comes from
  whoever subclasses or fills it (a mixin reading a subclass's state). A base outside the
  package (``nn.Module``, ``click.Group``, ``Exception``...) counts as defining everything.
- **inherited across modules**: a read of instance state (``self.X = ...``) that only a base
  class in another module of the package sets. Methods and declared fields (class-level
  annotations: a dataclass's settings) are an interface and are not counted.

    python -m tools.attribute_reads [--root xlt_engine]
"""

from __future__ import annotations

import argparse
import ast
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ClassInfo:
    module: Path
    name: str
    bases: list[str]  # as written (the last dotted part)
    imported: dict[str, str]  # name -> module it was imported from (for resolving bases)
    state: set[str] = field(default_factory=set)  # self.X = ... in its methods
    declared: set[str] = field(default_factory=set)  # class-level names, methods, properties
    reads: dict[str, int] = field(default_factory=dict)  # self.X read -> first line


def _self_targets(node: ast.AST) -> list[str]:
    """The attribute names of ``self.X`` targets (through tuples, starred, subscripts no)."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return [node.attr] if node.value.id == "self" else []
    if isinstance(node, ast.Tuple | ast.List):
        return [n for e in node.elts for n in _self_targets(e)]
    if isinstance(node, ast.Starred):
        return _self_targets(node.value)
    return []


def _imports(tree: ast.Module) -> dict[str, str]:
    out = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                out[a.asname or a.name] = node.module
    return out


def classes(root: Path) -> list[ClassInfo]:
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = _imports(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef):
                continue
            # a dotted base (nn.Dropout) is outside the package: it imports classes by name
            bases = [ast.unparse(b).split("[")[0] for b in node.bases]
            info = ClassInfo(path, node.name, bases, imported)
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    info.declared.add(item.name)
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    info.declared.add(item.target.id)
                elif isinstance(item, ast.Assign):
                    for t in item.targets:
                        for n in ast.walk(t):
                            if isinstance(n, ast.Name):
                                info.declared.add(n.id)
                elif isinstance(item, ast.ClassDef):
                    info.declared.add(item.name)
            for fn in node.body:
                if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                for n in ast.walk(fn):
                    if isinstance(n, ast.Assign):
                        for t in n.targets:
                            info.state.update(_self_targets(t))
                    elif isinstance(n, ast.AugAssign | ast.AnnAssign):
                        info.state.update(_self_targets(n.target))
                    elif (
                        isinstance(n, ast.Attribute)
                        and isinstance(n.value, ast.Name)
                        and n.value.id == "self"
                        and isinstance(n.ctx, ast.Load)
                    ):
                        info.reads.setdefault(n.attr, n.lineno)
            found.append(info)
    return found


def check(root: Path) -> tuple[list[str], list[str]]:
    """(undeclared reads, reads of state a base in another module sets), one line each."""
    by_name: dict[str, list[ClassInfo]] = {}
    for c in classes(root):
        by_name.setdefault(c.name, []).append(c)

    def resolve(c: ClassInfo, base: str) -> ClassInfo | None:
        options = [o for o in by_name.get(base, []) if o is not c]
        same = [o for o in options if o.module == c.module]
        if same:
            return same[0]
        src = c.imported.get(base)
        if src is None:
            return None
        tail = src.replace(".", "/")
        hits = [o for o in options if str(o.module.with_suffix("")).endswith(tail)]
        return hits[0] if hits else None

    def lineage(c: ClassInfo) -> tuple[list[ClassInfo], bool]:
        """The class and its package bases (depth first), and whether a base lies outside."""
        seen, order, external = set(), [], False
        todo = [c]
        while todo:
            k = todo.pop()
            if id(k) in seen:
                continue
            seen.add(id(k))
            order.append(k)
            for b in k.bases:
                if b in ("object", "Generic", "Protocol"):
                    continue
                r = resolve(k, b)
                if r is None:
                    external = True
                else:
                    todo.append(r)
        return order, external

    undeclared, inherited = [], []
    for group in by_name.values():
        for c in group:
            order, external = lineage(c)
            for attr, line in sorted(c.reads.items()):
                if attr.startswith("__") or attr in c.state or attr in c.declared:
                    continue
                owners = [k for k in order[1:] if attr in k.state or attr in k.declared]
                where = f"{c.module}:{line} {c.name}.{attr}"
                if not owners:
                    if not external:
                        undeclared.append(where)
                    continue
                if all(k.module != c.module for k in owners) and not any(
                    attr in k.declared for k in owners
                ):
                    inherited.append(f"{where} (set in {owners[0].module}: {owners[0].name})")
    return undeclared, inherited


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=Path("xlt_engine"))
    args = p.parse_args()
    undeclared, inherited = check(args.root)
    print(f"attributes read that the class and its bases never set: {len(undeclared)}")
    for line in undeclared:
        print(f"  {line}")
    print(f"instance state read that only a base in another module sets: {len(inherited)}")
    for line in inherited:
        print(f"  {line}")


if __name__ == "__main__":
    main()
