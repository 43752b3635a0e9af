"""The shell scripts a user or the lab runs: each one parses, and the stage-2 study script names
its missing argument (a quote inside ``${1:?...}`` once broke it before it ran anything)."""

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(
    [
        *ROOT.glob("lab/*.sh"),
        *ROOT.glob("benchmarks/*.sh"),
        *ROOT.glob("tools/*.sh"),
        ROOT / ".ci/run",
    ]
)


def test_scripts_found():
    names = {p.name for p in SCRIPTS}
    assert {"study_init_conll_e5small_stage2.sh", "gpu_standing.sh", "run"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_script_parses(script):
    res = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert res.returncode == 0, f"{script}: {res.stderr}"


def test_stage2_names_its_missing_arm():
    res = subprocess.run(
        ["bash", str(ROOT / "lab/study_init_conll_e5small_stage2.sh")],
        capture_output=True,
        text=True,
    )
    assert res.returncode != 0
    assert "give the row name of the best stage-1 arm first" in res.stderr


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"STUDY": "stage3"}, "STUDY must be rules or stage2, got 'stage3'"),
        ({"TARGETS": "esp deu"}, "TARGETS takes esp and ned, got 'deu'"),
    ],
)
def test_gpu_study_names_a_bad_choice(env, message):
    res = subprocess.run(
        ["bash", str(ROOT / "lab/study_rules_gpu.sh"), "prepare"],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )
    assert res.returncode == 2
    assert message in res.stderr
