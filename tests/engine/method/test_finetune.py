"""Stages finetune, evaluate and predict on slices of the real CoNLL, CLS-10 and XNLI files with
a tiny random model: losses go down, outputs are what the stages promise, kill/resume is exact."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import SHARED_DATA
from tests.engine.conftest import watch_final_save
from xlt_engine.data import read_conll
from xlt_engine.data.task import encode, read_task_file
from xlt_engine.engine.method.evaluate import (
    EvaluateConfig,
    PredictConfig,
    run_evaluate,
    run_predict,
)
from xlt_engine.engine.method.finetune import FinetuneConfig, run_finetune
from xlt_engine.engine.train.checkpoints import latest_checkpoint
from xlt_engine.engine.train.config import TrainConfig
from xlt_engine.engine.train.inference import predict_logits
from xlt_engine.model.task import load_task_model

ROOT = Path(__file__).resolve().parents[3]


def ner_config(tiny, conll, out, **train_kw):
    kw = dict(max_steps=30, lr=3e-3, log_every=5, seed=1)
    kw.update(train_kw)
    return FinetuneConfig(
        model=str(tiny),
        train_file=str(conll["eng.train"]),
        out=str(out),
        format="conll",
        dev_file=str(conll["eng.dev"]),
        max_len=48,
        batch_size=8,
        train=TrainConfig(**kw),
        freeze_layers=0,  # the tiny model has no pretraining to keep
        freeze_embeddings=False,
    )


@pytest.fixture(scope="module")
def ner_run(tiny, conll, tmp_path_factory):
    out = tmp_path_factory.mktemp("ner") / "run"
    return out, run_finetune(ner_config(tiny, conll, out, eval_every=15), echo=None)


def test_ner_finetune_loss_goes_down_and_writes_model_and_dev_score(ner_run, tiny):
    out, r = ner_run
    losses = [h["loss"] for h in r.train.history]
    assert len(losses) == 6 and losses[-1] < losses[0] - 0.5, losses
    scored = [h["step"] for h in r.train.history if "dev_entity_f1" in h]
    assert scored == [15, 30]  # periodic dev evaluation, logged with the loss
    assert r.train.history[-1]["dev_entity_f1"] == pytest.approx(r.dev["score"])
    meta = json.loads((out / "model" / "task.json").read_text())
    assert meta["kind"] == "token" and meta["num_voters"] == 3
    assert meta["labels"] == [
        "O",
        "B-LOC",
        "I-LOC",
        "B-MISC",
        "I-MISC",
        "B-ORG",
        "I-ORG",
        "B-PER",
        "I-PER",
    ]
    dev = json.loads((out / "dev.json").read_text())
    assert dev["metric"] == "entity_f1" and dev == {**r.dev}
    assert 0 <= dev["score"] <= 1 and dev["sentences"] == 60
    # the encoder changed from the initial model and round-trips through the folder
    before = load_file(str(tiny / "model.safetensors"))
    after = load_file(str(out / "model" / "model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in after)


def test_finetuned_model_reloads_to_the_same_predictions(ner_run, conll):
    out, _ = ner_run
    model = load_task_model(out / "model")
    from xlt_engine.data import load_tokenizer

    tok = load_tokenizer(out / "model")
    data = read_task_file(conll["eng.dev"], "conll")
    enc = encode(data, tok, model.labels, 48)
    a = predict_logits(model, enc, tok.pad_id, torch.device("cpu"), max_tokens=256)
    b = predict_logits(model, enc, tok.pad_id, torch.device("cpu"), max_tokens=4096)
    assert a.shape == (3, sum(len(s) for s in data.inputs), 9)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)  # batching does not change results


def test_encoder_of_finetuned_model_loads_in_transformers(ner_run):
    transformers = pytest.importorskip("transformers")
    out, _ = ner_run
    _, info = transformers.BertModel.from_pretrained(
        out / "model", output_loading_info=True, add_pooling_layer=False
    )
    assert not info["missing_keys"] and not info["mismatched_keys"]


def test_evaluate_writes_results_with_transfer_gap(ner_run, conll, tmp_path):
    out, _ = ner_run
    tests = {
        "eng": str(conll["eng.test"]),
        "esp": str(conll["esp.test"]),
        "ned": str(conll["ned.test"]),
    }
    res = run_evaluate(
        EvaluateConfig(
            model=str(out / "model"), tests=tests, out=str(tmp_path), source="eng", max_len=48
        ),
        echo=None,
    )
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == json.loads(json.dumps(res))
    wall = json.loads((tmp_path / "eval-wall.json").read_text())  # where its time went
    assert list(wall) == ["model load", "reading", "encoding", "forward-only passes", "scoring"]
    assert all(v >= 0 for v in wall.values()) and wall["forward-only passes"] > 0
    for lang in tests:
        s = saved["languages"][lang]
        assert {"score", "strict_f1", "precision", "recall", "per_type"} <= s.keys()
    for lang in ("esp", "ned"):
        gap = saved["languages"]["eng"]["score"] - saved["languages"][lang]["score"]
        assert saved["transfer_gap"][lang] == pytest.approx(gap)
    assert saved["mean_target"] == pytest.approx(
        (saved["languages"]["esp"]["score"] + saved["languages"]["ned"]["score"]) / 2
    )
    table = (tmp_path / "results.md").read_text().splitlines()
    assert table[0] == "| language | F1 | strict F1 | gap |"
    assert table[2].startswith("| eng (source) | ") and len(table) == 6


def test_predict_conll_one_tag_per_token_line(ner_run, conll, tmp_path):
    out, _ = ner_run
    pred = tmp_path / "esp.pred"
    run_predict(
        PredictConfig(
            model=str(out / "model"), input=str(conll["esp.test"]), output=str(pred), max_len=16
        ),
        echo=None,
    )
    src = conll["esp.test"].read_text(encoding="utf-8").splitlines()
    got = pred.read_text(encoding="utf-8").splitlines()
    assert len(got) == len(src)
    labels = set(load_task_model(out / "model").labels)
    n = 0
    for a, b in zip(src, got, strict=True):
        if a.split():
            assert (
                b.startswith(a) and b.split()[-1] in labels and len(b.split()) == len(a.split()) + 1
            )
            n += 1
        else:
            assert b == a
    assert n == sum(len(s.tokens) for s in read_conll(conll["esp.test"]))
    # max_len 16 split long sentences into windows; still one prediction per word (checked above)


def test_predict_refuses_to_overwrite_its_input(ner_run, conll):
    out, _ = ner_run
    with pytest.raises(ValueError, match="which this command reads"):
        PredictConfig(
            model=str(out / "model"), input=str(conll["esp.test"]), output=str(conll["esp.test"])
        )


KILL = """
import sys
from pathlib import Path
from tests.engine.method.test_finetune import ner_config
from xlt_engine.engine.method.finetune import run_finetune
conll = {"eng.train": Path(sys.argv[2]), "eng.dev": Path(sys.argv[3])}
run_finetune(ner_config(Path(sys.argv[1]), conll, sys.argv[4], max_steps=12, save_every=4),
             echo=None)
"""


def test_finetune_sigkill_then_resume_is_bit_exact(tiny, conll, tmp_path):
    cfg = ner_config(tiny, conll, tmp_path / "full", max_steps=12, save_every=4)
    run_finetune(cfg, echo=None)
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            KILL,
            str(tiny),
            str(conll["eng.train"]),
            str(conll["eng.dev"]),
            str(tmp_path / "cut"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "XLT_KILL_AT": "10"},
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert latest_checkpoint(tmp_path / "cut").name == "ckpt-00000008"
    with pytest.raises(ValueError, match="resume it"):  # a fresh run would overwrite it
        run_finetune(
            ner_config(tiny, conll, tmp_path / "cut", max_steps=12, save_every=4), echo=None
        )
    run_finetune(
        ner_config(tiny, conll, tmp_path / "cut", max_steps=12, save_every=4),
        resume=True,
        echo=None,
    )
    for name in ("model.safetensors", "voters.safetensors"):
        full = load_file(str(tmp_path / "full" / "model" / name))
        cut = load_file(str(tmp_path / "cut" / "model" / name))
        assert all(torch.equal(full[k], cut[k]) for k in full), name


def test_cls10_finetune_evaluate_predict(tiny, tmp_path):
    cls = SHARED_DATA / "cls10"
    cfg = FinetuneConfig(
        model=str(tiny),
        train_file=str(cls / "en/books/train.review"),
        out=str(tmp_path / "run"),
        format="cls10",
        max_len=64,
        batch_size=16,
        voters=2,
        freeze_layers=0,  # the tiny model has no pretraining to keep
        freeze_embeddings=False,
        train=TrainConfig(max_steps=30, lr=2e-3, log_every=10),
    )
    r = run_finetune(cfg, echo=None)
    assert len(r.train.history) == 3 and all(0.5 < h["loss"] < 0.9 for h in r.train.history)
    assert r.dev is None and not (tmp_path / "run" / "dev.json").exists()
    meta = json.loads((tmp_path / "run" / "model" / "task.json").read_text())
    assert meta["kind"] == "sequence" and meta["labels"] == ["negative", "positive"]
    res = run_evaluate(
        EvaluateConfig(
            model=str(tmp_path / "run" / "model"),
            format="cls10",
            tests={
                "en": str(cls / "en/books/test.review"),
                "de": str(cls / "de/books/test.review"),
            },
            source="en",
            out=str(tmp_path / "eval"),
            max_len=64,
        ),
        echo=None,
    )
    assert res["metric"] == "accuracy" and res["languages"]["de"]["examples"] == 2000
    assert "| language | accuracy | gap |" in (tmp_path / "eval" / "results.md").read_text()
    pred = tmp_path / "de.jsonl"
    run_predict(
        PredictConfig(
            model=str(tmp_path / "run" / "model"),
            format="cls10",
            input=str(cls / "de/books/test.review"),
            output=str(pred),
            max_len=64,
        ),
        echo=None,
    )
    rows = [json.loads(line) for line in pred.read_text().splitlines()]
    assert len(rows) == 2000
    assert all(r["label"] in ("negative", "positive") for r in rows)
    assert all(abs(sum(r["probs"].values()) - 1) < 1e-4 for r in rows)
    assert rows[0]["line"] < rows[1]["line"]


@pytest.fixture(scope="module")
def tiny_with_pooler(tiny, tmp_path_factory) -> Path:
    """The tiny model with a (random) pooler, saved as a checkpoint that ships one (LaBSE)."""
    from xlt_engine.data import load_tokenizer
    from xlt_engine.model import BertForMLM, load_pretrained, save_pretrained

    plain = load_pretrained(tiny)
    model = BertForMLM(plain.config, pooler=True)
    missing = model.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert sorted(missing) == ["encoder.pooler.bias", "encoder.pooler.weight"]
    return save_pretrained(model, tmp_path_factory.mktemp("pooled") / "m", load_tokenizer(tiny))


@pytest.mark.parametrize("representation", ["cls", "mean", "pooler"])
def test_sequence_classification_fits_a_small_training_set(
    tiny_with_pooler, tmp_path, representation
):
    """32 real CLS-10 reviews (as JSONL): the classifier must learn them through each sentence
    representation, which the saved model keeps."""
    from xlt_engine.data import read_cls10

    ds = read_cls10(SHARED_DATA / "cls10/en/books/train.review")
    rows = [ex for ex in ds if ex.label == "positive"][:16] + [
        ex for ex in ds if ex.label == "negative"
    ][:16]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"text": e.text, "label": e.label}) + "\n" for e in rows))
    cfg = FinetuneConfig(
        model=str(tiny_with_pooler),
        train_file=str(path),
        dev_file=str(path),
        format="jsonl",
        out=str(tmp_path / "run"),
        max_len=32,
        batch_size=8,
        voters=2,
        freeze_layers=0,  # the tiny model has no pretraining to keep
        freeze_embeddings=False,
        representation=representation,
        train=TrainConfig(max_steps=60, lr=3e-3, log_every=20, warmup_ratio=0.0),
    )
    r = run_finetune(cfg, echo=None)
    assert r.dev["score"] >= 0.9, (r.dev, r.train.history)
    assert load_task_model(r.model).representation == representation


def test_xnli_pairs_finetune_uses_token_types(tiny, tmp_path):
    cfg = FinetuneConfig(
        model=str(tiny),
        train_file=str(SHARED_DATA / "xnli/dev-en.tsv"),
        out=str(tmp_path / "run"),
        format="xnli",
        max_len=64,
        batch_size=16,
        dev_file=str(SHARED_DATA / "xnli/dev-de.tsv"),
        train=TrainConfig(max_steps=5, lr=1e-3),
    )
    r = run_finetune(cfg, echo=None)
    assert r.dev["metric"] == "accuracy" and r.dev["examples"] == 2490
    meta = json.loads((tmp_path / "run" / "model" / "task.json").read_text())
    assert meta["labels"] == ["contradiction", "entailment", "neutral"]
    from xlt_engine.data import load_tokenizer

    data = read_task_file(SHARED_DATA / "xnli/dev-en.tsv", "xnli")
    enc = encode(data, load_tokenizer(tiny), meta["labels"], 64)
    assert enc.token_type_ids is not None and max(t.max() for t in enc.token_type_ids) == 1


def test_finetune_config_errors(tiny, conll, tmp_path):
    with pytest.raises(ValueError, match="format must be one of"):
        FinetuneConfig(model=str(tiny), train_file=str(conll["eng.train"]), out="x", format="csv")
    with pytest.raises(ValueError, match="dev_file: .*nope: no such file"):
        FinetuneConfig(
            model=str(tiny),
            train_file=str(conll["eng.train"]),
            out="x",
            dev_file=str(tmp_path / "nope"),
        )
    with pytest.raises(ValueError, match="voter_widths has 2 entries for voters = 3"):
        FinetuneConfig(
            model=str(tiny), train_file=str(conll["eng.train"]), out="x", voter_widths=(4, 5)
        )


def test_evaluate_refuses_a_model_without_a_task_head(tiny, conll, tmp_path):
    with pytest.raises(ValueError, match="no task.json: not a fine-tuned task model"):
        EvaluateConfig(model=str(tiny), tests={"eng": str(conll["eng.test"])}, out=str(tmp_path))


def test_finetune_freezes_what_train_freeze_names(tiny, conll, tmp_path):
    # a 4-step finetune: the frozen embeddings and layer 0 keep their initial values exactly,
    # layer 1 and the voters train
    cfg = ner_config(
        tiny,
        conll,
        tmp_path / "run",
        max_steps=4,
        log_every=2,
        freeze=(r"encoder\.embeddings\.", r"encoder\.layers\.0\."),
    )
    run_finetune(cfg, echo=None)
    before = load_file(str(tiny / "model.safetensors"))
    after = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    frozen = [k for k in after if "embeddings" in k or ".layer.0." in k]
    trained = [k for k in after if ".layer.1." in k]
    assert len(frozen) > 5 and len(trained) > 5
    for k in frozen:
        assert torch.equal(before[k], after[k]), k
    assert all(not torch.equal(before[k], after[k]) for k in trained if k.endswith("weight"))


def test_a_freeze_pattern_that_matches_nothing_is_an_error_naming_it(tiny, conll, tmp_path):
    cfg = ner_config(tiny, conll, tmp_path / "run", max_steps=2, freeze=(r"bert\.layer\.0",))
    with pytest.raises(ValueError, match=r"freeze pattern 'bert\\\\.layer\\\\.0' matches no"):
        run_finetune(cfg, echo=None)


def test_finetune_prints_label_counts_and_warns_about_a_rare_label(tiny, conll, tmp_path):
    """A B-XYZ typo became a class of the model without a word."""
    from xlt_engine.engine.method.finetune import report_labels

    text = conll["eng.train"].read_text().replace(" B-LOC\n", " B-LCO\n", 1)
    typo = tmp_path / "typo.train"
    typo.write_text(text)
    lines = []
    with pytest.warns(UserWarning, match=r"typo.train: label 'B-LCO' occurs 1 time\(s\) only"):
        report_labels(read_task_file(typo, "conll"), lines.append)
    assert lines[0].startswith(f"labels of {typo}: O ") and "B-LCO 1" in lines[0]
    data = read_task_file(conll["eng.train"], "conll")
    counts = data.label_counts()
    assert sum(counts.values()) == sum(len(t) for t in data.labels)
    assert list(counts) == sorted(counts, key=counts.get, reverse=True)


def test_finetune_reads_with_the_encoding_it_is_given(tiny, conll, tmp_path):
    """A UTF-8 file with one stray byte is refused unless the encoding is given."""
    raw = conll["eng.train"].read_bytes()
    bad = tmp_path / "mixed.train"
    bad.write_bytes("Zürich NNP I-NP B-LOC\n\n".encode() + b"Gro\xdfe JJ I-NP O\n\n" + raw)
    kw = dict(model=str(tiny), train_file=str(bad), format="conll", max_len=32, batch_size=8,
              train=TrainConfig(max_steps=1, lr=1e-3))  # fmt: skip
    with pytest.raises(ValueError, match="a UTF-8 file with stray bytes"):
        run_finetune(FinetuneConfig(out=str(tmp_path / "a"), **kw), echo=None)
    r = run_finetune(FinetuneConfig(out=str(tmp_path / "b"), encoding="latin-1", **kw), echo=None)
    assert r.model.is_dir()


def test_model_folder_is_written_last_as_the_stage_marker(tiny, conll, tmp_path, monkeypatch):
    """Issue 23 (5): model/ (what marks finetune finished) was saved before dev.json, so a kill
    between the two left a finished stage without its dev score."""
    from xlt_engine.engine.method import finetune

    out = tmp_path / "run"
    seen = watch_final_save(monkeypatch, finetune, out, "dev.json")
    run_finetune(ner_config(tiny, conll, out, max_steps=2, log_every=1), echo=None)
    assert seen == [True]


def test_grad_norm_is_logged_and_tensorboard_gets_every_record(tiny, conll, tmp_path, monkeypatch):
    """Each log record holds the gradient norm before clipping; with tensorboard = true the
    same records go to TensorBoard scalars in <run>/tensorboard."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = ner_config(tiny, conll, tmp_path / "run", max_steps=6, log_every=2, clip=1e-3,
                     tensorboard=True)  # fmt: skip
    run_finetune(cfg, echo=None)
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 6]
    assert all(r["grad_norm"] > 1e-3 for r in records)  # before clipping to 1e-3
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert {"loss", "lr", "tokens_per_s", "grad_norm"} <= set(events.Tags()["scalars"])
    for key in ("loss", "lr", "grad_norm"):
        got = [(e.step, e.value) for e in events.Scalars(key)]
        assert got == [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in records], key
    # without the package the setting is refused when the config is made, naming it
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "tensorboard" else real(n, *a)
    )
    with pytest.raises(ValueError, match="tensorboard = true needs the tensorboard package"):
        TrainConfig(max_steps=1, tensorboard=True)


def test_a_finetune_step_makes_no_host_sync(tiny, conll, tmp_path):
    from dataclasses import replace

    from tests.engine.conftest import gpu_step_syncs

    cfg = ner_config(tiny, conll, tmp_path / "run", max_steps=4, log_every=4, save_minutes=0,
                     final_checkpoint=False)  # fmt: skip
    cfg = replace(cfg, dev_file=None)
    with gpu_step_syncs() as hs:
        run_finetune(cfg, echo=None)
    assert hs.in_steps() == [], [s.where() for s in hs.in_steps()]
