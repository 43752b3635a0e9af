import pytest
import torch

from xlt_engine.model import BertConfig, BertEncoder, BertForMLM

CFG = BertConfig(
    vocab_size=50,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=16,
)


def test_padding_does_not_change_real_tokens():
    enc = BertEncoder(CFG).eval()
    ids = torch.randint(1, 50, (1, 6))
    padded = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], 1)
    mask = torch.cat([torch.ones(1, 6), torch.zeros(1, 4)], 1).long()
    with torch.no_grad():
        torch.testing.assert_close(enc(padded, mask)[:, :6], enc(ids), atol=1e-6, rtol=0)


def test_token_types_change_output():
    enc = BertEncoder(CFG).eval()
    ids = torch.randint(1, 50, (2, 5))
    with torch.no_grad():
        a = enc(ids, token_type_ids=torch.zeros_like(ids))
        b = enc(ids, token_type_ids=torch.ones_like(ids))
        torch.testing.assert_close(enc(ids), a)
    assert not torch.allclose(a, b)


def test_mlm_head_sees_only_selected_rows():
    model = BertForMLM(CFG).eval()
    ids = torch.randint(1, 50, (2, 7))
    sel = torch.zeros(2, 7, dtype=torch.bool)
    sel[0, 2] = sel[1, 5] = True
    seen = []
    model.head.dense.register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    with torch.no_grad():
        logits = model(ids, sel)
    assert logits.shape == (2, 50) and seen == [(2, 32)]
    with torch.no_grad():
        full = model(ids, torch.ones(2, 7, dtype=torch.bool)).view(2, 7, 50)
    torch.testing.assert_close(logits, torch.stack([full[0, 2], full[1, 5]]))
    # flat indices select the same rows without a host sync
    with torch.no_grad():
        torch.testing.assert_close(model(ids, torch.tensor([2, 12])), logits)


def test_decoder_is_tied():
    model = BertForMLM(CFG)
    assert model.decoder_weight is model.encoder.embeddings.word.weight
    assert "decoder" not in " ".join(n for n, _ in model.named_parameters())


def test_too_long_input_is_refused():
    enc = BertEncoder(CFG)
    with pytest.raises(ValueError, match="max_position_embeddings 16"):
        enc(torch.zeros(1, 17, dtype=torch.long))


def test_shape_checks():
    enc = BertEncoder(CFG)
    with pytest.raises(ValueError, match="attention_mask"):
        enc(torch.zeros(2, 5, dtype=torch.long), attention_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        enc(torch.zeros(5, dtype=torch.long))
    model = BertForMLM(CFG)
    with pytest.raises(ValueError, match="positions"):
        model(torch.zeros(2, 5, dtype=torch.long), torch.ones(2, 4, dtype=torch.bool))


def test_dropout_only_in_training():
    enc = BertEncoder(CFG)
    ids = torch.randint(1, 50, (2, 8))
    enc.train()
    assert not torch.allclose(enc(ids), enc(ids))
    enc.eval()
    torch.testing.assert_close(enc(ids), enc(ids))


def test_bf16_forward_runs_and_stays_close():
    enc = BertEncoder(CFG).eval()
    ids = torch.randint(1, 50, (2, 8))
    with torch.no_grad():
        ref = enc(ids)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = enc(ids)
    err = (low.float() - ref).abs().max()
    assert 0 < err < 0.1  # the matmuls ran in bf16 (autocast keeps LayerNorm output in fp32)
