"""Model families: a family of the same encoder is one ``register_family`` call in a file of its
own, and every place that reads or writes a checkpoint follows it (config, positions, the MLM
head's activation, key names, the architectures saved, the classes an export names)."""

import importlib.util

import pytest
import torch

from tests.model.hf_utils import randomize_
from tests.model.test_export import loaded, task_model
from tests.model.test_roberta import real_batch
from xlt_engine.model import BertConfig, load_pretrained, save_pretrained
from xlt_engine.model import families as fam
from xlt_engine.model.export import export_hf
from xlt_engine.model.task import save_task_model

transformers = pytest.importorskip("transformers")

# a plug-in's whole module: CamemBERT is RoBERTa's encoder under classes of its own
PLUGIN = """
from xlt_engine.model.families import ROBERTA_HEAD_KEYS, ModelFamily, register_family

register_family(
    ModelFamily(
        "camembert",
        prefix="roberta.",
        architectures=("CamembertForMaskedLM", "CamembertModel"),
        classifiers=("CamembertForTokenClassification", "CamembertForSequenceClassification"),
        head_keys=ROBERTA_HEAD_KEYS,
        positions_after_pad=True,
        head_act="gelu",
        sequence_head="dense",
    )
)
"""
CFG = dict(vocab_size=61, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
           intermediate_size=48, max_position_embeddings=30, type_vocab_size=1, pad_token_id=1,
           layer_norm_eps=1e-5, hidden_act="relu")  # fmt: skip


@pytest.fixture
def camembert(tmp_path, monkeypatch):
    monkeypatch.setattr(fam, "_FAMILIES", dict(fam._FAMILIES))  # this test's registrations only
    path = tmp_path / "camembert_family.py"
    path.write_text(PLUGIN)
    spec = importlib.util.spec_from_file_location("camembert_family", path)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    return fam.get_family("camembert")


def test_a_family_in_a_file_of_its_own_reads_and_writes_transformers_checkpoints(
    tmp_path, camembert
):
    hf_cfg = transformers.CamembertConfig(
        **CFG, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    ref = transformers.CamembertForMaskedLM(hf_cfg).eval()
    randomize_(ref)
    ref.save_pretrained(tmp_path / "hf")
    ours = load_pretrained(tmp_path / "hf")
    assert ours.config.model_type == "camembert" and ours.config.position_offset == 2
    ids, mask = real_batch(CFG)
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask).logits
        got = ours(ids, mask.bool(), attention_mask=mask)  # the head's gelu, not hidden_act's relu
    torch.testing.assert_close(got, want[mask.bool()], atol=1e-5, rtol=0)
    save_pretrained(ours, tmp_path / "ours")
    back = loaded(tmp_path / "ours", transformers.AutoModelForMaskedLM)
    assert type(back).__name__ == "CamembertForMaskedLM"
    with torch.no_grad():
        torch.testing.assert_close(back(input_ids=ids, attention_mask=mask).logits, want)
    tagger = task_model(CFG | {"model_type": "camembert"}, "token", ["O", "B-PER", "I-PER"])
    out = export_hf(save_task_model(tagger, tmp_path / "tagger"), tmp_path / "export")
    hf = loaded(out, transformers.AutoModelForTokenClassification)
    assert type(hf).__name__ == "CamembertForTokenClassification"
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask).logits
        mine = tagger(ids, mask)[0]
    torch.testing.assert_close(theirs[mask.bool()], mine[mask.bool()], atol=1e-5, rtol=0)


def test_a_family_name_is_taken_once_and_an_unknown_one_names_the_registered(camembert):
    assert fam.register_family(camembert) is camembert  # the same spec again: a no-op
    other = fam.ModelFamily("camembert", "camembert.", ("A", "B"), ("C", "D"))
    with pytest.raises(ValueError, match="'camembert' is already registered"):
        fam.register_family(other)
    with pytest.raises(
        ValueError,
        match="'gpt2' is not supported .*bert, roberta, xlm-roberta, camembert; .*plugins",
    ):
        fam.get_family("gpt2")
    with pytest.raises(ValueError, match="model_type 'gpt2' is not supported"):
        BertConfig(model_type="gpt2")
    for bad, message in (
        (dict(prefix="roberta"), "prefix must end with '.'"),
        (dict(sequence_head="mean"), "sequence_head must be one of"),
    ):
        with pytest.raises(ValueError, match=message):
            fam.ModelFamily("x", **({"prefix": "x.", "architectures": ("A", "B"),
                                     "classifiers": ("C", "D")} | bad))  # fmt: skip


def test_export_finds_the_family_plugin_its_runs_config_names(tmp_path, camembert):
    """``xlt-engine export`` of a model a stage made, through the installed script from another
    folder: the family's plug-in is imported from the run's saved config (as ``run`` did), so a
    family of one's own exports like a built-in one."""
    import json
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    script = shutil.which("xlt-engine") or str(Path(sys.executable).parent / "xlt-engine")
    if not Path(script).exists():
        pytest.skip("the xlt-engine console script is not installed")
    (tmp_path / "plug").mkdir()
    (tmp_path / "plug" / "camembert_family.py").write_text(PLUGIN)
    stage = tmp_path / "run" / "src-tgt" / "finetune"
    tagger = task_model(CFG | {"model_type": "camembert"}, "token", ["O", "B-PER", "I-PER"])
    save_task_model(tagger, stage / "model")
    (stage / "fingerprint.json").write_text(json.dumps({"stage": "finetune"}))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def export(out):
        return subprocess.run([script, "export", str(stage / "model"), str(tmp_path / out)],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip

    unknown = export("without")  # no saved config: the family is unknown, and said so
    said = unknown.stdout + unknown.stderr
    assert unknown.returncode != 0 and "key 'model_type' is 'camembert'; supported" in said
    saved = {"experiment": {"plugins": ["camembert_family"]},
             "plugin_folders": {"camembert_family": str(tmp_path / "plug")}}  # fmt: skip
    (stage / "config.json").write_text(json.dumps(saved))
    done = export("with")
    assert done.returncode == 0, done.stdout + done.stderr
    written = json.loads((tmp_path / "with" / "config.json").read_text())
    assert written["architectures"] == ["CamembertForTokenClassification"]
