"""Parity with transformers' BertModel / BertForMaskedLM (fp32, within 1e-5), loading from
every key convention, and the round trip back into transformers."""

import pytest
import torch
import transformers

from tests.model.hf_utils import (
    TINY_CONFIGS,
    batch,
    convention,
    hf_config,
    randomize_,
    write_checkpoint,
)
from xlt_engine.model import BertConfig, BertForMLM, load_encoder, load_pretrained, save_pretrained

CONVENTIONS = [(p, g) for p in (True, False) for g in (False, True)]
ATOL = 1e-5


@pytest.mark.parametrize("cfg", TINY_CONFIGS)
@pytest.mark.parametrize("prefix, gamma_beta", CONVENTIONS)
def test_encoder_matches_bert_model(tmp_path, cfg, prefix, gamma_beta):
    ref = transformers.BertModel(hf_config(cfg)).eval()  # with its NSP pooler, ignored here
    randomize_(ref)
    write_checkpoint(tmp_path, convention(ref.state_dict(), prefix, gamma_beta), cfg)
    ours = load_encoder(tmp_path)
    ids, mask, types = batch(cfg)
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        got = ours(ids, attention_mask=mask, token_type_ids=types)
        got_default = ours(ids)  # no mask, no token types
        want_default = ref(input_ids=ids).last_hidden_state
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    torch.testing.assert_close(got_default, want_default, atol=ATOL, rtol=0)


@pytest.mark.parametrize("cfg", TINY_CONFIGS)
@pytest.mark.parametrize("prefix, gamma_beta", CONVENTIONS)
def test_mlm_matches_bert_for_masked_lm(tmp_path, cfg, prefix, gamma_beta):
    ref = transformers.BertForMaskedLM(hf_config(cfg)).eval()
    randomize_(ref)
    sd = convention(ref.state_dict(), prefix, gamma_beta)
    # legacy checkpoints store the tied decoder weight and bias explicitly: keep them in one
    # convention, drop them in another
    if gamma_beta:
        sd["cls.predictions.decoder.weight"] = (
            ref.bert.embeddings.word_embeddings.weight.detach().clone()
        )
        sd["cls.predictions.decoder.bias"] = ref.cls.predictions.bias.detach().clone()
    else:
        sd.pop("cls.predictions.decoder.weight", None)
        sd.pop("cls.predictions.decoder.bias", None)
    write_checkpoint(tmp_path, sd, cfg)
    ours = load_pretrained(tmp_path)
    ids, mask, types = batch(cfg)
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask, token_type_ids=types).logits  # [B, T, V]
        sel = mask.bool()
        got = ours(ids, sel, attention_mask=mask, token_type_ids=types)  # [N, V]
        flat = sel.flatten().nonzero().squeeze(1)
        got_flat = ours(ids, flat, attention_mask=mask, token_type_ids=types)
    torch.testing.assert_close(got, want[sel], atol=ATOL, rtol=0)
    torch.testing.assert_close(got_flat, got, atol=0, rtol=0)


@pytest.mark.parametrize("cfg", TINY_CONFIGS)
def test_round_trip_into_transformers(tmp_path, cfg):
    ours = BertForMLM(BertConfig(**cfg, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    randomize_(ours)
    ours.eval()
    save_pretrained(ours, tmp_path / "out")
    ref, info = transformers.BertForMaskedLM.from_pretrained(
        tmp_path / "out", output_loading_info=True
    )
    ref.eval()
    assert info["missing_keys"] in ([], set())
    assert info["unexpected_keys"] in ([], set())
    assert info["mismatched_keys"] in ([], set())
    assert (
        ref.cls.predictions.decoder.weight.data_ptr()
        == ref.bert.embeddings.word_embeddings.weight.data_ptr()
    )
    ids, mask, types = batch(cfg, seed=1)
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        T = ids.shape[1]
        got = ours(ids, torch.arange(ids.numel()), attention_mask=mask, token_type_ids=types)
    torch.testing.assert_close(got.view(ids.shape[0], T, -1), want, atol=ATOL, rtol=0)
    # and back: what transformers saves loads here with the same logits
    ref.save_pretrained(tmp_path / "hf")
    again = load_pretrained(tmp_path / "hf")
    with torch.no_grad():
        got2 = again(ids, torch.arange(ids.numel()), attention_mask=mask, token_type_ids=types)
    torch.testing.assert_close(got2, got, atol=0, rtol=0)


def test_encoder_saved_alone_loads_in_transformers(tmp_path):
    cfg = TINY_CONFIGS[0]
    ours = BertForMLM(BertConfig(**cfg)).encoder.eval()
    save_pretrained(ours, tmp_path / "enc")
    ref = transformers.BertModel.from_pretrained(tmp_path / "enc", add_pooling_layer=False).eval()
    ids, mask, types = batch(cfg)
    with torch.no_grad():
        torch.testing.assert_close(
            ours(ids, mask, types),
            ref(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state,
            atol=ATOL,
            rtol=0,
        )
    assert torch.equal(
        load_encoder(tmp_path / "enc").embeddings.word.weight, ours.embeddings.word.weight
    )


def test_gradients_match_transformers(tmp_path):
    """Training relies on the backward pass too: parameter gradients equal transformers'."""
    cfg = TINY_CONFIGS[1]
    ref = transformers.BertForMaskedLM(hf_config(cfg)).train()
    randomize_(ref)
    ref.save_pretrained(tmp_path)
    ours = load_pretrained(tmp_path).train()  # dropout is 0 in hf_config
    ids, mask, types = batch(cfg)
    labels = torch.full_like(ids, -100)
    labels[:, 1:4] = ids[:, 1:4]
    ref(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels).loss.backward()
    sel = labels != -100
    logits = ours(ids, sel, attention_mask=mask, token_type_ids=types)
    torch.nn.functional.cross_entropy(logits, labels[sel]).backward()
    torch.testing.assert_close(
        ours.encoder.embeddings.word.weight.grad,
        ref.bert.embeddings.word_embeddings.weight.grad,
        atol=1e-5,
        rtol=1e-4,
    )
    torch.testing.assert_close(
        ours.encoder.layers[0].attn.q.weight.grad,
        ref.bert.encoder.layer[0].attention.self.query.weight.grad,
        atol=1e-5,
        rtol=1e-4,
    )
    torch.testing.assert_close(
        ours.head.bias.grad, ref.cls.predictions.bias.grad, atol=1e-6, rtol=1e-4
    )
