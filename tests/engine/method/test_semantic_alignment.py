"""Paper 003's language adaptation with parallel data: the XNLI parallel file, translate-train,
Semantic Alignment's loss (Eq. 4) and groups, its second phase, and resume after a kill there."""

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from tests.conftest import SHARED_DATA
from xlt_engine.cli import main
from xlt_engine.data import load_tokenizer, read_xnli
from xlt_engine.data.parallel import build_xnli_parallel, read_parallel
from xlt_engine.engine.method.adaptation import SABatches, sa_encoded, semantic_alignment_loss
from xlt_engine.engine.method.finetune import SA_FOLDER, FinetuneConfig, run_finetune
from xlt_engine.engine.train.checkpoints import latest_checkpoint
from xlt_engine.engine.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[3]
XNLI = SHARED_DATA / "xnli"
NLI = ["contradiction", "entailment", "neutral"]


@pytest.fixture(scope="module")
def parallel(tmp_path_factory):
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent")
    out = tmp_path_factory.mktemp("par") / "par.jsonl"
    assert build_xnli_parallel(XNLI, "en", ["de", "fr"], 12, 3, out) == 24
    return out


def test_xnli_parallel_file_holds_the_dev_rows_of_each_language(parallel, tmp_path):
    en, de = read_xnli(XNLI / "dev-en.tsv"), read_xnli(XNLI / "dev-de.tsv")
    items = read_parallel(parallel)
    assert len(items) == 12 and all(len(it.translations) == 2 for it in items)
    for it in items:
        i = int(it.id)
        assert (it.text, it.text_pair, it.label) == (en[i].text, en[i].text_pair, en[i].label)
        lang, text, pair = it.translations[0]
        assert (lang, text, pair) == ("de", de[i].text, de[i].text_pair)
    again = tmp_path / "again.jsonl"
    res = CliRunner().invoke(
        main, ["xnli-parallel", "--xnli", str(XNLI), "--languages", "de,fr", "-n", "12",
               "--seed", "3", "--out", str(again)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert again.read_bytes() == parallel.read_bytes()  # the same items from the same seed
    short = tmp_path / "xnli"
    short.mkdir()
    (short / "dev-en.tsv").write_bytes((XNLI / "dev-en.tsv").read_bytes())
    (short / "dev-de.tsv").write_text("a\tb\tneutral\n")
    with pytest.raises(ValueError, match="dev-de.tsv: not parallel"):
        build_xnli_parallel(short, "en", ["de"], 3, 0, tmp_path / "x.jsonl")


@pytest.mark.parametrize(
    "rows,match",
    [
        ([{"id": "1", "text": "a", "label": "x", "language": "de"}], r"\['translation'\] missing"),
        ([{"id": "1", "text": "a", "label": "x", "language": "de", "translation": "b"},
          {"id": "1", "text": "a", "label": "y", "language": "fr", "translation": "c"}],
         ":2: id '1' has another text, text_pair or label than on line 1"),
        ([{"id": "1", "text": "a", "label": "x", "language": "de", "translation": "b"},
          {"id": "1", "text": "a", "label": "x", "language": "de", "translation": "c"}],
         "second 'de' translation"),
        ([{"id": "1", "text": "a", "text_pair": "p", "label": "x", "language": "de",
           "translation": "b"}], "text_pair and translation_pair go together"),
    ],
)  # fmt: skip
def test_bad_parallel_rows_are_named(tmp_path, rows, match):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=match):
        read_parallel(path)


def loop_sa(reps, groups, tau):
    """Eq. 4 group by group in Python floats: -sum_t log softmax over the group's other rows."""
    n = [[v / math.sqrt(sum(x * x for x in r)) for v in r] for r in reps.tolist()]
    total, counted = 0.0, 0
    for anchor, members, positive in groups:
        s = [sum(a * b for a, b in zip(n[anchor], n[k], strict=True)) / tau for k in members]
        m = max(s)
        lse = m + math.log(sum(math.exp(v - m) for v in s))
        pos = [v for v, p in zip(s, positive, strict=True) if p]
        if pos:
            total += -sum(v - lse for v in pos)
            counted += 1
    return total / max(counted, 1)


def test_semantic_alignment_loss_is_eq_4():
    g = torch.Generator().manual_seed(0)
    reps = torch.randn(11, 6, generator=g, dtype=torch.float64).requires_grad_()
    groups = [(0, [1, 2, 3, 4], [True, True, False, False]),
              (5, [6, 7], [True, False]),
              (8, [9, 10], [False, False])]  # fmt: skip  # no translation: adds nothing
    width = 4
    anchor = torch.tensor([a for a, _, _ in groups])
    member = torch.tensor([m + [-1] * (width - len(m)) for _, m, _ in groups])
    positive = torch.tensor([p + [False] * (width - len(p)) for _, _, p in groups])
    got = semantic_alignment_loss(reps, anchor, member, positive, 0.3)
    assert got.item() == pytest.approx(loop_sa(reps.detach(), groups, 0.3), rel=1e-6)
    got.backward()
    assert reps.grad[8:].abs().sum() == 0 and reps.grad[:8].abs().sum() > 0


def test_groups_hold_the_translations_and_negatives_of_another_label(tiny, parallel):
    items = read_parallel(parallel)
    tok = load_tokenizer(tiny)
    enc, labels, rows = sa_encoded(items, parallel, tok, NLI, 48)
    assert len(enc) == 12 + 24 and rows[0] == [12, 13]
    data = SABatches(enc, labels, rows, tok.pad_id, 3, seed=7)
    assert data.num_batches(0) == 4
    seen = []
    for index in range(data.num_batches(0)):
        batch = data.batch(0, index)
        targets = batch["targets"].tolist()
        for a, members, positive in zip(
            batch["sa_anchor"].tolist(), batch["sa_member"].tolist(),
            batch["sa_positive"].tolist(), strict=True,
        ):  # fmt: skip
            members = [m for m in members if m >= 0]
            pos = [m for m, p in zip(members, positive, strict=True) if p]
            neg = [m for m, p in zip(members, positive, strict=True) if not p]
            assert len(pos) == 2 and len(neg) == 2  # b = 2 languages, as many negatives
            assert all(targets[m] == targets[a] for m in pos)
            assert all(targets[m] != targets[a] for m in neg)
            seen.append(a)
        assert batch["input_ids"].shape[0] == 3 * 5
    assert len(seen) == 12  # every item anchors one group per epoch
    again = data.batch(0, 1)
    assert torch.equal(again["input_ids"], SABatches(enc, labels, rows, tok.pad_id, 3, 7).batch(0, 1)["input_ids"])  # fmt: skip


def xnli_config(tiny, out, parallel=None, sa=False, **train):
    kw = dict(epochs=1, lr=1e-3, warmup_ratio=0.0, seed=1, log_every=1)
    kw.update(train)
    return FinetuneConfig(
        model=str(tiny),
        train_file=str(XNLI / "dev-en.tsv"),
        format="xnli",
        out=str(out),
        max_len=48,
        batch_size=16,
        max_train=48,
        head="linear",
        freeze_layers=0,
        freeze_embeddings=False,
        parallel_file=str(parallel) if parallel else None,
        semantic_alignment=sa,
        train=TrainConfig(**kw),
    )


def steps_of(folder):
    return max(json.loads(x)["step"] for x in (folder / "metrics.jsonl").read_text().splitlines())


def test_translate_train_and_semantic_alignment_phases(tiny, parallel, tmp_path):
    plain = run_finetune(xnli_config(tiny, tmp_path / "plain"), echo=None)
    tt = run_finetune(xnli_config(tiny, tmp_path / "tt", parallel), echo=None)
    # translate-train: 48 + 24 translations, one epoch: more steps than on the 48 alone
    assert steps_of(tmp_path / "tt") > steps_of(tmp_path / "plain")
    assert not (tmp_path / "tt" / SA_FOLDER).exists()
    sa = run_finetune(xnli_config(tiny, tmp_path / "sa", parallel, sa=True), echo=None)
    phase2 = tmp_path / "sa" / SA_FOLDER
    assert steps_of(phase2) == 4  # 12 groups of 5 rows, 3 per batch of 16, one epoch
    lr = [json.loads(x)["lr"] for x in (phase2 / "metrics.jsonl").read_text().splitlines()]
    assert max(lr) <= 1e-4 + 1e-12  # 0.1 x the learning rate
    a = load_file(str(tmp_path / "tt" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "sa" / "model" / "model.safetensors"))
    assert any(not torch.equal(a[k], b[k]) for k in a)  # phase 2 trained the saved model
    assert plain.train.step > 0 and tt.train.step > 0 and sa.train.step == 4


KILL = """
import sys
from tests.engine.method.test_semantic_alignment import xnli_config
from xlt_engine.engine.method.finetune import run_finetune
run_finetune(xnli_config(sys.argv[1], sys.argv[2], sys.argv[3], sa=True, save_every=1), echo=None)
"""


def test_kill_in_semantic_alignment_then_resume_is_bit_exact(tiny, parallel, tmp_path):
    run_finetune(xnli_config(tiny, tmp_path / "full", parallel, sa=True, save_every=1), echo=None)
    cut = tmp_path / "cut"
    proc = subprocess.run(
        [sys.executable, "-c", KILL, str(tiny), str(cut), str(parallel)],
        cwd=ROOT, capture_output=True, text=True,
        env={**os.environ, "XLT_KILL_AT": f"{SA_FOLDER}:2"},
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert latest_checkpoint(cut / SA_FOLDER).name == "ckpt-00000001"  # killed before 2's
    assert not (cut / "model").exists()
    cfg = xnli_config(tiny, cut, parallel, sa=True, save_every=1)
    with pytest.raises(ValueError, match="resume it"):
        run_finetune(cfg, echo=None)
    run_finetune(cfg, resume=True, echo=None)
    for name in ("model.safetensors", "voters.safetensors"):
        full = load_file(str(tmp_path / "full" / "model" / name))
        got = load_file(str(cut / "model" / name))
        assert all(torch.equal(full[k], got[k]) for k in full), name


def test_settings(tiny, parallel, tmp_path):
    with pytest.raises(ValueError, match="semantic_alignment needs parallel_file"):
        xnli_config(tiny, tmp_path, None, sa=True)
    for bad, match in ((dict(sa_lr_scale=0.0), "sa_lr_scale"), (dict(sa_epochs=0.0), "sa_epochs"),
                       (dict(sa_weight=-1.0), "sa_weight"), (dict(sa_temperature=0.0), "sa_temp")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            FinetuneConfig(**{**xnli_config(tiny, tmp_path, parallel).__dict__, **bad})
    with pytest.raises(ValueError, match="parallel_file: .*no such file"):
        xnli_config(tiny, tmp_path, tmp_path / "none.jsonl")
