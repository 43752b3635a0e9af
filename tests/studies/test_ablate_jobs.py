"""``ablate --jobs N``: the seeds run side by side in their own processes, and the table over
them is the one a serial run writes, score for score."""

import json
import os

from click.testing import CliRunner

from xlt_engine.cli import main
from xlt_engine.studies.jobs import run_seeds, seed_env

STEPS = ["btf.train.max_steps=4", "finetune.train.max_steps=8", "selftrain.soft.max_steps=4",
         "selftrain.hard.max_steps=4"]  # fmt: skip


def test_seeds_side_by_side_give_the_serial_table(tiny, tmp_path):
    from xlt_engine.quickstart import Sizes, prepare

    cfg_path = prepare(tmp_path / "qs", seed=3, sizes=Sizes(train=60, dev=20, test=40))
    common = ["ablate", "--config", str(cfg_path), "--seeds", "1,2", "--rows", "Ours,- ST"]
    common += ["--no-progress", *(a for s in STEPS for a in ("--set", s))]
    serial = CliRunner().invoke(main, [*common, "--out", str(tmp_path / "serial")])
    assert serial.exit_code == 0, serial.output
    side = CliRunner().invoke(main, [*common, "--out", str(tmp_path / "jobs"), "--jobs", "2"])
    assert side.exit_code == 0, side.output
    assert "[seed 1] " in side.output and "[seed 2] " in side.output  # each seed's own process
    a = json.loads((tmp_path / "serial" / "ablation.json").read_text())
    b = json.loads((tmp_path / "jobs" / "ablation.json").read_text())
    assert a["scores"] == b["scores"] and list(b["scores"]) == ["Ours", "- ST"]
    assert all(len(v["tgt"]) == 2 for v in b["scores"].values())
    assert len(set(b["scores"]["Ours"]["tgt"])) == 2  # two seeds, two models: a real comparison
    # the last pass found every stage finished: it trained nothing
    last = side.output.split("the table over them:")[1]
    assert "not run again" in last and "-> " not in last


def test_a_seed_that_fails_is_named_and_jobs_is_for_the_ablation_only(tmp_path):
    said = []
    status = run_seeds(["ablate", "--config", str(tmp_path / "none.toml")], [1, 2], 2, said.append)
    assert set(status) == {1, 2} and all(rc != 0 for rc in status.values())
    assert any(line.startswith("[seed 1] ") for line in said)
    assert any("none.toml" in line for line in said)
    res = CliRunner().invoke(
        main, ["ablate", "--config", "x.toml", "--seeds", "1,2", "--study", "rounds", "--jobs", "2"]
    )
    assert res.exit_code != 0 and "--jobs runs the seeds of --study ablation" in res.output


def test_each_seed_gets_a_gpu_in_turn_or_a_share_of_the_cores(monkeypatch):
    env = {"PATH": "/bin"}
    assert [seed_env(i, 3, 2, env)["CUDA_VISIBLE_DEVICES"] for i in range(3)] == ["0", "1", "0"]
    visible = {**env, "CUDA_VISIBLE_DEVICES": "3,5"}
    assert [seed_env(i, 2, 2, visible)["CUDA_VISIBLE_DEVICES"] for i in range(3)] == ["3", "5", "3"]
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    cpu = seed_env(0, 4, 0, env)
    assert (
        cpu["OMP_NUM_THREADS"] == cpu["MKL_NUM_THREADS"] == "4"
        and "CUDA_VISIBLE_DEVICES" not in cpu
    )
    assert seed_env(0, 32, 0, env)["OMP_NUM_THREADS"] == "1"
