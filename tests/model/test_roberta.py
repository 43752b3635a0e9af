"""The RoBERTa family (XLM-R, RoBERTa): checkpoints written by transformers load here with the
same numbers (fp32, within 1e-5, padded batches), and ours load back into transformers."""

import pytest
import torch

from tests.model.hf_utils import batch, randomize_
from xlt_engine.model import BertConfig, load_encoder, load_pretrained, save_pretrained
from xlt_engine.model.families import get_family
from xlt_engine.model.keys import ours_to_hf

transformers = pytest.importorskip("transformers")

ATOL = 1e-5
CONFIGS = [
    (
        "xlm-roberta",
        dict(
            vocab_size=101,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=42,
            type_vocab_size=1,
            pad_token_id=1,
            layer_norm_eps=1e-5,
        ),
    ),
    (
        "roberta",
        dict(
            vocab_size=77,
            hidden_size=48,
            num_hidden_layers=1,
            num_attention_heads=3,
            intermediate_size=40,
            max_position_embeddings=20,
            type_vocab_size=1,
            pad_token_id=1,
            layer_norm_eps=1e-5,
            hidden_act="gelu_new",
        ),
    ),
]


def hf_classes(model_type):
    if model_type == "xlm-roberta":
        return transformers.XLMRobertaConfig, transformers.XLMRobertaForMaskedLM
    return transformers.RobertaConfig, transformers.RobertaForMaskedLM


def reference(model_type, cfg):
    config_cls, mlm_cls = hf_classes(model_type)
    hf_cfg = config_cls(**cfg, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ref = mlm_cls(hf_cfg).eval()
    randomize_(ref)
    return ref


def real_batch(cfg):
    """A padded batch with no pad id inside the real tokens (RoBERTa counts positions over
    the non-pad ids)."""
    ids, mask, _ = batch({**cfg, "max_position_embeddings": cfg["max_position_embeddings"] - 2})
    ids = torch.where((ids == cfg["pad_token_id"]) & (mask == 1), 5, ids)
    return ids, mask


@pytest.mark.parametrize("model_type, cfg", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_transformers_checkpoint_loads_with_equal_outputs(tmp_path, model_type, cfg):
    ref = reference(model_type, cfg)
    ref.save_pretrained(tmp_path)
    ours = load_pretrained(tmp_path)
    encoder = load_encoder(tmp_path)
    assert ours.config.model_type == model_type and ours.config.position_offset == 2
    ids, mask = real_batch(cfg)
    with torch.no_grad():
        out = ref(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        got = ours(ids, mask.bool(), attention_mask=mask)
        hidden = encoder(ids, attention_mask=mask)
    torch.testing.assert_close(got, out.logits[mask.bool()], atol=ATOL, rtol=0)
    real = mask.bool()
    torch.testing.assert_close(hidden[real], out.hidden_states[-1][real], atol=ATOL, rtol=0)


@pytest.mark.parametrize("model_type, cfg", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_round_trip_into_transformers(tmp_path, model_type, cfg):
    ref = reference(model_type, cfg)
    ref.save_pretrained(tmp_path / "hf")
    ours = load_pretrained(tmp_path / "hf")
    save_pretrained(ours, tmp_path / "ours")
    back, info = transformers.AutoModelForMaskedLM.from_pretrained(
        tmp_path / "ours", output_loading_info=True
    )
    assert type(back) is type(ref)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    ids, mask = real_batch(cfg)
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask).logits
        got = back.eval()(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_key_names_follow_the_family():
    assert ours_to_hf("encoder.layers.0.attn.q.weight", get_family("roberta")) == (
        "roberta.encoder.layer.0.attention.self.query.weight"
    )
    assert ours_to_hf("head.norm.weight", get_family("roberta")) == "lm_head.layer_norm.weight"
    assert ours_to_hf("head.dense.bias", get_family("roberta")) == "lm_head.dense.bias"
    assert ours_to_hf("head.bias", get_family("roberta")) == "lm_head.bias"
    assert ours_to_hf("head.bias") == "cls.predictions.bias"


def test_positions_start_after_the_pad_id_and_limit_the_length(tmp_path):
    model_type, cfg = CONFIGS[1]
    reference(model_type, cfg).save_pretrained(tmp_path)
    enc = load_encoder(tmp_path)
    assert enc.config.max_tokens == cfg["max_position_embeddings"] - 2
    ok = torch.full((1, enc.config.max_tokens), 5)
    enc(ok)
    with pytest.raises(ValueError, match=r"sequence length 19 exceeds the 18 positions"):
        enc(torch.full((1, 19), 5))
    with pytest.raises(ValueError, match="leaves no position"):
        BertConfig(model_type="roberta", pad_token_id=1, max_position_embeddings=2, vocab_size=9)
