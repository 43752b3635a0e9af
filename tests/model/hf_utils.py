"""Helpers that build transformers reference models and write their weights under the key
conventions found in the wild (test-only: transformers is never imported by the package)."""

import json
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file

from xlt_engine.model import BertConfig

# small configs that differ in every dimension the encoder has
TINY_CONFIGS = [
    dict(
        vocab_size=97,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        hidden_act="gelu",
        layer_norm_eps=1e-12,
        type_vocab_size=2,
        max_position_embeddings=40,
    ),
    dict(
        vocab_size=131,
        hidden_size=48,
        num_hidden_layers=3,
        num_attention_heads=3,
        intermediate_size=80,
        hidden_act="gelu_new",
        layer_norm_eps=1e-5,
        type_vocab_size=3,
        max_position_embeddings=24,
    ),
    dict(
        vocab_size=64,
        hidden_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=128,
        hidden_act="relu",
        layer_norm_eps=1e-7,
        type_vocab_size=2,
        max_position_embeddings=16,
        pad_token_id=3,
    ),
]


def hf_config(cfg: dict) -> transformers.BertConfig:
    return transformers.BertConfig(**cfg, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def randomize_(model: torch.nn.Module) -> None:
    """Non-trivial values everywhere (LayerNorm gains, biases), not just BERT's init."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)


def convention(sd: dict[str, torch.Tensor], prefix: bool, gamma_beta: bool) -> dict:
    """Rewrite HF keys to a convention: ``bert.`` prefix on or off, LayerNorm gamma/beta."""
    out = {}
    for k, v in sd.items():
        if k.startswith("bert."):
            k = k[len("bert.") :]
        if prefix and not k.startswith("cls."):
            k = "bert." + k
        if gamma_beta and ".LayerNorm." in k:
            k = k.replace("LayerNorm.weight", "LayerNorm.gamma").replace(
                "LayerNorm.bias", "LayerNorm.beta"
            )
        out[k] = v.detach().clone().contiguous()
    return out


def write_checkpoint(folder: Path, sd: dict, cfg: dict, name: str = "model.safetensors") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(folder / name))
    (folder / "config.json").write_text(json.dumps(BertConfig(**cfg).to_dict()))
    return folder


def batch(cfg: dict, B: int = 3, T: int = 11, seed: int = 0):
    """input ids, an attention mask with padding (lengths T, T-4, 3) and token types."""
    g = torch.Generator().manual_seed(seed)
    T = min(T, cfg["max_position_embeddings"])
    ids = torch.randint(0, cfg["vocab_size"], (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    for b, n in enumerate([T, T - 4, 3][:B]):
        mask[b, n:] = 0
    ids = ids.masked_fill(mask == 0, cfg.get("pad_token_id", 0))
    types = torch.randint(0, cfg["type_vocab_size"], (B, T), generator=g)
    return ids, mask, types
