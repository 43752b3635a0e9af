"""The co-training inference benchmark runs both ways on a real pool slice, each in its own
process, and appends one record whose ways predicted the same rows."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA

ROOT = Path(__file__).resolve().parents[2]


def test_both_ways_predict_the_same_rows_and_are_recorded(tmp_path):
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent")
    cmd = [sys.executable, "-m", "benchmarks.bench_cotrain_inference",
           "--vocab", str(SHARED_DATA / "mbert"), "--pool",
           str(SHARED_DATA / "marc" / "de.train_pool.csv"), "--format", "marc", "--rows", "40",
           "--max-len", "32", "--repeat", "1", "--out", str(tmp_path)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "cotrain" in done.stdout and "selftrain" in done.stdout
    (path,) = tmp_path.glob("cotrain_inference_cpu_*.json")
    (record,) = [json.loads(x) for x in path.read_text().splitlines()]
    ways = {r["way"]: r for r in record["results"]}
    assert set(ways) == {"cotrain", "selftrain"}
    assert ways["cotrain"]["rows"] == ways["selftrain"]["rows"] == 40
    assert all(
        r["pass_s"] > 0 and r["prepare_s"] > 0 and r["peak_rss_mib"] > 0 for r in ways.values()
    )
    sums = [ways[w]["last_label_prob_sum"] for w in ("cotrain", "selftrain")]
    assert sums[0] == pytest.approx(sums[1], rel=2e-3)  # the same rows, the same model
    assert record["max_len"] == 32 and record["format"] == "marc"
