"""Paper 003's rows as one command (``ablate --study cotrain``) and the evaluation of a
co-training result on test files: every row trains and scores the model it names, rows that
differ only in an adaptation option get folders of their own, and ``cotrain-mean`` is the mean
of the two views' probabilities. Tiny random encoders, real XNLI rows."""

import html
import json
import os
import shutil

import pytest
import torch
from click.testing import CliRunner

from tests.conftest import SHARED_DATA
from xlt_engine.cli import main
from xlt_engine.data import load_tokenizer
from xlt_engine.data.parallel import build_xnli_parallel
from xlt_engine.data.task import encode, read_task_file
from xlt_engine.engine.experiment.config import ConfigError, load_config
from xlt_engine.engine.experiment.pipeline import pair_configs
from xlt_engine.engine.experiment.runs import (
    model_path,
    model_paths,
    model_stage,
    named_models,
    stage_dir,
    with_section,
)
from xlt_engine.engine.method.evaluate import EvaluateConfig, run_evaluate
from xlt_engine.engine.train.inference import ensemble_probs, predict_logits
from xlt_engine.engine.train.metrics import accuracy, label_confusion
from xlt_engine.model.heads import VotersModule
from xlt_engine.model.task import load_task_model
from xlt_engine.studies.ablate import PARALLEL_ROWS, cotrain_rows

XNLI = SHARED_DATA / "xnli"
ROWS = [
    "fine-tune only",
    "fine-tune only (embedding view)",
    "+ self-training (LM view)",
    "+ self-training (embedding view)",
    "+ co-training (LM view)",
    "+ co-training (embedding view)",
    "+ co-training (mean of views)",
    "+ LA",
    "+ SA",
    "+ LA + SA",
    "translate-train",
]


def head(src, out, n):
    out.write_text("".join(src.read_text(encoding="utf-8").splitlines(True)[:n]))
    return out


@pytest.fixture(scope="module")
def xnli_config(tiny, tmp_path_factory):
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent")
    tmp = tmp_path_factory.mktemp("xnli003")
    root = tmp / "data"
    root.mkdir()
    head(XNLI / "dev-en.tsv", root / "train-en.tsv", 24)
    head(XNLI / "test-en.tsv", root / "test-en.tsv", 30)
    head(XNLI / "dev-de.tsv", root / "pool-de.tsv", 30)
    head(XNLI / "test-de.tsv", root / "test-de.tsv", 30)
    build_xnli_parallel(XNLI, "en", ["de"], 8, 3, tmp / "par.jsonl")
    emb = tmp / "emb"
    res = CliRunner().invoke(
        main,
        ["init", str(emb), "--vocab", str(SHARED_DATA / "mbert" / "vocab.txt"), "--layers", "1",
         "--hidden", "32", "--heads", "2", "--intermediate", "64", "--seed", "11"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    path = tmp / "xnli.toml"
    path.write_text(
        f"""task = "classification"
source = "en"
targets = ["de"]
device = "cpu"
[data]
root = "{root}"
format = "xnli"
[model]
path = "{tiny}"
max_len = 48
freeze_layers = 0
[languages.en]
train = "train-en.tsv"
test = "test-en.tsv"
[languages.de]
unlabeled = "pool-de.tsv"
test = "test-de.tsv"
[cotrain]
embedding_model = "{emb}"
iterations = 2
threshold = 0.0
batch_size = 8
[cotrain.train]
max_steps = 2
lr = 1e-3
[finetune]
init = "pretrained"
batch_size = 8
parallel_file = "{tmp / "par.jsonl"}"
sa_epochs = 0.5
[finetune.train]
max_steps = 2
lr = 1e-3
"""
    )
    return path, root


def test_each_row_trains_in_a_folder_of_its_own(xnli_config):
    path, _ = xnli_config
    cfg = pair_configs(load_config(path, []))[0]
    rows = cotrain_rows(cfg)
    assert list(rows) == ROWS
    folders = {}
    for row, (c, name) in rows.items():
        folders[row] = stage_dir(
            *(model_stage(c, name) if name in named_models() else (c, "cotrain"))
        )
    finetunes = [folders[r] for r in ("fine-tune only", "+ LA", *PARALLEL_ROWS)]
    assert len(set(finetunes)) == len(finetunes)  # five fine-tuned models, five folders
    assert [f.name for f in finetunes] == [
        "finetune-direct-linear",
        "finetune-direct-linear-la",
        "finetune-direct-linear-sa",
        "finetune-direct-linear-la-sa",
        "finetune-direct-linear-tt",
    ]
    assert folders["+ self-training (LM view)"].name == "cotrain-self"
    assert folders["+ co-training (LM view)"].name == "cotrain"
    # the evaluations too: one folder per scored model
    evals = {stage_dir(with_section(c, "evaluate", model=m), "evaluate") for c, m in rows.values()}
    assert len(evals) == len(rows)
    no_par = pair_configs(load_config(path, ["finetune.parallel_file=''"]))[0]
    assert list(cotrain_rows(no_par)) == [r for r in ROWS if r not in PARALLEL_ROWS]


def test_cotrain_models_need_a_finished_run_and_mean_is_two_models(xnli_config, tmp_path):
    path, _ = xnli_config
    cfg = pair_configs(load_config(path, [f"out={str(tmp_path)!r}"]))[0]
    with pytest.raises(ConfigError, match="run the cotrain stage first"):
        model_paths(cfg, "cotrain-lm", "evaluate.model")
    lm, emb = model_paths(cfg, "cotrain-mean", "evaluate.model", must_exist=False)
    assert (lm.parent.name, emb.parent.name) == ("lm", "emb")
    assert lm.parents[1].name == "iter-2"  # the last iteration's models
    with pytest.raises(ConfigError, match="mean of two models"):
        model_path(cfg, "cotrain-mean", "finetune.init", must_exist=False)


@pytest.fixture(scope="module")
def ablation(xnli_config, tmp_path_factory):
    path, _ = xnli_config
    out = tmp_path_factory.mktemp("abl")
    args = ["ablate", "--config", str(path), "--seeds", "1", "--study", "cotrain",
            "--out", str(out), "--no-progress"]  # fmt: skip
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    return out, args, json.loads((out / "cotrain-ablation.json").read_text())


def test_ablation_scores_every_row_from_the_model_it_names(ablation):
    out, _, result = ablation
    assert list(result["scores"]) == ROWS and result["left_out"] == []
    run = out / "seed-1" / "en-de"
    evals = {
        "fine-tune only": "evaluate-finetune-direct-linear",
        "fine-tune only (embedding view)": "evaluate-cotrain-iter-1-emb",
        "+ self-training (LM view)": "evaluate-cotrain-self-lm",
        "+ self-training (embedding view)": "evaluate-cotrain-self-emb",
        "+ co-training (LM view)": "evaluate-cotrain-lm",
        "+ co-training (embedding view)": "evaluate-cotrain-emb",
        "+ co-training (mean of views)": "evaluate-cotrain-mean",
        "+ LA": "evaluate-finetune-direct-linear-la",
        "+ SA": "evaluate-finetune-direct-linear-sa",
        "+ LA + SA": "evaluate-finetune-direct-linear-la-sa",
        "translate-train": "evaluate-finetune-direct-linear-tt",
    }
    for row, folder in evals.items():
        res = json.loads((run / folder / "results.json").read_text())
        assert result["scores"][row] == {"de": [res["languages"]["de"]["score"]]}, row
        assert result["source_scores"][row] == [res["languages"]["en"]["score"]], row
    lm = json.loads((run / "evaluate-cotrain-lm" / "results.json").read_text())
    assert lm["model"] == str(run / "cotrain" / "iter-2" / "lm" / "model")
    # the adaptation rows really trained with their options: SA's second phase ran, LA's loss
    # had its term, translate-train read the translations
    assert (run / "finetune-direct-linear-sa" / "semantic-alignment").is_dir()
    assert not (run / "finetune-direct-linear-tt" / "semantic-alignment").exists()

    def stage_config(folder):
        return json.loads((run / folder / "config.json").read_text())["stage_config"]

    assert stage_config("finetune-direct-linear-la")["label_alignment"] is True
    assert stage_config("finetune-direct-linear")["label_alignment"] is False
    assert stage_config("finetune-direct-linear")["parallel_file"] is None
    tt = stage_config("finetune-direct-linear-tt")
    assert tt["parallel_file"] and not tt["semantic_alignment"] and not tt["label_alignment"]
    table = (out / "cotrain-ablation.md").read_text()
    assert all(f"| {row} |" in table for row in ROWS)
    assert any(v is not None for v in result["seconds"]["[en-de] cotrain-self"])


def test_self_training_takes_co_trainings_first_iteration_and_ends_as_alone(
    ablation, xnli_config, tmp_path
):
    """Iteration 1 trains both views on the source alone whatever the exchange: the self-
    training run links co-training's (``shared.json``) and ends with the weights it trains
    alone."""
    out, _, _ = ablation
    path, _ = xnli_config
    run = out / "seed-1" / "en-de"
    for v in ("lm", "emb"):
        view = run / "cotrain-self" / "iter-1" / v
        src = run / "cotrain" / "iter-1" / v
        assert json.loads((view / "shared.json").read_text()) == {"shared_from": str(src)}
        assert os.path.samefile(
            view / "model" / "model.safetensors", src / "model" / "model.safetensors"
        )
    args = ["run", "--stage", "cotrain", "--config", str(path), "--out", str(tmp_path),
            "--no-progress", "--set", "seed=1", "--set", "cotrain.exchange='self'"]  # fmt: skip
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    alone = tmp_path / "en-de" / "cotrain-self"
    assert not list(alone.rglob("shared.json"))
    for f in ("iter-1/exchange.json", "iter-2/exchange.json", "iter-2/lm/model/model.safetensors",
              "iter-2/emb/model/model.safetensors", "iter-2/emb/model/voters.safetensors"):  # fmt: skip
        assert (alone / f).read_bytes() == (run / "cotrain-self" / f).read_bytes(), f


def test_mean_of_views_is_the_mean_of_both_views_probabilities(ablation, xnli_config):
    out, _, _ = ablation
    _, root = xnli_config
    it = out / "seed-1" / "en-de" / "cotrain" / "iter-2"
    res = json.loads((it.parents[1] / "evaluate-cotrain-mean" / "results.json").read_text())
    assert res["ensemble"] == [str(it / "lm" / "model"), str(it / "emb" / "model")]
    data = read_task_file(str(root / "test-de.tsv"), "xnli", False)
    probs, members = views_probs(it, data)
    assert not torch.allclose(probs[0], probs[1], atol=1e-3)  # two different views
    mean = (probs[0] + probs[1]) / 2
    got = ensemble_probs(members, data, 48, torch.device("cpu"), 4096)
    assert torch.allclose(got.double(), mean, atol=1e-6)
    pred = [members[0][0].labels[i] for i in mean.argmax(-1).tolist()]
    assert res["languages"]["de"]["confusion"] == label_confusion(data.labels, pred)
    assert res["languages"]["de"]["score"] == pytest.approx(accuracy(data.labels, pred))


def views_probs(it, data):
    """Each view of a co-training iteration folder on its own (its own tokenizer): their
    mean-of-voters probabilities (float64) and (model, tokenizer) pairs."""
    probs, members = [], []
    for view in ("lm", "emb"):
        model, tok = load_task_model(it / view / "model"), load_tokenizer(it / view / "model")
        enc = encode(data, tok, model.labels, 48)
        logits = predict_logits(model, enc, tok.pad_id, torch.device("cpu"))
        probs.append(VotersModule.probs(logits).double())
        members.append((model, tok))
    return probs, members


def test_predict_with_the_mean_of_views_writes_the_mean_probabilities(
    ablation, xnli_config, tmp_path
):
    out, _, _ = ablation
    path, root = xnli_config
    pred = tmp_path / "pred.jsonl"
    args = ["run", "--stage", "predict", "--config", str(path), "--out", str(out / "seed-1"),
            "--set", "seed=1", "--set", "target='de'", "--set", "predict.model='cotrain-mean'",
            "--set", f"predict.input={str(root / 'test-de.tsv')!r}",
            "--set", f"predict.output={str(pred)!r}"]  # fmt: skip
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in pred.read_text().splitlines()]
    data = read_task_file(str(root / "test-de.tsv"), "xnli", True)
    probs, members = views_probs(out / "seed-1" / "en-de" / "cotrain" / "iter-2", data)
    mean = (probs[0] + probs[1]) / 2
    labels = members[0][0].labels
    assert len(rows) == len(mean) == 30
    for row, p in zip(rows, mean.tolist(), strict=True):
        assert [row["probs"][name] for name in labels] == pytest.approx(p, abs=2e-6)
        assert row["label"] == labels[max(range(len(p)), key=p.__getitem__)]


def test_an_ensemble_of_models_with_other_labels_is_refused(ablation, tmp_path):
    out, _, _ = ablation
    lm = out / "seed-1" / "en-de" / "cotrain" / "iter-2" / "lm" / "model"
    other = tmp_path / "other"
    shutil.copytree(lm, other)
    meta = json.loads((other / "task.json").read_text())
    meta["labels"] = list(reversed(meta["labels"]))
    (other / "task.json").write_text(json.dumps(meta))
    test = out.parent / "x.tsv"
    test.write_text("a\tb\tneutral\n")
    cfg = EvaluateConfig(model=str(lm), ensemble=(str(other),), tests={"de": str(test)},
                         out=str(tmp_path / "e"), format="xnli", max_len=48)  # fmt: skip
    with pytest.raises(ValueError, match=f"ensemble: {other} predicts"):
        run_evaluate(cfg, echo=None)


def test_a_second_ablation_reuses_every_stage(ablation):
    out, args, result = ablation
    res = CliRunner().invoke(main, [*args, "--resume"])
    assert res.exit_code == 0, res.output
    again = json.loads((out / "cotrain-ablation.json").read_text())
    assert again["scores"] == result["scores"]
    assert all(v == [None] for v in again["seconds"].values())  # nothing trained again


def test_the_report_shows_the_rows_and_each_cotrain_iteration(ablation, tmp_path):
    out, _, result = ablation
    page = tmp_path / "report.html"
    res = CliRunner().invoke(main, ["report", str(out), "--out", str(page)])
    assert res.exit_code == 0, res.output
    text = page.read_text()
    assert "cotrain-ablation: mean ± std over seeds [1]" in text
    for row, per_target in result["scores"].items():
        v = 100 * per_target["de"][0]
        assert f"<td>{html.escape(row)}</td><td>{v:.2f} ± 0.00</td>" in text, row
    run = out / "seed-1" / "en-de"
    for stage in ("cotrain", "cotrain-self"):
        assert f"<h3>{stage}</h3>" in text
        rec = json.loads((run / stage / "iter-1" / "exchange.json").read_text())
        x = next(iter(rec["exchange"].values()))
        assert f"{x['chosen']} of {x['candidates']}" in text
    assert "– (last iteration)" in text


def test_cotrain_moves_scores_the_given_rows_against_the_pools_hidden_labels(ablation):
    from lab.cotrain_moves import moves

    out, _, _ = ablation
    stage = out / "seed-1" / "en-de" / "cotrain"
    got = moves(stage)
    rec = json.loads((stage / "iter-1" / "exchange.json").read_text())
    assert [m["exchange"] for m in got] == list(rec["exchange"])  # iteration 1's two exchanges
    cfg = json.loads((stage / "config.json").read_text())["stage_config"]
    pool = read_task_file(cfg["unlabeled_file"], "xnli", False, cfg["max_unlabeled"], 1)
    for m, x in zip(got, rec["exchange"].values(), strict=True):
        right = sum(pool.labels[r] == y for r, y in zip(x["rows"], x["labels"], strict=True))
        assert m["right_of_rated"] == pytest.approx(right / len(x["rows"]))
        assert m["chosen"] == len(x["rows"]) and m["three_star"] == 0
