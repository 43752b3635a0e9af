"""The package's structure stays within the limits issues 45, 57 and 67 set, measured by the
tools in ``tools/`` (their printed figures, as a reader runs them): no file over 600 lines, no
function over 80 lines or 8 parameters (Triton kernels and click commands apart), no import
circle, a new stage or rule in one file, and no class reading attributes that neither it nor
its bases set (the mixin that ``SelfTraining`` was) or state only a base in another module
sets."""

import re
import subprocess
import sys
import textwrap
from pathlib import Path

from tools.attribute_reads import check

ROOT = Path(__file__).resolve().parents[1]


def tool(name: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", f"tools.{name}"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def figure(text: str, label: str) -> int:
    m = re.search(rf"{re.escape(label)}: (\d+)", text)
    assert m, f"{label!r} not in:\n{text}"
    return int(m.group(1))


def test_package_within_the_structure_limits():
    cost = tool("extension_cost")
    assert figure(cost, "package files over 600 lines") == 0, cost
    assert figure(cost, "import circles") == 0, cost
    assert figure(cost, "sys.path edits") == 0, cost
    assert "a new stage touches 1 package file(s)" in cost, cost
    assert "a new rule with a parameter touches 1 package file(s)" in cost, cost
    assert "a new task format touches 1 package file(s)" in cost, cost
    assert "a new model family touches 1 package file(s)" in cost, cost
    assert figure(cost, "ExperimentConfig references below the experiment layer") == 0, cost
    assert re.search(r"carrier-only files: [01]\b", cost), cost
    first = tool("structure").splitlines()[0]
    assert re.search(r"; 0 over 80 lines, 0 over 8 parameters", first), first
    reads = tool("attribute_reads")
    assert figure(reads, "attributes read that the class and its bases never set") == 0, reads
    assert figure(reads, "instance state read that only a base in another module sets") == 0


def test_attribute_reads_finds_a_mixin_and_state_inherited_across_modules(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "base.py").write_text(
        textwrap.dedent(
            """
            class Base:
                size: int  # declared: an interface
                def __init__(self):
                    self.rows = []
                def count(self):
                    return len(self.rows)
            """
        )
    )
    (pkg / "user.py").write_text(
        textwrap.dedent(
            """
            from pkg.base import Base
            import torch.nn as nn

            class Passes:  # a mixin: reads what its subclass sets
                def teacher(self):
                    return self.labels, self.count()

            class Child(Base):
                def first(self):
                    return self.rows[0], self.size, self.count()

            class Own(Base):
                def __init__(self):
                    super().__init__()
                    self.rows = [1]
                def first(self):
                    return self.rows[0]

            class Layer(nn.Module):  # a base outside the package defines what it likes
                def forward(self, x):
                    return x if self.training else -x
            """
        )
    )
    undeclared, inherited = check(pkg)
    assert [u.split(" ")[-1] for u in undeclared] == ["Passes.count", "Passes.labels"]
    assert len(inherited) == 1 and "Child.rows (set in" in inherited[0]


def test_import_circles_count_what_runs_not_what_a_type_checker_reads(tmp_path):
    """A circle through function-level imports counts; one closed only by imports under
    ``if TYPE_CHECKING:`` (never executed) does not."""
    from tools.extension_cost import circles, import_graph

    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg import b\n")
    (pkg / "b.py").write_text("def f():\n    from pkg import a\n")  # a real circle
    (pkg / "c.py").write_text("from pkg import d\n")
    (pkg / "d.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.c import X\n"
    )
    assert circles(import_graph(pkg, tmp_path)) == [["pkg.a", "pkg.b"]]


def test_setting_readers_find_each_way_a_setting_is_read_and_nothing_else():
    """``tools/setting_readers``: an attribute of an inferred settings object (annotated, from
    ``section(SelftrainSection)``, ``ctx.cfg``, ``.rule``, ``self.<x>`` set in ``__init__`` or
    declared as a dataclass field, tuple unpacking), ``getattr`` with a literal, keywords of
    ``replace`` / ``with_section``, the dotted key in a message; not a docstring, not the same
    name on another object, not the method config's own ``teacher`` (a path made from it)."""
    import ast

    from tools.setting_readers import Reader

    source = textwrap.dedent(
        '''
        def f(cfg: ExperimentConfig, section: SelftrainSection, ctx: SelftrainContext, other):
            """selftrain.hard_steps in a docstring is no read"""
            s = cfg.section(SelftrainSection)
            a = s.rounds + section.soft_loss
            conf, dev = ctx.cfg, ctx.device
            b = conf.filter_unit, getattr(ctx.cfg, "on_collapse"), other.student_init
            rule = s.rule
            c = rule.name, other.name
            d = dataclasses.replace(rule, alpha=0.5)
            e = with_section(cfg, "selftrain", source_filter="off")
            g = rule.select(1, 2, 3)  # the rule's own method: a use, not a read
            raise ValueError(f"set selftrain.rule.grid or selftrain.max_unlabeled ({other})")

        class Filter:
            def __init__(self, ctx: SelftrainContext):
                self.ctx = ctx

            def go(self):
                return self.ctx.cfg.batch_size

        @dataclass
        class Quota:
            ctx: SelftrainContext

            def go(self, method: SelftrainConfig):
                return self.ctx.cfg.max_tokens, method.teacher, method.hard_steps
        '''
    )
    sel = {"rounds", "soft_loss", "filter_unit", "on_collapse", "student_init", "source_filter",
           "max_unlabeled", "batch_size", "hard_steps", "max_tokens", "teacher"}  # fmt: skip
    # SelftrainConfig.teacher is a path the stage makes from the table's model name: not a read
    reader = Reader(sel, {"name", "alpha", "grid"}, {"PseudoRule"}, {"teacher"})
    reader.visit(ast.parse(source))
    assert sorted(reader.reads) == sorted(
        ["selftrain." + k for k in ("rounds", "soft_loss", "filter_unit", "on_collapse",
                                    "source_filter", "max_unlabeled", "batch_size", "max_tokens",
                                    "hard_steps")]
        + ["selftrain.rule.name", "selftrain.rule.alpha", "selftrain.rule.grid"]
    )  # fmt: skip
    assert len(reader.uses) == 1  # rule.select(...)

    carrier = Reader(sel, {"name"}, {"PseudoRule"})
    carrier.visit(ast.parse("def f(rule: PseudoRule):\n    return g(rule)\n"))
    assert carrier.holds and not carrier.reads and not carrier.uses and not carrier.moves
