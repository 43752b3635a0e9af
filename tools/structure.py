"""Structure numbers of the package (issue 45's measures): functions longer than a limit (from the
def line), functions with more parameters than a limit. A Triton kernel's parameters are its
pointers, strides and compile-time sizes, and a click command's are its options: both are
counted apart ("exempt"), as dataclass constructors are not functions here at all.

    python tools/structure.py [--root xlt_engine] [--lines 80] [--params 8]
"""

import argparse
import ast
from pathlib import Path


def functions(root: Path):
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                a = node.args
                params = [*a.posonlyargs, *a.args, *a.kwonlyargs]
                params = [p for p in params if p.arg not in ("self", "cls")]
                params += [x for x in (a.vararg, a.kwarg) if x is not None]
                start = (
                    node.lineno
                )  # the def line: a click command's option decorators are not its body
                decorators = [ast.unparse(d) for d in node.decorator_list]
                exempt = any("jit" in d or ".command" in d for d in decorators)
                yield path, node.name, node.end_lineno - start + 1, len(params), exempt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=Path("xlt_engine"))
    p.add_argument("--lines", type=int, default=80)
    p.add_argument("--params", type=int, default=8)
    args = p.parse_args()
    rows = list(functions(args.root))
    long = sorted((r for r in rows if r[2] > args.lines), key=lambda r: -r[2])
    many = sorted((r for r in rows if r[3] > args.params), key=lambda r: -r[3])
    counted = [r for r in many if not r[4]]
    print(
        f"{len(rows)} functions; {len(long)} over {args.lines} lines, {len(counted)} over "
        f"{args.params} parameters (and {len(many) - len(counted)} Triton kernels or click commands)"
    )
    for path, name, n, *_ in long:
        print(f"  {n:4d} lines  {path}:{name}")
    for path, name, _, k, exempt in many:
        print(f"  {k:4d} params {path}:{name}{'  (exempt)' if exempt else ''}")


if __name__ == "__main__":
    main()
