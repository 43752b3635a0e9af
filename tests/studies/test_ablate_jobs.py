"""``ablate --jobs N`` and ``--plan``: the rows and seeds run side by side in their own
processes, each row after the one that makes the stages it reads, and the tables and models are
the ones a serial run makes, bit for bit."""

import hashlib
import json
import os
import shlex
import subprocess
import sys

import pytest
from click.testing import CliRunner

from xlt_engine.cli import main
from xlt_engine.studies.ablate import RowJob, row_jobs
from xlt_engine.studies.jobs import job_env, run_jobs

STEPS = ["btf.train.max_steps=4", "finetune.train.max_steps=8", "selftrain.soft.max_steps=4",
         "selftrain.hard.max_steps=4"]  # fmt: skip


@pytest.fixture(scope="module")
def qs(tmp_path_factory):
    from xlt_engine.quickstart import Sizes, prepare

    root = tmp_path_factory.mktemp("jobs")
    return prepare(root / "qs", seed=3, sizes=Sizes(train=60, dev=20, test=40))


def _common(cfg_path, rows: str, seeds: str = "1,2") -> list[str]:
    common = ["ablate", "--config", str(cfg_path), "--seeds", seeds, "--rows", rows]
    return [*common, "--no-progress", *(a for s in STEPS for a in ("--set", s))]


def _made(root) -> dict[str, str]:
    """sha256 of every model file, evaluation and per-seed table below ``root``, by relative
    path (the run folder's own name, which results.json holds, read as ROOT)."""
    keep = [p for p in root.rglob("*") if p.name in ("model.safetensors", "results.json")]
    keep += list(root.glob("seed-*/all*.json"))
    here = str(root).encode()
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes().replace(here, b"ROOT")).hexdigest()
        for p in keep
    }


def test_rows_and_seeds_side_by_side_give_the_serial_tables_and_models(qs, tmp_path):
    import torch

    common = _common(qs, "Ours,- AT,- ST,soft only")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each job's process, on 2 cores and --jobs 2: the same sums
    try:
        serial = CliRunner().invoke(main, [*common, "--out", str(tmp_path / "serial")])
    finally:
        torch.set_num_threads(threads)
    assert serial.exit_code == 0, serial.output
    # more processes than seeds: a job per row and seed; as many: a job per seed
    side = CliRunner().invoke(main, [*common, "--out", str(tmp_path / "jobs"), "--jobs", "3"])
    assert side.exit_code == 0, side.output
    for seed in (1, 2):  # each row and seed in its own process
        for row in ("Ours", "- AT", "- ST", "soft only"):
            assert f"[seed {seed} {row}] " in side.output
    seeds = CliRunner().invoke(main, [*common, "--out", str(tmp_path / "seeds"), "--jobs", "2"])
    assert seeds.exit_code == 0, seeds.output
    assert "[seed 1] " in seeds.output and "[seed 2] " in seeds.output
    assert "[seed 1 Ours] " not in seeds.output
    a = json.loads((tmp_path / "serial" / "ablation.json").read_text())
    assert list(a["scores"]) == ["Ours", "- AT", "- ST", "soft only"]
    assert all(len(v["tgt"]) == 2 for v in a["scores"].values())
    assert len(set(a["scores"]["Ours"]["tgt"])) == 2  # two seeds, two models: a real comparison
    made = _made(tmp_path / "serial")
    assert sum(k.endswith("model.safetensors") for k in made) >= 2 * 4
    for folder, out in (("jobs", side.output), ("seeds", seeds.output)):
        b = json.loads((tmp_path / folder / "ablation.json").read_text())
        assert a["scores"] == b["scores"]
        assert _made(tmp_path / folder) == made  # every model, evaluation, per-seed table
        # the last pass found every stage finished: it trained nothing
        last = out.split("the tables over them:")[1]
        assert "not run again" in last and "-> " not in last


def test_each_row_waits_for_the_job_that_makes_its_stages(qs):
    from xlt_engine.engine.experiment.config import load_config

    cfg = load_config(qs, [])
    jobs = row_jobs(cfg, [1, 2])
    assert len(jobs) == 14 and [j.seed for j in jobs] == [1] * 7 + [2] * 7
    by = {(j.seed, j.rows[0]): (i, j) for i, j in enumerate(jobs)}
    for seed in (1, 2):
        st = by[seed, "- ST"][0]  # btf and the teacher's fine-tuning: made once, by - ST
        for row in ("Ours", "- AT", "- VM", "soft only"):
            i, job = by[seed, row]
            assert job.after == (st,) and i > st
        for row in ("- ST", "direct transfer", "- BTF"):  # start from nothing another job makes
            assert by[seed, row][1].after == ()
    assert not any(j.helper for j in jobs)
    # - ST not asked for but read by two rows: its job runs first, as a helper
    helped = row_jobs(cfg, [1], rows=["Ours", "- AT"])
    st, ours, at = ("- ST",), ("Ours",), ("- AT",)
    assert helped == [RowJob(1, st, (), True), RowJob(1, ours, (0,)), RowJob(1, at, (0,))]
    assert row_jobs(cfg, [1], rows=["Ours"]) == [RowJob(1, ours)]  # one row: no helper
    # - VM reads - ST's btf but fine-tunes its own head: a helper still, so that - VM waits for
    # btf and not for all of - AT's self-training
    vm = ("- VM",)
    both = row_jobs(cfg, [1], rows=["- AT", "- VM"])
    assert both == [RowJob(1, st, (), True), RowJob(1, at, (0,)), RowJob(1, vm, (0,))]
    # - BTF reads none of - ST's stages: nothing to wait for, no helper
    btf = ("- BTF",)
    assert row_jobs(cfg, [1], rows=["- AT", "- BTF"]) == [RowJob(1, btf), RowJob(1, at)]
    whole = row_jobs(cfg, [1, 2], rows=["- AT", "Ours"], whole_seeds=True)
    assert whole == [RowJob(1, ("Ours", "- AT")), RowJob(2, ("Ours", "- AT"))]


def test_the_plan_run_in_its_order_gives_the_serial_table(qs, tmp_path):
    common = _common(qs, "Ours,- ST", seeds="1")
    res = CliRunner().invoke(main, [*common, "--out", str(tmp_path / "plan"), "--plan"])
    assert res.exit_code == 0, res.output
    lines = [ln.split("\t") for ln in res.output.splitlines() if not ln.startswith("#")]
    assert [(i, after) for i, after, _ in lines] == [("1", "-"), ("2", "1"), ("table", "1,2")]
    assert not (tmp_path / "plan").exists()  # a plan runs nothing
    for _, _, cmd in lines:  # a shell loop over the plan, in its order
        words = shlex.split(cmd)
        assert words[0] == "xlt-engine"
        subprocess.run([sys.executable, "-m", "xlt_engine.cli", *words[1:]], check=True)
    serial = CliRunner().invoke(main, [*common, "--out", str(tmp_path / "serial")])
    assert serial.exit_code == 0, serial.output
    a = json.loads((tmp_path / "serial" / "ablation.json").read_text())
    b = json.loads((tmp_path / "plan" / "ablation.json").read_text())
    assert a["scores"] == b["scores"] and _made(tmp_path / "serial") == _made(tmp_path / "plan")


def test_a_job_that_fails_is_named_and_the_jobs_after_it_do_not_start(tmp_path):
    said = []
    jobs = [RowJob(1, ("- ST",)), RowJob(1, ("Ours",), (0,)), RowJob(2, ("- ST",))]
    status = run_jobs(["ablate", "--config", str(tmp_path / "none.toml")], jobs, 2, said.append)
    assert status[1] is None and status[0] != 0 and status[2] != 0
    assert any(line.startswith("[seed 1 - ST] ") for line in said)
    assert not any(line.startswith("[seed 1 Ours] ") for line in said)
    assert any("none.toml" in line for line in said)
    for flag in (["--jobs", "2"], ["--plan"]):
        res = CliRunner().invoke(
            main, ["ablate", "--config", "x.toml", "--seeds", "1,2", "--study", "rounds", *flag]
        )
        assert res.exit_code != 0 and "of --study ablation, not --study rounds" in res.output


def test_each_job_gets_a_gpu_in_turn_or_a_share_of_the_cores(monkeypatch):
    env = {"PATH": "/bin"}
    assert [job_env(i, 3, 2, env)["CUDA_VISIBLE_DEVICES"] for i in range(3)] == ["0", "1", "0"]
    visible = {**env, "CUDA_VISIBLE_DEVICES": "3,5"}
    assert [job_env(i, 2, 2, visible)["CUDA_VISIBLE_DEVICES"] for i in range(3)] == ["3", "5", "3"]
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    cpu = job_env(0, 4, 0, env)
    assert (
        cpu["OMP_NUM_THREADS"] == cpu["MKL_NUM_THREADS"] == "4"
        and "CUDA_VISIBLE_DEVICES" not in cpu
    )
    assert job_env(0, 32, 0, env)["OMP_NUM_THREADS"] == "1"


def test_a_lab_study_with_jobs_writes_the_serial_studys_scores(qs, tmp_path, capsys):
    """``python -m lab.study --jobs N`` (the lab's study scripts) spreads the rows and seeds like
    ``ablate --jobs`` and writes the serial study's scores and models."""
    import torch

    from lab.study import main as study

    sets = [a for s in STEPS for a in ("--set", s)]
    common = ["--config", str(qs), "--seeds", "1", "--rows", "Ours,- ST", *sets]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each job's process
    try:
        study([*common, "--name", "serial", "--out", str(tmp_path / "serial"),
               "--results", str(tmp_path / "results")])  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    capsys.readouterr()
    study([*common, "--name", "side", "--out", str(tmp_path / "side"), "--jobs", "2",
           "--results", str(tmp_path / "results")])  # fmt: skip
    out = capsys.readouterr().out
    assert "[seed 1 - ST] " in out and "[seed 1 Ours] " in out  # each row in its own process
    assert "--jobs 2: 2 jobs finished" in out
    reports = {p.stem.split("_")[1]: json.loads(p.read_text())
               for p in (tmp_path / "results").glob("study_*.json")}  # fmt: skip
    assert reports["side"]["rows"].keys() == {"Ours", "- ST"}
    resolved = reports["side"]["resolved"]  # what ran, the where aside (lab.tables compares it)
    assert resolved == reports["serial"]["resolved"] and resolved["selftrain"]["rounds"] >= 1
    assert not {"targets", "languages", "out", "device"} & resolved.keys()
    stages = {row: reports["side"]["rows"][row]["stages"] for row in ("Ours", "- ST")}
    assert stages == {"Ours": ["btf", "evaluate", "finetune", "selftrain"],
                      "- ST": ["btf", "evaluate", "finetune"]}  # fmt: skip
    for d in reports["side"]["details"]:  # the folders each row's score read, by name
        assert d["row_folders"] == {"Ours": ["btf", "evaluate-selftrain", "finetune", "selftrain"],
                                    "- ST": ["btf", "evaluate-finetune", "finetune"]}  # fmt: skip
    for row in ("Ours", "- ST"):
        assert reports["side"]["rows"][row]["scores"] == reports["serial"]["rows"][row]["scores"]
    made = _made(tmp_path / "serial")
    assert sum(k.endswith("model.safetensors") for k in made) >= 4  # btf, finetune, 2 students
    assert _made(tmp_path / "side") == made
    with pytest.raises(SystemExit):
        study([*common, "--name", "x", "--out", str(tmp_path / "x"), "--jobs", "0"])


def _gone(pid: int) -> bool:
    """The process has exited (a zombie no one has reaped yet counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def _wait_gone(pids, seconds: float) -> bool:
    import time

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if all(_gone(p) for p in pids):
            return True
        time.sleep(0.05)
    return all(_gone(p) for p in pids)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_job_dies_with_the_process_that_started_it(tmp_path):
    """SIGKILL to the starting process kills a silent job at once (before: it slept on as an
    orphan, free to write into folders a --resume then used); a job whose parent died before
    it could follow dies at once; without the variable the call does nothing."""
    from xlt_engine.studies.jobs import PARENT

    child = (
        "import os, time; from xlt_engine.studies.jobs import follow_parent; follow_parent(); "
        f"assert {PARENT!r} not in os.environ; print('following', flush=True); time.sleep(60)"
    )
    middle = (
        "import os, subprocess, sys, time; "
        f"env = {{**os.environ, {PARENT!r}: str(os.getpid())}}; "
        f"p = subprocess.Popen([sys.executable, '-c', {child!r}], env=env); "
        "print(p.pid, flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", middle], stdout=subprocess.PIPE, text=True)
    job = int(proc.stdout.readline())
    assert proc.stdout.readline().strip() == "following"  # the job's line, through the pipe
    assert not _gone(job)
    proc.kill()
    proc.wait()
    assert _wait_gone([job], 10), "the job outlived the process that started it"
    env = {k: v for k, v in os.environ.items() if k != PARENT}
    said = "from xlt_engine.studies.jobs import follow_parent; follow_parent(); print('alive')"
    lost = subprocess.run(
        [sys.executable, "-c", said], env={**env, PARENT: "1"}, capture_output=True, text=True
    )
    assert lost.returncode == -9 and "alive" not in lost.stdout  # its parent is not pid 1
    plain = subprocess.run([sys.executable, "-c", said], env=env, capture_output=True, text=True)
    assert plain.returncode == 0 and plain.stdout == "alive\n"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and PR_SET_PDEATHSIG")
def test_a_kill_9_of_jobs_then_resume_gives_the_serial_tables_and_models(qs, tmp_path):
    """kill -9 of ``ablate --jobs 2`` while its jobs train: no job outlives it, and the same
    command with --resume ends with the serial run's table and every model, bit for bit."""
    import signal

    import torch

    common = _common(qs, "Ours,- ST")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each job's process: the same sums
    try:
        serial = CliRunner().invoke(main, [*common, "--out", str(tmp_path / "serial")])
    finally:
        torch.set_num_threads(threads)
    assert serial.exit_code == 0, serial.output
    out = tmp_path / "jobs"
    cmd = [sys.executable, "-m", "xlt_engine.cli", *common, "--out", str(out), "--jobs", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in proc.stdout:  # both seeds' jobs started, one of them into a training stage
        seen.append(line)
        if sum(ln.startswith("[seed ") for ln in seen) and "finetune -> " in line:
            break
    kids = []
    for task in os.listdir(f"/proc/{proc.pid}/task"):
        with open(f"/proc/{proc.pid}/task/{task}/children") as f:
            kids += [int(p) for p in f.read().split()]
    assert kids, "".join(seen)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _wait_gone(kids, 15), "a job outlived ablate --jobs"
    assert not (out / "ablation.json").exists()  # stopped before its table
    again = CliRunner().invoke(main, [*common, "--out", str(out), "--jobs", "2", "--resume"])
    assert again.exit_code == 0, again.output
    a = json.loads((tmp_path / "serial" / "ablation.json").read_text())
    b = json.loads((out / "ablation.json").read_text())
    assert a["scores"] == b["scores"] and _made(tmp_path / "serial") == _made(out)
