import json

import pytest

from xlt_engine.model import BertConfig


def write(tmp_path, obj, name="config.json"):
    p = tmp_path / name
    p.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)
    return p


def test_from_json_reads_mbert_style_config(tmp_path):
    raw = {
        "architectures": ["BertForMaskedLM"],
        "attention_probs_dropout_prob": 0.1,
        "directionality": "bidi",
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": 768,
        "initializer_range": 0.02,
        "intermediate_size": 3072,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": 512,
        "model_type": "bert",
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
        "pad_token_id": 0,
        "pooler_fc_size": 768,
        "type_vocab_size": 2,
        "vocab_size": 119547,
    }
    cfg = BertConfig.from_json(write(tmp_path, raw))
    assert cfg.vocab_size == 119547 and cfg.hidden_size == 768 and cfg.head_dim == 64
    assert cfg.layer_norm_eps == 1e-12
    assert cfg == BertConfig()  # the defaults are mBERT-base


def test_config_is_frozen():
    cfg = BertConfig(hidden_size=64, num_attention_heads=4, vocab_size=10)
    with pytest.raises(AttributeError):
        cfg.hidden_size = 32


@pytest.mark.parametrize(
    "override, key",
    [
        ({"position_embedding_type": "relative_key"}, "position_embedding_type"),
        ({"hidden_act": "silu"}, "hidden_act"),
        ({"hidden_size": 100, "num_attention_heads": 12}, "hidden_size"),
        ({"vocab_size": 0}, "vocab_size"),
        ({"hidden_dropout_prob": 1.5}, "hidden_dropout_prob"),
        ({"layer_norm_eps": -1}, "layer_norm_eps"),
        ({"num_hidden_layers": "12"}, "num_hidden_layers"),
        ({"model_type": "gpt2"}, "model_type"),
        ({"is_decoder": True}, "is_decoder"),
        ({"pad_token_id": 200000}, "pad_token_id"),
    ],
)
def test_unsupported_settings_name_the_key(tmp_path, override, key):
    path = write(tmp_path, override)
    with pytest.raises(ValueError) as err:
        BertConfig.from_json(path)
    assert key in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize("act", ["gelu", "gelu_new", "relu"])
def test_supported_activations(act):
    assert BertConfig(hidden_act=act).hidden_act == act


def test_invalid_json_names_file_and_line(tmp_path):
    path = write(tmp_path, '{\n  "hidden_size": 768,\n  oops\n}')
    with pytest.raises(ValueError, match=r"config\.json: invalid JSON at line 3"):
        BertConfig.from_json(path)


def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match="cannot read config"):
        BertConfig.from_json(tmp_path / "nope.json")


def test_to_dict_round_trips():
    cfg = BertConfig(
        vocab_size=99,
        hidden_size=48,
        num_attention_heads=3,
        num_hidden_layers=2,
        intermediate_size=96,
        hidden_act="relu",
        layer_norm_eps=1e-5,
    )
    assert BertConfig.from_dict(cfg.to_dict()) == cfg


def test_null_values_take_defaults(tmp_path):
    cfg = BertConfig.from_json(
        write(
            tmp_path,
            {"pad_token_id": None, "vocab_size": 10, "hidden_size": 8, "num_attention_heads": 2},
        )
    )
    assert cfg.pad_token_id == 0
