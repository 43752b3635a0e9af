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


def test_bench_round_counts_the_steps_host_syncs_and_shapes(shared_data, tmp_path):
    """--host: no sync inside a soft or hard step, one staged batch per step, and lengths padded
    to a multiple of 32 (a GPU's default: at most 4 at max_len 128) against 8 (a CPU's
    default); a sync put into the soft step's loss is counted."""
    args = ["--data", str(shared_data), "--device", "cpu", "--tiny", "--limit", "40"]
    args += ["--batch", "8", "--no-save", "--host"]
    record = main([*args, "--pad-multiple", "32", "--work", str(tmp_path / "a")])
    host, rows = record["host"], {r["part"]: r for r in record["rows"]}
    assert host["syncs_in_steps"] == 0, host["syncs_in_steps_where"]
    assert host["batches"] == rows["soft"]["steps"] + rows["hard"]["steps"]
    for step in ("soft", "hard"):
        lengths = host["lengths"][step]
        assert 1 <= len(lengths) <= 4 and all(n % 8 == 0 for n in lengths), (step, lengths)
    assert record["shape"]["pad_multiple"] == 32
    default = main([*args, "--work", str(tmp_path / "b")])  # on the CPU: 8
    assert default["shape"]["pad_multiple"] == 8
    eight = default["host"]
    assert len(eight["lengths"]["hard"]) > len(host["lengths"]["hard"]), (eight, host)


def test_bench_round_host_count_sees_a_sync_in_a_step(shared_data, tmp_path, monkeypatch):
    """The soft step's loss made to read its value on the host: one sync per soft step."""
    from xlt_engine.engine.method.selftrain import training

    # compiled under a file name in xlt_engine: HostSyncs counts only syncs made by its frames
    src = "def loss(*a, **k):\n    out = fit(*a, **k)\n    out.item()\n    return out\n"
    code = compile(src, "/injected/xlt_engine/soft_loss.py", "exec")

    def syncing(fit):
        scope = {"fit": fit}
        exec(code, scope)
        return scope["loss"]

    for name in ("soft_label_mse", "soft_label_kl"):
        monkeypatch.setattr(training, name, syncing(getattr(training, name)))
    args = ["--data", str(shared_data), "--device", "cpu", "--tiny", "--limit", "16"]
    record = main([*args, "--batch", "8", "--no-save", "--host", "--work", str(tmp_path / "w")])
    soft = next(r for r in record["rows"] if r["part"] == "soft")
    assert record["host"]["syncs_in_steps"] == soft["steps"], record["host"]
