"""The kernel benchmark runs on CPU (torch providers, reduced sizes), prints a table and appends
to its JSON/CSV files."""

import csv
import json

import pytest
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
    for op in ("mlm", "mse", "kl", "voters", "threshold", "supcon"):
        assert f"\n{op} " in first.output
    again = runner.invoke(main, [*args, "--op", "threshold", "--out", str(tmp_path)])
    assert again.exit_code == 0, again.output
    (json_path,) = tmp_path.glob("kernels_cpu*.json")
    runs = json.loads(json_path.read_text())
    assert len(runs) == 2 and runs[0]["reduced_sizes"] is True
    assert {r["op"] for r in runs[0]["rows"]} == {
        "mlm",
        "mse",
        "kl",
        "voters",
        "threshold",
        "supcon",
    }
    assert all(r["provider"] == "torch" and r["ms"] > 0 for r in runs[0]["rows"])
    assert runs[0]["torch"] and runs[0]["triton"] and "device" in runs[0]
    with open(json_path.with_suffix(".csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(runs[0]["rows"]) + len(runs[1]["rows"])
    assert {"ms", "gbps", "tflops", "roofline_ms", "provider", "git_sha"} <= set(rows[0])


def test_every_row_reports_its_roofline_from_the_measured_yardsticks(tmp_path):
    """measured / roofline: the roofline is the counted work at the matmul rate and copy
    bandwidth measured in the same run; the MLM loss counts it for full and frozen only, the
    contrastive loss not at all (its flops are counted, its bytes are not)."""
    args = ["bench", "kernels", "--provider", "torch", "--reps", "1", "--out", str(tmp_path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "of roof" in result.output
    (run,) = json.loads(next(tmp_path.glob("kernels_cpu*.json")).read_text())
    yard = run["yardsticks"]
    assert yard["matmul_tflops"] > 0 and yard["copy_gbps"] > 0
    modes = {(r["op"], r["mode"]) for r in run["rows"]}
    assert ("mlm", "frozen") in modes and ("mse", "frozen") not in modes
    n, v, h = 256, 8192, 256  # the CPU shape
    for r in run["rows"]:
        if r["op"] == "mlm" and r["mode"] in ("forward", "backward"):
            assert "roofline_ms" not in r
            continue
        if r["op"] == "supcon":
            b, d = 1024, 768
            flops = {"forward": 2, "backward": 4, "full": 6}[r["mode"]] * b * b * d
            assert r["tflops"] * 1e9 * r["ms"] == pytest.approx(flops)
            assert "roofline_ms" not in r
            continue
        if r["op"] == "mlm":
            flops = {"full": 6, "frozen": 4}[r["mode"]] * n * v * h
            assert r["tflops"] * 1e9 * r["ms"] == pytest.approx(flops)
            want = flops / (yard["matmul_tflops"] * 1e9) + 4 * n * v * 4 / (yard["copy_gbps"] * 1e6)
        else:
            want = r["gbps"] * r["ms"] / yard["copy_gbps"]
        assert r["roofline_ms"] == pytest.approx(want, rel=1e-9), r


def test_no_save_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        main, ["bench", "kernels", "--op", "voters", "--provider", "torch", "--no-save"]
    )
    assert result.exit_code == 0, result.output
    assert not any(tmp_path.iterdir())


def test_cpu_table_units_fit_json_is_strict_and_nothing_is_written_without_out(
    tmp_path, monkeypatch
):
    """It printed 0.0 TFLOP/s and 0.0 GB/s, an empty peak column, wrote NaN into the JSON and
    wrote into benchmarks/results of the working directory unasked."""
    import re

    from xlt_engine.bench.kernels import format_rate

    assert format_rate(0.0983, "FLOP/s") == "98.3 GFLOP/s"
    assert format_rate(2.5, "FLOP/s") == "2.5 TFLOP/s"
    assert format_rate(0.0004, "B/s") == "400.0 kB/s"
    monkeypatch.chdir(tmp_path)
    args = ["bench", "kernels", "--op", "mse", "--op", "voters", "--provider", "torch"]
    res = CliRunner().invoke(main, [*args, "--reps", "1"])
    assert res.exit_code == 0, res.output
    assert not any(tmp_path.iterdir())  # no --out: printed only
    assert not re.search(r"\b0\.0 [TGMk]?(FLOP|B)/s", res.output), res.output
    assert "yardsticks: matmul " in res.output
    rows = [x for x in res.output.splitlines() if x.startswith(("mse ", "voters "))]
    assert rows and all(x.rstrip().endswith("n/a") for x in rows)
    res = CliRunner().invoke(main, [*args, "--reps", "1", "--out", str(tmp_path / "r")])
    (path,) = (tmp_path / "r").glob("kernels_cpu*.json")
    text = path.read_text()
    assert "NaN" not in text
    runs = json.loads(text)
    assert all(r["peak_mib"] is None for r in runs[0]["rows"])
