"""The training loop through the btf stage: loss goes down, kill/resume is bit-exact, SIGTERM
writes a checkpoint, freezing holds, the Base Model loads in transformers."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from xlt_engine.engine.method.btf import BtfConfig, run_btf
from xlt_engine.engine.train.checkpoints import latest_checkpoint
from xlt_engine.engine.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from tests.conftest import SHARED_DATA

    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent")
    from click.testing import CliRunner

    from xlt_engine.cli import main
    from xlt_engine.data import read_conll

    tmp = tmp_path_factory.mktemp("btf")
    res = CliRunner().invoke(
        main,
        [
            "init",
            str(tmp / "tiny"),
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
        ],
    )
    assert res.exit_code == 0, res.output
    texts = []
    for name, f in (("en", "conll2003_en/eng.train"), ("es", "conll2002/esp.train")):
        sents = [" ".join(s.tokens) for s in read_conll(SHARED_DATA / f)][:300]
        (tmp / f"{name}.txt").write_text("\n".join(sents) + "\n", encoding="utf-8")
        texts.append(str(tmp / f"{name}.txt"))
    return tmp, tuple(texts)


def config(setup, out, btf=None, **train_kw):
    """The tests' btf config: ``btf`` sets BtfConfig fields, the rest TrainConfig's."""
    tmp, texts = setup
    kw = dict(max_steps=20, lr=5e-3, log_every=5, save_every=5, seed=1)
    kw.update(train_kw)
    fields = dict(model=str(tmp / "tiny"), freeze_layers=1) | (btf or {})
    return BtfConfig(
        texts=texts,
        out=str(out),
        train=TrainConfig(**kw),
        batch_size=8,
        max_len=48,
        cache_dir=str(tmp / "cache"),
        **fields,
    )


def weights(folder):
    return load_file(str(Path(folder) / "model.safetensors"))


def test_loss_goes_down_and_frozen_weights_hold(setup, tmp_path):
    tmp, _ = setup
    r = run_btf(config(setup, tmp_path / "run", max_steps=30, lr=2e-2), echo=None)
    losses = [h["loss"] for h in r.history]
    assert len(losses) == 6 and losses[-1] < losses[0] - 0.3, losses
    before, after = weights(tmp / "tiny"), weights(tmp_path / "run" / "base-model")
    frozen = [k for k in before if "embeddings" in k or ".layer.0." in k]
    trained = [k for k in before if ".layer.1." in k or k.startswith("cls.")]
    assert frozen and trained
    for k in frozen:
        assert torch.equal(before[k], after[k]), k
    assert any(not torch.equal(before[k], after[k]) for k in trained)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 6 and '"tokens_per_s"' in lines[0]


def test_base_model_loads_in_transformers(setup, tmp_path):
    transformers = pytest.importorskip("transformers")
    run_btf(config(setup, tmp_path / "run", max_steps=2), echo=None)
    _, info = transformers.BertForMaskedLM.from_pretrained(
        tmp_path / "run" / "base-model", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not info["mismatched_keys"]


KILL = """
import json, sys
from tests.engine.method.test_btf import config
from xlt_engine.engine.method.btf import run_btf
setup = (__import__("pathlib").Path(sys.argv[1]), tuple(sys.argv[2:4]))
run_btf(config(setup, sys.argv[4], json.loads(sys.argv[5])), echo=None)
"""


@pytest.mark.parametrize("kill_at", [7, 15])
def test_sigkill_then_resume_is_bit_exact(setup, tmp_path, kill_at):
    tmp, texts = setup
    run_btf(config(setup, tmp_path / "full"), echo=None)
    proc = subprocess.run(
        [sys.executable, "-c", KILL, str(tmp), *texts, str(tmp_path / "cut"), "{}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "XLT_KILL_AT": str(kill_at)},
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    ckpt = latest_checkpoint(tmp_path / "cut")
    assert ckpt.name == f"ckpt-{((kill_at - 1) // 5) * 5:08d}"  # killed before saving kill_at
    r = run_btf(config(setup, tmp_path / "cut"), resume=True, echo=None)
    assert r.step == 20
    full, cut = weights(tmp_path / "full" / "base-model"), weights(tmp_path / "cut" / "base-model")
    assert full.keys() == cut.keys()
    for k in full:
        assert torch.equal(full[k], cut[k]), k


SIGTERM = """
import os, signal, sys
from tests.engine.method.test_btf import config
from xlt_engine.engine.train import loop
from xlt_engine.engine.method.btf import run_btf
setup = (__import__("pathlib").Path(sys.argv[1]), tuple(sys.argv[2:4]))
real = loop.lr_at
def lr_at(step, cfg):  # send ourselves SIGTERM during step 8
    if step == 7:
        os.kill(os.getpid(), signal.SIGTERM)
    return real(step, cfg)
loop.lr_at = lr_at
try:
    run_btf(config(setup, sys.argv[4], save_every=0), echo=None)
except loop.Interrupted as err:
    print(err)
    sys.exit(3)
"""


def test_sigterm_writes_checkpoint_and_says_how_to_resume(setup, tmp_path):
    tmp, texts = setup
    proc = subprocess.run(
        [sys.executable, "-c", SIGTERM, str(tmp), *texts, str(tmp_path / "run")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 3, proc.stderr
    assert "SIGTERM received: checkpoint written at step 8" in proc.stdout
    assert "--resume" in proc.stdout
    assert latest_checkpoint(tmp_path / "run").name == "ckpt-00000008"
    run_btf(config(setup, tmp_path / "run", save_every=0), resume=True, echo=None)
    run_btf(config(setup, tmp_path / "full", save_every=0), echo=None)
    full, cut = weights(tmp_path / "full" / "base-model"), weights(tmp_path / "run" / "base-model")
    assert all(torch.equal(full[k], cut[k]) for k in full)


def test_freeze_layers_all_trains_only_the_head(setup, tmp_path):
    import dataclasses

    tmp, _ = setup
    cfg = dataclasses.replace(
        config(setup, tmp_path / "run", max_steps=3, lr=2e-2), freeze_layers="all"
    )
    run_btf(cfg, echo=None)
    before, after = weights(tmp / "tiny"), weights(tmp_path / "run" / "base-model")
    body = [k for k in before if k.startswith("bert.")]
    assert body and all(torch.equal(before[k], after[k]) for k in body)
    assert not torch.equal(
        before["cls.predictions.transform.dense.weight"],
        after["cls.predictions.transform.dense.weight"],
    )


def test_a_btf_step_makes_no_host_sync(setup, tmp_path):
    """Masking runs in the data source (host work, read one step ahead); the step itself, as a
    GPU runs it (host-only checks off), syncs only at its log point."""
    from tests.engine.conftest import gpu_step_syncs

    cfg = config(setup, tmp_path / "run", max_steps=6, log_every=6, save_every=0,
                 save_minutes=0, final_checkpoint=False)  # fmt: skip
    with gpu_step_syncs() as hs:
        run_btf(cfg, echo=None)
    assert hs.in_steps() == [], [s.where() for s in hs.in_steps()]
    assert hs.syncs  # it does see the host work (masking) and the log point


def test_an_epoch_of_btf_batches_has_few_shapes(setup, tmp_path):
    """At max_len 128: at most 4 sequence lengths, and masked-row counts in multiples of 64
    (the extra rows ignored: the loss is the mean over the real ones)."""
    from dataclasses import replace

    from xlt_engine.data.cache import TokenCache
    from xlt_engine.data.masking import MlmMasker
    from xlt_engine.data.tokenizer import load_tokenizer
    from xlt_engine.engine.method.btf import MLM_ROW_MULTIPLE, MlmData

    _, texts = setup
    cfg = replace(config(setup, tmp_path / "run"), max_len=128)
    tok = load_tokenizer(cfg.model)
    caches = [TokenCache.build(t, tok, tmp_path / "cache") for t in texts]
    data = MlmData(caches, tok, cfg, MlmMasker.from_tokenizer(tok), cfg.pad_for("cuda"))
    batches = [data.batch(0, i) for i in range(data.num_batches(0))]
    lengths = {b["input_ids"].shape[1] for b in batches}
    assert len(batches) > 20 and len(lengths) <= 4 and max(lengths) <= 128, sorted(lengths)
    for b in batches:
        real = int((b["labels"] != -100).sum())
        assert len(b["labels"]) % MLM_ROW_MULTIPLE == 0 and len(b["labels"]) - real < 64
        assert (b["positions"][real:] == 0).all()  # padding rows read position 0, ignored


def test_pad_multiple_auto_fits_the_device():
    """auto: 32 on CUDA (few shapes to warm up), 8 on a CPU (every padded token is work); a
    number is kept everywhere."""
    from xlt_engine.engine.method.settings import BatchSettings

    auto = BatchSettings()
    assert auto.pad_multiple == "auto"
    assert (auto.pad_for("cuda"), auto.pad_for("cuda:1"), auto.pad_for("cpu")) == (32, 32, 8)
    assert BatchSettings(pad_multiple=16).pad_for("cpu") == 16
    with pytest.raises(
        ValueError, match="pad_multiple must be an integer in \\[1, 512\\] or 'auto'"
    ):
        BatchSettings(pad_multiple="fast")


WARM = {"head_warmup_epochs": 0.25, "head_warmup_lr": 1e-2}


def test_head_warmup_is_a_head_only_btf_then_btf(setup, tmp_path):
    """``head_warmup_epochs``: the MLM head alone at ``head_warmup_lr`` (as a btf run with
    every layer frozen), then btf as set from that model: the same weights, bit for bit."""
    one = run_btf(config(setup, tmp_path / "one", WARM), echo=None)
    head = {"freeze_layers": "all"}
    run_btf(config(setup, tmp_path / "head", head, max_steps=0, epochs=0.25, lr=1e-2), echo=None)
    then = {"model": str(tmp_path / "head" / "base-model")}
    run_btf(config(setup, tmp_path / "then", then), echo=None)
    run_btf(config(setup, tmp_path / "cold"), echo=None)
    warm, two = weights(tmp_path / "one" / "base-model"), weights(tmp_path / "then" / "base-model")
    assert warm.keys() == two.keys()
    assert all(torch.equal(warm[k], two[k]) for k in warm)
    cold = weights(tmp_path / "cold" / "base-model")
    assert not torch.equal(
        warm["cls.predictions.transform.dense.weight"],
        cold["cls.predictions.transform.dense.weight"],
    )
    assert one.step == 20  # the result is the main phase's
    phase = (tmp_path / "one" / "head-warmup" / "metrics.jsonl").read_text().splitlines()
    assert phase and all('"lr"' in line for line in phase)


@pytest.mark.parametrize("kill_at", ["head-warmup:8", "one:7"])
def test_head_warmup_sigkill_then_resume_is_bit_exact(setup, tmp_path, kill_at):
    """Killed in the head phase or in the main one, ``resume=True`` ends where an
    uninterrupted run does."""
    tmp, texts = setup
    run_btf(config(setup, tmp_path / "full", WARM), echo=None)
    cut = tmp_path / "one"
    proc = subprocess.run(
        [sys.executable, "-c", KILL, str(tmp), *texts, str(cut), json.dumps(WARM)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "XLT_KILL_AT": kill_at},
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert (latest_checkpoint(cut) is None) == kill_at.startswith("head-warmup")
    run_btf(config(setup, cut, WARM), resume=True, echo=None)
    full, again = weights(tmp_path / "full" / "base-model"), weights(cut / "base-model")
    assert all(torch.equal(full[k], again[k]) for k in full)


def test_head_warmup_settings_are_checked():
    from xlt_engine.engine.method.settings import BtfSettings

    with pytest.raises(ValueError, match="head_warmup_epochs must be a number in"):
        BtfSettings(head_warmup_epochs=-1)
    with pytest.raises(ValueError, match="head_warmup_lr must be in"):
        BtfSettings(head_warmup_lr=0)


def test_a_checkpoint_with_no_mlm_head_gets_a_notice_unless_warmed(setup, tmp_path):
    """A model that ships no MLM head (e5, LaBSE): btf says its head starts fresh and names the
    warm-up; with the warm-up set, or with a head in the checkpoint, it says nothing of it."""
    import shutil

    from safetensors.torch import save_file

    from xlt_engine.engine.method.btf import fresh_head_notice

    tmp, _ = setup
    bare = tmp_path / "bare"
    shutil.copytree(tmp / "tiny", bare)
    kept = {k: v for k, v in weights(bare).items() if not k.startswith("cls.predictions.")}
    assert len(kept) < len(weights(bare))
    save_file(kept, str(bare / "model.safetensors"), metadata={"format": "pt"})
    said = {}
    for name, model, btf in (
        ("bare", bare, {}),
        ("warm", bare, WARM),
        ("headed", tmp / "tiny", {}),
    ):
        lines = []
        cfg = config(setup, tmp_path / name, {"model": str(model)} | btf, max_steps=2)
        run_btf(cfg, echo=lines.append)
        said[name] = [line for line in lines if "no MLM head" in line]
    assert said["bare"] == [fresh_head_notice(str(bare))]
    assert "btf.head_warmup_epochs" in said["bare"][0]
    assert said["warm"] == [] and said["headed"] == []
