"""The CPU inference check runs on a tiny task model and scores both precisions."""

import pytest

from tests.conftest import SHARED_DATA
from tests.engine.conftest import make_tiny


def test_the_check_scores_fp32_and_bf16_on_both_dev_files(tmp_path):
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent")
    from benchmarks.check_cpu_inference import main
    from xlt_engine.data.tokenizer import load_tokenizer
    from xlt_engine.model.checkpoint import load_encoder
    from xlt_engine.model.task import new_task_model, save_task_model

    tiny = make_tiny(tmp_path / "tiny")
    labels = ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    model = new_task_model(load_encoder(tiny), "token", labels, 3)
    folder = save_task_model(model, tmp_path / "task", load_tokenizer(tiny))
    rows = main(["--model", str(folder), "--data", str(SHARED_DATA), "--sentences", "5"])
    assert [(r["file"].split("/")[-1], r["precision"]) for r in rows] == [
        ("eng.testa", "fp32"), ("eng.testa", "bf16"), ("esp.testa", "fp32"), ("esp.testa", "bf16")
    ]  # fmt: skip
    assert all(0 <= r["f1"] <= 1 and r["tokens_per_s"] > 0 for r in rows)
