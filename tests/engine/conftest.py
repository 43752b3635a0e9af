"""Engine fixtures: a tiny random model (2 layers, hidden 64) with the real mBERT vocabulary,
and slices of the real CoNLL files (cut at sentence boundaries, original lines kept)."""

import json
import re
from contextlib import ExitStack, contextmanager
from pathlib import Path
from unittest import mock

import pytest

from tests.conftest import SHARED_DATA


def make_tiny(out: Path, dropout: float | None = None) -> Path:
    from click.testing import CliRunner

    from xlt_engine.cli import main

    res = CliRunner().invoke(
        main,
        [
            "init",
            str(out),
            "--vocab",
            str(SHARED_DATA / "mbert" / "vocab.txt"),
            "--layers",
            "2",
            "--hidden",
            "64",
            "--heads",
            "2",
            "--intermediate",
            "128",
            "--seed",
            "3",
        ],
    )
    assert res.exit_code == 0, res.output
    if dropout is not None:
        cfg = json.loads((out / "config.json").read_text())
        cfg["hidden_dropout_prob"] = cfg["attention_probs_dropout_prob"] = dropout
        (out / "config.json").write_text(json.dumps(cfg))
    return out


def conll_slice(src: Path, out: Path, sentences: int, skip: int = 0) -> Path:
    """Sentences ``skip .. skip + sentences`` of a CoNLL file (with their DOCSTART lines)."""
    raw = src.read_text(encoding="utf-8")  # eng, esp, ned (not the latin-1 German files)
    keep, seen, in_sent = [], 0, False
    for line in raw.splitlines():
        blank = not line.strip()
        if blank and in_sent:
            seen += 1
        in_sent = not blank and not line.startswith("-DOCSTART-")
        if seen < skip:
            continue
        if seen >= skip + sentences:
            break
        keep.append(line)
    out.write_text("\n".join(keep) + "\n", encoding="utf-8")
    return out


def cls_slice(src: Path, out: Path, items: int) -> Path:
    """``items`` reviews of a CLS-10 file taken at an even stride (the files are sorted by
    rating, so both classes are in)."""
    raw = src.read_text(encoding="utf-8")
    found = re.findall(r"<item>.*?</item>", raw, flags=re.S)
    step = max(1, len(found) // items)
    keep = found[::step][:items]
    out.write_text(
        '<?xml version="1.0" encoding="utf-8"?>\n<items>' + "\n".join(keep) + "\n</items>\n",
        encoding="utf-8",
    )
    return out


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent")
    return make_tiny(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def conll(tmp_path_factory) -> dict[str, Path]:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent")
    tmp = tmp_path_factory.mktemp("conll")
    return {
        "eng.train": conll_slice(SHARED_DATA / "conll2003_en/eng.train", tmp / "eng.train", 240),
        "eng.dev": conll_slice(SHARED_DATA / "conll2003_en/eng.testa", tmp / "eng.dev", 60),
        "eng.test": conll_slice(SHARED_DATA / "conll2003_en/eng.testb", tmp / "eng.test", 60),
        "esp.train": conll_slice(SHARED_DATA / "conll2002/esp.train", tmp / "esp.train", 240),
        "esp.test": conll_slice(SHARED_DATA / "conll2002/esp.testb", tmp / "esp.test", 60),
        "ned.test": conll_slice(SHARED_DATA / "conll2002/ned.testb", tmp / "ned.test", 60),
    }


def watch_final_save(monkeypatch, module, out: Path, sibling: str) -> list[bool]:
    """Wrap ``module.save_task_model``: each save into ``out/model`` (a stage's completion
    marker) appends whether ``out/sibling`` was already written."""
    real, seen = module.save_task_model, []

    def save(model, folder, tok):
        if Path(folder) == out / "model":
            seen.append((out / sibling).is_file())
        return real(model, folder, tok)

    monkeypatch.setattr(module, "save_task_model", save)
    return seen


FAST = """
[btf]
batch_size = 8
freeze_layers = 1
[btf.train]
max_steps = 6
lr = 1e-3
log_every = 3
[finetune]
batch_size = 8
[finetune.train]
max_steps = 16
lr = 3e-3
log_every = 8
save_every = 8  # a loop checkpoint mid-run, which the finished stage drops
[selftrain]
rounds = 1.5
batch_size = 8
[selftrain.soft]
max_steps = 6
lr = 3e-3
log_every = 3
[selftrain.hard]
max_steps = 6
lr = 1e-3
log_every = 3
"""


@pytest.fixture(scope="module")
def ner_cfg(tiny, conll, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ner-data")
    for name, path in conll.items():
        (root / name).write_bytes(path.read_bytes())
    conll_slice(SHARED_DATA / "conll2002/ned.train", root / "ned.train", 240)
    cfg = root / "ner.toml"
    cfg.write_text(
        f"""task = "ner"
source = "eng"
targets = ["esp", "ned"]
seed = 5
device = "cpu"
[data]
root = "{root}"
[model]
path = "{tiny}"
freeze_layers = 1  # the tiny model has 2 layers
max_len = 48
[languages.eng]
train = "eng.train"
dev = "eng.dev"
test = "eng.test"
[languages.esp]
unlabeled = "esp.train"
test = "esp.test"
[languages.ned]
unlabeled = "ned.train"
test = "ned.test"
"""
        + FAST
    )
    return cfg


@contextmanager
def gpu_step_syncs():
    """``HostSyncs`` over a run, with the checks that run only where they are free (on the host:
    ``free_checks``) turned off, as on a GPU: ``syncs.in_steps()`` is what a GPU step would
    sync."""
    from benchmarks.host_sync import HostSyncs
    from xlt_engine.engine.train import loop
    from xlt_engine.kernels import mlm_loss

    with ExitStack() as stack:
        for module in (loop, mlm_loss):
            stack.enter_context(mock.patch.object(module, "free_checks", lambda device: False))
        yield stack.enter_context(HostSyncs())
