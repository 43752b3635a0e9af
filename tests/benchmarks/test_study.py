"""benchmarks/study.py's per-pair details: the dev score of each fine-tuned model and each
self-training round's counts, with the soft student's fidelity where the run recorded it."""

import json

from benchmarks.study import classes, pair_details


def test_pair_details_reads_dev_scores_and_rounds(tmp_path):
    run = tmp_path / "eng-esp"
    for name, score in {"finetune": 0.5, "finetune-direct-linear": 0.75}.items():
        (run / name).mkdir(parents=True)
        (run / name / "dev.json").write_text(json.dumps({"score": score, "metric": "entity_f1"}))
    base = {
        "alpha": 0.9,
        "source_rows": 10,
        "source_rows_kept": 8,
        "target_rows": 12,
        "pseudo_rows": 5,
        "pseudo_distribution": {"O": 5, "B-PER": 0},
        "voter_agreement": 1.0,
    }
    fidelity = {
        "teacher_distribution": {"O": 9, "B-PER": 3},
        "student_distribution": {"O": 12, "B-PER": 0},
        "teacher_agreement": 0.75,
    }
    for folder, record in {"selftrain": {**base, **fidelity}, "selftrain-direct": base}.items():
        (run / folder / "round-1").mkdir(parents=True)
        (run / folder / "round-1" / "filter.json").write_text(json.dumps(record))
    d = pair_details(run)
    assert d["dev"] == {"finetune": 0.5, "finetune-direct-linear": 0.75}
    assert d["rounds"]["selftrain/round-1"] == {
        k: v for k, v in {**base, **fidelity}.items() if k != "voter_agreement"
    }
    # a run from before the fidelity record: its other counts, nothing invented
    assert d["rounds"]["selftrain-direct/round-1"] == {
        k: v for k, v in base.items() if k != "voter_agreement"
    }


def test_classes_lists_the_classes_with_rows():
    assert classes({"O": 32259, "B-LOC": 0, "B-ORG": 4925}) == "O 32,259, B-ORG 4,925"
    assert classes({"O": 0, "B-LOC": 0}) == "–"
