"""Inference keeps the voter logits on the model's device, so the pseudo-label filter and the
threshold curve that follow run as kernels there (Triton on a GPU)."""

import numpy as np
import pytest
import torch

from tests.conftest import requires_cuda
from xlt_engine.data.task import Encoded
from xlt_engine.engine.train.inference import predict_logits
from xlt_engine.kernels import threshold_curve, voter_filter
from xlt_engine.model import BertConfig, BertEncoder
from xlt_engine.model.task import new_task_model


def tiny_task_model(device: str):
    cfg = BertConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    return new_task_model(BertEncoder(cfg), "token", ["O", "B-X", "I-X"], 3, None, 0.0).to(device)


def encoded(n: int = 7) -> Encoded:
    rng = np.random.default_rng(0)
    ids = [rng.integers(5, 50, size=int(rng.integers(4, 12))) for _ in range(n)]
    pos = [np.arange(1, len(x) - 1, 2, dtype=np.int64) for x in ids]
    return Encoded("token", ids, None, pos, [np.zeros(len(p), np.int64) for p in pos], None)


def check_on(device: str) -> None:
    model, enc = tiny_task_model(device), encoded()
    logits = predict_logits(model, enc, 0, torch.device(device))
    rows = sum(len(p) for p in enc.positions)
    assert logits.shape == (3, rows, 3) and logits.device.type == device
    labels, conf, _ = voter_filter(logits, 0.4)
    assert labels.device.type == device and conf.device.type == device
    acc, _, _ = threshold_curve(conf, labels >= 0, torch.tensor([0.5, 0.9], device=device))
    assert acc.device.type == device
    # the rows come back in input order: item by item against a one-item run
    first = predict_logits(
        model,
        Encoded("token", enc.input_ids[:1], None, enc.positions[:1], enc.targets[:1], None),
        0,
        torch.device(device),
    )
    torch.testing.assert_close(logits[:, : first.shape[1]], first, atol=1e-5, rtol=1e-5)


def test_logits_stay_on_the_cpu_model_device():
    check_on("cpu")


@pytest.mark.cuda
@requires_cuda
def test_logits_stay_on_the_gpu_and_the_filter_runs_there():
    check_on("cuda")


def test_inference_runs_in_bf16_on_a_cpu_exactly_where_training_does(monkeypatch):
    """inference_dtype: the training rule (native bf16 and a model whose widest layer has >=
    1,024 inputs) for inference too; a narrow model, or a CPU without native bf16, stays fp32."""
    from xlt_engine.engine.train import inference, optim

    wide = torch.nn.Sequential(torch.nn.Linear(4, 1536), torch.nn.Linear(1536, 4))
    narrow = torch.nn.Sequential(torch.nn.Linear(4, 128), torch.nn.Linear(128, 4))
    cpu = torch.device("cpu")
    monkeypatch.setattr(optim, "cpu_has_native_bf16", lambda: True)
    assert inference.inference_dtype(wide, cpu) == torch.bfloat16
    assert inference.inference_dtype(narrow, cpu) is None
    assert inference.inference_dtype(narrow, torch.device("cuda")) == torch.bfloat16
    monkeypatch.setattr(optim, "cpu_has_native_bf16", lambda: False)
    assert inference.inference_dtype(wide, cpu) is None


def test_a_cpu_pass_batches_at_most_cpu_max_tokens_and_its_logits_do_not_change(monkeypatch):
    """On a CPU the inference batches stop at ``CPU_MAX_TOKENS`` padded tokens (larger ones ran
    slower), whatever ``max_tokens`` asks. Another batch size pads an item to another length:
    its logits move by float rounding at most (on e5-small the same bits, 300 sentences at
    1,024, 2,048 and 16,384 tokens a batch), and the voters' labels do not move."""
    from xlt_engine.engine.train import inference

    model, enc = tiny_task_model("cpu"), encoded(60)
    cpu = torch.device("cpu")
    seen = []
    forward = inference.forward_batch
    monkeypatch.setattr(
        inference,
        "forward_batch",
        lambda m, b, d, **kw: seen.append(b["input_ids"].numel()) or forward(m, b, d, **kw),
    )
    monkeypatch.setattr(inference, "CPU_MAX_TOKENS", 64)
    capped = predict_logits(model, enc, 0, cpu, max_tokens=16384)
    assert len(seen) > 1 and max(seen) <= 64
    monkeypatch.setattr(inference, "CPU_MAX_TOKENS", 1 << 30)  # one batch of everything
    seen.clear()
    whole = predict_logits(model, enc, 0, cpu, max_tokens=16384)
    assert len(seen) == 1
    torch.testing.assert_close(capped, whole, atol=1e-6, rtol=1e-5)
    assert torch.equal(voter_filter(capped, 0.0)[0], voter_filter(whole, 0.0)[0])
