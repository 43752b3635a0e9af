"""A task-file format of one's own, in this one file: word/TAG sentences (one per line),
registered with ``register_format`` and named by a config's ``plugins``, read by every stage of
the quickstart's task through ``xlt-engine run``: finetune, self-training (its packed stores read
the whole file, as the format gives no stream) and evaluate, with the same scores as the CoNLL
files it was converted from. A format name no module registers is refused naming the choices."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from xlt_engine.cli import main
from xlt_engine.data.conll import read_conll
from xlt_engine.data.formats import (
    TaskData,
    TaskFormat,
    format_names,
    register_format,
    unregister_format,
)
from xlt_engine.data.task import read_task_file
from xlt_engine.quickstart import Sizes, prepare


def read_slashed(path: Path, unlabeled: bool, encoding: str | None) -> TaskData:
    words, tags, lines = [], [], []
    text = path.read_text(encoding=encoding or "utf-8")
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        pairs = [tok.rsplit("/", 1) for tok in line.split()]
        if any(len(p) != 2 for p in pairs):
            raise ValueError(f"{path}:{n}: a word without /TAG")
        words.append([w for w, _ in pairs])
        tags.append([t for _, t in pairs])
        lines.append(n)
    return TaskData(path, "slashed", "token", words, None, None if unlabeled else tags, lines)


@pytest.fixture(autouse=True, scope="module")
def _registered():
    register_format(TaskFormat("slashed", "token", read_slashed))
    yield
    unregister_format("slashed")


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("quickstart")
    cfg = prepare(out, 1, Sizes(train=120, dev=20, test=30, vocab_size=400))
    for f in (out / "data").iterdir():
        if f.suffix in (".train", ".dev", ".test"):
            lines = [" ".join(f"{w}/{t}" for w, t in zip(s.tokens, s.tags, strict=True))
                     for s in read_conll(f)]  # fmt: skip
            (f.parent / (f.name + ".slashed")).write_text("\n".join(lines) + "\n")
    return cfg


SMALL = ["finetune.train.max_steps=200", "selftrain.soft.max_steps=40",
         "selftrain.hard.max_steps=10", "selftrain.rounds=1", "selftrain.base=pretrained",
         "selftrain.teacher=finetune-direct", "finetune.init=pretrained",
         "evaluate.model=selftrain"]  # fmt: skip


def _run(cfg: Path, out: Path, stage: str, *sets: str):
    args = ["run", "--stage", stage, "--config", str(cfg), "--no-progress", "--out", str(out)]
    return CliRunner().invoke(main, [*args, *(x for s in (*SMALL, *sets) for x in ("--set", s))])


def test_a_format_of_ones_own_runs_through_every_stage(task):
    plugin = task.parent / "slashed.toml"
    text = task.read_text(encoding="utf-8")
    for name in ("src.train", "src.dev", "src.test", "tgt.train", "tgt.test"):
        text = text.replace(f'"{name}"', f'"{name}.slashed"')
    text = text.replace('format = "conll"', 'format = "slashed"')
    plugin.write_text(f'plugins = ["{__name__}"]\n' + text, encoding="utf-8")
    scores = {}
    for cfg, out in ((task, task.parent / "conll"), (plugin, task.parent / "slashed")):
        for stage in ("finetune", "selftrain", "evaluate"):
            res = _run(cfg, out, stage)
            assert res.exit_code == 0, res.output
        results = next((out / "src-tgt").glob("evaluate-*/results.json"))
        scores[cfg.name] = json.loads(results.read_text())
    ran = json.loads((plugin.parent / "slashed" / "src-tgt" / "selftrain-direct-rounds1" /
                      "config.json").read_text())  # fmt: skip
    assert ran["stage_config"]["format"] == "slashed"
    keys = ("score", "precision", "recall", "strict_f1", "per_type")  # (not the files' names)
    a, b = ({lang: {k: r[k] for k in keys} for lang, r in s["languages"].items()}
            for s in scores.values())  # fmt: skip
    assert a == b and a["tgt"]["score"] > 0 and a["src"]["score"] > 0  # the same from either


def test_an_unregistered_format_is_refused_naming_the_choices(task, tmp_path):
    with pytest.raises(ValueError, match=r"format must be one of \(.*'slashed'.*\), got 'nope'"):
        read_task_file(tmp_path / "x", "nope")
    text = task.read_text(encoding="utf-8").replace('format = "conll"', 'format = "nope"')
    bad = tmp_path / "bad.toml"
    bad.write_text(text, encoding="utf-8")
    res = _run(bad, tmp_path / "out", "finetune")
    assert (
        res.exit_code != 0 and "data: format must be one of" in res.output and "nope" in res.output
    )
    assert "slashed" in format_names() and "conll" in format_names()
