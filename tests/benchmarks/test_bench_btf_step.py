"""The BTF step benchmark stays runnable: a tiny CPU run times both implementations."""

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
    assert [r["impl"] for r in rows] == ["xlt-engine", "transformers sdpa"]
    assert all(r["tokens_per_s"] > 0 for r in rows)
    assert "speed-up (tokens/s)" in capsys.readouterr().out
