"""DDP on CPU: btf and finetune with 2 gloo processes under torchrun give the weights of one
process running the same global batch (grad_accum = 2 over the same batches)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.engine.conftest import make_tiny

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_nodrop(tmp_path_factory, tiny):
    # dropout draws differ per rank by design; without it the two runs must agree
    return make_tiny(tmp_path_factory.mktemp("nodrop") / "tiny", dropout=0.0)


def launch(spec: dict, nproc: int) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           str(ROOT / "tests" / "engine" / "ddp_worker.py"), json.dumps(spec)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


def assert_close_weights(a: Path, b: Path, names=("model.safetensors",)):
    compared = 0
    for name in names:
        wa, wb = load_file(str(a / name)), load_file(str(b / name))
        assert wa.keys() == wb.keys()
        for k in wa:
            torch.testing.assert_close(
                wa[k], wb[k], rtol=1e-4, atol=2e-5, msg=lambda m, k=k: f"{k}: {m}"
            )
            compared += 1
    return compared


def test_btf_two_gloo_processes_equal_one_process(tiny_nodrop, conll, tmp_path):
    texts = []
    for lang in ("eng", "esp"):
        from xlt_engine.data import read_conll

        sents = [" ".join(s.tokens) for s in read_conll(conll[f"{lang}.train"])]
        (tmp_path / f"{lang}.txt").write_text("\n".join(sents) + "\n")
        texts.append(str(tmp_path / f"{lang}.txt"))
    base = dict(stage="btf", model=str(tiny_nodrop), texts=texts, batch_size=4, max_len=48,
                freeze_layers=1, cache_dir=str(tmp_path / "cache"), device="cpu")  # fmt: skip
    train = dict(max_steps=8, lr=5e-3, log_every=4, seed=5)
    launch({**base, "out": str(tmp_path / "ddp"), "train": train}, nproc=2)
    launch({**base, "out": str(tmp_path / "one"), "train": {**train, "grad_accum": 2}}, nproc=1)
    init = load_file(str(tiny_nodrop / "model.safetensors"))
    ddp = load_file(str(tmp_path / "ddp" / "base-model" / "model.safetensors"))
    assert any(not torch.equal(init[k], ddp[k]) for k in init)  # it trained
    assert_close_weights(tmp_path / "ddp" / "base-model", tmp_path / "one" / "base-model")
    logs = [[json.loads(x) for x in (tmp_path / r / "metrics.jsonl").read_text().splitlines()]
            for r in ("ddp", "one")]  # fmt: skip
    assert [r["step"] for r in logs[0]] == [4, 8]
    for a, b in zip(*logs, strict=True):  # the logged loss is reduced over ranks
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)


def test_finetune_two_gloo_processes_equal_one_process(tiny_nodrop, conll, tmp_path):
    base = dict(stage="finetune", model=str(tiny_nodrop), train_file=str(conll["eng.train"]),
                format="conll", max_len=48, batch_size=4, voter_dropout=0.0, device="cpu")  # fmt: skip
    train = dict(max_steps=8, lr=3e-3, log_every=4, seed=5, save_every=4)
    launch({**base, "out": str(tmp_path / "ddp"), "train": train}, nproc=2)
    launch({**base, "out": str(tmp_path / "one"), "train": {**train, "grad_accum": 2}}, nproc=1)
    n = assert_close_weights(tmp_path / "ddp" / "model", tmp_path / "one" / "model",
                             ("model.safetensors", "voters.safetensors"))  # fmt: skip
    assert n > 20
    state = torch.load(tmp_path / "ddp" / "ckpt-00000008" / "state.pt", weights_only=True)
    assert len(state["rng_ranks"]) == 2  # each rank's RNG streams are kept for an exact resume
