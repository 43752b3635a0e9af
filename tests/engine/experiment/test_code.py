"""The code in a fingerprint (issue 67): which engine files a stage's result depends on, a code
change named like a settings change, and ``accept-code`` taking one explicitly."""

import json

import pytest
from click.testing import CliRunner

from tests.engine.experiment.test_config import CONLL
from xlt_engine.cli import main
from xlt_engine.engine.experiment.accept import accept_code
from xlt_engine.engine.experiment.code import closure, import_graph, stage_code
from xlt_engine.engine.experiment.config import load_config
from xlt_engine.engine.experiment.runs import (
    FINGERPRINT,
    StagePlan,
    StaleStageError,
    body_digest,
    check_plans,
)


def _write(root, files: dict[str, str]):
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_closure_follows_run_imports_and_a_package_loading_its_own_modules(tmp_path):
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/runner.py": "from pkg import model\nfrom . import rules\nfrom pkg.ops import times\n"
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import cli\n",
            "pkg/model.py": "def f():\n    from pkg.kernels import k  # a function-level import\n",
            "pkg/kernels/__init__.py": "",
            "pkg/kernels/k.py": "",
            "pkg/rules/__init__.py": "import importlib\nfor m in ('a',):\n"
            "    importlib.import_module(f'{__name__}.{m}')\n",
            "pkg/rules/a.py": "",
            "pkg/cli.py": "from pkg import runner\n",
            "pkg/ops/__init__.py": "from pkg.ops.mul import times\nfrom pkg.ops.add import plus\n",
            "pkg/ops/mul.py": "def times(): ...\n",
            "pkg/ops/add.py": "def plus(): ...\n",
            "pkg/report.py": "import pkg.model\n",
        },
    )
    graph = import_graph(tmp_path / "pkg", tmp_path, precise=True)
    assert closure(graph, ["pkg.runner"]) == {
        "pkg.runner",
        "pkg.model",
        "pkg.kernels.k",
        "pkg.rules",
        "pkg.rules.a",
        "pkg.ops.mul",  # what the package passes on, not ops/__init__ and its plus
    }  # not the type-only cli, nor report that imports the model
    assert closure(graph, ["pkg.cli"]) >= closure(graph, ["pkg.runner"])
    runs = closure(import_graph(tmp_path / "pkg", tmp_path), ["pkg.runner"])  # what Python runs
    assert {"pkg.ops", "pkg.ops.add", "pkg.ops.mul"} <= runs


def test_each_engine_stage_names_its_methods_files_and_not_the_command_line():
    import xlt_engine.engine.experiment.stages  # noqa: F401  (registers the built-ins)

    code = stage_code("selftrain")
    files = code["files"]
    assert code["engine"] and all(len(h) == 16 for h in files.values())
    for needed in (
        "xlt_engine/engine/experiment/stages/selftrain.py",  # its plan: the config read
        "xlt_engine/engine/method/selftrain/passes.py",
        "xlt_engine/engine/method/rules/class_quota.py",  # loaded by name in rules/__init__
        "xlt_engine/model/bert.py",
        "xlt_engine/kernels/voter_filter.py",
        "xlt_engine/engine/train/loop.py",
    ):
        assert needed in files, needed
    for kept_out in ("xlt_engine/cli/__init__.py", "xlt_engine/studies/report.py"):
        assert kept_out not in files
    assert "xlt_engine/engine/experiment/runs.py" not in files  # planning machinery
    btf = stage_code("btf")["files"]  # what the package passes on, not all of the package
    assert (
        "xlt_engine/kernels/mlm_loss.py" in btf and "xlt_engine/kernels/voter_filter.py" not in btf
    )
    assert not [f for f in btf if "rules" in f or "pseudo_labels" in f or "selftrain" in f]
    evaluate = stage_code("evaluate")["files"]
    assert "xlt_engine/engine/method/evaluate.py" in evaluate
    assert "xlt_engine/engine/method/selftrain/passes.py" not in evaluate


def _edited(folder, file: str):
    """The recorded fingerprint as if ``file`` had been another version when it was made."""
    path = folder / FINGERPRINT
    record = json.loads(path.read_text())
    record["code"]["files"][file] = "0" * 16
    record["digest"] = body_digest(record)
    path.write_text(json.dumps(record))
    return record["digest"]


def _pointing(folder, key: str, digest: str) -> None:
    """The recorded fingerprint as if it had been made from the upstream ``digest``."""
    path = folder / FINGERPRINT
    record = json.loads(path.read_text())
    record["upstream"][key] = digest
    record["digest"] = body_digest(record)
    path.write_text(json.dumps(record))


def _plans(cfg, text):
    btf = StagePlan(cfg, "btf", {"seed": 1}, {"text": text})
    finetune = StagePlan(cfg, "finetune", {"seed": 1}, {}, {"finetune.init": btf})
    return btf, finetune


def _made(tmp_path):
    """btf and finetune planned and begun (their fingerprints written) under ``tmp_path``."""
    cfg = load_config(CONLL, [f"out={str(tmp_path)!r}"])
    text = tmp_path / "text.txt"
    text.write_text("a\n")
    btf, finetune = _plans(cfg, text)
    btf.begin()
    finetune.begin()
    return cfg, text, btf, finetune


def test_a_code_change_is_named_refused_and_accepted_explicitly(tmp_path):
    cfg, text, btf, finetune = _made(tmp_path)
    assert btf.fingerprint()["code"] == stage_code("btf")
    old = _edited(btf.folder, "xlt_engine/model/bert.py")  # both made by another bert.py
    _pointing(finetune.folder, "finetune.init", old)
    btf, finetune = _plans(cfg, text)
    assert btf.differences() == ["code xlt_engine/model/bert.py: changed"]
    assert finetune.differences() == [f"upstream finetune.init: fingerprint {old[:12]} -> "
                                      f"{btf.fingerprint()['digest'][:12]}"]  # fmt: skip
    with pytest.raises(StaleStageError, match="accept-code") as info:
        check_plans([btf, finetune])
    assert "code xlt_engine/model/bert.py: changed" in str(info.value)

    said = []  # btf's folder only: finetune's, which names btf's old digest, is not rewritten
    assert accept_code(btf.folder, echo=said.append, dry_run=True) == [btf.folder]
    assert json.loads((btf.folder / FINGERPRINT).read_text())["digest"] == old  # nothing written
    assert accept_code(btf.folder, echo=said.append) == [btf.folder]
    assert f"{btf.folder}: accepted: code xlt_engine/model/bert.py: changed" in said
    record = json.loads((btf.folder / FINGERPRINT).read_text())
    assert (
        record["digest"] == btf.fingerprint()["digest"] and record["accepted"][0]["digest"] == old
    )
    btf, finetune = _plans(cfg, text)
    assert btf.differences() == [] and finetune.differences() == []  # its old digest is known
    check_plans([btf, finetune])
    assert accept_code(btf.folder, echo=said.append) == []  # nothing left to accept
    assert said[-1].endswith("every fingerprint already names the current code")


def test_accepting_both_ends_of_a_chain_repoints_the_downstream(tmp_path):
    cfg, text, btf, finetune = _made(tmp_path)
    _pointing(finetune.folder, "finetune.init", _edited(btf.folder, "xlt_engine/model/bert.py"))
    _edited(finetune.folder, "xlt_engine/engine/train/loop.py")  # old code of its own too
    path = finetune.folder / FINGERPRINT
    btf, finetune = _plans(cfg, text)
    assert "code xlt_engine/engine/train/loop.py: changed" in finetune.differences()
    assert sorted(accept_code(tmp_path, echo=None)) == sorted([btf.folder, finetune.folder])
    btf, finetune = _plans(cfg, text)
    assert btf.differences() == [] and finetune.differences() == []
    record = json.loads(path.read_text())
    assert record["upstream"]["finetune.init"] == btf.fingerprint()["digest"]


def test_a_record_of_an_older_engine_without_code_is_refused_and_can_be_accepted(tmp_path):
    cfg = load_config(CONLL, [f"out={str(tmp_path)!r}"])
    btf = StagePlan(cfg, "btf", {"seed": 1}, {})
    btf.begin()
    path = btf.folder / FINGERPRINT
    record = json.loads(path.read_text())
    del record["code"]
    record["digest"] = body_digest(record)
    path.write_text(json.dumps(record))
    diff = StagePlan(cfg, "btf", {"seed": 1}, {}).differences()
    assert diff[0].startswith("code engine: '(absent)' -> ") and "engine files" in diff[1]
    done = CliRunner().invoke(main, ["accept-code", str(btf.folder)])
    assert done.exit_code == 0, done.output
    assert StagePlan(cfg, "btf", {"seed": 1}, {}).differences() == []


def test_accept_code_refuses_a_folder_without_fingerprints_and_a_damaged_one(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    res = CliRunner().invoke(main, ["accept-code", str(empty)])
    assert res.exit_code != 0 and f"{empty}: no fingerprint.json" in res.output
    bad = tmp_path / "run" / "btf"
    bad.mkdir(parents=True)
    (bad / FINGERPRINT).write_text("{not json")
    res = CliRunner().invoke(main, ["accept-code", str(tmp_path / "run")])
    assert res.exit_code != 0 and str(bad / FINGERPRINT) in res.output
    assert (bad / FINGERPRINT).read_text() == "{not json"  # left as it was
