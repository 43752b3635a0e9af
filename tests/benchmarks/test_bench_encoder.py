"""The encoder benchmark stays runnable: a tiny CPU run returns three timed rows."""

from benchmarks.bench_encoder import main


def test_bench_encoder_smoke(capsys):
    rows = main(
        [
            "--device",
            "cpu",
            "--precision",
            "fp32",
            "--layers",
            "1",
            "--hidden",
            "32",
            "--heads",
            "2",
            "--intermediate",
            "64",
            "--vocab",
            "1200",
            "--batch",
            "2",
            "--seq",
            "16",
            "--warmup",
            "1",
            "--iters",
            "2",
            "--no-save",
        ]
    )
    assert [r["impl"] for r in rows] == [
        "xlt-engine",
        "xlt-engine full-logits",
        "transformers sdpa",
    ]
    assert all(r["ms_per_step"] > 0 for r in rows)
    assert "tokens/s" in capsys.readouterr().out
