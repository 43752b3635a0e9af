"""Atomic writes keep the user's umask: model files, config.json and run.json were 0600 (the
mode of ``tempfile``), so a colleague in the same group could not read a run."""

import json
import os
import stat

import pytest
import torch

from xlt_engine.fileio import atomic_folder, atomic_write_text, current_umask
from xlt_engine.model import BertConfig, BertForMLM, save_pretrained


@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def modes(root):
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, root)] = stat.S_IMODE(os.stat(path).st_mode)
    return out


def test_files_and_folders_get_the_umask_modes(tmp_path, umask):
    assert current_umask() == umask
    atomic_write_text(tmp_path / "run.json", "{}\n")
    with atomic_folder(tmp_path / "folder") as tmp:
        (tmp / "a.txt").write_text("a")
    cfg = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
    )
    torch.manual_seed(0)
    save_pretrained(BertForMLM(cfg), tmp_path / "model")
    got = modes(tmp_path)
    assert got["run.json"] == 0o666 & ~umask
    assert got["folder"] == got["model"] == 0o777 & ~umask
    assert got["model/model.safetensors"] == got["model/config.json"] == 0o666 & ~umask
    assert not [p for p in got if os.path.basename(p).startswith(".")]  # no temporaries left


def test_remove_debris_takes_only_what_killed_atomic_writes_left(tmp_path):
    keep = [tmp_path / "model", tmp_path / "model" / "model.safetensors", tmp_path / ".hidden"]
    keep[0].mkdir()
    keep[1].write_bytes(b"w")
    keep[2].write_text("a user's file")
    debris = [
        tmp_path / ".model.tmp-k2j4h1x_",  # a half-written model folder
        tmp_path / "ckpt-00000004" / ".state.pt.tmp-abc123",
        tmp_path / ".latest.tmp-9z8y7x",
        tmp_path / ".model.old-q1w2e3",
    ]
    debris[0].mkdir()
    (debris[0] / "model.safetensors").write_bytes(b"x" * 100)
    debris[1].parent.mkdir()
    debris[1].write_bytes(b"s")
    debris[2].write_text("ckpt-0")
    debris[3].mkdir()
    from xlt_engine.fileio import remove_debris

    assert sorted(remove_debris(tmp_path)) == sorted(debris)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in debris)
    with atomic_folder(tmp_path / "again") as tmp:  # the names atomic writes use match
        (tmp / "f").write_text("x")
        assert remove_debris(tmp_path) == [tmp]
        tmp.mkdir()  # (put back for the context manager)
        (tmp / "f").write_text("x")


def test_a_torn_last_log_record_is_skipped_with_a_warning_and_a_bad_middle_one_is_an_error(
    tmp_path,
):
    """A kill while selftrain.jsonl was appended made the resume crash with JSONDecodeError."""
    from xlt_engine.fileio import append_jsonl
    from xlt_engine.inputs import read_jsonl

    log = tmp_path / "selftrain.jsonl"
    append_jsonl(log, {"round": 1, "step": "soft"})
    append_jsonl(log, {"round": 1, "step": "hard"})
    assert read_jsonl(log) == [{"round": 1, "step": "soft"}, {"round": 1, "step": "hard"}]
    with open(log, "a") as f:
        f.write('{"round": 2, "st')  # cut by the kill
    with pytest.warns(UserWarning, match=r"selftrain.jsonl:3: a torn last record is skipped"):
        assert len(read_jsonl(log)) == 2
    log.write_text('{"a": 1}\n{"b": \n{"c": 3}\n')
    with pytest.raises(ValueError, match=r"selftrain.jsonl:2: not a JSON record"):
        read_jsonl(log)


def test_results_json_marks_done_so_it_is_written_after_its_table(tmp_path, monkeypatch):
    """Issue 23 (5): results.json (what marks evaluate finished) was written before results.md,
    so a kill between the two left a finished stage without its table."""
    import xlt_engine.fileio as fileio

    order, real = [], fileio.atomic_write_text
    monkeypatch.setattr(
        fileio, "atomic_write_text", lambda p, t, **kw: (order.append(p.name), real(p, t, **kw))
    )
    fileio.write_results(tmp_path, "results", {"a": 1}, "| a |\n")
    assert order == ["results.md", "results.json"]
    assert json.loads((tmp_path / "results.json").read_text()) == {"a": 1}


def test_a_folder_lock_refuses_a_second_holder_and_dies_with_its_process(tmp_path):
    import subprocess
    import sys

    from xlt_engine.fileio import folder_lock

    folder = tmp_path / "stage"
    with folder_lock(folder, "the finetune stage"):
        # a second open of the lock file is another holder (flock is per open file)
        held = rf"another process \(pid {os.getpid()}\) is running "
        with pytest.raises(ValueError, match=held), folder_lock(folder, "the finetune stage"):
            pass
    with folder_lock(folder, "again"):  # released on exit
        pass
    # a holder killed by SIGKILL leaves no lock behind (the kernel drops it with the process)
    code = (
        "import sys, time\n"
        "from xlt_engine.fileio import folder_lock\n"
        f"with folder_lock({str(folder)!r}, 'x'):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(ValueError, match=rf"pid {proc.pid}\)"), folder_lock(folder, "x"):
            pass
    finally:
        proc.kill()
        proc.wait()
    with folder_lock(folder, "x"):
        pass
