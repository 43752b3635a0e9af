"""The kernel benchmark runs on CPU (torch providers, reduced sizes), prints a table and appends
to its JSON/CSV files."""

import csv
import json

from click.testing import CliRunner

from xlt_engine.cli import main


def test_cpu_run_prints_a_table_and_appends_results(tmp_path):
    runner = CliRunner()
    args = ["bench", "kernels", "--provider", "torch", "--provider", "triton", "--reps", "1"]
    first = runner.invoke(main, [*args, "--out", str(tmp_path)])
    assert first.exit_code == 0, first.output
    assert "No GPU: running the torch providers only, at reduced sizes (skipping triton)" in (
        first.output
    )
    for op in ("mlm", "mse", "voters", "threshold"):
        assert f"\n{op} " in first.output
    again = runner.invoke(main, [*args, "--op", "threshold", "--out", str(tmp_path)])
    assert again.exit_code == 0, again.output
    (json_path,) = tmp_path.glob("kernels_cpu*.json")
    runs = json.loads(json_path.read_text())
    assert len(runs) == 2 and runs[0]["reduced_sizes"] is True
    assert {r["op"] for r in runs[0]["rows"]} == {"mlm", "mse", "voters", "threshold"}
    assert all(r["provider"] == "torch" and r["ms"] > 0 for r in runs[0]["rows"])
    assert runs[0]["torch"] and runs[0]["triton"] and "device" in runs[0]
    with open(json_path.with_suffix(".csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(runs[0]["rows"]) + len(runs[1]["rows"])
    assert {"ms", "gbps", "tflops", "provider", "git_sha"} <= set(rows[0])


def test_no_save_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        main, ["bench", "kernels", "--op", "voters", "--provider", "torch", "--no-save"]
    )
    assert result.exit_code == 0, result.output
    assert not any(tmp_path.iterdir())
