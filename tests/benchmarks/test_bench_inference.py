"""The inference benchmark runs end to end on a tiny model: the training steps, the forward pass
at each batch size, the threshold arithmetic against its memory bound, and the logits of the
pass it times are the ones the threshold step reads."""

import pytest

from tests.conftest import SHARED_DATA
from tests.engine.conftest import make_tiny


def test_the_benchmark_times_the_passes_beside_the_training_step(tmp_path):
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent")
    from benchmarks.bench_inference import main

    model = make_tiny(tmp_path / "tiny")
    args = ["--model", str(model), "--data", str(SHARED_DATA), "--freeze", "1",
            "--sentences", "40", "--warmup", "1", "--iters", "2", "--repeats", "1",
            "--precisions", "fp32,bf16", "--max-tokens", "256,4096", "--no-save"]  # fmt: skip
    record = main(args)
    assert record["sentences"] >= 40 and record["rows"] > record["sentences"]
    assert [r["precision"] for r in record["results"]] == ["fp32", "bf16"]
    for r in record["results"]:
        assert r["train_finetune_tokens_per_s"] > 0 and r["train_soft_tokens_per_s"] > 0
        sizes = [(f["max_tokens"], f["engine"]) for f in r["forward"]]
        assert sizes == [(256, False), (4096, False), (16384, True)]
        for f in r["forward"]:
            assert f["x_finetune"] == pytest.approx(
                f["tokens_per_s"] / r["train_finetune_tokens_per_s"]
            )
        th = r["threshold"]
        assert th["rows"] == record["rows"] and th["seconds"] > 0
        assert 0 < th["memory_bound_seconds"] < th["seconds"]  # the arithmetic reads them once
        assert th["bytes"] == 3 * record["rows"] * 9 * 4  # 3 voters, 9 labels, fp32 logits


def test_copy_bandwidth_counts_read_and_write():
    from benchmarks.bench_inference import copy_bandwidth

    bw = copy_bandwidth(1 << 22, repeats=3)
    assert 1e8 < bw < 1e13  # bytes/s: from a slow VM to a fast server
