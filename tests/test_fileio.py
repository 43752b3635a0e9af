"""Atomic writes keep the user's umask: model files, config.json and run.json were 0600 (the
mode of ``tempfile``), so a colleague in the same group could not read a run."""

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
