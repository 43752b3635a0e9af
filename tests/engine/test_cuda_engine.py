"""The training loop on a CUDA GPU: the fp16 grad-scaler path trains like fp32 and checkpoints its
scaler, and a btf run under ``torchrun --nproc-per-node 1`` goes through an NCCL process group
and DDP and lands on the weights of the same run without torchrun. (The other engine tests run
on the GPU too when one is present: their stages default to ``device = "auto"``.)"""

import json
import math

import pytest
import torch

from tests.conftest import requires_cuda
from tests.engine.method.test_finetune import ner_config
from tests.engine.train.test_ddp import assert_close_weights, torchrun
from xlt_engine.data import read_conll
from xlt_engine.engine.method.btf import BtfConfig, run_btf
from xlt_engine.engine.method.finetune import run_finetune
from xlt_engine.engine.train.checkpoints import latest_checkpoint
from xlt_engine.engine.train.config import TrainConfig

pytestmark = [pytest.mark.cuda, requires_cuda]


def losses(out) -> list[float]:
    return [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_fp16_with_grad_scaler_trains_like_fp32_and_saves_its_scale(tiny, conll, tmp_path):
    runs = {}
    for precision in ("fp32", "fp16"):
        out = tmp_path / precision
        cfg = ner_config(
            tiny, conll, out, max_steps=30, precision=precision, save_every=10, clip=1.0
        )
        run_finetune(cfg, echo=None)
        runs[precision] = losses(out)
    fp32, fp16 = runs["fp32"], runs["fp16"]
    assert all(math.isfinite(x) for x in fp16) and fp16[-1] < fp16[0] - 0.5, fp16
    # Gradients clipped before they are unscaled would be clipped ~65,536 times too hard and
    # leave the loss where it started; unscaled ones follow fp32 within fp16's rounding.
    for a, b in zip(fp16, fp32, strict=True):
        assert a == pytest.approx(b, rel=0.05, abs=0.02), (fp16, fp32)
    state = torch.load(
        latest_checkpoint(tmp_path / "fp16") / "state.pt", map_location="cpu", weights_only=True
    )
    scale = float(state["scaler"]["scale"])
    assert math.isfinite(scale) and scale > 0
    state = torch.load(
        latest_checkpoint(tmp_path / "fp32") / "state.pt", map_location="cpu", weights_only=True
    )
    assert not state["scaler"]  # a disabled scaler has nothing to save


def test_btf_under_torchrun_on_one_gpu_uses_nccl_and_ddp(tiny, conll, tmp_path):
    sents = [" ".join(s.tokens) for s in read_conll(conll["eng.train"])]
    (tmp_path / "eng.txt").write_text("\n".join(sents) + "\n")
    base = dict(
        model=str(tiny),
        texts=[str(tmp_path / "eng.txt")],
        batch_size=4,
        max_len=48,
        freeze_layers=1,
        cache_dir=str(tmp_path / "cache"),
        device="cuda",
    )
    train = dict(max_steps=8, lr=5e-3, log_every=4, seed=5)
    spec = {**base, "stage": "btf", "out": str(tmp_path / "ddp"), "train": train}
    proc = torchrun(1, "tests/engine/train/ddp_worker.py", json.dumps(spec))
    assert "process group: nccl, world 1, model DistributedDataParallel" in proc.stdout
    base["texts"] = tuple(base["texts"])
    run_btf(BtfConfig(out=str(tmp_path / "one"), train=TrainConfig(**train), **base), echo=None)
    # same data, masks and dropout draws; only cuBLAS/atomics may reorder sums
    assert assert_close_weights(tmp_path / "ddp" / "base-model", tmp_path / "one" / "base-model")
    for a, b in zip(losses(tmp_path / "ddp"), losses(tmp_path / "one"), strict=True):
        assert a == pytest.approx(b, rel=1e-3)
