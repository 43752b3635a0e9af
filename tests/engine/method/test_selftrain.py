"""Stage selftrain: the round structure, the teacher/student chain, the threshold, both filters,
the saved artefacts against the logs, and kill-and-resume mid-round.

The task is the quickstart's synthetic NER pair (small vocabulary), where a tiny random model
learns within a few hundred steps: its students give threshold curves that rise and fall, voters
that sometimes disagree, pseudo labels of several classes and source rows removed in both
rounds, so every check below can fail. (A tiny model with the 119,547-token mBERT vocabulary on
real CoNLL slices predicts O for every word at any affordable step count, which satisfies most
of these checks vacuously; the real-data run of the whole pipeline is in test_pipeline.py.)"""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from xlt_engine.data.packed import (
    STORE_FORMAT,
    StoreFile,
    StoreSpec,
    StoreWriter,
    build_store,
    open_store,
)
from xlt_engine.data.task import Encoded, Ragged, encode, read_task_file
from xlt_engine.data.tokenizer import load_tokenizer
from xlt_engine.engine.method.finetune import FinetuneConfig, run_finetune
from xlt_engine.engine.method.pseudo_labels import check_collapse
from xlt_engine.engine.method.rules import make_rule
from xlt_engine.engine.method.selftrain import SelftrainConfig, run_selftrain
from xlt_engine.engine.method.selftrain import filter as selftrain_filter
from xlt_engine.engine.method.selftrain import passes as selftrain_passes
from xlt_engine.engine.method.selftrain import training as selftrain_training
from xlt_engine.engine.method.selftrain.counts import fidelity_counts, lost_classes
from xlt_engine.engine.method.selftrain.files import FILTER_FILE, SOURCE_OK_FILE
from xlt_engine.engine.method.selftrain.guard import CollapseError
from xlt_engine.engine.method.selftrain.store import (
    row_units,
    whole_units,
    with_targets,
    write_with_targets,
)
from xlt_engine.engine.method.selftrain.training import encoder_digest
from xlt_engine.engine.method.threshold import EVEN_GRID, select_threshold, threshold_grid
from xlt_engine.engine.train.config import TrainConfig
from xlt_engine.engine.train.inference import evaluate_model, predict_logits
from xlt_engine.kernels import voter_filter
from xlt_engine.model.checkpoint import load_encoder
from xlt_engine.model.heads import VotersModule
from xlt_engine.model.task import load_task_model
from xlt_engine.quickstart import Sizes, prepare

ROOT = Path(__file__).resolve().parents[3]
# the synthetic task's model has no pretraining: nothing is frozen (as in the quickstart)
NO_FREEZE = {"freeze_layers": 0, "freeze_embeddings": False}


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    prepare(root, seed=1, sizes=Sizes(train=200, dev=20, test=20))
    return root


@pytest.fixture(scope="module")
def base(synth) -> Path:
    return synth / "pretrained"


@pytest.fixture(scope="module")
def data(synth) -> dict[str, Path]:
    d = synth / "data"
    return {"src": d / "src.train", "tgt": d / "tgt.train", "src_dev": d / "src.dev"}


@pytest.fixture(scope="module")
def teacher(base, data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("teacher") / "ft"
    cfg = FinetuneConfig(
        model=str(base),
        train_file=str(data["src"]),
        out=str(out),
        max_len=48,
        batch_size=16,
        train=TrainConfig(max_steps=300, lr=1e-3, log_every=50, seed=1),
        **NO_FREEZE,
    )
    return run_finetune(cfg, echo=None).model


def st_config(base, teacher, data, out, **kw) -> SelftrainConfig:
    cfg = dict(
        base_model=str(base),
        teacher=str(teacher),
        source_file=str(data["src"]),
        unlabeled_file=str(data["tgt"]),
        out=str(out),
        max_len=48,
        batch_size=16,
        rounds=2,
        soft=TrainConfig(max_steps=300, lr=1e-3, log_every=50, save_every=100, seed=1),
        hard=TrainConfig(max_steps=20, lr=1e-4, log_every=10, save_every=10, seed=1),
        # the fixtures' expectations (a pseudo-label curve whose classes get thresholds of their
        # own, a student that loses classes) were set on the paper's MSE step; the default KL
        # step has tests of its own (test_the_soft_step_trains_with_the_loss_soft_loss_names)
        soft_loss="mse",
        **NO_FREEZE,
    )
    rule = {k: kw.pop(k) for k in RULE_KEYS if k in kw}  # the [selftrain.rule] settings
    if rule:
        kw["rule"] = make_rule(rule.pop("pseudo_rule", "paper"), **rule)
    cfg.update(kw)
    return SelftrainConfig(**cfg)


RULE_KEYS = ("pseudo_rule", "threshold", "alpha", "grid", "min_rows", "class_precision", "quota")


@pytest.fixture(scope="module")
def st_run(base, teacher, data, tmp_path_factory):
    # On CPU even where a GPU is present: the tests below recompute its teacher probabilities
    # and threshold curve in fp32 on the CPU and compare them to 1e-3 or exactly, and need a
    # run whose pseudo labels span two classes. On an H100 the bf16-autocast run differed by
    # up to 6e-3 in probability and kept one class. Self-training on CUDA: the tests marked
    # ``device`` run on the default device (benchmarks/gpu_check.sh --only selftrain).
    out = tmp_path_factory.mktemp("st") / "run"
    dev = {"src": str(data["src_dev"]), "tgt": str(data["src_dev"])}  # two entries, one file
    cfg = st_config(base, teacher, data, out, device="cpu", dev_files=dev)
    return out, run_selftrain(cfg, echo=None)


def top_labels(logits: torch.Tensor) -> torch.Tensor:
    """Each voter's argmax [M, rows]."""
    return logits.float().argmax(-1)


def _records(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "selftrain.jsonl").read_text().splitlines()]


def test_rounds_alternate_soft_and_hard_and_may_end_half_way(base, teacher, data, tmp_path):
    steps = {n: st_config(base, teacher, data, tmp_path, rounds=n).steps for n in (0.5, 1, 1.5, 2)}
    assert steps[0.5] == [(1, "soft")]
    assert steps[1] == [(1, "soft"), (1, "hard")]
    assert steps[1.5] == [(1, "soft"), (1, "hard"), (2, "soft")]
    assert steps[2] == [(1, "soft"), (1, "hard"), (2, "soft"), (2, "hard")]
    for bad, match in ((1.2, "multiple of 0.5"), (0, "multiple of 0.5")):
        with pytest.raises(ValueError, match=match):
            st_config(base, teacher, data, tmp_path, rounds=bad)
    with pytest.raises(ValueError, match="needs alpha"):
        st_config(base, teacher, data, tmp_path, threshold="fixed")
    with pytest.raises(ValueError, match="filter_unit"):
        st_config(base, teacher, data, tmp_path, filter_unit="token")
    with pytest.raises(ValueError, match="not a fine-tuned task model"):
        st_config(base, base, data, tmp_path)  # a Base Model is no teacher


def test_every_student_starts_from_the_base_model_and_teachers_chain(st_run, base, teacher):
    out, res = st_run
    recs = _records(out)
    assert [(r["round"], r["step"], r.get("of")) for r in recs] == [
        (1, "teacher", None),
        (1, "soft", None),
        (1, "check", "soft"),
        (1, "threshold", None),
        (1, "filter", None),
        (1, "hard", None),
        (1, "check", "hard"),
        (2, "teacher", None),
        (2, "soft", None),
        (2, "check", "soft"),
        (2, "threshold", None),
        (2, "filter", None),
        (2, "hard", None),
        (2, "check", "hard"),
    ]
    digest = encoder_digest(load_encoder(base))
    softs = [r for r in recs if r["step"] == "soft"]
    assert [r["student_digest"] for r in softs] == [digest, digest]  # bit-exact, every round
    assert [r["student_init"] for r in softs] == ["base", "base"]
    assert [r["student_from"] for r in softs] == [str(base), str(base)]
    assert encoder_digest(load_encoder(teacher)) != digest  # (the teacher is not the Base Model)
    teachers = [r["teacher"] for r in recs if r["step"] == "teacher"]
    assert teachers == [str(teacher), str(out / "round-1" / "hard" / "model")]
    # a fresh VotersModule each round: round 2's soft student's voters are not round 1's
    v1 = load_file(str(out / "round-1" / "soft" / "model" / "voters.safetensors"))
    v2 = load_file(str(out / "round-2" / "soft" / "model" / "voters.safetensors"))
    assert any(not torch.equal(v1[k], v2[k]) for k in v1)
    # the final model is the last student
    final = load_file(str(out / "model" / "model.safetensors"))
    last = load_file(str(out / "round-2" / "hard" / "model" / "model.safetensors"))
    assert all(torch.equal(final[k], last[k]) for k in final)
    assert res.model == out / "model"


def test_teacher_probabilities_are_the_teachers_mean_of_voters(st_run, teacher, data):
    out, _ = st_run
    probs = load_file(str(out / "round-1" / "teacher-probs.safetensors"))["probs"]
    assert probs.dtype == torch.float16  # stored compactly
    model = load_task_model(teacher)
    tok = load_tokenizer(teacher)
    enc = encode(read_task_file(data["tgt"], "conll", unlabeled=True), tok, model.labels, 48)
    want = VotersModule.probs(predict_logits(model, enc, tok.pad_id, torch.device("cpu")))
    assert probs.shape == want.shape == (int(enc.row_offsets[-1]), 7)
    torch.testing.assert_close(probs.float(), want, atol=1e-3, rtol=0)


def test_threshold_is_on_the_grid_and_the_curve_is_logged(st_run, data):
    out, _ = st_run
    for r in (1, 2):
        th = json.loads((out / f"round-{r}" / "threshold.json").read_text())
        assert th["thresholds"] == threshold_grid(7)
        assert th["alpha"] in th["thresholds"] and th["method"] == "curvature"
        rows = (out / f"round-{r}" / "threshold.csv").read_text().splitlines()
        assert rows[0] == "threshold,accuracy,recall,coverage,score,chosen"
        assert len(rows) == 1 + len(th["thresholds"])
        assert sum(int(x.rsplit(",", 1)[1]) for x in rows[1:]) == 1  # one chosen point
        cov = [c for c in th["coverage"] if c is not None]
        assert cov == sorted(cov, reverse=True)  # coverage falls as the threshold rises
        # the curve is the pseudo-label rule on the source, by the soft student: a row counts
        # at t when every voter picks one label with its top probability above t, and is
        # right when that label is gold. So accuracy(t) is the precision of the labels
        # voter_filter gives the source rows at t, and coverage(t) the share it labels.
        student = load_task_model(out / f"round-{r}" / "soft" / "model")
        tok = load_tokenizer(out / f"round-{r}" / "soft" / "model")
        src = encode(read_task_file(data["src"], "conll"), tok, student.labels, 48)
        logits = predict_logits(student, src, tok.pad_id, torch.device("cpu"))
        gold = torch.from_numpy(np.concatenate(src.targets))
        top = logits.float().softmax(-1).max(-1)  # per voter [M, rows]
        agree = (top.indices == top.indices[0]).all(0)
        assert not agree.all()  # voters disagree on some rows (test_threshold.py has rows
        # where they disagree above t, which the curve counted before as covered and wrong)
        assert 0 < th["coverage"][0] < 1 and len(set(th["coverage"])) > 5
        for i, t in enumerate(th["thresholds"]):
            labels, _, _ = voter_filter(logits, t)
            given = labels >= 0
            assert th["coverage"][i] == pytest.approx(given.double().mean().item(), abs=1e-12)
            if given.any():
                precision = (labels[given] == gold[given]).double().mean().item()
                assert th["accuracy"][i] == pytest.approx(precision, abs=1e-12), t
        conf = torch.where(agree, top.values.min(0).values, -1.0)
        want = select_threshold(conf, (top.indices == gold).all(0), 7)
        assert want.to_json() == {k: th[k] for k in want.to_json()}


def test_filters_match_the_logs_and_the_student(st_run, data):
    out, _ = st_run
    recs = {(r["round"], r["step"]): r for r in _records(out)}
    keeps = []
    for r in (1, 2):
        saved = load_file(str(out / f"round-{r}" / "filter.safetensors"))
        counts = json.loads((out / f"round-{r}" / "filter.json").read_text())
        keep, pseudo = saved["source_keep"].numpy() > 0, saved["pseudo"].numpy()
        log = recs[(r, "filter")]
        assert counts["source_rows_kept"] == log["source_rows_kept"] == int(keep.sum())
        assert counts["pseudo_rows"] == log["pseudo_rows"] == int((pseudo >= 0).sum())
        # (the run is not degenerate: the checks below can fail)
        assert 0 < counts["pseudo_rows"] < counts["target_rows"]
        assert sum(n > 0 for n in counts["pseudo_distribution"].values()) >= 2
        assert log["source_rows_removed"] > 0
        names = ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
        assert counts["pseudo_distribution"] == {
            n: int((pseudo == i).sum()) for i, n in enumerate(names)
        }
        keeps.append(keep)
        # the pseudo labels are exactly voter_filter of that round's soft student at alpha
        student = load_task_model(out / f"round-{r}" / "soft" / "model")
        tok = load_tokenizer(out / f"round-{r}" / "soft" / "model")
        enc = encode(read_task_file(data["tgt"], "conll", unlabeled=True), tok, student.labels, 48)
        logits = predict_logits(student, enc, tok.pad_id, torch.device("cpu"))
        want, _, _ = voter_filter(logits, counts["alpha"])
        assert np.array_equal(pseudo, want.numpy())
        agree = (top_labels(logits) == top_labels(logits)[0]).all(0).double().mean().item()
        assert counts["voter_agreement"] == pytest.approx(agree, abs=1e-12) and 0 < agree < 1
        # how closely the soft student follows the probabilities it fitted: the classes of the
        # teacher's and the student's argmax over the target rows, and their agreement
        probs = load_file(str(out / f"round-{r}" / "teacher-probs.safetensors"))["probs"]
        t_arg = probs.float().argmax(-1).numpy()
        s_arg = logits.float().softmax(-1).mean(0).argmax(-1).numpy()
        assert counts["teacher_distribution"] == {
            n: int((t_arg == i).sum()) for i, n in enumerate(names)
        }
        assert counts["student_distribution"] == {
            n: int((s_arg == i).sum()) for i, n in enumerate(names)
        }
        fidelity = float((t_arg == s_arg).mean())
        assert counts["teacher_agreement"] == pytest.approx(fidelity, abs=1e-12)
        assert 0 < fidelity < 1 and sum(n > 0 for n in counts["teacher_distribution"].values()) > 1
        # the source filter (correct, the default: the paper) removes, for good, the rows the
        # soft student's mean of voters does not predict right
        src = encode(read_task_file(data["src"], "conll"), tok, student.labels, 48)
        src_logits = predict_logits(student, src, tok.pad_id, torch.device("cpu"))
        gold = np.concatenate(src.targets)
        ok = VotersModule.probs(src_logits).argmax(-1).numpy() == gold
        assert counts["source_distribution"] == {
            n: int((gold == i).sum()) for i, n in enumerate(names)
        }
        before = keeps[-2] if r == 2 else np.ones_like(keep)
        assert counts["source_filter"] == "correct" and counts["pseudo_rule"] == "paper"
        assert set(counts["class_alpha"].values()) == {counts["alpha"]}  # one alpha: the paper
        assert np.array_equal(keep, before & ok)
        assert log["source_rows_removed"] == int(before.sum() - keep.sum())
        # the hard step trains on exactly the kept source rows and the pseudo-labeled target
        # rows, in the sentences that have any
        hard = recs[(r, "hard")]
        assert (hard["source_rows"], hard["target_rows"]) == (keep.sum(), (pseudo >= 0).sum())
        src_windows = np.repeat(np.arange(len(src)), np.diff(src.row_offsets))
        tgt_windows = np.repeat(np.arange(len(enc)), np.diff(enc.row_offsets))
        assert hard["source_items"] == np.unique(src_windows[keep]).size
        assert hard["target_items"] == np.unique(tgt_windows[pseudo >= 0]).size
        assert hard["items"] == hard["source_items"] + hard["target_items"]
        assert hard["target_distribution"] == counts["pseudo_distribution"]
    assert not (keeps[1] & ~keeps[0]).any()  # nothing removed comes back


def test_a_removed_source_row_stays_removed_even_when_predicted_right(
    st_run, base, teacher, data, tmp_path
):
    # the run above may remove the same rows in both rounds by chance; here round 1's mask
    # removes rows that round 2's student predicts correctly, and round 2 must not keep them
    full, _ = st_run
    out = tmp_path / "run"
    shutil.copytree(full, out)
    for name in ("filter.safetensors", "filter.json", "hard"):
        path = out / "round-2" / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    shutil.rmtree(out / "model")
    outputs = load_file(str(out / "round-2" / SOURCE_OK_FILE))
    student = load_task_model(out / "round-2" / "soft" / "model")
    tok = load_tokenizer(base)
    gold = np.concatenate(
        encode(read_task_file(data["src"], "conll"), tok, student.labels, 48).targets
    )
    correct2 = outputs["predicted"] == torch.from_numpy(gold)
    f1 = out / "round-1" / FILTER_FILE
    saved = load_file(str(f1))
    keep1 = saved["source_keep"] > 0
    removed = torch.nonzero(keep1 & correct2).flatten()[:20]
    assert len(removed) == 20
    keep1[removed] = False
    save_file({**saved, "source_keep": keep1.to(torch.uint8)}, str(f1))
    run_selftrain(st_config(base, teacher, data, out), resume=True, echo=None)
    keep2 = load_file(str(out / "round-2" / FILTER_FILE))["source_keep"] > 0
    assert not keep2[removed].any()
    assert torch.equal(keep2, keep1 & correct2)


def test_sequence_filter_unit_keeps_or_drops_whole_sentences(base, teacher, data, tmp_path):
    out = tmp_path / "seq"
    cfg = st_config(
        base, teacher, data, out, rounds=1, filter_unit="sequence", threshold="fixed", alpha=0.3
    )
    run_selftrain(cfg, echo=None)
    saved = load_file(str(out / "round-1" / "filter.safetensors"))
    tok = load_tokenizer(base)
    labels = load_task_model(teacher).labels
    tgt = encode(read_task_file(data["tgt"], "conll", unlabeled=True), tok, labels, 48)
    src = encode(read_task_file(data["src"], "conll"), tok, labels, 48)
    for enc, kept in ((tgt, saved["pseudo"].numpy() >= 0), (src, saved["source_keep"].numpy() > 0)):
        units = row_units(enc)
        for u in np.unique(units):
            assert kept[units == u].all() or not kept[units == u].any()
    assert json.loads((out / "round-1" / "threshold.json").read_text())["alpha"] == 0.3


def test_unit_helpers():
    ok = np.array([True, False, True, True, True])
    units = np.array([0, 0, 1, 1, 2])
    assert whole_units(ok, units).tolist() == [False, False, True, True, True]
    enc = Encoded(
        "token",
        [np.arange(4), np.arange(3)],
        None,
        [np.array([1, 2]), np.array([1])],
        [np.array([0, 0]), np.array([0])],
        None,
    )
    sub = with_targets(enc, np.array([-1, 3, -1]))  # item 1 has no label left: dropped
    assert len(sub) == 1 and sub.targets[0].tolist() == [-100, 3]


def test_the_hard_steps_store_holds_the_items_with_a_target(base, data, tmp_path):
    """``write_with_targets`` (gathers, a few items at a time, targets memory-mapped) writes
    what ``with_targets`` keeps item by item: items with no target >= 0 dropped, -1 -> -100."""
    tok = load_tokenizer(base)
    labels = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    folder = build_store(
        [StoreFile(str(data["tgt"]), "conll", True)], StoreSpec("token", tok, labels, 12), tmp_path
    )
    enc = open_store(folder)
    rows = int(enc.row_offsets[-1])
    targets = np.memmap(tmp_path / "t.bin", dtype=np.int64, mode="w+", shape=(rows,))
    rng = np.random.default_rng(0)
    targets[:] = np.where(rng.random(rows) < 0.85, -1, rng.integers(0, 5, rows))
    ref = with_targets(enc, np.asarray(targets))
    assert 0 < len(ref) < len(enc)  # some items dropped, some kept
    (tmp_path / "hard").mkdir()
    writer = StoreWriter(tmp_path / "hard", "token")
    assert write_with_targets(writer, enc, targets, chunk=7) == len(ref)
    writer.close({"store_format": STORE_FORMAT, "pairs": 0})
    got = open_store(tmp_path / "hard")
    assert len(got) == len(ref)
    for i in range(len(ref)):
        for field in ("input_ids", "positions", "targets"):
            np.testing.assert_array_equal(getattr(got, field)[i], getattr(ref, field)[i])
    with pytest.raises(ValueError, match="reads a packed store"):
        write_with_targets(writer, ref, np.zeros(0))


KILL = """
import sys
from tests.engine.method.test_selftrain import st_config
from xlt_engine.engine.method.selftrain import run_selftrain
from pathlib import Path
data = {"src": sys.argv[3], "tgt": sys.argv[4]}
run_selftrain(st_config(sys.argv[1], sys.argv[2], data, sys.argv[5]), echo=None)
"""


def test_sigkill_mid_round_then_resume_gives_the_same_student(
    st_run, base, teacher, data, tmp_path
):
    full, _ = st_run
    cut = tmp_path / "cut"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            KILL,
            str(base),
            str(teacher),
            str(data["src"]),
            str(data["tgt"]),
            str(cut),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "XLT_KILL_AT": "round-2/soft:150"},
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert (cut / "round-1" / "hard" / "model").is_dir()  # round 1 finished ...
    assert not (cut / "round-2" / "soft" / "model").exists()  # ... round 2 died in its soft step
    cfg = st_config(base, teacher, data, cut)
    with pytest.raises(ValueError, match="earlier self-training run"):
        run_selftrain(cfg, echo=None)
    run_selftrain(cfg, resume=True, echo=None)
    steps = [(r["round"], r["step"]) for r in _records(cut)]
    assert steps.count((1, "hard")) == 1 and steps.count((2, "teacher")) == 1  # nothing redone
    assert steps.count((1, "check")) == 2 and steps.count((2, "check")) == 2  # a check a step
    for name in ("model.safetensors", "voters.safetensors"):
        a = load_file(str(full / "model" / name))
        b = load_file(str(cut / "model" / name))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    for r in (1, 2):
        for name in ("filter.safetensors", "teacher-probs.safetensors"):
            a = load_file(str(full / f"round-{r}" / name))
            b = load_file(str(cut / f"round-{r}" / name))
            assert all(torch.equal(a[k], b[k]) for k in a), (r, name)


def test_soft_and_hard_steps_freeze_what_their_freeze_names(base, teacher, data, tmp_path):
    # soft freezes layer 0, hard freezes layer 1 (and only it: layer 0 trains again)
    soft = TrainConfig(max_steps=8, lr=1e-3, log_every=4, seed=1, freeze=(r"encoder\.layers\.0\.",))
    hard = TrainConfig(max_steps=8, lr=1e-3, log_every=4, seed=1, freeze=(r"encoder\.layers\.1\.",))
    out = tmp_path / "st"
    run_selftrain(
        st_config(
            base, teacher, data, out, rounds=1, threshold="fixed", alpha=0.0, soft=soft, hard=hard
        ),
        echo=None,
    )
    init = load_file(str(base / "model.safetensors"))
    after_soft = load_file(str(out / "round-1" / "soft" / "model" / "model.safetensors"))
    after_hard = load_file(str(out / "round-1" / "hard" / "model" / "model.safetensors"))
    layer = {i: [k for k in init if f".layer.{i}." in k and k.endswith("weight")] for i in (0, 1)}
    assert layer[0] and layer[1]
    assert all(torch.equal(init[k], after_soft[k]) for k in layer[0])
    assert all(not torch.equal(init[k], after_soft[k]) for k in layer[1])
    assert all(torch.equal(after_soft[k], after_hard[k]) for k in layer[1])
    assert all(not torch.equal(after_soft[k], after_hard[k]) for k in layer[0])


def test_final_model_is_written_last_as_the_stage_marker(
    base, teacher, data, tmp_path, monkeypatch
):
    """Issue 23 (5): model/ (what marks selftrain finished) was saved before summary.json."""
    from xlt_engine.engine.method import selftrain

    out = tmp_path / "st"
    real, seen = selftrain.atomic_folder, []

    def folder(path):  # the final model is the last step's, linked into an atomic folder
        if Path(path) == out / "model":
            seen.append((out / "summary.json").is_file())
        return real(path)

    monkeypatch.setattr(selftrain, "atomic_folder", folder)
    soft = TrainConfig(max_steps=2, lr=1e-3, log_every=1, seed=1)
    run_selftrain(st_config(base, teacher, data, out, rounds=0.5, soft=soft), echo=None)
    assert seen == [True]
    final, last = out / "model", out / "round-1" / "soft" / "model"
    for f in last.iterdir():  # one copy: the same files
        assert (final / f.name).stat().st_ino == f.stat().st_ino


@pytest.mark.parametrize("rule", ["confident", "off"])
def test_source_filter_confident_and_off(base, teacher, data, tmp_path, rule):
    """source_filter = "confident" keeps the rows the voters agree on with their gold label
    above its class's threshold, "off" keeps every row; the default ("correct", checked above)
    keeps more than "confident" here, so the setting matters."""
    out = tmp_path / rule
    soft = TrainConfig(max_steps=150, lr=1e-3, log_every=50, seed=1)
    hard = TrainConfig(max_steps=2, lr=1e-4, log_every=1, seed=1)
    cfg = st_config(base, teacher, data, out, rounds=1, source_filter=rule, soft=soft, hard=hard)
    run_selftrain(cfg, echo=None)
    keep = load_file(str(out / "round-1" / FILTER_FILE))["source_keep"].numpy() > 0
    counts = json.loads((out / "round-1" / "filter.json").read_text())
    assert counts["source_filter"] == rule and counts["source_rows_kept"] == keep.sum()
    ok = load_file(str(out / "round-1" / SOURCE_OK_FILE))
    if rule == "off":
        assert keep.all()
        return
    student = load_task_model(out / "round-1" / "soft" / "model")
    tok = load_tokenizer(base)
    src = encode(read_task_file(data["src"], "conll"), tok, student.labels, 48)
    logits = predict_logits(student, src, tok.pad_id, torch.device("cpu"))
    gold = np.concatenate(src.targets)
    labels, _, mean = voter_filter(logits, counts["alpha"])
    want = labels.numpy() == gold
    assert np.array_equal(keep, want) and not keep.all()
    correct = mean.argmax(-1).numpy() == gold
    assert np.array_equal(ok["predicted"].numpy() == gold, correct)
    assert not (keep & ~correct).any() and keep.sum() < correct.sum()


def test_finetune_and_both_selftrain_steps_keep_the_embeddings_and_bottom_layers(
    base, teacher, data, tmp_path
):
    """The paper freezes the embeddings and the bottom layers "during training": fine-tuning
    and both self-training steps, not btf alone (before, they trained every layer)."""
    init = load_file(str(base / "model.safetensors"))
    fixed = [k for k in init if k.startswith("embeddings.") or ".layer.0." in k]
    free = [k for k in init if ".layer.1." in k and k.endswith("weight")]
    assert fixed and free
    ft = FinetuneConfig(
        model=str(base),
        train_file=str(data["src"]),
        out=str(tmp_path / "ft"),
        max_len=48,
        batch_size=16,
        train=TrainConfig(max_steps=3, lr=1e-3, log_every=1, seed=1),
        freeze_layers=1,
    )
    models = [run_finetune(ft, echo=None).model]
    step = TrainConfig(max_steps=3, lr=1e-3, log_every=1, seed=1)
    out = tmp_path / "st"
    cfg = st_config(base, teacher, data, out, rounds=1, soft=step, hard=step, threshold="fixed",
                    alpha=0.0, freeze_layers=1, freeze_embeddings=True)  # fmt: skip
    run_selftrain(cfg, echo=None)
    models += [out / "round-1" / which / "model" for which in ("soft", "hard")]
    for model in models:
        after = load_file(str(model / "model.safetensors"))
        assert all(torch.equal(init[k], after[k]) for k in fixed), model
        assert all(not torch.equal(init[k], after[k]) for k in free), model


def test_a_hard_step_with_no_data_is_skipped_and_logged(base, teacher, data, tmp_path):
    """A student too unsure for the rule (every voter below alpha everywhere): the confident
    source filter removes every source row and no target row gets a label. The round goes on
    with the soft student (it used to stop the whole pipeline with an error)."""
    out = tmp_path / "st"
    soft = TrainConfig(max_steps=2, lr=1e-3, log_every=1, seed=1)
    cfg = st_config(
        base, teacher, data, out, rounds=1.5, soft=soft, threshold="fixed", alpha=0.999,
        source_filter="confident",
    )  # fmt: skip
    with pytest.warns(UserWarning, match="round 1: hard step skipped: no training data"):
        run_selftrain(cfg, echo=None)
    hard = [r for r in _records(out) if r["step"] == "hard"]
    assert hard == [
        {"round": 1, "step": "hard", "items": 0, "steps": 0, "skipped": hard[0]["skipped"]}
    ]
    a = load_file(str(out / "round-1" / "soft" / "model" / "model.safetensors"))
    b = load_file(str(out / "round-1" / "hard" / "model" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (out / "model").is_dir()  # round 2's soft step ran from it


def test_the_progress_bar_names_the_stage_round_and_step(base, teacher, data, tmp_path, capsys):
    out = tmp_path / "selftrain"
    soft = TrainConfig(max_steps=2, lr=1e-3, log_every=1, seed=1)
    run_selftrain(
        st_config(base, teacher, data, out, rounds=0.5, soft=soft), echo=None, progress=True
    )
    assert "selftrain round-1 soft" in capsys.readouterr().err


def test_source_and_target_are_memory_mapped_stores_sampled_before_encoding(
    base, teacher, data, tmp_path
):
    from xlt_engine.engine.method.selftrain.context import SelftrainContext

    cfg = st_config(base, teacher, data, tmp_path / "st", max_unlabeled=50, max_source=60)
    run = SelftrainContext(cfg, torch.device("cpu"), None, None)
    tok = load_tokenizer(base)
    labels = load_task_model(teacher).labels
    tgt = encode(read_task_file(data["tgt"], "conll", True, 50, cfg.soft.seed), tok, labels, 48)
    src = encode(read_task_file(data["src"], "conll", False, 60, cfg.soft.seed), tok, labels, 48)
    for got, want in ((run.tgt, tgt), (run.src, src)):
        assert isinstance(got.input_ids, Ragged) and isinstance(got.input_ids.flat, np.memmap)
        assert len(got) == len(want)
        for i in range(len(want)):
            assert np.array_equal(got.input_ids[i], want.input_ids[i])
            assert np.array_equal(got.positions[i], want.positions[i])
        assert np.array_equal(row_units(got), row_units(want))
    assert np.array_equal(run.gold, np.concatenate(src.targets))
    assert len(list((tmp_path / "st" / "cache").iterdir())) == 2  # one store each


def test_chunked_passes_equal_one_pass(base, teacher, data, tmp_path, monkeypatch):
    """Teacher probabilities and pseudo labels computed 7 items at a time (each chunk its own
    batches) are those of one pass over all items: no row lands in another's place."""
    from xlt_engine.engine.method.selftrain import context

    kw = dict(
        rounds=1,
        soft=TrainConfig(max_steps=80, lr=1e-3, log_every=20, seed=1),
        hard=TrainConfig(max_steps=2, lr=1e-4, log_every=1, seed=1),
        threshold="fixed",
        alpha=0.3,
        device="cpu",
    )
    run_selftrain(st_config(base, teacher, data, tmp_path / "one", **kw), echo=None)
    monkeypatch.setattr(context, "CHUNK_ITEMS", 7)  # the chunks of every pass
    run_selftrain(st_config(base, teacher, data, tmp_path / "seven", **kw), echo=None)
    one, seven = (tmp_path / x / "round-1" for x in ("one", "seven"))
    p1 = load_file(str(one / "teacher-probs.safetensors"))["probs"].float()
    p7 = load_file(str(seven / "teacher-probs.safetensors"))["probs"].float()
    assert p1.shape[0] > 7 * 20 and torch.allclose(p1, p7, atol=2e-3)
    f1, f7 = load_file(str(one / FILTER_FILE)), load_file(str(seven / FILTER_FILE))
    assert (f1["pseudo"] >= 0).sum() > 0
    assert (f1["pseudo"] == f7["pseudo"]).float().mean() > 0.99
    assert (f1["agreed"] == f7["agreed"]).float().mean() > 0.99


def test_chunked_unit_filter_and_counts_equal_the_in_memory_rules():
    from xlt_engine.engine.method.selftrain.counts import target_counts
    from xlt_engine.engine.method.selftrain.store import drop_failed_units

    rng = np.random.default_rng(0)
    rows_per_item = rng.integers(1, 5, 300)
    units = np.repeat(
        np.arange(120), np.bincount(np.sort(rng.integers(0, 120, 300)), minlength=120)
    )
    offsets = np.concatenate([[0], np.cumsum(rows_per_item)])
    flat = np.zeros(offsets[-1], np.int64)
    enc = Encoded(
        "token",
        Ragged(flat, offsets),
        None,
        Ragged(flat, offsets),
        Ragged(flat, offsets),
        None,
        units=units,
    )
    pseudo = np.where(rng.random(offsets[-1]) < 0.8, rng.integers(0, 3, offsets[-1]), -1)
    agreed = (rng.random(offsets[-1]) < 0.5).astype(np.uint8)
    per_row = row_units(enc)
    want = np.where(whole_units(pseudo >= 0, per_row), pseudo, -1)
    got = pseudo.copy()
    drop_failed_units(enc, got, chunk=17)
    assert np.array_equal(got, want) and (got >= 0).sum() < (pseudo >= 0).sum()
    counts = target_counts(enc, pseudo, agreed, ["O", "B-X", "I-X"], chunk=13)
    assert counts["pseudo_rows"] == (pseudo >= 0).sum()
    assert counts["pseudo_units"] == np.unique(per_row[pseudo >= 0]).size
    assert counts["target_units"] == np.unique(units).size
    assert counts["pseudo_distribution"] == {
        n: int((pseudo == i).sum()) for i, n in enumerate(["O", "B-X", "I-X"])
    }
    assert counts["voter_agreement"] == pytest.approx(agreed.mean())


def test_plain_text_target_reads_as_its_conll_form(base, teacher, data, tmp_path):
    from xlt_engine.engine.method.selftrain.context import SelftrainContext

    sentences = read_task_file(data["tgt"], "conll", True).inputs
    text = tmp_path / "tgt.txt"
    text.write_text("".join(" ".join(words) + "\n" for words in sentences), encoding="utf-8")
    runs = [
        SelftrainContext(
            st_config(base, teacher, data, tmp_path / name, **kw), torch.device("cpu"), None, None
        )
        for name, kw in (
            ("conll", {}),
            ("text", {"unlabeled_file": str(text), "unlabeled_format": "text"}),
        )
    ]
    a, b = (r.tgt for r in runs)
    assert len(a) == len(b) == len(sentences)
    assert np.array_equal(a.input_ids.flat, b.input_ids.flat)
    assert np.array_equal(a.positions.flat, b.positions.flat)
    with pytest.raises(ValueError, match="unlabeled_format"):
        st_config(base, teacher, data, tmp_path, unlabeled_format="cls10")


def test_soft_label_kl_is_kl_of_teacher_to_student_with_gradient_q_minus_p():
    from xlt_engine.kernels import soft_label_kl

    gen = torch.Generator().manual_seed(0)
    z = torch.randn(3, 7, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    p = torch.randn(7, 5, generator=gen, dtype=torch.float64).softmax(-1)
    p[0] = torch.tensor([1.0, 0, 0, 0, 0], dtype=torch.float64)  # a one-hot row: 0 log 0 = 0
    loss = soft_label_kl(z, p)
    want = torch.stack(
        [F.kl_div(z[m].log_softmax(-1), p, reduction="sum") / 7 for m in range(3)]
    ).mean()
    # the fused op (kernels.soft_label_kl) keeps fp64 inputs in fp64, as soft_label_mse does
    assert loss.dtype == torch.float64 and torch.allclose(loss, want)
    loss.backward()
    q = z.detach().softmax(-1)
    assert torch.allclose(z.grad, (q - p) / (3 * 7), atol=1e-7)
    assert soft_label_kl(p.log().clamp_min(-50)[None], p).abs() < 1e-6  # student = teacher


@pytest.mark.parametrize("soft_loss", ["mse", "kl"])
def test_the_soft_step_trains_with_the_loss_soft_loss_names(
    base, teacher, data, tmp_path, monkeypatch, soft_loss
):

    calls = {"mse": 0, "kl": 0}

    def spy(name, real):
        def fit(z, p):
            calls[name] += 1
            return real(z, p)

        return fit

    monkeypatch.setattr(
        selftrain_training, "soft_label_mse", spy("mse", selftrain_training.soft_label_mse)
    )
    monkeypatch.setattr(
        selftrain_training, "soft_label_kl", spy("kl", selftrain_training.soft_label_kl)
    )
    soft = TrainConfig(max_steps=2, lr=1e-3, log_every=1, seed=1)
    cfg = st_config(base, teacher, data, tmp_path, rounds=0.5, soft=soft, soft_loss=soft_loss)
    run_selftrain(cfg, echo=None)
    assert calls[soft_loss] == 2 and sum(calls.values()) == 2, calls
    with pytest.raises(ValueError, match="soft_loss"):
        st_config(base, teacher, data, tmp_path, soft_loss="ce")
    from xlt_engine.engine.method.selftrain_settings import SelftrainSettings

    assert SelftrainSettings().soft_loss == "kl"  # the default: the measured best


def test_a_soft_student_that_lost_the_teachers_classes_is_named():
    """lost_classes: the classes the teacher gives >= 1% of the target rows and the soft
    student none (the all-O collapse of a soft step that did not fit, seen on real data)."""
    names = ["O", "B-LOC", "I-PER", "B-ORG"]
    teacher = np.zeros((1000, 4), dtype=np.float16)
    teacher[:, 0] = 1
    teacher[:30, 1], teacher[:30, 0] = 0.9, 0.1  # B-LOC on 3% of the rows
    teacher[30:40, 2], teacher[30:40, 0] = 0.9, 0.1  # I-PER on 1%
    teacher[40:45, 3], teacher[40:45, 0] = 0.9, 0.1  # B-ORG on 0.5%: below the share
    collapsed = np.zeros(1000, dtype=np.int32)
    record = fidelity_counts(teacher, collapsed, names, chunk=300)
    assert record["teacher_distribution"] == {"O": 955, "B-LOC": 30, "I-PER": 10, "B-ORG": 5}
    assert record["teacher_agreement"] == pytest.approx(0.955)
    assert lost_classes(record) == ["B-LOC", "I-PER"]
    follows = teacher.argmax(-1).astype(np.int32)
    follows[30:40] = 0  # the student misses I-PER alone
    assert lost_classes(fidelity_counts(teacher, follows, names)) == ["I-PER"]
    assert lost_classes(fidelity_counts(teacher, teacher.argmax(-1), names)) == []
    assert lost_classes(record, share=0.005) == ["B-LOC", "I-PER", "B-ORG"]


def _same_weights(a: Path, b: Path) -> bool:
    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return all(torch.equal(x[k], y[k]) for k in x)


def test_the_guard_records_each_round_with_the_findings_of_its_counts(st_run):
    """filter.json's ``collapse`` is ``check_collapse`` of its own counts, and summary.json lists
    the rounds that had any (this synthetic run's single alpha leaves out one class the student
    predicts in each round: the guard names it, and nothing else)."""
    out, _ = st_run
    flagged = []
    for r in (1, 2):
        c = json.loads((out / f"round-{r}" / "filter.json").read_text())
        want = check_collapse(
            c["pseudo_distribution"], c["student_distribution"], c["source_distribution"],
            c["source_kept_distribution"], "O",
        )  # fmt: skip
        assert c["collapse"] == want and c["on_collapse"] == "warn"
        assert all(f.startswith("no pseudo label of ") for f in want)
        flagged += [{"round": r, "findings": want, "action": "warn"}] if want else []
    assert json.loads((out / "summary.json").read_text())["collapsed"] == flagged


@pytest.mark.parametrize("action", ["warn", "error", "skip_hard"])
def test_the_collapse_guard_warns_stops_or_skips_the_hard_step(
    base, teacher, data, tmp_path, action
):
    """A round whose pseudo labels collapsed (here: a barely trained student at a fixed alpha of
    0.999 gives no target row a label, while its argmax spreads over several classes) is named
    before its hard step: ``warn`` goes on, ``error`` stops with nothing lost (a resume under
    another setting continues from the filter), ``skip_hard`` keeps the soft student."""
    out = tmp_path / action
    soft = TrainConfig(max_steps=2, lr=1e-3, log_every=1, seed=1)
    hard = TrainConfig(max_steps=2, lr=1e-4, log_every=1, seed=1)
    kw = dict(rounds=1, soft=soft, hard=hard, threshold="fixed", alpha=0.999)
    cfg = st_config(base, teacher, data, out, on_collapse=action, **kw)
    if action == "error":
        with pytest.raises(CollapseError, match="round 1: the pseudo labels collapsed"):
            run_selftrain(cfg, echo=None)
        assert (out / "round-1" / "filter.json").is_file()
        assert not (out / "round-1" / "hard").exists() and not (out / "model").exists()
        cfg = st_config(base, teacher, data, out, on_collapse="warn", **kw)
        with pytest.warns(UserWarning, match="collapsed"):
            run_selftrain(cfg, resume=True, echo=None)
        assert (out / "model").is_dir()
        return
    with pytest.warns(
        UserWarning,
        match=r"round 1: the pseudo labels collapsed \(selftrain.rule.name = 'paper', alpha = 0.999",
    ):
        run_selftrain(cfg, echo=None)
    counts = json.loads((out / "round-1" / "filter.json").read_text())
    assert counts["pseudo_rows"] == 0
    assert counts["collapse"][0].startswith("no target row got a pseudo label")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["collapsed"] == [{"round": 1, "findings": counts["collapse"], "action": action}]
    hard = next(r for r in _records(out) if r["step"] == "hard")
    skipped = _same_weights(out / "round-1" / "soft" / "model", out / "round-1" / "hard" / "model")
    if action == "skip_hard":
        assert hard["steps"] == 0 and "collapsed" in hard["skipped"] and skipped
    else:  # warn: the hard step ran on the kept source rows
        assert hard["steps"] == 2 and hard["target_rows"] == 0 and not skipped


@pytest.mark.parametrize("rule", ["per_class_precision", "class_quota", "entity_curve"])
def test_class_aware_rules_label_with_their_per_class_thresholds(
    st_run, base, teacher, data, tmp_path, rule
):
    """Each class-aware rule: threshold.json and filter.json record a threshold per class, the
    pseudo labels are voter_filter with exactly those thresholds, and the run is recorded as
    the rule's (round 1's soft step is the paper run's: it is reused bit for bit)."""
    full, _ = st_run
    out = tmp_path / rule
    out.mkdir()
    shutil.copytree(full / "round-1" / "soft", out / "round-1" / "soft")
    shutil.copy(full / "round-1" / "teacher-probs.safetensors", out / "round-1")
    shutil.copy(full / "selftrain.jsonl", out / "selftrain.jsonl")
    hard = TrainConfig(max_steps=2, lr=1e-4, log_every=1, seed=1)
    grid = "even" if rule == "entity_curve" else ()  # (the even grid: no 0.995 / 0.999 tail)
    cfg = st_config(base, teacher, data, out, rounds=1, hard=hard, pseudo_rule=rule, grid=grid)
    run_selftrain(cfg, resume=True, echo=None)
    th = json.loads((out / "round-1" / "threshold.json").read_text())
    assert th["thresholds"] == threshold_grid(7, EVEN_GRID if grid else None)
    counts = json.loads((out / "round-1" / "filter.json").read_text())
    names = ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    alpha = [counts["class_alpha"][n] for n in names]
    assert th["rule"] == counts["pseudo_rule"] == rule and len(th["classes"]) == 7
    assert len(set(alpha)) > 1  # the classes got thresholds of their own
    paper = json.loads((full / "round-1" / "threshold.json").read_text())["alpha"]
    if rule == "per_class_precision":
        assert alpha[0] == th["alpha"] == paper and th["class_alpha"] == alpha  # O: the paper's
    if rule == "class_quota":
        assert th["class_alpha"] == [paper] * 7 and "filter.json" in th["notes"][0]
    student = load_task_model(out / "round-1" / "soft" / "model")
    tok = load_tokenizer(base)
    enc = encode(read_task_file(data["tgt"], "conll", unlabeled=True), tok, student.labels, 48)
    logits = predict_logits(student, enc, tok.pad_id, torch.device("cpu"))
    want = voter_filter(logits, torch.tensor(alpha))[0].numpy()
    pseudo = load_file(str(out / "round-1" / FILTER_FILE))["pseudo"].numpy()
    assert np.array_equal(pseudo, want)
    assert counts["pseudo_distribution"] == {n: int((want == i).sum()) for i, n in enumerate(names)}


def test_soft_and_hard_steps_make_no_host_sync(base, teacher, data, tmp_path):
    from tests.engine.conftest import gpu_step_syncs

    soft = TrainConfig(max_steps=4, lr=1e-3, log_every=4, save_minutes=0, seed=1)
    hard = TrainConfig(max_steps=3, lr=1e-4, log_every=3, save_minutes=0, seed=1)
    cfg = st_config(base, teacher, data, tmp_path / "run", rounds=1, soft=soft, hard=hard,
                    device="cpu", threshold="fixed", alpha=0.5)  # fmt: skip
    with gpu_step_syncs() as hs:
        run_selftrain(cfg, echo=None)
    steps = [r["step"] for r in _records(tmp_path / "run")]
    assert "soft" in steps and "hard" in steps, steps  # both steps ran
    assert hs.in_steps() == [], [s.where() for s in hs.in_steps()]


def test_the_entity_agreement_shows_a_lost_class_the_all_rows_agreement_hides():
    """A student that follows its teacher on 98.5% of the rows but has lost B-LOC: the share
    over the teacher's entity rows is 50% and B-LOC's own share 0 (the class the all-rows
    number hides); the student given as probabilities reads as its argmax."""
    names = ["O", "B-PER", "I-PER", "B-LOC"]
    teacher = np.full((1000, 4), 0.02, dtype=np.float16)
    teacher[:, 0] = 0.94
    teacher[:15, 1], teacher[:15, 0] = 0.94, 0.02  # B-PER on 15 rows
    teacher[15:30, 3], teacher[15:30, 0] = 0.94, 0.02  # B-LOC on 15 rows
    student = teacher.argmax(-1).astype(np.int32)
    student[15:30] = 0  # B-LOC lost: called O
    student[30:40] = 1  # and B-PER given to 10 rows the teacher calls O
    record = fidelity_counts(teacher, student, names, background=0, chunk=7)
    assert record["teacher_agreement"] == pytest.approx(0.975)
    # over the teacher's 30 entity rows (15 agree), not the 40 rows either calls an entity
    assert record["entity_agreement"] == pytest.approx(0.5)
    assert record["class_agreement"] == {"O": 960 / 970, "B-PER": 1.0, "I-PER": None, "B-LOC": 0.0}
    probs = np.eye(4, dtype=np.float16)[student]  # the same student as probabilities
    assert fidelity_counts(teacher, probs, names, background=0, chunk=300) == record
    assert fidelity_counts(teacher, student, names)["entity_agreement"] is None  # no background
    student[:15] = 2  # B-PER lost too (called I-PER): every entity row disagrees
    worse = fidelity_counts(teacher, student, names, background=0)
    assert worse["entity_agreement"] == 0.0 and worse["teacher_agreement"] == pytest.approx(0.96)


def test_each_step_is_checked_against_its_teacher_and_on_the_dev_files(st_run, data):
    """Every soft and hard step's check record: the student's probabilities (its pass, saved)
    against the round's teacher probabilities, and its dev score; the hard step's pass is
    the next round's teacher probabilities, linked (the same bytes), not computed again."""
    out, _ = st_run
    checks = [r for r in _records(out) if r["step"] == "check"]
    assert [(r["round"], r["of"]) for r in checks] == [(1, "soft"), (1, "hard"), (2, "soft"),
                                                       (2, "hard")]  # fmt: skip
    tok = load_tokenizer(out / "model")
    dev = read_task_file(data["src_dev"], "conll")
    for rec in checks:
        step = out / f"round-{rec['round']}" / rec["of"]
        model = load_task_model(step / "model")
        enc = encode(read_task_file(data["tgt"], "conll", unlabeled=True), tok, model.labels, 48)
        mine = load_file(str(step / "student-probs.safetensors"))["probs"]
        want = VotersModule.probs(predict_logits(model, enc, tok.pad_id, torch.device("cpu")))
        torch.testing.assert_close(mine.float(), want, atol=1e-3, rtol=0)
        teacher = load_file(str(out / f"round-{rec['round']}" / "teacher-probs.safetensors"))
        again = fidelity_counts(teacher["probs"].numpy(), mine.numpy(), model.labels, 0)
        assert {k: rec[k] for k in again} == again
        assert rec["entity_agreement"] is not None and 0 <= rec["entity_agreement"] <= 1
        score = evaluate_model(model, dev, tok, 48, torch.device("cpu"), 4096)["score"]
        assert rec["dev"]["src"]["score"] == pytest.approx(score)
        assert rec["dev"]["tgt"]["score"] == rec["dev"]["src"]["score"]  # the same file
        assert set(rec["dev"]["src"]["per_type"]) == {"LOC", "PER", "ORG"}
    one = (out / "round-1" / "hard" / "student-probs.safetensors").read_bytes()
    assert (out / "round-2" / "teacher-probs.safetensors").read_bytes() == one
    teachers = [r for r in _records(out) if r["step"] == "teacher"]
    assert "linked_from" not in teachers[0]
    assert teachers[1]["linked_from"] == str(out / "round-1" / "hard" / "student-probs.safetensors")
    # the soft and hard students differ: the checks are of each step's own student
    assert checks[0]["teacher_agreement"] != checks[1]["teacher_agreement"]


def test_student_init_teacher_starts_each_round_from_its_teachers_encoder(
    base, teacher, data, tmp_path, monkeypatch
):
    """``student_init = "teacher"``: round 1's student starts from the fine-tuned teacher's
    encoder (bit-exact at step 0: the digest taken before training), round 2's from round 1's
    hard student, each with fresh voters; the base model's is never used. What is checked is
    the model the soft step hands to the training loop, so a change made after the digest is
    taken or after the fresh voters are made (the teacher's voters copied in) fails here."""
    short = dict(
        soft=TrainConfig(max_steps=6, lr=1e-3, log_every=3, seed=1),
        hard=TrainConfig(max_steps=4, lr=1e-4, log_every=2, seed=1),
    )
    out = tmp_path / "init-teacher"
    cfg = st_config(base, teacher, data, out, rounds=1.5, student_init="teacher", **short)
    seen = []
    real = selftrain_training.new_task_model

    def spy(encoder, *args):  # the voters each student gets, before any training
        model = real(encoder, *args)
        seen.append({k: v.clone() for k, v in model.voters.state_dict().items()})
        return model

    trained = []  # what each soft step's training starts from: its encoder's digest, voters
    real_step = selftrain_training.train_step

    def step_spy(ctx, model, loss_fn, data, train_cfg, folder):
        if folder.name == "soft":
            voters = {k: v.clone() for k, v in model.voters.state_dict().items()}
            trained.append((encoder_digest(model.encoder), voters))
        return real_step(ctx, model, loss_fn, data, train_cfg, folder)

    monkeypatch.setattr(selftrain_training, "train_step", step_spy)
    monkeypatch.setattr(selftrain_training, "new_task_model", spy)
    run_selftrain(cfg, echo=None)
    softs = [r for r in _records(out) if r["step"] == "soft"]
    first = out / "round-1" / "hard" / "model"
    assert [r["student_init"] for r in softs] == ["teacher", "teacher"]
    assert [r["student_from"] for r in softs] == [str(teacher), str(first)]
    assert [r["student_digest"] for r in softs] == [
        encoder_digest(load_encoder(teacher)),
        encoder_digest(load_encoder(first)),
    ]
    assert encoder_digest(load_encoder(base)) not in {r["student_digest"] for r in softs}
    theirs = load_file(str(Path(teacher) / "voters.safetensors"))
    assert len(seen) == 2 and all(
        any(not torch.equal(v[k], theirs[k]) for k in theirs) for v in seen
    )  # fresh voters, not the teacher's
    # the loop trains what the digest and the fresh voters say: nothing changed in between
    assert [d for d, _ in trained] == [r["student_digest"] for r in softs]
    assert len(trained) == 2 and all(
        set(v) == set(fresh) and all(torch.equal(v[k], fresh[k]) for k in fresh)
        for (_, v), fresh in zip(trained, seen, strict=True)
    )


def test_a_soft_student_that_lost_the_teachers_classes_is_named_with_what_may_avoid_it(
    base, teacher, data, tmp_path, monkeypatch
):
    """The check after a soft step warns when the student predicts none of a class its teacher
    gives (on e5-small the MSE soft step left only O and B-LOC: lab/results/gpu_h100_20261126),
    naming the classes and the settings that may avoid it; the settings a run already has are
    not offered again."""
    from xlt_engine.engine.method.selftrain.guard import soft_lost_message

    for module in (selftrain_passes, selftrain_filter):
        monkeypatch.setattr(module, "lost_classes", lambda fidelity: ["B-PER", "I-PER"])
    soft = TrainConfig(max_steps=2, lr=1e-3, log_every=1, seed=1)
    cfg = st_config(base, teacher, data, tmp_path / "st", rounds=0.5, soft=soft)
    with pytest.warns(
        UserWarning, match=r"round 1: the soft student predicts none of B-PER, I-PER"
    ) as got:
        run_selftrain(cfg, echo=None)
    msg = str(next(w.message for w in got if "soft student" in str(w.message)))
    assert 'selftrain.soft_loss = "kl"' in msg and 'selftrain.student_init = "teacher"' in msg
    assert "of its entity rows" in msg
    # a run with the kl loss and a teacher-started student is offered neither again
    other = dataclasses.replace(cfg, soft_loss="kl", student_init="teacher")
    msg = soft_lost_message(other, ["B-PER"], {"entity_agreement": 0.2})
    assert "soft_loss" not in msg and "student_init" not in msg
    assert "predicts none of B-PER" in msg and "20.0% of its entity rows" in msg
    assert "selftrain.soft.epochs" in msg


def test_hard_steps_false_trains_no_hard_step_and_each_round_keeps_its_soft_student(
    base, teacher, data, tmp_path
):
    """The soft-only row: with ``hard_steps = False`` no round trains a hard step, whatever its
    pseudo labels (alpha 0 admits target rows, which a hard step would train on); each
    round's result is its soft student, which teaches the next round; the run says why."""
    out = tmp_path / "soft-only"
    soft = TrainConfig(max_steps=3, lr=1e-3, log_every=1, seed=1)
    hard = TrainConfig(max_steps=3, lr=1e-4, log_every=1, seed=1)
    kw = dict(rounds=1.5, soft=soft, hard=hard, threshold="fixed", alpha=0.0)
    cfg = st_config(base, teacher, data, out, hard_steps=False, **kw)
    with pytest.warns(UserWarning, match=r"round 1: hard step skipped: hard_steps = false"):
        run_selftrain(cfg, echo=None)
    recs = _records(out)
    hard = [r for r in recs if r["step"] == "hard"]
    assert [(r["round"], r["steps"], r["skipped"]) for r in hard] == [
        (1, 0, "hard_steps = false (soft steps only)")
    ]
    assert json.loads((out / "round-1" / "filter.json").read_text())["pseudo_rows"] > 0
    assert _same_weights(out / "round-1" / "soft" / "model", out / "round-1" / "hard" / "model")
    teachers = [r["teacher"] for r in recs if r["step"] == "teacher"]
    assert teachers[1] == str(out / "round-1" / "hard" / "model")  # the soft student, kept
    assert _same_weights(out / "round-2" / "soft" / "model", out / "model")
    with pytest.raises(ValueError, match="hard_steps must be true or false"):
        st_config(base, teacher, data, tmp_path, hard_steps="no")


def test_a_skipped_hard_step_links_its_soft_check_and_changes_no_result(
    base, teacher, data, tmp_path, monkeypatch
):
    """A skipped hard step's model is its soft student: its check links the soft check's pass
    (no forward pass, the same record) and everything after it equals a run that passes the
    target again: round 2's teacher probabilities, its check and the final student, bit for
    bit."""
    soft = TrainConfig(max_steps=3, lr=1e-3, log_every=1, seed=1)
    hard = TrainConfig(max_steps=3, lr=1e-4, log_every=1, seed=1)
    kw = dict(rounds=2, soft=soft, hard=hard, threshold="fixed", alpha=0.0, hard_steps=False)
    forwards = []
    real = selftrain_passes.probs_file

    def counted(ctx, path, *a, **k):
        forwards.append(Path(path).relative_to(ctx.out).as_posix())
        return real(ctx, path, *a, **k)

    runs = {}
    for name in ("linked", "passed"):
        with monkeypatch.context() as m:
            m.setattr(selftrain_passes, "probs_file", counted)
            if name == "passed":  # as before the link: the hard check passes the target again
                m.setattr(selftrain_passes, "soft_check_of_a_skipped_hard_step", lambda *a: None)
            forwards.clear()
            with pytest.warns(UserWarning, match="hard step skipped"):
                run_selftrain(st_config(base, teacher, data, tmp_path / name, **kw), echo=None)
        runs[name] = (tmp_path / name, list(forwards))
    (mine, passes), (theirs, their_passes) = runs["linked"], runs["passed"]
    t, s1, s2 = "teacher-probs", "soft/student-probs", "hard/student-probs"
    # round 2's teacher is round 1's hard student: linked from its check in both runs
    assert passes == [f"round-1/{t}.safetensors", f"round-1/{s1}.safetensors",
                      f"round-2/{s1}.safetensors"]  # fmt: skip
    assert their_passes == [f"round-1/{t}.safetensors", f"round-1/{s1}.safetensors",
                            f"round-1/{s2}.safetensors", f"round-2/{s1}.safetensors",
                            f"round-2/{s2}.safetensors"]  # fmt: skip
    mine_recs, their_recs = _records(mine), _records(theirs)
    for r in (1, 2):
        checks = {x["of"]: x for x in mine_recs if x["step"] == "check" and x["round"] == r}
        theirs_hard = next(
            x for x in their_recs if x["step"] == "check" and x["round"] == r and x["of"] == "hard"
        )
        got = checks["hard"]
        assert got["forward_seconds"] == 0.0
        assert got["linked_from"] == str(mine / f"round-{r}" / "soft" / "student-probs.safetensors")
        timing = {"seconds", "forward_seconds", "linked_from"}
        assert {k: v for k, v in got.items() if k not in timing} == {
            k: v for k, v in theirs_hard.items() if k not in timing
        }
        assert {k: v for k, v in got.items() if k not in timing | {"of"}} == {
            k: v for k, v in checks["soft"].items() if k not in timing | {"of"}
        }
        a = load_file(str(mine / f"round-{r}" / "hard" / "student-probs.safetensors"))
        b = load_file(str(theirs / f"round-{r}" / "hard" / "student-probs.safetensors"))
        assert torch.equal(a["probs"], b["probs"]), r
    for name in ("round-2/teacher-probs.safetensors",):
        a, b = load_file(str(mine / name)), load_file(str(theirs / name))
        assert torch.equal(a["probs"], b["probs"])
    assert _same_weights(mine / "model", theirs / "model")
    # a resumed run finds the linked check done and passes nothing again
    forwards.clear()
    with monkeypatch.context() as m:
        m.setattr(selftrain_passes, "probs_file", counted)
        run_selftrain(st_config(base, teacher, data, mine, **kw), resume=True, echo=None)
    assert forwards == []


def test_the_summary_says_where_the_time_went(st_run):
    """summary.json's ``wall``: the records' seconds per part (training steps, forward-only
    passes, the threshold's arithmetic), the passes' forwards, and what no record covers."""
    out, _ = st_run
    summary = json.loads((out / "summary.json").read_text())
    wall, recs = summary["wall"], _records(out)

    def secs(*steps):
        return sum(r["seconds"] for r in recs if r["step"] in steps)

    assert wall["training steps"] == pytest.approx(secs("soft", "hard"), abs=1e-3)
    assert wall["training steps"] > 0
    # the threshold step's pass over the source rows is a forward-only pass, timed apart; the
    # filter reads the soft check's pass (no forward of its own)
    th = next(r for r in recs if r["step"] == "threshold")
    ahead = sum(r["forward_seconds"] for r in recs if r["step"] == "threshold")
    assert 0 < th["forward_seconds"] < th["seconds"]
    assert all(r["forward_seconds"] == 0 for r in recs if r["step"] == "filter")
    assert wall["forward-only passes"] == pytest.approx(secs("teacher", "check") + ahead, abs=1e-3)
    assert wall["threshold and filter arithmetic"] == pytest.approx(
        secs("threshold", "filter") - ahead, abs=1e-3
    )
    assert 0 < wall["forward"] <= wall["forward-only passes"] and wall["shared"] == 0
    assert wall["other"] >= 0


def test_wall_breakdown_counts_each_part_once_and_a_twins_steps_apart():
    from xlt_engine.engine.method.selftrain.wall import describe_wall, wall_breakdown

    recs = [
        {"step": "teacher", "seconds": 2.0, "forward_seconds": 1.5, "shared_from": "x"},
        {"step": "soft", "seconds": 10.0, "shared_from": "x"},
        {"step": "check", "seconds": 1.0, "forward_seconds": 0.5},
        {"step": "threshold", "seconds": 0.5},  # before its pass was timed: all arithmetic
        {"step": "threshold", "seconds": 2.5, "forward_seconds": 2.0},  # a pass and 0.5 s
        {"step": "filter", "seconds": 1.0, "forward_seconds": 0.8},
        {"step": "hard", "seconds": 4.0},
        {"step": "hard", "items": 0, "steps": 0, "skipped": "why"},  # no seconds: counts 0
    ]
    wall = wall_breakdown(recs, total=12.5)
    assert wall == {
        "training steps": 14.0,
        "forward-only passes": 5.8,  # the filter's 0.8 s of forwards among them
        "threshold and filter arithmetic": 1.2,
        "forward": 4.8,
        "shared": 12.0,
        "other": 3.5,  # 12.5 s of this run's wall, 9 s of it in its own records
    }
    assert describe_wall(wall).startswith("training steps 14.0 s (57%), forward-only passes 5.8 s")
    assert "other" not in wall_breakdown(recs)


def test_labels_at_is_voter_filters_rule_without_the_logits():
    """The filter's pseudo labels come from the voters' rows (agreed label, confidence) at the
    class thresholds: equal to ``voter_filter`` on the logits, ties, NaN rows, a threshold
    equal to a confidence and per-class thresholds included."""
    from xlt_engine.engine.method.selftrain.filter import labels_at
    from xlt_engine.kernels.voter_filter import voter_filter_ref

    gen = torch.Generator().manual_seed(3)
    z = torch.randn(3, 500, 5, generator=gen) * 3
    z[:, :40] = z[:1, :40]  # voters that agree
    z[:, 40:45] = 0.0  # ties: the lowest index wins
    z[:, 45:47] = float("nan")
    agreed, conf, _ = voter_filter_ref(z, 0.0)
    alphas = [torch.rand(5, generator=gen), torch.zeros(5), torch.full((5,), 0.999)]
    alphas.append(conf[:5].clone())  # thresholds equal to some rows' confidence: not admitted
    admitted = []
    for alpha in alphas:
        want = voter_filter_ref(z, alpha)[0].numpy()
        got = labels_at(agreed.numpy(), conf.numpy(), alpha.double().numpy())
        assert np.array_equal(got, want) and got.dtype == np.int64
        admitted.append(int((want >= 0).sum()))
    n = int((agreed >= 0).sum())
    assert admitted[1] == n and admitted[2] < admitted[0] < n  # all, few, some of the agreed


@pytest.mark.device
def test_filter_reads_the_soft_checks_pass_and_equals_a_pass_of_its_own(
    base, teacher, data, tmp_path, monkeypatch
):
    """The round's filter makes no forward pass: it reads the soft student's voters from the
    soft step's check (same model, same chunks). A check file without them (as another
    version wrote) makes the filter run its own pass; both give the same filter file, bit for
    bit, for the paper's rule and for class_quota's two passes."""
    real = selftrain_passes.probs_file

    def no_voters(ctx, path, models, meta, voters=False):
        return real(ctx, path, models, meta)

    soft = TrainConfig(max_steps=30, lr=1e-3, log_every=10, seed=1)
    hard = TrainConfig(max_steps=2, lr=1e-4, log_every=1, seed=1)
    for rule in ({"threshold": "fixed", "alpha": 0.3}, {"pseudo_rule": "class_quota"}):
        outs = []
        for own in (False, True):
            out = tmp_path / f"{rule.get('pseudo_rule', 'paper')}-{own}"
            with monkeypatch.context() as m:
                if own:
                    m.setattr(selftrain_passes, "probs_file", no_voters)
                cfg = st_config(base, teacher, data, out, rounds=1, soft=soft, hard=hard, **rule)
                run_selftrain(cfg, echo=None)
            seen = load_file(str(out / "round-1" / "soft" / "student-probs.safetensors"))
            assert ("agreed" in seen) is not own
            forward = [r["forward_seconds"] for r in _records(out) if r["step"] == "filter"]
            assert (forward[0] == 0) is not own
            outs.append(load_file(str(out / "round-1" / FILTER_FILE)))
        a, b = outs
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert (a["pseudo"] >= 0).any()


@pytest.mark.device
def test_a_round_loads_no_model_it_holds(base, teacher, data, tmp_path, monkeypatch):
    """A step's check scores the student the step returns (its pass over U_tgt and its dev
    scores) instead of loading the saved model once for each: a run reads round 1's teacher,
    and no student. A resumed run reads each finished step's student once, and its check is
    the same as the uninterrupted run's."""
    loaded = []
    real = selftrain_passes.load_task_model

    def counted(path, **kw):
        loaded.append(Path(path))
        return real(path, **kw)

    monkeypatch.setattr(selftrain_passes, "load_task_model", counted)
    monkeypatch.setattr(selftrain_training, "load_task_model", counted)
    soft = TrainConfig(max_steps=10, lr=1e-3, log_every=10, seed=1)
    hard = TrainConfig(max_steps=2, lr=1e-4, log_every=1, seed=1)
    out = tmp_path / "run"
    dev = {"src": str(data["src_dev"])}
    cfg = st_config(base, teacher, data, out, rounds=2, soft=soft, hard=hard, dev_files=dev,
                    threshold="fixed", alpha=0.3)  # fmt: skip
    run_selftrain(cfg, echo=None)
    assert loaded == [teacher]  # round 1's teacher pass; round 2's teacher is linked
    checks = [r for r in _records(out) if r["step"] == "check"]
    assert [(r["round"], r["of"]) for r in checks] == [(1, "soft"), (1, "hard"), (2, "soft"),
                                                       (2, "hard")]  # fmt: skip
    # killed before round 2's hard check: its record and pass are gone, the models are there
    keep = [r for r in _records(out) if r is not checks[-1] and r != checks[-1]]
    (out / "selftrain.jsonl").write_text("".join(json.dumps(r) + "\n" for r in keep))
    (out / "round-2" / "hard" / "student-probs.safetensors").unlink()
    shutil.rmtree(out / "model")
    loaded.clear()
    run_selftrain(cfg, resume=True, echo=None)
    steps = [out / f"round-{r}" / which / "model" for r in (1, 2) for which in ("soft", "hard")]
    assert loaded == steps  # each step's student read once, as the step is passed over
    again = [r for r in _records(out) if r["step"] == "check"][-1]
    drop = ("seconds", "forward_seconds")
    assert {k: v for k, v in again.items() if k not in drop} == {
        k: v for k, v in checks[-1].items() if k not in drop
    }


def test_a_collapse_names_the_settings_that_may_avoid_it_and_not_those_in_use():
    """The guard's remedies come from the rule (another rule, its grid, a fixed alpha, its own
    parameters) and the run (the source filter); a setting already in use is not suggested."""
    from xlt_engine.engine.method.selftrain.guard import remedies
    from xlt_engine.engine.method.selftrain_settings import SelftrainSettings

    def said(**kw) -> str:
        rule = {k: kw.pop(k) for k in RULE_KEYS if k in kw}
        chosen = make_rule(rule.pop("pseudo_rule", "paper"), **rule)
        return remedies(SelftrainSettings(rule=chosen, **kw))

    paper = said()
    assert (
        'selftrain.rule.name = "per_class_precision" or selftrain.rule.name = "class_quota"'
        in paper
    )
    assert 'selftrain.rule.grid = "even"' in paper and 'selftrain.rule.threshold = "fixed"' in paper
    assert "source_filter" not in paper
    fixed = said(threshold="fixed", alpha=0.9, grid="even", source_filter="confident")
    assert "rule.grid" not in fixed and "rule.threshold" not in fixed
    assert 'selftrain.source_filter = "correct"' in fixed
    own = said(pseudo_rule="per_class_precision")
    assert 'selftrain.rule.name = "per_class_precision"' not in own  # in use
    assert own.endswith("a lower selftrain.rule.class_precision or min_rows (classes that never "
                        "qualify get no pseudo label)")  # fmt: skip
    assert "rule.grid" not in said(pseudo_rule="class_quota")  # it reads the target, not a grid
