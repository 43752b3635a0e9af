"""benchmarks/ab_cpu_attention.py runs every variant on a small encoder, each variant computes
the attention it names (the same as the engine's to bf16 rounding), and the engine's forward is
put back after the run."""

import pytest
import torch

from benchmarks import ab_cpu_attention as ab
from xlt_engine.model.bert import BertSelfAttention
from xlt_engine.model.config import BertConfig


def test_every_variant_runs_and_the_engine_forward_is_restored():
    out = ab.main(["--layers", "1", "--steps", "1", "--rounds", "1"])
    assert set(out) == {"sdpa", "fused_qkv", "bf16", "fp32"}
    assert out["sdpa"]["ratio"] == 1.0 and all(r["ms"] > 0 for r in out.values())
    assert BertSelfAttention.forward is ab.SDPA


@pytest.mark.parametrize(("name", "tol"), [("fused_qkv", 1e-5), ("fp32", 1e-5), ("bf16", 0.05)])
def test_a_variant_is_the_engine_attention(name, tol, monkeypatch):
    """Without dropout (p = 0 through eval's SDPA path is what the engine computes), each
    variant's layer output equals the engine's: exactly in fp32 up to float noise, to bf16
    rounding for the bf16 variant."""
    cfg = BertConfig(vocab_size=20, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                     intermediate_size=64, attention_probs_dropout_prob=0.0)  # fmt: skip
    torch.manual_seed(0)
    attn = BertSelfAttention(cfg).train()
    x = torch.randn(2, 6, 32)
    mask = torch.ones(2, 1, 1, 6, dtype=torch.bool)
    mask[1, ..., 4:] = False
    ref = ab.SDPA(attn, x, mask)
    attn.attn_dropout = 1e-30  # the written-out variants draw a mask; rand >= 1e-30 keeps all
    torch.manual_seed(1)
    got = ab.VARIANTS[name](attn, x, mask)
    assert (got.float() - ref).abs().max().item() < tol


def test_an_unknown_variant_is_named():
    with pytest.raises(SystemExit, match="unknown \\['flash'\\]"):
        ab.main(["--variants", "sdpa,flash"])
