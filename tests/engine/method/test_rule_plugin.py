"""A pseudo-label rule of one's own, in this one file: a class with one parameter, registered
with ``register_rule`` and named by a config's ``plugins``, run through ``xlt-engine run --stage
selftrain`` on the quickstart's task. The rule's thresholds are the ones the run applies, its
parameter is in the fingerprint, and it is refused under another rule."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from xlt_engine.cli import main
from xlt_engine.engine.method.rules import PseudoRule, RuleContext, register_rule, unregister_rule
from xlt_engine.quickstart import Sizes, prepare


@register_rule
@dataclass(frozen=True)
class TopShare(PseudoRule):
    """Every non-background class: the confidence above which the most confident ``share`` of
    the source rows the voters agree on as it lie (O keeps the paper's alpha)."""

    name: str = "top_share"
    share: float = 0.3

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.share <= 1:
            raise ValueError(f"share must be in (0, 1], got {self.share}")

    def choose(self, ctx: RuleContext) -> None:
        for c in ctx.others:
            mine = np.sort(ctx.src.conf[ctx.src.agreed == c])[::-1]
            keep = int(np.ceil(self.share * len(mine)))
            cut = float(mine[keep]) if keep < len(mine) else (0.0 if len(mine) else 1.0)
            ctx.alpha[c] = cut
            ctx.records[c] = {"class": ctx.src.names[c], "threshold": cut, "how": "top_share"}


@pytest.fixture(autouse=True, scope="module")
def _registered():
    register_rule(TopShare)
    yield
    unregister_rule("top_share")


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("quickstart")
    cfg = prepare(out, 1, Sizes(train=120, dev=20, test=30, vocab_size=400))
    cfg.write_text(f'plugins = ["{__name__}"]\n' + cfg.read_text(encoding="utf-8"))
    return cfg


SMALL = ["finetune.train.max_steps=30", "selftrain.soft.max_steps=20",
         "selftrain.hard.max_steps=10", "selftrain.rounds=1", "selftrain.base=pretrained",
         "selftrain.teacher=finetune-direct", "finetune.init=pretrained"]  # fmt: skip


def _run(cfg: Path, stage: str, *sets: str):
    args = ["run", "--stage", stage, "--config", str(cfg), "--no-progress"]
    return CliRunner().invoke(main, [*args, *(x for s in (*SMALL, *sets) for x in ("--set", s))])


def test_a_rule_of_ones_own_runs_through_selftrain(task):
    teacher = _run(task, "finetune")
    assert teacher.exit_code == 0, teacher.output
    res = _run(task, "selftrain", "selftrain.rule.name=top_share", "selftrain.rule.share=0.3")
    assert res.exit_code == 0, res.output
    folder = task.parent / "runs" / "src-tgt" / "selftrain-direct-rounds1-top_share"
    assert (folder / "model").is_dir()
    th = json.loads((folder / "round-1" / "threshold.json").read_text())
    assert th["rule"] == "top_share"
    by_class = {r["class"]: r for r in th["classes"]}
    assert by_class["O"]["how"] == "paper"
    assert {r["how"] for c, r in by_class.items() if c != "O"} == {"top_share"}
    assert [by_class[c]["threshold"] for c in by_class] == th["class_alpha"]  # what it applied
    settings = json.loads((folder / "fingerprint.json").read_text())["settings"]
    assert (
        settings["selftrain.rule.name"] == "top_share" and settings["selftrain.rule.share"] == 0.3
    )

    changed = _run(task, "selftrain", "selftrain.rule.name=top_share", "selftrain.rule.share=0.4")
    assert changed.exit_code != 0 and "selftrain.rule.share: 0.3 -> 0.4" in changed.output
    wrong = _run(task, "selftrain", "selftrain.rule.share=0.4")  # the paper's rule has no share
    assert wrong.exit_code != 0
    assert "selftrain.rule.share: a setting of the rule top_share, not of 'paper'" in wrong.output
    bad = _run(task, "selftrain", "selftrain.rule.name=top_share", "selftrain.rule.share=2.0")
    assert bad.exit_code != 0 and "share must be in (0, 1], got 2.0" in bad.output


RULE_FILE = '''
"""A rule of one's own in one file beside the config: the top share of each class's rows."""
from dataclasses import dataclass

import numpy as np

from xlt_engine.engine.method.rules import PseudoRule, RuleContext, register_rule


@register_rule
@dataclass(frozen=True)
class TopShare(PseudoRule):
    name: str = "top_share"
    share: float = 0.3

    def choose(self, ctx: RuleContext) -> None:
        for c in ctx.others:
            mine = np.sort(ctx.src.conf[ctx.src.agreed == c])[::-1]
            keep = int(np.ceil(self.share * len(mine)))
            ctx.alpha[c] = float(mine[keep]) if keep < len(mine) else (0.0 if len(mine) else 1.0)
'''


def test_a_rule_file_outside_the_repository_runs_and_its_edit_is_named(tmp_path):
    """The rule in one file beside the config, through the installed script from a folder
    outside the repository, each command a process of its own: self-training runs with it; an
    edit of the file makes the next run name it (the selftrain stage's code holds the
    plug-in rules' modules) while fine-tuning, whose code reads no rule, is reused as it is;
    ``accept-code`` takes the edit when judged harmless; ``ablate`` runs it as a row, and
    ``report`` shows its rounds and that row."""
    import os
    import shutil
    import subprocess
    import sys

    script = shutil.which("xlt-engine") or str(Path(sys.executable).parent / "xlt-engine")
    if not Path(script).exists():
        pytest.skip("the xlt-engine console script is not installed")
    cfg = prepare(tmp_path / "project", 1, Sizes(train=120, dev=20, test=30, vocab_size=400))
    cfg.write_text('plugins = ["myrules"]\n' + cfg.read_text(encoding="utf-8"))
    rule_file = cfg.parent / "myrules.py"
    rule_file.write_text(RULE_FILE)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def xlt(stage, *sets, ok=True, resume=False):
        args = [script, "run", "--stage", stage, "--config", str(cfg), "--no-progress"]
        args += [x for s in (*SMALL, *sets) for x in ("--set", s)] + ["--resume"] * resume
        done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)  # fmt: skip
        assert (done.returncode == 0) == ok, done.stdout + done.stderr
        return done.stdout + done.stderr

    rule = ("selftrain.rule.name=top_share", "selftrain.rule.share=0.3")
    xlt("finetune")
    xlt("selftrain", *rule)
    folder = cfg.parent / "runs" / "src-tgt" / "selftrain-direct-rounds1-top_share"
    code = json.loads((folder / "fingerprint.json").read_text())["code"]
    assert list(code["plugins"]) == ["myrules"]
    rule_file.write_text(RULE_FILE.replace("(0.0 if len(mine) else 1.0)", "1.0"))
    refused = xlt("selftrain", *rule, ok=False, resume=True)
    assert "code plug-in myrules: changed" in refused and "accept-code" in refused
    assert "not run again" in xlt("finetune", resume=True)  # its code reads no rule
    done = subprocess.run([script, "accept-code", str(folder)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0 and "accepted: code plug-in myrules: changed" in done.stdout
    assert "not run again" in xlt("selftrain", *rule, resume=True)

    # an ablation row of it: the registered rules are rows ("rule = <name>") of ablate too
    args = [script, "ablate", "--config", str(cfg), "--seeds", "1", "--rows", "rule = top_share",
            "--no-progress", "--out", str(tmp_path / "ablation")]  # fmt: skip
    args += [x for s in (*SMALL, "btf.train.max_steps=10") for x in ("--set", s)]
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    table = json.loads((tmp_path / "ablation" / "ablation.json").read_text())
    assert "rule = top_share" in json.dumps(table)

    # the report, through the installed script too: the rule's rounds and its ablation row
    page = tmp_path / "report.html"
    args = [script, "report", str(cfg.parent / "runs"), str(tmp_path / "ablation"), "--out",
            str(page)]  # fmt: skip
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    text = page.read_text(encoding="utf-8")
    assert "pseudo-label rule top_share" in text and "rule = top_share" in text
