"""The BTF step benchmark stays runnable: a tiny CPU run times every implementation, the real
loop's step included, and the padded-vocabulary baseline."""

from benchmarks.bench_btf_step import main


def test_bench_btf_step_smoke(shared_data, capsys):
    rows = main(
        [
            "--data",
            str(shared_data),
            "--device",
            "cpu",
            "--tiny",
            "--batch",
            "2",
            "--seq",
            "32",
            "--warmup",
            "1",
            "--iters",
            "2",
            "--no-save",
        ]
    )
    assert [r["impl"] for r in rows] == [
        "xlt-engine", "transformers sdpa", "transformers sdpa, V padded", "xlt-engine loop"
    ]  # fmt: skip
    assert all(r["tokens_per_s"] > 0 for r in rows)
    out = capsys.readouterr().out
    assert "speed-up (tokens/s)" in out and "the loop against padded-V transformers" in out
