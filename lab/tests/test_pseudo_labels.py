"""lab/pseudo_labels.py scores a self-training run's pseudo labels against the pool's
hidden gold labels, row by row in the store's order."""

import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from lab.pseudo_labels import gold_of, main, rounds
from xlt_engine.data import load_tokenizer
from xlt_engine.data.packed import StoreFile, StoreSpec, build_store
from xlt_engine.data.task import read_task_file

LABELS = ["negative", "positive"]


def a_stage(tmp_path, shared_data, mbert_vocab):
    """A stage folder as selftrain leaves it: the source and the unlabeled pool (40 German
    CLS-10 reviews drawn by seed 3) as stores under cache/, and two rounds' filter files."""
    pool = shared_data / "cls10/de/books/train.review"
    stage = tmp_path / "selftrain"
    tok = load_tokenizer(mbert_vocab)
    for f in (
        StoreFile(str(shared_data / "cls10/en/books/train.review"), "cls10", False),
        StoreFile(str(pool), "cls10", True),
    ):
        build_store([f], StoreSpec("sequence", tok, LABELS, 32), stage / "cache", 40, 3)
    gold = [LABELS.index(y) for y in read_task_file(pool, "cls10", False, 40, 3).labels]
    assert 5 < sum(gold) < 35  # both classes, so a shifted label is a wrong one
    given = {
        1: [g if i % 4 else 1 - g for i, g in enumerate(gold)],  # every 4th wrong
        2: [g if i % 2 else -1 for i, g in enumerate(gold)],  # half left out, all right
    }
    for r, pseudo in given.items():
        (stage / f"round-{r}").mkdir()
        save_file(
            {"pseudo": np.array(pseudo, dtype=np.int64)},
            str(stage / f"round-{r}/filter.safetensors"),
        )
        (stage / f"round-{r}/filter.json").write_text(json.dumps({"alpha": 0.5 + r / 10}))
    return stage, gold, given


def test_right_share_classes_and_gold_follow_the_stores_rows(tmp_path, shared_data, mbert_vocab):
    stage, gold, given = a_stage(tmp_path, shared_data, mbert_vocab)
    r1, r2 = rounds(stage)
    assert (r1["round"], r1["alpha"], r1["pool"], r1["given"]) == (1, 0.6, 40, 40)
    assert r1["right_of_rated"] == pytest.approx(30 / 40)
    assert r1["classes"] == {"negative": given[1].count(0), "positive": given[1].count(1)}
    assert r1["gold_of_pool"] == {"negative": gold.count(0), "positive": gold.count(1)}
    assert (r2["given"], r2["right_of_rated"]) == (20, 1.0)
    odd = [g for i, g in enumerate(gold) if i % 2]
    assert r2["gold_of_given"] == {LABELS[c]: odd.count(c) for c in set(odd)}


def test_the_table_names_each_round(tmp_path, shared_data, mbert_vocab, capsys):
    stage, _, _ = a_stage(tmp_path, shared_data, mbert_vocab)
    main([str(stage), "--json", str(tmp_path / "rows.json")])
    out = capsys.readouterr().out
    assert "| 1 | 0.6 | 40 / 40 |" in out and "75.0%" in out and "100.0%" in out
    assert len(json.loads((tmp_path / "rows.json").read_text())) == 2


def test_a_token_tasks_words_are_scored_per_class(tmp_path, shared_data, mbert_vocab):
    """NER: the rows are the words of the pool's sentences in order; each class's pseudo labels
    are scored against the CoNLL train file's own tags (which the run never reads)."""
    from xlt_engine.data.conll import read_conll

    path = shared_data / "conll2002/esp.train"
    labels = ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER", "B-MISC", "I-MISC"]
    stage = tmp_path / "st"
    tok = load_tokenizer(mbert_vocab)
    folder = build_store(
        [StoreFile(str(path), "conll", True)],
        StoreSpec("token", tok, labels, 32),
        stage / "cache",
        30,
        2,
    )
    by_line = {s.line: s.tags for s in read_conll(path).sentences}
    lines = np.load(folder / "lines.npy")
    gold = np.array([labels.index(t) for n in lines for t in by_line[int(n)]])
    assert (gold > 0).sum() > 10 and len(set(gold.tolist())) > 3  # entity words of several classes
    pseudo = gold.copy()
    pseudo[gold == 5] = 0  # every B-PER called O: O's precision falls, B-PER gets none
    pseudo[::7] = -1  # and some words left out
    (stage / "round-1").mkdir()
    save_file({"pseudo": pseudo}, str(stage / "round-1/filter.safetensors"))
    per = dict.fromkeys(labels, 0.9) | {"O": 0.995}
    record = {"alpha": 0.995, "class_alpha": per}
    (stage / "round-1/filter.json").write_text(json.dumps(record))
    (r,) = rounds(stage)
    assert r["pool"] == len(gold) and r["given"] == int((pseudo >= 0).sum())
    assert r["alpha"] == per  # the per-class thresholds where they differ
    o = r["precision_by_class"]["O"]
    given = pseudo >= 0
    assert o["given"] == int((pseudo[given] == 0).sum())
    assert o["right"] == int(((pseudo == 0) & (gold == 0) & given).sum()) < o["given"]
    assert r["precision_by_class"]["B-PER"] == {"given": 0, "right": 0, "precision": None}
    assert r["precision_by_class"]["B-LOC"]["precision"] == 1.0


def test_the_alpha_sweep_rebuilds_the_runs_labels_then_scores_other_thresholds(
    tmp_path, shared_data, mbert_vocab, capsys
):
    """``--alphas``: at each alpha a row is labeled when its voters agree and their confidence is
    above it (strictly, as ``voter_filter``); the run's own labels must come out of the same
    rule at its own threshold, else the file is named."""
    from lab.pseudo_labels import sweep

    stage, gold, _ = a_stage(tmp_path, shared_data, mbert_vocab)
    n = len(gold)
    agreed = np.array([g if i % 4 else 1 - g for i, g in enumerate(gold)], dtype=np.int32)
    agreed[::10] = -1  # the voters disagree on every 10th row
    conf = np.array([0.55 + 0.4 * (i % 5) / 4 for i in range(n)], dtype=np.float32)  # .55-.95
    run_alpha = 0.65
    pseudo = np.where((agreed >= 0) & (conf > run_alpha), agreed, -1).astype(np.int64)
    folder = stage / "round-1"
    save_file({"pseudo": pseudo, "agreed": agreed, "confidence": conf},
              str(folder / "filter.safetensors"))  # fmt: skip
    (folder / "filter.json").write_text(json.dumps({"alpha": run_alpha}))
    import shutil

    shutil.rmtree(stage / "round-2")
    rows = sweep(stage, [0.5, 0.75, 0.95])
    assert [r["alpha"] for r in rows] == [0.5, 0.75, 0.95]
    for r in rows:
        given = (agreed >= 0) & (conf > np.float32(r["alpha"]))
        assert r["given"] == int(given.sum())
        right = sum(int(agreed[i]) == gold[i] for i in range(n) if given[i])
        want = right / given.sum() if given.any() else None
        assert r["right_of_rated"] == (want and pytest.approx(want))
        neg = given & (agreed == 0)
        assert r["precision_by_class"]["negative"]["given"] == int(neg.sum())
    assert rows[0]["given"] > rows[1]["given"] > rows[2]["given"] == 0  # 0.95 is not above 0.95
    main([str(stage), "--alphas", "0.5,0.75"])
    out = capsys.readouterr().out
    assert f"| 0.5 (0.65) | {rows[0]['given']} / {n} |" in out
    pseudo[np.flatnonzero(pseudo >= 0)[0]] = -1  # one label the rule would have given, dropped
    save_file({"pseudo": pseudo, "agreed": agreed, "confidence": conf},
              str(folder / "filter.safetensors"))  # fmt: skip
    with pytest.raises(ValueError, match=r"round-1/filter.safetensors: 1 rows' pseudo labels"):
        sweep(stage, [0.5])
    with pytest.raises(SystemExit):
        main([str(stage), "--alphas", "0.5,1.5"])


@pytest.fixture(scope="module")
def rule_runs(tmp_path_factory):
    """One round of self-training on the quickstart's synthetic NER pair (whose target file
    carries tags) under the paper's rule, and the same round under each class-aware rule from
    the same soft student (the engine's resume reuses round 1's soft step and teacher)."""
    import shutil

    from xlt_engine.engine.method.finetune import FinetuneConfig, run_finetune
    from xlt_engine.engine.method.rules import make_rule
    from xlt_engine.engine.method.selftrain import SelftrainConfig, run_selftrain
    from xlt_engine.engine.train.config import TrainConfig
    from xlt_engine.quickstart import Sizes, prepare

    root = tmp_path_factory.mktemp("synth")
    prepare(root, seed=1, sizes=Sizes(train=200, dev=20, test=20))
    base, data = root / "pretrained", root / "data"
    free = {"freeze_layers": 0, "freeze_embeddings": False}
    teacher = run_finetune(
        FinetuneConfig(
            model=str(base),
            train_file=str(data / "src.train"),
            out=str(root / "ft"),
            max_len=48,
            batch_size=16,
            train=TrainConfig(max_steps=200, lr=1e-3, log_every=100, seed=1),
            **free,
        ),
        echo=None,
    ).model

    def run(out, rule):
        cfg = SelftrainConfig(
            base_model=str(base),
            teacher=str(teacher),
            source_file=str(data / "src.train"),
            unlabeled_file=str(data / "tgt.train"),
            out=str(out),
            max_len=48,
            batch_size=16,
            rounds=1,
            soft=TrainConfig(max_steps=100, lr=1e-3, log_every=100, seed=1),
            hard=TrainConfig(max_steps=2, lr=1e-4, log_every=1, seed=1),
            soft_loss="mse",
            rule=make_rule(rule),
            device="cpu",
            **free,
        )
        run_selftrain(cfg, resume=True, echo=None)
        return out

    runs = {"paper": run(root / "paper", "paper")}
    for rule in ("per_class_precision", "class_quota"):
        out = root / rule
        (out / "round-1").mkdir(parents=True)
        shutil.copytree(runs["paper"] / "round-1/soft", out / "round-1/soft")
        shutil.copy(runs["paper"] / "round-1/teacher-probs.safetensors", out / "round-1")
        shutil.copy(runs["paper"] / "selftrain.jsonl", out)
        runs[rule] = run(out, rule)
    return runs


def test_each_rule_replayed_on_a_round_gives_what_the_engine_gave_under_it(rule_runs, capsys):
    """``--rules``: from the paper run's round 1 files alone, each class-aware rule's replay
    has the thresholds and the pseudo labels (scored against the target file's tags) that the
    engine wrote when it ran that round under the rule; each run's own rule replays to itself."""
    from lab.pseudo_labels import gold_array, replay, score

    rules = [("per_class_precision", {}), ("class_quota", {})]
    own, *others = replay(rule_runs["paper"], rules)
    assert own["rule"] == "paper (the run's)" and len(set(own["thresholds"].values())) == 1
    labels, gold = gold_of(rule_runs["paper"])
    for (name, _), row in zip(rules, others, strict=True):
        ran = rule_runs[name] / "round-1"
        record = json.loads((ran / "filter.json").read_text())
        assert row["rule"] == name and row["thresholds"] == record["class_alpha"]
        assert len(set(row["thresholds"].values())) > 1  # the classes' own thresholds
        pseudo = load_file(str(ran / "filter.safetensors"))["pseudo"]
        assert {k: row[k] for k in score(pseudo, gold_array(gold), labels)} == score(
            pseudo, gold_array(gold), labels
        )
        assert replay(rule_runs[name], [])[0]["rule"] == f"{name} (the run's)"
    assert others[0]["given"] != own["given"] or others[0]["thresholds"] != own["thresholds"]
    main([str(rule_runs["paper"]), "--rules", "class_quota:quota=0.25"])
    out = capsys.readouterr().out
    assert "| paper (the run's) |" in out and "| class_quota:quota=0.25 | O " in out


def test_a_round_whose_files_disagree_with_its_record_is_named(rule_runs, tmp_path):
    import shutil

    from lab.pseudo_labels import replay

    stage = tmp_path / "paper"
    shutil.copytree(rule_runs["paper"], stage)
    record = json.loads((stage / "round-1/filter.json").read_text())
    shifted = record | {"class_alpha": {k: v / 2 for k, v in record["class_alpha"].items()}}
    (stage / "round-1/filter.json").write_text(json.dumps(shifted))
    with pytest.raises(ValueError, match=r"round-1/filter.json: the run's rule \(paper\)"):
        replay(stage, [])
    (stage / "round-1/filter.json").write_text(json.dumps(record))
    f = load_file(str(stage / "round-1/filter.safetensors"))
    f["pseudo"][np.flatnonzero(f["pseudo"] >= 0)[0]] = -1
    save_file(f, str(stage / "round-1/filter.safetensors"))
    with pytest.raises(ValueError, match=r"round-1/filter.safetensors: 1 rows' pseudo labels"):
        replay(stage, [])
    th = json.loads((stage / "round-1/threshold.json").read_text())
    settings = th.pop("rule_settings")
    (stage / "round-1/threshold.json").write_text(json.dumps(th))
    with pytest.raises(ValueError, match=r"round-1/threshold.json: no rule_settings"):
        replay(stage, [])
    (stage / "round-1/threshold.json").write_text(json.dumps(th | {"rule_settings": settings}))
    older = {"pseudo": f["pseudo"]}  # a run older than the voters' kept outputs
    save_file(older, str(stage / "round-1/filter.safetensors"))
    with pytest.raises(ValueError, match=r"round-1/filter.safetensors: no 'agreed' / 'confidence'"):
        replay(stage, [])


@pytest.mark.parametrize(
    "spec, says",
    [
        ("no_such_rule", "rule must be one of paper, "),
        ("class_quota:quota", "'quota' is not key=value"),
        ("class_quota:=1", "'=1' is not key=value"),
        ("class_quota:foo=1", "--rules class_quota.foo: unknown key (known here: name, "),
        ("class_quota:min_rows=3", "--rules class_quota.min_rows: unknown key"),
        ("class_quota:quota=1.5", "--rules class_quota: quota must be in (0, 1], got 1.5"),
        ("class_quota:quota=x", "--rules class_quota.quota: expected float, got 'x'"),
        ("per_class_precision:class_precision=1", "class_precision must be in (0, 1)"),
        ("paper:name=class_quota", "the rule's name comes before the first ':'"),
    ],
)
def test_bad_rules_are_refused_before_any_round_is_read(spec, says, tmp_path, capsys):
    """A bad rule name or setting is an argparse error naming it, checked as the config's
    ``[selftrain.rule]`` table is, before any stage folder is read (``tmp_path`` holds none)."""
    with pytest.raises(SystemExit):
        main([str(tmp_path / "no_such_stage"), "--rules", spec])
    assert says in capsys.readouterr().err


def test_rules_settings_are_read_as_the_rules_fields():
    from lab.pseudo_labels import parse_rules

    got = parse_rules("class_quota:quota=1, paper:threshold=fixed:alpha=0.9,per_class_precision")
    assert got == [
        ("class_quota", {"quota": 1.0}),
        ("paper", {"threshold": "fixed", "alpha": 0.9}),
        ("per_class_precision", {}),
    ]
    assert isinstance(got[0][1]["quota"], float)
