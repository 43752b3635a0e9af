"""export_hf: a task model with the linear head loads in transformers' classification classes
(no missing or unexpected key) and computes the same logits; pipeline("ner") runs on it; the
Voters Module and non-pooler sequence heads are refused with the reason."""

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from tests.model.hf_utils import TINY_CONFIGS, batch, randomize_
from xlt_engine.cli import main
from xlt_engine.data.tokenizer import default_tokenizer
from xlt_engine.model import BertConfig
from xlt_engine.model.bert import BertEncoder
from xlt_engine.model.export import export_hf
from xlt_engine.model.heads import VotersModule
from xlt_engine.model.task import TaskModel, save_task_model

transformers = pytest.importorskip("transformers")

NER = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
ROBERTA = dict(vocab_size=101, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=64, max_position_embeddings=42, type_vocab_size=1,
               pad_token_id=1, layer_norm_eps=1e-5, model_type="xlm-roberta")  # fmt: skip


BERT = TINY_CONFIGS[0] | {"vocab_size": default_tokenizer().vocab_size}  # the pipeline's


def task_model(cfg: dict, kind: str, labels, voters=1, widths=(0,), pooler=False, rep="cls"):
    torch.manual_seed(0)
    encoder = BertEncoder(BertConfig(**cfg), pooler=pooler)
    head = VotersModule(cfg["hidden_size"], len(labels), voters, list(widths), 0.1)
    model = TaskModel(encoder, head, kind, list(labels), rep).eval()
    randomize_(model)
    return model


def loaded(folder, auto):
    hf, info = auto.from_pretrained(folder, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    return hf.eval()


@pytest.mark.parametrize("cfg", [BERT, ROBERTA], ids=["bert", "xlm-roberta"])
def test_a_linear_tagger_loads_as_token_classification_with_the_same_logits(tmp_path, cfg):
    model = task_model(cfg, "token", NER)
    tok = default_tokenizer() if cfg is not ROBERTA else None
    src = save_task_model(model, tmp_path / "tagger", tok)
    out = export_hf(src, tmp_path / "hf")
    hf = loaded(out, transformers.AutoModelForTokenClassification)
    want = (
        "BertForTokenClassification" if cfg is not ROBERTA else "XLMRobertaForTokenClassification"
    )
    assert type(hf).__name__ == want
    assert hf.config.id2label == dict(enumerate(NER)) and hf.config.label2id["B-LOC"] == 3
    ids, mask, types = batch(cfg)
    with torch.no_grad():
        ours = model(ids, mask, types)[0]  # [B, T, C] (one voter)
        theirs = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
    real = mask.bool()
    torch.testing.assert_close(theirs[real], ours[real], atol=1e-5, rtol=0)


def test_pipeline_ner_runs_on_an_exported_tagger(tmp_path):
    model = task_model(BERT, "token", NER)
    with torch.no_grad():  # a tagger that calls every word B-PER: the pipeline must say so
        model.voters.voters[0].classifier.bias[1] = 50.0
    src = save_task_model(model, tmp_path / "tagger", default_tokenizer())
    out = export_hf(src, tmp_path / "hf")
    ner = transformers.pipeline("ner", model=str(out), aggregation_strategy="first")
    found = ner("hello world")
    assert found and {e["entity_group"] for e in found} == {"PER"}


def test_a_pooler_sequence_classifier_exports_exactly(tmp_path):
    labels = ["negative", "positive"]
    for cfg, name in ((BERT, "BertForSequenceClassification"),
                      (ROBERTA, "XLMRobertaForSequenceClassification")):  # fmt: skip
        model = task_model(cfg, "sequence", labels, pooler=True, rep="pooler")
        out = export_hf(save_task_model(model, tmp_path / name / "m"), tmp_path / name / "hf")
        hf = loaded(out, transformers.AutoModelForSequenceClassification)
        assert type(hf).__name__ == name
        ids, mask, types = batch(cfg)
        with torch.no_grad():
            ours = model(ids, mask, types)[0]
            theirs = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)


def test_what_no_transformers_class_computes_is_refused_with_the_reason(tmp_path):
    voters = task_model(BERT, "token", NER, voters=3, widths=(16, 8, 0))
    src = save_task_model(voters, tmp_path / "voters")
    with pytest.raises(ValueError, match="Voters Module .* no single linear classifier"):
        export_hf(src, tmp_path / "hf")
    cls = task_model(BERT, "sequence", ["a", "b"], rep="cls")
    with pytest.raises(
        ValueError, match="'cls' representation; .* model.representation = 'pooler'"
    ):
        export_hf(save_task_model(cls, tmp_path / "cls"), tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    linear = save_task_model(task_model(BERT, "token", NER), tmp_path / "lin")
    with pytest.raises(ValueError, match="which this command reads"):
        export_hf(linear, linear)
    with pytest.raises(ValueError, match="which this command reads"):
        export_hf(linear, linear / "hf")  # inside the model folder
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.md").write_text("mine")
    with pytest.raises(ValueError, match="that xlt-engine export did not write"):
        export_hf(linear, tmp_path / "busy")


def test_export_never_replaces_a_folder_it_did_not_write(tmp_path):
    """A folder of the user's .txt / .json files (which pass as "checkpoint files" by their
    suffix) is refused and left byte for byte; an earlier export is replaced; --overwrite
    replaces any folder but the model's."""
    linear = save_task_model(task_model(BERT, "token", NER), tmp_path / "lin")
    mine = tmp_path / "mine"
    mine.mkdir()
    files = {"corpus.de.txt": b"Ein Satz.\n", "labels.json": b'["O", "B-PER"]\n'}
    for name, data in files.items():
        (mine / name).write_bytes(data)
    with pytest.raises(ValueError, match="refusing to replace it: .* --overwrite"):
        export_hf(linear, mine)
    assert {p.name: p.read_bytes() for p in mine.iterdir()} == files
    out = export_hf(linear, tmp_path / "hf")
    export_hf(linear, out)  # its own earlier export: replaced
    (out / "notes.txt").write_text("added by hand")
    with pytest.raises(ValueError, match="changed since xlt-engine export wrote it"):
        export_hf(linear, out)  # no longer only what export wrote
    export_hf(linear, mine, overwrite=True)
    assert (mine / "model.safetensors").is_file() and not (mine / "labels.json").exists()


def test_a_head_holding_inf_is_not_exported(tmp_path):
    model = task_model(BERT, "token", NER)
    src = save_task_model(model, tmp_path / "lin")
    head = load_file(str(src / "voters.safetensors"))
    key = sorted(head)[0]
    head[key][0] = float("inf")
    save_file(head, str(src / "voters.safetensors"))
    name = key.split(".", 2)[-1]  # voters.0.classifier.bias -> classifier.bias, as exported
    with pytest.raises(ValueError, match=rf"hold NaN or inf: {name} .*nothing was written"):
        export_hf(src, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_the_export_command(tmp_path):
    src = save_task_model(task_model(BERT, "token", NER), tmp_path / "m")
    res = CliRunner().invoke(main, ["export", str(src), str(tmp_path / "hf")])
    assert res.exit_code == 0, res.output
    assert "BertForTokenClassification" in res.output
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["architectures"] == ["BertForTokenClassification"]
    voters = save_task_model(task_model(BERT, "token", NER, 3, (8, 8, 0)), tmp_path / "v")
    res = CliRunner().invoke(main, ["export", str(voters), str(tmp_path / "hf2")])
    assert res.exit_code == 1 and "Voters Module" in res.output
