"""Checkpoints without an MLM head (embedding models such as e5 and LaBSE, any ``BertModel``
save) load into ``BertForMLM`` with a fresh head; the pooler is loaded and saved when present."""

import pytest
import torch

from tests.model.hf_utils import TINY_CONFIGS, batch, hf_config, randomize_
from xlt_engine.model import load_encoder, load_pretrained, plan_checkpoint, save_pretrained

transformers = pytest.importorskip("transformers")
CFG = TINY_CONFIGS[0]


@pytest.fixture
def bert_model(tmp_path):
    ref = transformers.BertModel(hf_config(CFG)).eval()  # with its pooler, no MLM head
    randomize_(ref)
    ref.save_pretrained(tmp_path / "hf")
    return ref, tmp_path / "hf"


def test_no_mlm_head_loads_with_a_fresh_one(bert_model):
    ref, folder = bert_model
    plan = plan_checkpoint(folder)
    assert plan.initialised == [
        "head.bias",
        "head.dense.bias",
        "head.dense.weight",
        "head.norm.bias",
        "head.norm.weight",
    ]
    model = load_pretrained(folder)
    again = load_pretrained(folder)
    head = model.head
    assert head.bias.abs().max() == 0 and torch.equal(
        head.norm.weight, torch.ones_like(head.norm.weight)
    )
    assert 0.01 < head.dense.weight.std().item() < 0.03  # N(0, initializer_range 0.02)
    assert model.decoder_weight is model.encoder.embeddings.word.weight  # tied
    for a, b in zip(model.head.parameters(), again.head.parameters(), strict=True):
        assert torch.equal(a, b)  # the same fresh head for the same checkpoint
    ids, mask, types = batch(CFG)
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask, token_type_ids=types)
        hidden = model.encoder(ids, mask, types)
        pooled = model.encoder.pooled(hidden)
    torch.testing.assert_close(hidden, want.last_hidden_state, atol=1e-5, rtol=0)
    torch.testing.assert_close(pooled, want.pooler_output, atol=1e-5, rtol=0)


def test_a_partial_head_is_still_an_error(tmp_path, bert_model):
    _ref, folder = bert_model
    model = load_pretrained(folder)
    save_pretrained(model, tmp_path / "ours")
    from safetensors.torch import load_file, save_file

    sd = load_file(str(tmp_path / "ours" / "model.safetensors"))
    del sd["cls.predictions.transform.dense.weight"]
    save_file(sd, str(tmp_path / "ours" / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing keys: cls\.predictions\.transform\.dense"):
        load_pretrained(tmp_path / "ours")


def test_pooler_round_trips_into_transformers(tmp_path, bert_model):
    ref, folder = bert_model
    enc = load_encoder(folder)
    assert enc.pooler is not None
    save_pretrained(enc, tmp_path / "ours")
    back, info = transformers.BertModel.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    ids, mask, types = batch(CFG)
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask, token_type_ids=types).pooler_output
        got = back.eval()(input_ids=ids, attention_mask=mask, token_type_ids=types).pooler_output
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_no_pooler_gives_a_clear_error(tmp_path):
    ref = transformers.BertForMaskedLM(hf_config(CFG))
    ref.save_pretrained(tmp_path)
    enc = load_encoder(tmp_path)
    assert enc.pooler is None
    with pytest.raises(ValueError, match="no pooler"):
        enc.pooled(torch.zeros(1, 3, CFG["hidden_size"]))
