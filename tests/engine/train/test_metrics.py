"""Entity F1 and accuracy against seqeval on the real CoNLL test files."""

import json
import os
import random
import warnings

import pytest

from xlt_engine.data import read_conll
from xlt_engine.engine.train.metrics import (
    accuracy,
    entities,
    entity_confusion,
    entity_f1,
    label_confusion,
)

seqeval_metrics = pytest.importorskip("seqeval.metrics")
from seqeval.scheme import IOB2  # noqa: E402

FILES = [
    ("conll2003_en", "eng.testb"),
    ("conll2002", "esp.testb"),
    ("conll2002", "ned.testb"),
    ("conll2003_de", "deu.testb"),
]


def corrupt(tags, types, rng, rate):
    """Boundary shifts, type swaps, lone I- tags, dropped and invented entities."""
    out = list(tags)
    for i in range(len(out)):
        if rng.random() >= rate:
            continue
        kind = rng.randrange(6)
        if kind == 0 and i + 1 < len(out):  # shift a boundary: swap with the neighbour
            out[i], out[i + 1] = out[i + 1], out[i]
        elif kind == 1 and out[i] != "O":  # type swap
            out[i] = out[i][:2] + rng.choice(types)
        elif kind == 2:  # lone / mistyped I-
            out[i] = "I-" + rng.choice(types)
        elif kind == 3:
            out[i] = "O"
        elif kind == 4:
            out[i] = "B-" + rng.choice(types)
        elif kind == 5 and out[i].startswith("B-"):  # B -> I keeps the span in default mode
            out[i] = "I-" + out[i][2:]
    return out


def seqeval_scores(gold, pred, mode):
    kw = {"mode": "strict", "scheme": IOB2} if mode == "strict" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = seqeval_metrics.classification_report(gold, pred, output_dict=True, **kw)
        return (
            seqeval_metrics.precision_score(gold, pred, **kw),
            seqeval_metrics.recall_score(gold, pred, **kw),
            seqeval_metrics.f1_score(gold, pred, **kw),
            report,
        )


@pytest.mark.parametrize("folder, name", FILES)
@pytest.mark.parametrize("mode", ["default", "strict"])
@pytest.mark.parametrize("rate", [0.02, 0.2])
def test_equals_seqeval_on_real_files(shared_data, folder, name, mode, rate):
    conll = read_conll(shared_data / folder / name)
    gold = [s.tags for s in conll]
    types = conll.entity_types()
    rng = random.Random(f"{name}{mode}{rate}")
    pred = [corrupt(t, types, rng, rate) for t in gold]
    ours = entity_f1(gold, pred, mode=mode)
    p, r, f, report = seqeval_scores(gold, pred, mode)
    assert abs(ours.precision - p) <= 1e-12
    assert abs(ours.recall - r) <= 1e-12
    assert abs(ours.f1 - f) <= 1e-12
    for typ in types:
        assert abs(ours.per_type[typ].precision - report[typ]["precision"]) <= 1e-12
        assert abs(ours.per_type[typ].recall - report[typ]["recall"]) <= 1e-12
        assert abs(ours.per_type[typ].f1 - report[typ]["f1-score"]) <= 1e-12
        assert ours.per_type[typ].support == report[typ]["support"]
    assert 0.0 < ours.f1 < 1.0
    assert entity_f1(gold, gold, mode=mode).f1 == 1.0


def test_modes_differ_on_lone_i_tags():
    gold = [["B-PER", "I-PER", "O", "B-LOC"]]
    pred = [["I-PER", "I-PER", "O", "I-LOC"]]
    assert entity_f1(gold, pred).f1 == 1.0  # conlleval: I- after O starts an entity
    with pytest.warns(UserWarning, match="no predicted entities"):
        assert entity_f1(gold, pred, mode="strict").f1 == 0.0
    assert entities(["B-PER", "I-LOC", "I-LOC"]) == {("PER", 0, 0), ("LOC", 1, 2)}
    assert entities(["B-PER", "I-LOC", "I-LOC"], "strict") == {("PER", 0, 0)}
    assert entities(["B-PER", "B-PER", "I-PER"]) == {("PER", 0, 0), ("PER", 1, 2)}


def test_entities_never_cross_sentences():
    gold = [["O", "B-PER"], ["I-PER", "O"]]
    s = entity_f1(gold, gold)
    assert s.support == 2  # (PER at the end of 0) and (lone I-PER at the start of 1)


def test_no_entities_gives_zero_with_warning():
    with pytest.warns(UserWarning, match="no entities"):
        s = entity_f1([["O", "O"]], [["O", "O"]])
    assert (s.precision, s.recall, s.f1, s.per_type) == (0.0, 0.0, 0.0, {})
    with pytest.warns(UserWarning, match="no predicted entities"):
        assert entity_f1([["B-PER"]], [["O"]]).f1 == 0.0
    with pytest.warns(UserWarning, match="no gold entities"):
        assert entity_f1([["O"]], [["B-PER"]]).precision == 0.0


def test_bad_input():
    with pytest.raises(ValueError, match="2 gold sentences but 1 predicted"):
        entity_f1([["O"], ["O"]], [["O"]])
    with pytest.raises(ValueError, match="sentence 0: 2 gold tags but 1 predicted"):
        entity_f1([["O", "O"]], [["O"]])
    with pytest.raises(ValueError, match="predicted sentence 0, position 1: tag 'E-PER'"):
        entity_f1([["O", "O"]], [["O", "E-PER"]])
    with pytest.raises(ValueError, match="mode must be"):
        entity_f1([["O"]], [["O"]], mode="lenient")


def test_accuracy():
    assert accuracy([1, 2, 3, 4], [1, 2, 0, 4]) == 0.75
    assert accuracy(["pos", "neg"], ["pos", "neg"]) == 1.0
    with pytest.raises(ValueError, match="3 gold labels but 2 predictions"):
        accuracy([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="no examples"):
        accuracy([], [])


def test_entity_confusion_counts_types_on_exact_spans():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "B-MISC", "I-MISC"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["O", "O", "B-MISC", "O"]]
    got = entity_confusion(gold, pred)
    assert got == {
        "PER": {"PER": 1},  # right
        "LOC": {"ORG": 1},  # the span found, the type wrong
        "ORG": {"(missed)": 1},  # not predicted at all
        "MISC": {"(missed)": 1},  # a boundary error: missed ...
        "(spurious)": {"MISC": 1},  # ... and spurious
    }
    # the diagonal is the hits of entity_f1
    hits = sum(row.get(t, 0) for t, row in got.items())
    assert hits == entity_f1(gold, pred).correct == 1
    assert label_confusion(["a", "b", "b"], ["a", "a", "b"]) == {
        "a": {"a": 1},
        "b": {"a": 1, "b": 1},
    }


def test_entity_confusion_has_one_order_whatever_the_hash_seed():
    """Its rows come in the sentences' order, not a set's: the same evaluation in two processes
    (``ablate --jobs``) writes the same results.json, byte for byte."""
    import subprocess
    import sys

    code = (
        "import json; from xlt_engine.engine.train.metrics import entity_confusion as c; "
        "g = [['B-PER', 'O', 'B-LOC', 'B-ORG', 'I-ORG', 'B-MISC']] * 3; "
        "print(json.dumps(c(g, [['O'] * 6] * 3)))"
    )

    def run(seed: int) -> str:
        env = {**os.environ, "PYTHONHASHSEED": str(seed)}
        cmd = [sys.executable, "-c", code]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout

    outs = {run(seed) for seed in range(6)}
    assert len(outs) == 1 and list(json.loads(outs.pop())) == ["PER", "LOC", "ORG", "MISC"]
