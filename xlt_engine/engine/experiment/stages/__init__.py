"""The built-in stages, one module each (``registry.Stage``), registered in the order they run:
btf, finetune, selftrain, cotrain, evaluate and predict (``evaluate.py``). A stage of one's own
registers the same way from a module of its own (docs/manual.md, "A stage of your own")."""

import importlib

BUILT_IN = ("btf", "finetune", "selftrain", "cotrain", "evaluate")  # modules, in this order
for _module in BUILT_IN:
    importlib.import_module(f"{__name__}.{_module}")
