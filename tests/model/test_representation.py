"""Sentence representations of sequence task models: ``cls`` (first position), ``pooler``
(BERT's pooler over it) and ``mean`` (masked mean of the last hidden state); saved in task.json,
checked against transformers, and frozen by ``loop.prepare`` where the model never reads them."""

import json

import pytest
import torch

from tests.model.hf_utils import TINY_CONFIGS, batch, hf_config, randomize_
from xlt_engine.engine.method.btf import MlmObjective
from xlt_engine.engine.train.config import TrainConfig
from xlt_engine.engine.train.optim import prepare
from xlt_engine.model import (
    REPRESENTATIONS,
    BertConfig,
    BertEncoder,
    load_encoder,
    load_pretrained,
    load_task_model,
    new_task_model,
    save_task_model,
)

transformers = pytest.importorskip("transformers")
CFG = TINY_CONFIGS[0]
LABELS = ["neg", "pos"]


@pytest.fixture
def hf_bert(tmp_path):
    ref = transformers.BertModel(hf_config(CFG)).eval()  # a BertModel save: pooler, no MLM head
    randomize_(ref)
    ref.save_pretrained(tmp_path / "hf")
    return ref, tmp_path / "hf"


def features(model, ids, mask, types):
    """What the voters of ``model`` read: the representation of each sequence."""
    seen = []
    hook = model.voters.register_forward_hook(lambda _m, args, _out: seen.append(args[0]))
    with torch.no_grad():
        model(ids, mask, types)
    hook.remove()
    return seen[0]


@pytest.mark.parametrize("representation", REPRESENTATIONS)
def test_each_representation_matches_transformers(hf_bert, representation):
    ref, folder = hf_bert
    model = new_task_model(load_encoder(folder), "sequence", LABELS, representation=representation)
    ids, mask, types = batch(CFG)
    assert (mask == 0).any()  # padded rows: the mean must skip padding
    with torch.no_grad():
        out = ref(input_ids=ids, attention_mask=mask, token_type_ids=types)
    h = out.last_hidden_state
    want = {
        "cls": h[:, 0],
        "pooler": out.pooler_output,
        "mean": (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True),
    }[representation]
    torch.testing.assert_close(features(model.eval(), ids, mask, types), want, atol=1e-5, rtol=0)


def test_mean_does_not_depend_on_padding(hf_bert):
    _ref, folder = hf_bert
    model = new_task_model(load_encoder(folder), "sequence", LABELS, representation="mean").eval()
    ids = torch.randint(5, CFG["vocab_size"], (1, 9))
    padded = torch.cat([ids, torch.zeros(1, 7, dtype=torch.long)], 1)
    mask = torch.cat([torch.ones(1, 9), torch.zeros(1, 7)], 1).long()
    with torch.no_grad():
        a = model(ids, torch.ones_like(ids))
        b = model(padded, mask)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("representation", ["pooler", "mean"])
def test_the_representation_is_saved_and_read_back(hf_bert, tmp_path, representation):
    _ref, folder = hf_bert
    model = new_task_model(load_encoder(folder), "sequence", LABELS, representation=representation)
    save_task_model(model.eval(), tmp_path / "task")
    meta = json.loads((tmp_path / "task" / "task.json").read_text())
    assert meta["representation"] == representation
    again = load_task_model(tmp_path / "task")
    assert again.representation == representation
    assert again.encoder.pooler is not None  # saved back with the encoder
    ids, mask, types = batch(CFG)
    with torch.no_grad():
        torch.testing.assert_close(again(ids, mask, types), model(ids, mask, types))


def test_task_folders_without_a_representation_read_as_cls(hf_bert, tmp_path):
    _ref, folder = hf_bert
    save_task_model(new_task_model(load_encoder(folder), "sequence", LABELS), tmp_path / "t")
    meta_path = tmp_path / "t" / "task.json"
    meta = json.loads(meta_path.read_text())
    del meta["representation"]  # as written before it was a setting
    meta_path.write_text(json.dumps(meta))
    assert load_task_model(tmp_path / "t").representation == "cls"
    meta["representation"] = "max"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"task\.json: representation 'max' is not one of"):
        load_task_model(tmp_path / "t")


def test_representation_errors():
    plain = BertEncoder(BertConfig(**CFG))  # no pooler
    with pytest.raises(ValueError, match="representation must be one of cls, pooler, mean"):
        new_task_model(plain, "sequence", LABELS, representation="max")
    with pytest.raises(ValueError, match="'mean' is for sequence tasks"):
        new_task_model(plain, "token", LABELS, representation="mean")
    with pytest.raises(ValueError, match="no pooler"):
        new_task_model(plain, "sequence", LABELS, representation="pooler")


def trainable_without_grad(model, loss) -> list[str]:
    loss.backward()
    return [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]


@pytest.mark.parametrize("representation", REPRESENTATIONS)
def test_prepare_trains_exactly_what_the_task_model_reads(hf_bert, representation):
    """DDP fails on a trainable parameter that gets no gradient: the pooler, unless read."""
    _ref, folder = hf_bert
    model = new_task_model(load_encoder(folder), "sequence", LABELS, representation=representation)
    model = prepare(model, TrainConfig(max_steps=1), torch.device("cpu"))
    ids, mask, types = batch(CFG)
    assert trainable_without_grad(model, model(ids, mask, types).float().square().mean()) == []
    assert model.encoder.pooler.weight.requires_grad == (representation == "pooler")


def test_prepare_freezes_the_pooler_for_mlm(hf_bert):
    _ref, folder = hf_bert
    objective = MlmObjective(load_pretrained(folder))
    objective = prepare(objective, TrainConfig(max_steps=1), torch.device("cpu"))
    ids, mask, _types = batch(CFG)
    positions = torch.nonzero(mask.reshape(-1)).squeeze(1)[:5]
    labels = torch.randint(0, CFG["vocab_size"], (5,))
    loss = objective(ids, positions, mask, labels)
    assert trainable_without_grad(objective, loss) == []
    assert not objective.encoder.pooler.weight.requires_grad
