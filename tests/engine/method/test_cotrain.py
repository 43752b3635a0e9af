"""Co-training (paper 003, Algorithm 1) at test scale: two tiny random encoders as the LM and
the embedding view, real CLS-10 reviews (English labeled, German pool and dev). The views must
exchange rows (each view's labeled set grows by exactly the rows the other chose, with the
other's labels), a removed row must never come back, and a resumed run must end where an
uninterrupted one does."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import load_file

from tests.conftest import SHARED_DATA
from tests.engine.conftest import cls_slice
from xlt_engine.cli import main
from xlt_engine.engine.method import cotrain as cotrain_mod
from xlt_engine.engine.method.cotrain import CotrainConfig, draw, run_cotrain
from xlt_engine.engine.train.config import TrainConfig
from xlt_engine.fileio import folder_lock

N_SOURCE, N_POOL = 24, 40


def jsonl(path, examples):
    path.write_text(
        "".join(json.dumps({"text": e.text, "label": e.label}) + "\n" for e in examples)
    )
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent")
    from xlt_engine.data import read_cls10

    tmp = tmp_path_factory.mktemp("cotrain")
    en = read_cls10(SHARED_DATA / "cls10/en/books/train.review")
    de = read_cls10(SHARED_DATA / "cls10/de/books/train.review")

    def balanced(ds, k, skip=0):
        pos = [e for e in ds if e.label == "positive"][skip : skip + k // 2]
        return pos + [e for e in ds if e.label == "negative"][skip : skip + k // 2]

    emb = tmp / "emb"
    res = CliRunner().invoke(
        main,
        ["init", str(emb), "--vocab", str(SHARED_DATA / "mbert" / "vocab.txt"), "--layers", "1",
         "--hidden", "32", "--heads", "2", "--intermediate", "64", "--seed", "11"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    return {
        "train": jsonl(tmp / "train.jsonl", balanced(en, N_SOURCE)),
        "pool": jsonl(tmp / "pool.jsonl", balanced(de, N_POOL)),
        "dev": jsonl(tmp / "dev.jsonl", balanced(de, 20, skip=N_POOL)),
        "emb": emb,
    }


def config(tiny, files, out, **kw):
    settings = dict(
        model=str(tiny),
        embedding_model=str(files["emb"]),
        train_file=str(files["train"]),
        unlabeled_file=str(files["pool"]),
        dev_file=str(files["dev"]),
        out=str(out),
        format="jsonl",
        max_len=32,
        batch_size=8,
        iterations=3,
        threshold=0.0,  # random encoders are unsure: every row of a pool is a candidate
        train=TrainConfig(max_steps=3, lr=1e-3, warmup_ratio=0.0, seed=2),
    )
    settings.update(kw)
    return CotrainConfig(**settings)


def train_rows(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def run3(tiny, files, tmp_path_factory):
    out = tmp_path_factory.mktemp("run3") / "run"
    return out, run_cotrain(config(tiny, files, out, predict_with="mean"), echo=None)


def test_views_exchange_rows_with_the_other_views_labels(run3, files):
    out, result = run3
    pool = [json.loads(x)["text"] for x in files["pool"].read_text().splitlines()]
    size = round(N_SOURCE / 3)
    base = train_rows(out / "iter-1" / "lm" / "train.jsonl")
    assert len(base) == N_SOURCE and base == train_rows(out / "iter-1" / "emb" / "train.jsonl")
    given = {"lm": [], "emb": []}  # rows each view received so far, with their labels
    for it, rec in enumerate(result.iterations, start=1):
        folder = out / f"iter-{it}"
        for view in ("lm", "emb"):
            got = train_rows(folder / view / "train.jsonl")
            assert got[:N_SOURCE] == base
            want = [{"text": pool[r], "label": y} for r, y in given[view]]
            assert got[N_SOURCE:] == want, (it, view)
        probs = load_file(folder / "predictions.safetensors")
        if it == len(result.iterations):
            assert rec["exchange"] == {}  # no model reads the last exchange
            continue
        for view, other in (("lm", "emb"), ("emb", "lm")):
            x = rec["exchange"][f"{view}->{other}"]
            assert x["chosen"] == len(x["rows"]) == size
            pred = probs[f"{view}.probs"].argmax(-1)
            labels = ["negative", "positive"]
            assert x["labels"] == [labels[i] for i in pred[x["rows"]]]
            given[other] += list(zip(x["rows"], x["labels"], strict=True))
    assert result.models["lm"] == out / "iter-3" / "lm" / "model"


def test_a_removed_row_never_comes_back(run3):
    out, result = run3
    for view, other in (("lm", "emb"), ("emb", "lm")):
        chosen = [r for rec in result.iterations for r in rec["exchange"].get(f"{view}->{other}", {}).get("rows", [])]  # fmt: skip
        assert len(chosen) == len(set(chosen)) == 2 * round(N_SOURCE / 3)
        for it in (1, 2, 3):
            pool = load_file(out / f"iter-{it}" / "state.safetensors")[f"{view}.pool"]
            predicted = load_file(out / f"iter-{it}" / "predictions.safetensors")[f"{view}.pool"]
            if it == 1:
                assert predicted.all()  # the whole pool at first
            else:  # what the iteration predicted from: the pool the last one left
                last = load_file(out / f"iter-{it - 1}" / "state.safetensors")[f"{view}.pool"]
                assert np.array_equal(predicted, last)
            removed = set(np.flatnonzero(pool == 0).tolist())
            so_far = {r for rec in result.iterations[:it] for r in rec["exchange"].get(f"{view}->{other}", {}).get("rows", [])}  # fmt: skip
            assert removed == so_far


def test_final_prediction_and_dev_scores(run3):
    out, result = run3
    dev = result.iterations[-1]["dev_accuracy"]
    assert set(dev) == {"lm", "emb", "mean"} and all(0 <= v <= 1 for v in dev.values())
    assert result.dev["score"] == dev["mean"] and result.dev["predict_with"] == "mean"
    assert json.loads((out / "dev.json").read_text()) == result.dev


def test_resume_after_a_crash_ends_where_an_uninterrupted_run_does(
    tiny, files, tmp_path, monkeypatch, run3
):
    out = tmp_path / "run"
    real = cotrain_mod.run_finetune

    def crash_in_iteration_2_emb(ft, **kw):
        if "iter-2/emb" in ft.out.replace("\\", "/"):
            raise RuntimeError("killed")
        return real(ft, **kw)

    monkeypatch.setattr(cotrain_mod, "run_finetune", crash_in_iteration_2_emb)
    with pytest.raises(RuntimeError, match="killed"):
        run_cotrain(config(tiny, files, out, predict_with="mean"), echo=None)
    assert (out / "iter-2" / "lm" / "model").is_dir()  # lm of iteration 2 had finished
    assert not (out / "iter-2" / "state.safetensors").exists()
    with pytest.raises(ValueError, match="resume it"):
        run_cotrain(config(tiny, files, out, predict_with="mean"), echo=None)
    monkeypatch.setattr(cotrain_mod, "run_finetune", real)
    result = run_cotrain(config(tiny, files, out, predict_with="mean"), resume=True, echo=None)
    ref_out, ref = run3
    assert result.iterations == ref.iterations
    for it in (1, 2, 3):
        for name in ("predictions.safetensors", "state.safetensors"):
            a = load_file(out / f"iter-{it}" / name)
            b = load_file(ref_out / f"iter-{it}" / name)
            assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), (it, name)


def test_draw_is_seeded_and_respects_pool_and_threshold():
    pool = np.array([True] * 8 + [False] * 4)
    conf = np.linspace(0.5, 1.0, 12)
    got = draw(pool, conf, 0.7, 3, seed=1, it=1, view=0)
    assert len(got) == 3 and all(pool[got]) and all(conf[got] > 0.7)
    assert np.array_equal(got, draw(pool, conf, 0.7, 3, seed=1, it=1, view=0))
    everything = draw(pool, conf, 0.7, 100, seed=1, it=1, view=0)  # fewer than asked: all
    assert everything.tolist() == [i for i in range(8) if conf[i] > 0.7]


def test_settings_are_checked(tiny, files, conll, tmp_path):
    for bad, match in (
        (dict(threshold=1.0), "threshold must be in"),
        (dict(threshold=float("nan")), "threshold must be in"),
        (dict(subset_fraction=0.0), "subset_fraction must be in"),
        (dict(iterations=0), "iterations must be in"),
        (dict(predict_with="both"), "predict_with"),
        (dict(embedding_model=str(tmp_path / "none")), "embedding_model: .*no such folder"),
        (dict(format="conll", train_file=str(conll["eng.train"])), "token classification"),
    ):
        with pytest.raises(ValueError, match=match):
            config(tiny, files, tmp_path / "x", **bad)


def test_run_stage_cotrain_from_a_config(tiny, files, tmp_path):
    """``xlt-engine run --stage cotrain``: the [cotrain] section reaches the stage, the stage
    folder has its fingerprint and summary, a second run reuses nothing silently, and a changed
    setting is refused by name."""
    cls = SHARED_DATA / "cls10"
    root = tmp_path / "data"
    root.mkdir()
    cls_slice(cls / "en/books/train.review", root / "en.train", 24)
    cls_slice(cls / "de/books/train.review", root / "de.train", 30)
    cls_slice(cls / "de/books/test.review", root / "de.dev", 20)
    cfg = tmp_path / "cls.toml"
    cfg.write_text(
        f"""task = "classification"
source = "en"
targets = ["de"]
device = "cpu"
[data]
root = "{root}"
format = "cls10"
[model]
path = "{tiny}"
max_len = 32
[languages.en]
train = "en.train"
[languages.de]
unlabeled = "de.train"
dev = "de.dev"
[cotrain]
embedding_model = "{files["emb"]}"
iterations = 2
threshold = 0.0
batch_size = 8
predict_with = "emb"
[cotrain.train]
max_steps = 2
lr = 1e-3
"""
    )
    out = tmp_path / "run"
    args = ["run", "--stage", "cotrain", "--config", str(cfg), "--out", str(out), "--no-progress"]
    with folder_lock(out / "en-de" / "cotrain", "a test"):  # another process at work there
        res = CliRunner().invoke(main, args)
    assert res.exit_code != 0 and "another process" in res.output, res.output
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    stage = out / "en-de" / "cotrain"
    summary = json.loads((stage / "cotrain.json").read_text())
    assert summary["predict_with"] == "emb" and summary["iterations"] == 2
    assert summary["models"]["emb"] == str(stage / "iter-2" / "emb" / "model")
    assert (
        summary["dev"]["score"]
        == json.loads((stage / "iter-2" / "exchange.json").read_text())["dev_accuracy"]["emb"]
    )
    assert (stage / "fingerprint.json").is_file()
    x = json.loads((stage / "iter-1" / "exchange.json").read_text())["exchange"]["lm->emb"]
    assert x["chosen"] == 8  # round(24 / 3)
    again = CliRunner().invoke(main, args)
    assert again.exit_code != 0 and "--resume returns it" in again.output
    changed = CliRunner().invoke(main, [*args, "--set", "cotrain.threshold=0.5"])
    assert changed.exit_code != 0 and "cotrain.threshold" in changed.output


def test_self_exchange_gives_each_view_its_own_rows(tiny, files, tmp_path):
    """exchange = "self" (self-training of each view alone): a view's chosen rows, with its own
    labels, join its own labeled set."""
    out = tmp_path / "self"
    result = run_cotrain(config(tiny, files, out, iterations=2, exchange="self"), echo=None)
    pool = [json.loads(x)["text"] for x in files["pool"].read_text().splitlines()]
    for view in ("lm", "emb"):
        x = result.iterations[0]["exchange"][f"{view}->{view}"]
        got = train_rows(out / "iter-2" / view / "train.jsonl")[N_SOURCE:]
        assert got == [{"text": pool[r], "label": y} for r, y in zip(x["rows"], x["labels"], strict=True)]  # fmt: skip


def test_views_keep_what_cotrain_freezes(tiny, files, tmp_path):
    """``freeze_layers`` / ``freeze_embeddings`` reach both views' fine-tuning: the frozen
    weights end as the pre-trained encoder's, the others move."""
    import torch

    from xlt_engine.model.checkpoint import load_encoder
    from xlt_engine.model.task import load_task_model

    out = tmp_path / "frozen"
    cfg = config(tiny, files, out, iterations=1, freeze_layers=1, freeze_embeddings=True)
    run_cotrain(cfg, echo=None)
    for view, start in (("lm", tiny), ("emb", files["emb"])):
        before = load_encoder(start).state_dict()
        after = load_task_model(out / "iter-1" / view / "model").encoder.state_dict()
        seen = set()
        for name, w in before.items():
            frozen = name.startswith("embeddings.") or name.startswith("layers.0.")
            if name.startswith(("embeddings.", "layers.")):
                assert torch.equal(after[name], w) == frozen, (view, name)
                seen.add(frozen)
        assert seen == ({True, False} if view == "lm" else {True})  # lm: 2 layers, emb: 1
    with pytest.raises(ValueError, match="freeze_layers"):
        config(tiny, files, tmp_path / "x", freeze_layers=-1)


def test_a_laid_down_view_that_read_other_data_is_dropped(tmp_path):
    """``lay_down_iteration1`` links a finished run's iteration-1 views; a resumed run keeps one
    only while its training data are the ones this run writes (``_check_shared``)."""
    from xlt_engine.engine.method.cotrain import SHARED, _check_shared, lay_down_iteration1

    src, out = tmp_path / "cotrain", tmp_path / "cotrain-self"
    for v in ("lm", "emb"):
        (src / "iter-1" / v / "model").mkdir(parents=True)
        (src / "iter-1" / v / "model" / "task.json").write_text("{}")
        (src / "iter-1" / v / "train.jsonl").write_text('{"text": "a"}\n')
    said = lay_down_iteration1(src, out)
    assert said and "lm and emb" in said
    view = out / "iter-1" / "lm"
    assert (view / "model" / "task.json").is_file() and (view / SHARED).is_file()
    assert lay_down_iteration1(src, out) is None  # laid down already: nothing to do
    _check_shared(view, '{"text": "a"}\n', None)  # the same data: kept
    assert (view / "model").is_dir()
    said = []
    _check_shared(view, '{"text": "b"}\n', said.append)  # other data: dropped, trained here
    assert not (view / "model").exists() and not (view / SHARED).exists() and said
