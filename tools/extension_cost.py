"""What it costs to extend the engine (issue 57's measures), counted from the source, nothing run:

- the package files a new stage must touch: the stage's own module, plus every package file
  outside it that names the built-in stages in a table (a dict keyed by two or more stage names)
  or a comparison (``stage == "selftrain"``, ``stage in ("btf", ...)``): each such file holds
  knowledge a new stage would have to be added to;
- the same for a new pseudo-label rule with a parameter (the rule names, and fields or keys
  named after a rule's parameters outside the rule's own module), and for a new task-file
  format (the format names in tables or comparisons outside the reader modules), and for a
  new model family (``model_type`` names in tables or comparisons outside ``model/families.py``);
- import circles between package modules (function-level imports included; imports under
  ``if TYPE_CHECKING:`` are for type checkers, never run, and are not counted);
- package files over 600 lines; functions over 8 parameters (``tools/structure.py``'s count);
- ``sys.path`` edits anywhere in the repository;
- per setting of ``[selftrain]`` and ``[selftrain.rule]``: its reader files, its declarations, the
  generic movers and the carrier-only files (``tools/setting_readers.py``, which lists them).

    python -m tools.extension_cost [--root .]
"""

import argparse
import ast
from pathlib import Path

from xlt_engine.engine.experiment.code import import_graph  # the one the fingerprints use

# the built-in stages and the model names they make (a table keyed by these knows them)
STAGE_NAMES = {"btf", "finetune", "selftrain", "cotrain", "evaluate", "predict"}
RULE_NAMES = {"paper", "per_class_precision", "class_quota", "entity_curve"}
RULE_PARAMS = {"min_rows", "class_precision", "quota"}
FORMAT_NAMES = {"conll", "cls10", "marc", "xnli", "jsonl", "tsv"}  # the built-in task formats
FAMILY_NAMES = {"bert", "roberta", "xlm-roberta"}  # the built-in model families (model_type)
# where a stage / a rule is allowed to be named: its own modules and the registries that list
# the built-ins (the line that registers one counts as the "registry line")
STAGE_HOMES = ("xlt_engine/engine/experiment/stages/",)
RULE_HOMES = ("xlt_engine/engine/method/rules/",)
FAMILY_HOMES = ("xlt_engine/model/families.py",)
FORMAT_HOMES = tuple(  # each reader registers its format(s) in its own module
    f"xlt_engine/data/{m}.py" for m in ("conll", "cls10", "marc", "xnli", "text", "formats")
)
# the studies and run_all compose the built-in method (its rows, its tables): a new stage does
# not have to be added to them to be run, planned, fingerprinted, resumed and reported; their
# sites are printed apart (every file is read, none skipped)
COMPOSERS = (
    "xlt_engine/studies/",
    "xlt_engine/engine/experiment/pipeline.py",
    "xlt_engine/quickstart.py",
)


def _strings(node) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return [s for e in node.elts for s in _strings(e)]
    return []


def _about(node, word: str) -> bool:
    """Whether an expression names ``word`` (``stage``, ``cfg.section(SelftrainSection).rule``...)."""
    return word in ast.unparse(node)


def naming_sites(tree: ast.AST, names: set[str], about: str) -> list[int]:
    """Lines of tables keyed by two or more of ``names``, lists of three or more of them, and
    comparisons of an expression naming ``about`` (``stage``, ``rule``) against them."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            keys = [k.value for k in node.keys if isinstance(k, ast.Constant)]
            if len(set(keys) & names) >= 2:
                lines.append(node.lineno)
        elif isinstance(node, ast.Tuple | ast.List | ast.Set):  # a list of them (STAGES)
            if len(set(_strings(node)) & names) >= 3:
                lines.append(node.lineno)
        elif isinstance(node, ast.Compare) and _about(node.left, about):
            found = [s for c in node.comparators for s in _strings(c)]
            if set(found) & names:
                lines.append(node.lineno)
    return sorted(set(lines))


def param_sites(tree: ast.AST, params: set[str]) -> list[int]:
    """Lines that define a field / key named after a rule's parameter."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if node.target.id in params:
                lines.append(node.lineno)
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and node.value.startswith("selftrain.")
            and node.value.split(".")[-1] in params
        ):
            lines.append(node.lineno)
    return lines


def _is_sys_path(node) -> bool:
    """``sys.path.<anything>`` (insert, append...) or ``sys.path`` assigned / indexed."""

    def is_path(n):
        return (
            isinstance(n, ast.Attribute)
            and n.attr == "path"
            and isinstance(n.value, ast.Name)
            and n.value.id == "sys"
        )

    if isinstance(node, ast.Attribute) and is_path(node.value):
        return True
    if isinstance(node, ast.Assign | ast.AugAssign):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return any(
            is_path(t) or (isinstance(t, ast.Subscript) and is_path(t.value)) for t in targets
        )
    return False


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=Path("."))
    args = p.parse_args()
    root = args.root.resolve()
    pkg = root / "xlt_engine"
    files = sorted(pkg.rglob("*.py"))
    trees = {f: ast.parse(f.read_text(encoding="utf-8")) for f in files}

    def rel(f: Path) -> str:
        return str(f.relative_to(root))

    def outside(f: Path, homes) -> bool:
        return not rel(f).startswith(homes)

    every = {
        rel(f): naming_sites(t, STAGE_NAMES, "stage")
        for f, t in trees.items()
        if outside(f, STAGE_HOMES)
    }
    every = {f: v for f, v in every.items() if v}
    # every file is read; the composers' sites are listed apart, not counted
    stage = {f: v for f, v in every.items() if not f.startswith(COMPOSERS)}
    composed = {f: v for f, v in every.items() if f.startswith(COMPOSERS)}
    rule = {}
    for f, t in trees.items():
        if outside(f, RULE_HOMES):
            lines = naming_sites(t, RULE_NAMES, "rule") + param_sites(t, RULE_PARAMS)
            if lines:
                rule[rel(f)] = sorted(set(lines))
    print(f"a new stage touches {1 + len(stage)} package file(s): its module"
          + "".join(f"\n  + {f} (lines {', '.join(map(str, v))})" for f, v in stage.items()))  # fmt: skip
    print(f"tables / comparisons keyed by stage name outside the stage modules: "
          f"{sum(len(v) for v in stage.values())}")  # fmt: skip
    print("the built-in method's composers, which name its stages (listed, not counted: a new "
          f"stage need not join them): {sum(len(v) for v in composed.values())} site(s)"
          + "".join(f"\n  {f} (lines {', '.join(map(str, v))})" for f, v in composed.items()))  # fmt: skip
    print(f"a new rule with a parameter touches {1 + len(rule)} package file(s): its module"
          + "".join(f"\n  + {f} (lines {', '.join(map(str, v))})" for f, v in rule.items()))  # fmt: skip
    for what, names, about, homes in (
        ("a new task format", FORMAT_NAMES, "format", FORMAT_HOMES),
        ("a new model family", FAMILY_NAMES, "model_type", FAMILY_HOMES),
    ):
        sites = {}
        for f, t in trees.items():
            if outside(f, homes) and (lines := naming_sites(t, names, about)):
                sites[rel(f)] = lines
        print(f"{what} touches {1 + len(sites)} package file(s): its module"
              + "".join(f"\n  + {f} (lines {', '.join(map(str, v))})" for f, v in sites.items()))  # fmt: skip
    found = circles(import_graph(pkg, root))
    print(f"import circles: {len(found)}" + "".join(f"\n  {' <-> '.join(c)}" for c in found))
    long = [
        (rel(f), n) for f in files if (n := len(f.read_text(encoding="utf-8").splitlines())) > 600
    ]
    print(f"package files over 600 lines: {len(long)}" + "".join(f"\n  {f}: {n}" for f, n in long))
    from tools.structure import functions  # the one count of parameters

    many = [r for r in functions(pkg) if r[3] > 8 and not r[4]]
    print(f"functions over 8 parameters (not Triton kernels or click commands): {len(many)}"
          + "".join(f"\n  {rel(path)}:{name} ({k})" for path, name, _, k, _ in many))  # fmt: skip
    edits = []
    for f in sorted(root.rglob("*.py")):
        if any(part.startswith(".") for part in f.relative_to(root).parts):
            continue
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if _is_sys_path(node):
                edits.append(f"{rel(f)}:{node.lineno}")
    print(f"sys.path edits: {len(edits)}" + "".join(f"\n  {e}" for e in edits))
    from tools.setting_readers import count  # per self-training setting (its own tool)

    readers, declared, movers, users, carriers, below = count(root)
    worst = sorted(readers, key=lambda k: -len(readers[k]))[:3]
    print(f"readers per self-training setting: at most {len(readers[worst[0]])} ("
          + ", ".join(f"{k} {len(readers[k])}" for k in worst) + "; python -m tools.setting_readers)")  # fmt: skip
    print(f"declarations per setting: at most {max(len(declared.get(k, ())) for k in readers)}")
    print(f"generic movers: {len(movers)}; method users: {len(users)}; "
          f"carrier-only files: {len(carriers)}")  # fmt: skip
    print(f"ExperimentConfig references below the experiment layer: {len(below)}")


if __name__ == "__main__":
    main()
