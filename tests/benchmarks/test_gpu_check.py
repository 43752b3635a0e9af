"""benchmarks/gpu_check.sh on CPU (--dry-run): every step runs, within its time limit, and its
logs, result files and the compact table land in the folder given (or in $OUT)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
STEPS = ("tests", "kernels", "encoder", "btf_step", "round")


def run_check(*args, env_out=None, timeout=600):
    # python3 on PATH is this interpreter, as on the GPU machine it is the system one
    env = dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
    env.pop("TRITON_INTERPRET", None)
    env.pop("OUT", None)
    if env_out is not None:
        env["OUT"] = str(env_out)
    return subprocess.run(
        ["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def test_dry_run_runs_every_step_and_lands_its_files_in_OUT(tmp_path):
    out = tmp_path / "out"
    done = run_check("--dry-run", env_out=out)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    steps = (out / "steps.txt").read_text().splitlines()
    assert [s.split()[0] for s in steps] == list(STEPS)
    assert all(" rc=0 " in s for s in steps), steps
    for step in STEPS:
        assert (out / "logs" / f"{step}.log").stat().st_size > 0
    for name in ("kernels", "encoder", "btf_step", "round"):
        assert list(out.glob(f"{name}_cpu_*.json")), name
    kernels = json.loads(next(out.glob("kernels_cpu_*.json")).read_text())
    ops = {r["op"] for r in kernels[0]["rows"]}
    assert ops == {"mlm", "mse", "kl", "voters", "threshold", "supcon"}
    assert "torch" in (out / "environment.txt").read_text()
    summary = (out / "summary.txt").read_text()
    for part in (
        "steps (name, exit status, seconds)",
        "kernels ",
        "encoder ",
        "btf_step ",
        "round ",
    ):
        assert part in summary
    assert done.stdout.rstrip().endswith(summary.rstrip().splitlines()[-1])  # printed last


def test_bad_arguments_are_refused_before_any_work(tmp_path):
    done = run_check("--with", "everything", "--out", str(tmp_path / "o"))
    assert done.returncode == 2 and "--with takes compile, liger and cce" in done.stderr
    done = run_check("--frobnicate")
    assert done.returncode == 2 and "unknown argument '--frobnicate'" in done.stderr
    done = run_check("--only", "encoder", "--out", str(tmp_path / "o"))  # a --dry-run step
    assert (
        done.returncode == 2 and "--only takes steps of: tests kernels encoder_amp" in done.stderr
    )
    assert not (tmp_path / "o").exists()


def test_a_failing_step_is_recorded_and_fails_the_check(tmp_path):
    """A step that fails (here: a data folder without the files) is logged with its status,
    the later steps still run, and the script exits non-zero; --only runs the steps it names."""
    out = tmp_path / "out"
    empty = tmp_path / "empty"
    empty.mkdir()
    only = "encoder,btf_step,round"
    done = run_check("--dry-run", "--out", str(out), "--data", str(empty), "--only", only)
    assert done.returncode != 0
    steps = dict(s.split()[:2] for s in (out / "steps.txt").read_text().splitlines())
    assert list(steps) == only.split(",")
    assert steps["btf_step"] != "rc=0" and steps["round"] != "rc=0"
    assert steps["encoder"] == "rc=0"
    assert not (out / "logs" / "kernels.log").exists()
