"""The code a stage's result comes from, as its fingerprint records it (issue 67).

A plug-in stage: its runner's module and the sha256 of that module's file. An engine stage:
the engine's version and a digest of each package module its result can depend on: the module
its runner is defined in and what it imports, transitively (imports under ``if TYPE_CHECKING:``
are never run and do not count; a package that loads its siblings by name, as
``rules/__init__.py`` loads the built-in rules, counts all of them), and the module that plans
it, and each module of the config's ``plugins`` that registered a rule, a task format or a model
family into a registry that code reaches. The command line, the reports, the studies and the
planning machinery are outside every stage's closure, so editing them keeps every result;
editing the model, a kernel, the loop or a stage's method makes the next run name the files
that changed, like a changed setting (``runs.StagePlan.differences``). ``xlt-engine
accept-code`` takes a change one judges harmless (``accept``)."""

from __future__ import annotations

import ast
import functools
import sys
from collections.abc import Iterable
from pathlib import Path

from xlt_engine.engine.experiment import registry
from xlt_engine.fileio import file_sha256

PACKAGE = "xlt_engine"


def module_name(path: Path, root: Path) -> str:
    """``root/a/b/c.py`` -> ``a.b.c`` (a package's ``__init__.py`` -> the package)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def type_only(tree: ast.AST) -> set[int]:
    """The ids of the nodes under ``if TYPE_CHECKING:`` (``typing.TYPE_CHECKING`` too)."""
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in (
            "TYPE_CHECKING",
            "typing.TYPE_CHECKING",
        ):
            ids |= {id(n) for child in node.body for n in ast.walk(child)}
    return ids


def _loads_siblings(node: ast.AST) -> bool:
    """``importlib.import_module(f"{__name__}.{...}")``: a package loading its own modules."""
    if not (isinstance(node, ast.Call) and ast.unparse(node.func).endswith("import_module")):
        return False
    arg = node.args[0] if node.args else None
    return (
        isinstance(arg, ast.JoinedStr)
        and bool(arg.values)
        and isinstance(arg.values[0], ast.FormattedValue)
        and ast.unparse(arg.values[0].value) == "__name__"
    )


def _imports(mod: str, path: Path, modules: dict) -> list[tuple[str, str | None]]:
    """The ``(module, name)`` pairs ``mod`` imports when run (``name`` None: the whole module,
    as ``import m`` or a package loading its own modules), absolute, within ``modules``."""
    is_pkg = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = type_only(tree)
    out: list[tuple[str, str | None]] = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = mod.split(".") if is_pkg else mod.split(".")[:-1]
                here = here[: len(here) - node.level + 1]
                base = ".".join([*here, base] if base else here)
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.append((sub, None) if sub in modules else (base, a.name))
        elif is_pkg and _loads_siblings(node):
            out += [(m, None) for m in modules if m.startswith(f"{mod}.")]
    return [(m, n) for m, n in out if m in modules and m != mod]


def import_graph(pkg: Path, root: Path, precise: bool = False) -> dict[str, set[str]]:
    """For each module of the package folder ``pkg`` (named from ``root``), the package modules
    it imports when run: module- and function-level imports, relative ones resolved, not those
    under ``if TYPE_CHECKING:``; a package that loads its own modules by name imports them all.

    ``precise``: what the code can call rather than what Python runs. ``from pkg import name``,
    where ``pkg/__init__.py`` only passes ``name`` on from a module of its own, imports that
    module, not the package (whose other modules the importer never calls: ``kernels`` holds
    every kernel), unless the package loads its own modules by name (a registry: which rule runs
    depends on all of them)."""
    modules = {module_name(p, root): p for p in sorted(pkg.rglob("*.py"))}
    imports = {mod: _imports(mod, path, modules) for mod, path in modules.items()}
    passes_on = {  # package -> {name: the module of its own that defines it}
        mod: {n: m for m, n in found if n is not None and m.startswith(f"{mod}.")}
        for mod, found in imports.items()
        if modules[mod].name == "__init__.py"
    }
    registry_like = {
        mod
        for mod, found in imports.items()
        if mod in passes_on and any(n is None and m.startswith(f"{mod}.") for m, n in found)
    }
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, found in imports.items():
        for target, name in found:
            home = passes_on.get(target, {}).get(name) if precise and name else None
            if home is None or target in registry_like:
                graph[mod].add(target)
            if home is not None:
                graph[mod].add(home)
    return graph


def closure(graph: dict[str, set[str]], start: Iterable[str]) -> set[str]:
    """The modules ``start`` imports, transitively, itself included."""
    seen: set[str] = set()
    todo = [m for m in start if m in graph]
    while todo:
        mod = todo.pop()
        if mod not in seen:
            seen.add(mod)
            todo.extend(graph[mod] - seen)
    return seen


@functools.cache
def _engine_graph() -> tuple[Path, dict[str, set[str]]]:
    pkg = Path(sys.modules[PACKAGE].__file__).resolve().parent
    return pkg.parent, import_graph(pkg, pkg.parent, precise=True)


# the registries of plug-in pieces other than stages: a stage whose code reaches a registry's
# module depends on every piece registered there, the plug-ins' too
REGISTRIES = (
    "xlt_engine.engine.method.rules.base",  # pseudo-label rules
    "xlt_engine.data.formats",  # task-file formats
    "xlt_engine.model.families",  # model families
)


def plugin_code(files: dict, plugins: Iterable[str]) -> dict[str, str]:
    """For each module of the config's ``plugins`` (or under one of them) that registered a
    rule, format or family into a registry the engine ``files`` hold (``engine_code``), the
    sha256 of its file (the module alone, not what it imports), keyed by module name; a module
    without a file: ``"(no file)"``. Pieces other code registered in the process do not count:
    a run's code is what its config names."""
    named = tuple(plugins)
    import importlib

    out = {}
    for registry_module in REGISTRIES:
        if f"{registry_module.replace('.', '/')}.py" not in files:
            continue
        for mod in importlib.import_module(registry_module).registered_modules():
            if mod in out or not any(mod == p or mod.startswith(f"{p}.") for p in named):
                continue
            where = getattr(sys.modules.get(mod), "__file__", None)
            out[mod] = file_sha256(where) if where and Path(where).is_file() else "(no file)"
    return dict(sorted(out.items()))


@functools.cache
def engine_code(runner: str, also: str | None = None) -> dict:
    """The engine's version and, for the module ``runner``, each package module it imports
    (transitively) and the module ``also`` (not what ``also`` imports): the first 16 hex digits
    of each file's sha256, keyed by its path inside the package. Read once a process: the code
    a process runs is the code it imported, and a file edited after that does not change it (a
    process that re-imports edited modules, say with ``importlib.reload``, calls
    ``engine_code.cache_clear()``)."""
    from xlt_engine import __version__

    root, graph = _engine_graph()
    files = {}
    for mod in sorted(closure(graph, [runner]) | ({also} & set(graph) if also else set())):
        parts = mod.split(".")
        path = root.joinpath(*parts).with_suffix(".py")
        if not path.is_file():
            path = root.joinpath(*parts, "__init__.py")
        files[path.relative_to(root).as_posix()] = file_sha256(path)[:16]
    return {"engine": __version__, "files": files}


def stage_code(stage: str, plugins: Iterable[str] = ()) -> dict | None:
    """What identifies the code of ``stage``'s result (module docstring): for a plug-in, its
    runner's module and the sha256 of the module's file; for an engine stage, ``engine_code`` of
    its runner's module, and of the module its plan is defined in (which turns the config into
    the stage's settings; the planning machinery that module imports does not count), with the
    modules of the config's ``plugins`` that registered a rule, format or family that code can
    reach (``plugin_code``). None when the runner's module is not loaded (a callable made at run
    time)."""
    spec = registry.get(stage)
    runner = sys.modules.get(getattr(spec.run, "__module__", "") or "")
    if runner is None:
        return None
    if runner.__name__.split(".")[0] == PACKAGE:
        code = engine_code(runner.__name__, getattr(spec.plan, "__module__", None))
        mine = plugin_code(code["files"], plugins)
        return {**code, "plugins": mine} if mine else code
    where = getattr(runner, "__file__", None)
    if not where or not Path(where).is_file():
        return {"module": runner.__name__}
    return {"module": runner.__name__, "sha256": file_sha256(where)}


def describe_change(old: dict, new: dict) -> list[str]:
    """A code change in words: each engine file or plug-in module changed, added or removed
    (all of them in one line when the other side records none), else each key's values."""
    out = []
    for key in sorted(set(old) | set(new)):
        x, y = old.get(key), new.get(key)
        if x == y:
            continue
        if key in ("files", "plugins") and isinstance(x, dict) and isinstance(y, dict):
            for name in sorted(set(x) | set(y)):
                if x.get(name) != y.get(name):
                    how = "added" if name not in x else "removed" if name not in y else "changed"
                    out.append(f"code {'plug-in ' if key == 'plugins' else ''}{name}: {how}")
        elif key in ("files", "plugins"):
            what = "engine files" if key == "files" else "plug-in modules"
            a, b = (f"{len(d)} {what}" if isinstance(d, dict) else "none" for d in (x, y))
            out.append(f"code {key}: {a} -> {b}")
        else:
            out.append(f"code {key}: {x if x is not None else '(absent)'!r} -> "
                       f"{y if y is not None else '(absent)'!r}")  # fmt: skip
    return out
