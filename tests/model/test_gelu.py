"""The exact GELU of the encoder and the voters: equal to ``F.gelu``, and on CPU never through
oneDNN, whose per-shape primitive cache grew an inference pass over 1M sentences by 880 MB."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from xlt_engine.model import BertConfig
from xlt_engine.model.bert import BertEncoder, gelu
from xlt_engine.model.heads import VotersModule


class GeluCalls(TorchDispatchMode):
    """Records, for every aten gelu / gelu_backward call, whether oneDNN was enabled."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in ("gelu", "gelu_backward"):
            self.calls.append((name, torch.backends.mkldnn.enabled))
        return func(*args, **(kwargs or {}))


def test_equals_f_gelu_forward_and_backward():
    x = (torch.randn(7, 13, 33, dtype=torch.float64) * 4).requires_grad_()
    assert torch.autograd.gradcheck(gelu, (x,))
    y = torch.randn(5, 40, 24) * 3
    a, b = y.clone().requires_grad_(), y.clone().requires_grad_()
    out_a, out_b = gelu(a), F.gelu(b)
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=2e-6)
    g = torch.randn_like(y)
    out_a.backward(g)
    out_b.backward(g)
    torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=2e-6)


@pytest.mark.parametrize("grad", [False, True])
def test_encoder_and_voters_never_reach_onednn_on_cpu(grad):
    assert torch.backends.mkldnn.enabled
    cfg = BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32,
    )  # fmt: skip
    enc, voters = BertEncoder(cfg), VotersModule(16, 3, 3, dropout=0.0)
    ids = torch.randint(1, 50, (3, 11))
    with torch.set_grad_enabled(grad), GeluCalls() as mode:
        out = voters(enc(ids, torch.ones_like(ids)))
        if grad:
            out.float().sum().backward()
    names = [n for n, _ in mode.calls]
    # 2 layers + 3 voters x 2 activations, and as many backward calls with grad
    assert names.count("gelu") == 8
    assert names.count("gelu_backward") == (8 if grad else 0)
    assert all(not enabled for _, enabled in mode.calls), mode.calls
    assert torch.backends.mkldnn.enabled  # the switch is restored


def test_switch_restored_after_an_error():
    with pytest.raises(RuntimeError):
        gelu(torch.zeros(2, 3, dtype=torch.int64))  # ATen refuses integer gelu
    assert torch.backends.mkldnn.enabled
