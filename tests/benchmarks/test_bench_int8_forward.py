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
