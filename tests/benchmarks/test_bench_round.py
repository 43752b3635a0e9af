"""The round benchmark stays runnable: a tiny CPU round, timed by part from the run's own log."""

from benchmarks.bench_round import PARTS, main


def test_bench_round_smoke(shared_data, tmp_path, capsys):
    record = main(
        [
            "--data",
            str(shared_data),
            "--device",
            "cpu",
            "--tiny",
            "--limit",
            "40",
            "--batch",
            "8",
            "--max-len",
            "48",
            "--work",
            str(tmp_path / "w"),
            "--no-save",
        ]
    )
    rows = {r["part"]: r for r in record["rows"]}
    assert list(rows) == [*PARTS, "other"]
    assert all(r["seconds"] > 0 for r in rows.values())
    assert abs(sum(r["seconds"] for r in rows.values()) - record["total_seconds"]) < 0.01
    # inference parts read every real sub-token of their file once
    assert rows["teacher"]["tokens"] == rows["filter"]["tokens"] == record["unlabeled"]["tokens"]
    assert rows["threshold"]["tokens"] == record["source"]["tokens"]
    assert record["source"]["sentences"] == record["unlabeled"]["sentences"] == 40
    # the source filter is off: the hard step trains on every source sentence (+ pseudo labels)
    assert record["hard_items"] >= 40
    assert rows["soft"]["steps"] >= 40 // 8 and rows["hard"]["train_tokens_per_s"] > 0
    assert (tmp_path / "w" / "selftrain" / "round-1" / "hard" / "model").is_dir()
    assert "round" in capsys.readouterr().out
