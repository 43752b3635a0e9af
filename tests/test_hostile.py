"""Issue 66's cases, each a test that failed before its rule was built: outputs the engine
may not replace (rule 1), one error boundary for every command (rule 2), inputs read one way
(rule 3; the generated reader matrix is tests/test_inputs.py)."""

from __future__ import annotations

import errno
import json
import os

import pytest
import torch
from click.testing import CliRunner

from xlt_engine.cli import main

ALL = {
    "metric": "entity_f1",
    "source": "src",
    "split": "test",
    "targets": {"tgt": {"direct": 0.38, "btf": 0.63, "selftrain": 0.67}},
}


def _one_line(res, *words) -> str:
    """The command failed with one ``Error:`` line holding ``words`` and no traceback."""
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, res.output
    for w in words:
        assert w in errors[0], (w, errors[0])
    return errors[0]


# ---------------------------------------------------------------------------------------------
# rule 1: the engine replaces only what it wrote and nobody changed; never what it reads


def test_an_export_folder_edited_by_hand_is_not_replaced(tmp_path):
    """The ledger held entry names only: `export M E`, edit E/config.json, `export M E` lost
    the edit. Now each entry's digest is kept; an untouched earlier export is still replaced."""
    from tests.model.test_export import BERT, NER, task_model
    from xlt_engine.model.export import export_hf
    from xlt_engine.model.task import save_task_model

    src = save_task_model(task_model(BERT, "token", NER), tmp_path / "m")
    out = export_hf(src, tmp_path / "hf")
    export_hf(src, out)  # untouched: its own, replaced
    edited = (out / "config.json").read_text().replace("{", '{"note": "mine",', 1)
    (out / "config.json").write_text(edited)
    res = CliRunner().invoke(main, ["export", str(src), str(out)])
    _one_line(res, str(out), "changed since xlt-engine export wrote it", "--overwrite")
    assert (out / "config.json").read_text() == edited
    res = CliRunner().invoke(main, ["export", str(src), str(out), "--overwrite"])
    assert res.exit_code == 0, res.output


def test_report_never_writes_over_a_file_it_reads_even_with_overwrite(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "all.json").write_text(json.dumps(ALL))
    before = (runs / "all.json").read_bytes()
    for extra in ([], ["--overwrite"]):
        res = CliRunner().invoke(
            main, ["report", str(runs), "--out", str(runs / "all.json"), *extra]
        )
        _one_line(res, str(runs / "all.json"), "which this command reads")
    assert (runs / "all.json").read_bytes() == before
    res = CliRunner().invoke(main, ["report", str(runs), "--out", str(runs / "report.html")])
    assert res.exit_code == 0, res.output  # a new name inside the run folder is fine


def test_bench_appends_only_to_result_files_it_wrote_and_nobody_changed(tmp_path):
    args = ["bench", "kernels", "--op", "mse", "--mode", "forward", "--provider", "torch"]
    args += ["--device", "cpu", "--reps", "1", "--out", str(tmp_path)]
    assert CliRunner().invoke(main, args).exit_code == 0
    assert CliRunner().invoke(main, args).exit_code == 0  # its own files: appended to
    (csv,) = tmp_path.glob("kernels_*.csv")
    assert len(json.loads(csv.with_suffix(".json").read_text())) == 2
    csv.write_text(csv.read_text() + "my note\n")
    edited = csv.read_bytes()
    _one_line(CliRunner().invoke(main, args), str(csv), "changed since xlt-engine bench wrote it")
    assert csv.read_bytes() == edited
    assert CliRunner().invoke(main, [*args, "--overwrite"]).exit_code == 0


def test_a_result_file_of_the_users_is_not_appended_to(tmp_path):
    from xlt_engine.provenance import result_file

    mine = result_file(tmp_path, "kernels", torch.device("cpu"))
    mine.write_text("[]\n")
    args = ["bench", "kernels", "--op", "mse", "--mode", "forward", "--provider", "torch"]
    res = CliRunner().invoke(
        main, [*args, "--device", "cpu", "--reps", "1", "--out", str(tmp_path)]
    )
    _one_line(res, str(mine), "did not write")
    assert mine.read_text() == "[]\n"


# ---------------------------------------------------------------------------------------------
# rule 2: one error boundary; a full disk and a damaged checkpoint are one line


def _full(*_a, **_k):
    raise OSError(errno.ENOSPC, "No space left on device", "/out/x.safetensors")


def _full_rust(*_a, **_k):  # what safetensors raises from Rust
    raise Exception("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")


@pytest.mark.parametrize("raise_", [_full, _full_rust], ids=["OSError", "safetensors"])
def test_a_full_disk_is_one_line_in_every_command_with_the_remedy_it_has(
    tmp_path, monkeypatch, raise_
):
    """export, init, report, xnli-parallel and corpus each caught their own subset: a full
    disk was a traceback. A command without --resume is never told to use it."""
    from xlt_engine import model
    from xlt_engine.data import corpus, parallel
    from xlt_engine.model import export
    from xlt_engine.studies import report

    monkeypatch.setattr(export, "export_hf", raise_)
    monkeypatch.setattr(model, "save_pretrained", raise_)
    monkeypatch.setattr(report, "atomic_write_text", raise_)
    monkeypatch.setattr(parallel, "build_xnli_parallel", raise_)
    monkeypatch.setattr(corpus, "build_corpus", raise_)
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "all.json").write_text(json.dumps(ALL))
    conll = tmp_path / "src.conll"
    conll.write_text("Anna B-PER\nlives O\n")
    text = tmp_path / "tgt.txt"
    text.write_text("Anna wohnt hier\n")
    (tmp_path / "m").mkdir()
    (tmp_path / "xnli").mkdir()
    for args in (
        ["export", str(tmp_path / "m"), str(tmp_path / "hf")],
        ["init", str(tmp_path / "init"), "--layers", "1", "--hidden", "8", "--heads", "2"],
        ["report", str(runs), "--out", str(tmp_path / "r.html")],
        [
            "xnli-parallel",
            "--xnli",
            str(tmp_path / "xnli"),
            "--languages",
            "de",
            "--out",
            str(tmp_path / "p.jsonl"),
        ],
        [
            "corpus",
            "--source",
            str(conll),
            "--target-text",
            str(text),
            "--out",
            str(tmp_path / "c.txt"),
        ],
    ):
        res = CliRunner().invoke(main, args)
        line = _one_line(res, "no space left on device")
        assert "--resume" not in line, (args[0], line)


def test_debug_shows_the_traceback_of_an_expected_failure(tmp_path):
    cfg = tmp_path / "x.toml"
    cfg.write_text("task = 1\n")
    res = CliRunner().invoke(main, ["--debug", "run", "--stage", "btf", "--config", str(cfg)])
    assert res.exit_code == 1 and isinstance(res.exception, ValueError)


def _two_checkpoints(tmp_path):
    from tests.engine.train.test_loop import load_weights, save_weights
    from xlt_engine.engine.train.checkpoints import Checkpoints

    model = torch.nn.Linear(3, 1)
    saver = Checkpoints(tmp_path, save_weights, load_weights, keep=2)
    state = {"optimizer": {"state": {}}, "scaler": {"scale": 1.0}, "step": 0}
    saver.save(model, 1, state)
    saver.save(model, 2, state)
    return saver, model


@pytest.mark.parametrize("cut", ["truncated", "empty"])
def test_a_damaged_latest_checkpoint_names_itself_and_offers_the_previous_one(tmp_path, cut):
    """A truncated state.pt gave a traceback on --resume, a 0-byte one only "Aborted!"."""
    saver, model = _two_checkpoints(tmp_path)
    state = tmp_path / "ckpt-00000002" / "state.pt"
    data = state.read_bytes()
    state.write_bytes(data[: len(data) // 2] if cut == "truncated" else b"")
    with pytest.raises(ValueError) as info:
        saver.load(model)
    message = str(info.value)
    assert f"{state}: a damaged checkpoint" in message
    assert "ckpt-00000001" in message and "--resume" in message
    (tmp_path / "latest").write_text("ckpt-00000001\n")  # what the message says to do
    assert saver.load(model)["step"] == 0


def test_memory_mapped_outputs_are_allocated_up_front(tmp_path, monkeypatch):
    """Teacher probabilities were a sparse file filled through a memory map: on a full disk a
    page write was SIGBUS (rc 135, no message). Now the blocks are allocated at creation, and
    a full disk is an OSError naming the file."""
    from xlt_engine import fileio

    path = tmp_path / "probs.safetensors"
    fileio.create_safetensors(path, {"p": ("F32", (256, 64))}, {})
    st = os.stat(path)
    assert st.st_blocks * 512 >= st.st_size  # not sparse

    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    with pytest.raises(OSError) as info:
        fileio.create_safetensors(tmp_path / "b.safetensors", {"p": ("F32", (4, 4))}, {})
    assert info.value.errno == errno.ENOSPC and info.value.filename.endswith("b.safetensors")


# ---------------------------------------------------------------------------------------------
# rule 3: inputs read one way


def test_task_json_that_names_a_label_twice_is_refused(tmp_path):
    """Two output rows of one name mislabelled every prediction, with no error."""
    from xlt_engine.model.task import read_task_meta

    meta = {"kind": "token", "labels": ["O", "B-PER", "O"], "num_voters": 1, "widths": [0]}
    (tmp_path / "task.json").write_text(json.dumps({**meta, "dropout": 0.1}))
    with pytest.raises(ValueError, match=r"task.json: labels: \['O'\] given twice"):
        read_task_meta(tmp_path)


@pytest.mark.parametrize(
    ("name", "content", "what"),
    [
        ("t.jsonl", '{"text": "fine", "label": "a"}\n{"text": " ", "label": "b"}\n', "text"),
        ("t.jsonl", '{"text": "x", "text_pair": "", "label": "a"}\n', "text_pair"),
        ("t.tsv", "fine\ta\n\t b\n", "text"),
    ],
)
def test_an_example_with_empty_text_is_refused_in_every_labeled_format(
    tmp_path, name, content, what
):
    """JSONL and TSV accepted empty text (a target of empty texts self-trained without a
    word); MARC and XNLI refused it. One rule now: refused, naming file and line."""
    from xlt_engine.data.text import read_labeled

    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ValueError, match=rf"{name}:\d+: empty {what}$"):
        read_labeled(path)


def test_every_config_problem_comes_back_in_one_pass_naming_its_key(tmp_path):
    """epochs=inf hid lr=-1 and warmup_ratio=7 in the same section."""
    from tests.engine.experiment.test_config import MINIMAL
    from xlt_engine.engine.experiment.config import ConfigError, load_config

    cfg = tmp_path / "x.toml"
    cfg.write_text(MINIMAL)
    sets = ["btf.train.epochs=inf", "btf.train.lr=-1", "btf.train.warmup_ratio=7", "seed=-1"]
    with pytest.raises(ConfigError) as info:
        load_config(cfg, sets)
    found = "\n".join(info.value.problems)
    for key in ("btf.train.epochs", "lr must be", "warmup_ratio must be", "seed must be"):
        assert key in found, found


def test_a_key_set_twice_warns_naming_both(tmp_path):
    from tests.engine.experiment.test_config import MINIMAL
    from xlt_engine.engine.experiment.config import load_config

    cfg = tmp_path / "x.toml"
    cfg.write_text(MINIMAL)
    with pytest.warns(UserWarning, match=r"--set seed is given twice: 'seed=4' replaces 'seed=3'"):
        assert load_config(cfg, ["seed=3", "seed=4"]).seed == 4


@pytest.mark.parametrize("command", ["run", "report"])
def test_a_fifo_where_a_file_is_expected_is_refused_at_once(tmp_path, command):
    """A FIFO given as the config, or as a run's all.json, blocked forever."""
    fifo = tmp_path / ("x.toml" if command == "run" else "all.json")
    os.mkfifo(fifo)
    args = (
        ["run", "--stage", "btf", "--config", str(fifo)]
        if command == "run"
        else ["report", str(tmp_path), "--out", str(tmp_path / "r.html")]
    )
    _one_line(CliRunner().invoke(main, args), str(fifo), "FIFO")
