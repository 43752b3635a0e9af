"""The package's layers: imports point down only, cli -> studies -> experiment -> method ->
train -> model / data / kernels (and the shared utilities), function-level imports included."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# higher imports lower; utilities (fileio, provenance, the package root) sit at the bottom
LEVELS = [
    ("xlt_engine.cli", 7),
    ("xlt_engine.quickstart", 6),
    ("xlt_engine.studies", 5),
    ("xlt_engine.engine.experiment", 3),
    ("xlt_engine.engine.method", 2),
    ("xlt_engine.engine.train", 1),
]


def level(module: str) -> float:
    if module == "xlt_engine.engine":
        return 4  # the facade re-exports the method and train layers for library callers
    for prefix, lv in LEVELS:
        if module == prefix or module.startswith(prefix + "."):
            return lv
    return 0


def module_of(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.startswith("xlt_engine")
        ):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                sub = ROOT / Path(*full.split("."))
                yield full if sub.with_suffix(".py").is_file() or sub.is_dir() else node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("xlt_engine"))


def upward_imports(files) -> list[str]:
    bad = []
    for path in files:
        mod = module_of(path)
        for target in imports(path):
            if level(target) > level(mod):
                bad.append(f"{mod} imports {target}")
    return bad


def test_imports_point_down_only():
    assert upward_imports(sorted((ROOT / "xlt_engine").rglob("*.py"))) == []


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    """A method module importing the experiment layer, even inside a function, is caught."""
    fake = ROOT / "xlt_engine" / "engine" / "method" / "_layer_probe.py"
    src = "def f():\n    from xlt_engine.engine.experiment.runs import stage_dir\n"
    monkeypatch.setattr(Path, "read_text", lambda self, encoding=None: src)
    assert upward_imports([fake]) == [
        "xlt_engine.engine.method._layer_probe imports xlt_engine.engine.experiment.runs"
    ]
