"""Every kernel compiles for sm_90 at its launchers' settings with no spills, checked without a
GPU (the script runs without TRITON_INTERPRET, so in a subprocess)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton.backends.nvidia")

SCRIPT = Path(__file__).with_name("sm90_compile.py")
ROOT = Path(__file__).resolve().parents[2]


def run_script(code: list[str], timeout=600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(SCRIPT.parent)])
    return subprocess.run(
        [sys.executable, *code], env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def test_every_kernel_compiles_for_sm90_without_spills(tmp_path):
    done = run_script([str(SCRIPT), "--json", str(tmp_path / "res.json")])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "FAIL" not in done.stdout
    kernels = json.loads((tmp_path / "res.json").read_text())["kernels"]
    names = {k["name"].split()[0] for k in kernels}
    assert names == {"mlm", "mse", "kl", "voters", "threshold", "supcon"}
    assert len(kernels) == 73  # supcon: 3 dtypes x 3 widths x 4 kernels; kl: 3 dtypes x 3 C
    for k in kernels:
        assert k["spill_stores"] == 0 and k["spill_loads"] == 0, k
        assert k["shared"] <= 227 * 1024 and 0 < k["reg"] <= 255, k
    # the launchers' own settings were compiled: the row-block tiles are 512 elements
    mse9 = next(k for k in kernels if k["name"] == "mse bf16 C=9")
    assert mse9["config"]["BLOCK_R"] * mse9["config"]["BLOCK_C"] == 512


def test_the_check_sees_spills_and_the_old_tiles_spilled():
    """The tiles used before this table (2,048 elements over four warps) spill in voter_filter at
    C = 9; the resource reader must see that, or the check above proves nothing."""
    code = (
        "import triton, sm90_compile as s\n"
        "name, (k, a, c) = next(x for x in s.launches() if x[0] == 'voters bf16 C=9')\n"
        "c = dict(c, BLOCK_R=128, num_warps=4)\n"
        "ck = triton.compile(s.source(k, a, c), target=s.TARGET, options={'num_warps': 4})\n"
        "r = s.resources(ck.asm['cubin'])\n"
        "print(r['spill_stores'], r['reg'])\n"
    )
    done = run_script(["-c", code])
    assert done.returncode == 0, done.stdout + done.stderr
    stores, regs = map(int, done.stdout.split()[-2:])
    assert stores > 0 and regs >= 160
