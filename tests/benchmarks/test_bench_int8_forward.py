"""The int8 benchmark runs end to end on a small shape and writes its record."""

import json


def test_the_int8_benchmark_times_both_forwards_and_bounds_their_difference(tmp_path):
    from benchmarks.bench_int8_forward import main

    out = tmp_path / "int8.json"
    record = main(["--batch", "2", "--seq", "8", "--layers", "1", "--warmup", "0",
                   "--iters", "1", "--out", str(out)])  # fmt: skip
    assert set(record["rows"]) == {"fp32", "int8 dynamic"}
    assert all(r["ms"] > 0 and r["tokens_per_s"] > 0 for r in record["rows"].values())
    assert 0 < record["max_abs_diff"] < 1  # quantized, not another model
    saved = json.loads(out.read_text())
    assert saved["shape"] == {"batch": 2, "seq": 8, "layers": 1}
    assert "--layers 1" in saved["command"]


def test_the_int8_benchmark_runs_a_task_models_own_pass_on_real_data(tmp_path):
    import pytest

    from tests.conftest import SHARED_DATA
    from tests.engine.conftest import make_tiny

    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent")
    from benchmarks.bench_int8_forward import main
    from xlt_engine.data.tokenizer import load_tokenizer
    from xlt_engine.model.checkpoint import load_encoder
    from xlt_engine.model.task import new_task_model, save_task_model

    tiny = make_tiny(tmp_path / "tiny")
    labels = ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    task = save_task_model(new_task_model(load_encoder(tiny), "token", labels), tmp_path / "task",
                           load_tokenizer(tiny))  # fmt: skip
    record = main(["--model", str(task), "--data", str(SHARED_DATA / "conll2003_en/eng.testa"),
                   "--format", "conll", "--examples", "12", "--max-len", "32", "--warmup", "0",
                   "--iters", "1"])  # fmt: skip
    assert record["examples"] == 12 and record["tokens"] > 12
    assert set(record["rows"]) == {"fp32", "int8 dynamic"}
    assert 0 <= record["argmax_agreement"] <= 1 and record["mean_abs_prob_diff"] >= 0
    assert record["speedup"] > 0 and "--model" in record["command"]
