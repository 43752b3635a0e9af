"""Where a run's configuration travels: the package files whose functions receive a settings
object (an experiment config, a section, a stage config, a train config...) while
``xlt-engine run --stage selftrain`` runs, and, inside it, while ``run_selftrain`` runs.

It builds the quickstart's synthetic task (tiny sizes) in OUT, runs btf and finetune untraced,
then traces ``run --stage selftrain`` with ``sys.setprofile``. A function counts when one of its
arguments is a dataclass of the package whose class name ends in Config, Settings, Section or
Override, or is ``PseudoRule``, of the engine (a model's ``BertConfig`` is not a run's setting);
the walk counts the distinct files of those functions.

    python tools/config_walk.py --out /tmp/walk
"""

import argparse
import dataclasses
import sys
from pathlib import Path

SUFFIXES = ("Config", "Settings", "Section", "Override")


def is_settings(value) -> bool:
    kind = type(value)
    return (
        dataclasses.is_dataclass(value)
        and not isinstance(value, type)
        and kind.__module__.startswith("xlt_engine.engine")
        and (kind.__name__.endswith(SUFFIXES) or kind.__name__ == "PseudoRule")
    )


class Walk:
    def __init__(self, root: Path):
        self.root = str(root)
        self.files: list[str] = []  # in order of entry, with returns to a file left before
        self.inside: dict[str, list[str]] = {}  # function name -> files entered below it
        self.stack: list[str] = []

    def __call__(self, frame, event, _arg):
        code = frame.f_code
        if event == "return" and self.stack and self.stack[-1] == code.co_name:
            self.stack.pop()
        if event != "call" or not code.co_filename.startswith(self.root):
            return
        n = code.co_argcount + code.co_kwonlyargcount
        if not any(is_settings(frame.f_locals.get(a)) for a in code.co_varnames[:n]):
            return
        where = str(Path(code.co_filename).relative_to(self.root))
        if not self.files or self.files[-1] != where:
            self.files.append(where)
        if code.co_name == "run_selftrain":
            self.stack.append("run_selftrain")
        if self.stack:
            seen = self.inside.setdefault("run_selftrain", [])
            if not seen or seen[-1] != where:
                seen.append(where)


def summary(name: str, files: list[str]) -> str:
    distinct = sorted(set(files))
    return f"{name}: {len(distinct)} files\n  " + "\n  ".join(distinct)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    from click.testing import CliRunner

    import xlt_engine
    from xlt_engine.cli import main as cli
    from xlt_engine.quickstart import Sizes, prepare

    cfg = prepare(args.out, seed=1, sizes=Sizes(train=40, dev=10, test=10))
    base = ["--config", str(cfg), "--no-progress"]
    for stage in ("btf", "finetune"):
        res = CliRunner().invoke(cli, ["run", "--stage", stage, *base])
        assert res.exit_code == 0, res.output
    walk = Walk(Path(xlt_engine.__file__).parent)
    sys.setprofile(walk)
    try:
        res = CliRunner().invoke(cli, ["run", "--stage", "selftrain", *base])
    finally:
        sys.setprofile(None)
    assert res.exit_code == 0, res.output
    print(summary("run --stage selftrain", walk.files))
    print(summary("inside run_selftrain", walk.inside.get("run_selftrain", [])))


if __name__ == "__main__":
    main()
