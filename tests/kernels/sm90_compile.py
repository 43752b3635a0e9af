"""Compile every Triton kernel for sm_90 (H100/H200) at the launchers' own settings, without a GPU.

The real launchers run on small CPU tensors inside ``xlt_engine.kernels._launch.recording()``:
each launch is recorded instead of run, then compiled here with the argument types and the
16-byte alignment Triton specialises on, and the block sizes, warps and stages the launcher chose
from the shared table. No signature or block size is copied here. For each kernel the cubin's
registers, spills (STL/LDL instructions) and shared memory are read with the cuobjdump that Triton
ships; a kernel over 227 KB of shared memory, or with any spill store or load, fails. Run without TRITON_INTERPRET:

    python tests/kernels/sm90_compile.py [--json resources.json] [--jobs N]

With another Triton first on ``PYTHONPATH`` (CI does this with Triton 3.6.0, the version of our
GPU machines) it checks that version's compiler and API.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

if os.environ.get("TRITON_INTERPRET"):
    sys.exit("unset TRITON_INTERPRET: the interpreter's kernels cannot be compiled")

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from xlt_engine.kernels._launch import recording
from xlt_engine.kernels.mlm_loss import fused_mlm_loss_fwd
from xlt_engine.kernels.soft_label_kl import soft_label_kl_fwd
from xlt_engine.kernels.soft_label_mse import soft_label_mse_fwd
from xlt_engine.kernels.supcon_loss import SupConFunction
from xlt_engine.kernels.threshold_curve import threshold_curve_counts
from xlt_engine.kernels.voter_filter import voter_filter_fwd

SHARED_LIMIT = 227 * 1024  # H100/H200 shared memory per block
TARGET = GPUTarget("cuda", 90, 32)
TYPES = {
    torch.float32: "fp32",
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
    torch.float64: "fp64",
    torch.int64: "i64",
    torch.int32: "i32",
    torch.int8: "i8",
    torch.bool: "i1",
}
OPTIONS = ("num_warps", "num_stages")


def launches() -> list[tuple[str, tuple]]:
    """Run every launcher at the settings it uses, recording (name, launch) pairs."""
    out = []
    g = torch.Generator().manual_seed(0)

    def record(name, fn, *args):
        with recording() as got:
            fn(*args)
        out.extend((f"{name} #{i}" if len(got) > 1 else name, x) for i, x in enumerate(got))

    for dt in (torch.bfloat16, torch.float16, torch.float32):
        h, w, b = torch.randn(8, 32, generator=g), torch.randn(100, 32, generator=g), None
        labels = torch.randint(0, 100, (8,), generator=g)
        h, w = h.to(dt), w.to(dt)
        b = torch.zeros(100, dtype=dt)
        record(f"mlm rows {TYPES[dt]} grad", fused_mlm_loss_fwd, h, w, b, labels, -100, (True,) * 3)
        record(
            f"mlm rows {TYPES[dt]} loss", fused_mlm_loss_fwd, h, w, None, labels, -100, (False,) * 3
        )
        for c in (2, 9, 16):
            z = torch.randn(3, 64, c, generator=g).to(dt)
            p = torch.rand(64, c, generator=g)
            mask = torch.ones(64, dtype=torch.bool)
            record(f"mse {TYPES[dt]} C={c}", soft_label_mse_fwd, z, p, mask, True, True)
            record(f"kl {TYPES[dt]} C={c}", soft_label_kl_fwd, z, p, mask, True)
            record(f"voters {TYPES[dt]} C={c}", voter_filter_fwd, z, torch.zeros(1))
        for d in (48, 768, 1024):
            h = torch.randn(256, d, generator=g).to(dt).requires_grad_()
            y = torch.randint(0, 3, (256,), generator=g)

            def supcon(h=h, y=y):  # forward and backward: the launches are recorded, not run
                SupConFunction.apply(h, y, 0.3).backward()

            record(f"supcon {TYPES[dt]} D={d}", supcon)
    for dt in (torch.float32, torch.float64):
        for k in (8, 50):
            conf = torch.rand(100, generator=g).to(dt)
            thr = torch.linspace(0, 1, k, dtype=dt)
            correct = torch.ones(100, dtype=torch.bool)
            record(f"threshold {TYPES[dt]} K={k}", threshold_curve_counts, conf, correct, thr)
    return out


def source(kernel, args: tuple, cfg: dict) -> ASTSource:
    """The ASTSource Triton would build for this launch: types, constants and alignment."""
    names = kernel.arg_names
    consts = {k: v for k, v in cfg.items() if k not in OPTIONS}
    signature, constexprs, attrs = {}, {}, {}
    values = list(args) + [consts[n] for n in names[len(args) :]]
    for i, (name, v) in enumerate(zip(names, values, strict=True)):
        if name in consts:
            signature[name], constexprs[(i,)] = "constexpr", v
        elif isinstance(v, torch.Tensor):
            signature[name] = "*" + TYPES[v.dtype]
            if v.data_ptr() % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(v, bool):
            signature[name] = "i1"
        elif isinstance(v, int):
            if v == 1:  # Triton turns an integer argument equal to 1 into a constant
                signature[name], constexprs[(i,)] = "constexpr", 1
                continue
            signature[name] = "i32" if -(2**31) <= v < 2**31 else "i64"
            if v % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(v, float):
            signature[name] = "fp32"
        else:
            raise TypeError(f"{kernel.__name__}: argument {name} of type {type(v).__name__}")
    return ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)


def resources(cubin: bytes) -> dict:
    """Registers, stack bytes and shared bytes of a cubin (cuobjdump's resource usage), and its
    spill stores and loads (STL / LDL instructions in the SASS)."""
    tool = str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()

        def dump(flag):
            return subprocess.run(
                [tool, flag, f.name], capture_output=True, text=True, check=True
            ).stdout

        usage, sass = dump("--dump-resource-usage"), dump("-sass")
    found = {k.lower(): int(v) for k, v in re.findall(r"(REG|STACK|SHARED):(\d+)", usage)}
    if "reg" not in found:
        raise ValueError(f"cuobjdump printed no resource usage:\n{usage}")
    found["spill_stores"] = len(re.findall(r"\bSTL(?:\.\w+)*\s", sass))
    found["spill_loads"] = len(re.findall(r"\bLDL(?:\.\w+)*\s", sass))
    return found


_LAUNCHES: list[tuple[str, tuple]] = []  # every launch, recorded in each process (_record)


def _record() -> None:
    _LAUNCHES[:] = launches()


def check(i: int) -> tuple[dict | None, list[str], str]:
    """Compile launch ``i`` and read its resources: (its table row or None, its problems, the
    line to print)."""
    name, (kernel, args, cfg) = _LAUNCHES[i]
    options = {k: cfg[k] for k in OPTIONS if k in cfg}
    try:
        ck = triton.compile(source(kernel, args, cfg), target=TARGET, options=options)
        res = resources(ck.asm["cubin"])
    except Exception as e:  # report every kernel, then fail
        return None, ["error"], f"{name}: {type(e).__name__}: {str(e)[:600]}"
    res["shared"] = max(res.get("shared", 0), ck.metadata.shared)
    problems = []
    if res["shared"] > SHARED_LIMIT:
        problems.append(f"{res['shared']} bytes of shared memory, over {SHARED_LIMIT}")
    if res["spill_stores"] or res["spill_loads"]:
        problems.append(
            f"register spills: {res['spill_stores']} stores, {res['spill_loads']} loads"
        )
    line = (
        f"{name:26s} regs={res['reg']:3d} spills={res['spill_stores']:3d} "
        f"stack={res.get('stack', 0):4d} shared={res['shared']:6d} {cfg}"
    )
    if problems:
        line += f": {'; '.join(problems)}"
    return {"name": name, "config": cfg, **res}, problems, line


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, help="write the resources of every kernel here")
    parser.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1, help="kernels compiled at once"
    )
    ns = parser.parse_args()
    print(f"triton {triton.__version__}, target sm_{TARGET.arch}")
    _record()
    # each compile is independent (LLVM, ptxas and cuobjdump, mostly outside Python), so they
    # run in worker processes, which record the same launches and give the rows back in order.
    # Spawned, not forked: forking a process whose torch and Triton have started threads risks
    # a lock held by a thread that the child does not have
    jobs = max(1, min(ns.jobs, len(_LAUNCHES)))
    if jobs == 1:
        checked = [check(i) for i in range(len(_LAUNCHES))]
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_record) as pool:
            checked = list(pool.map(check, range(len(_LAUNCHES))))
    table = [row for row, _, _ in checked if row is not None]
    bad = sum(1 for _, problems, _ in checked if problems)
    for _, problems, line in checked:
        print(f"{'FAIL' if problems else 'ok  '} {line}")
    if ns.json:
        ns.json.write_text(json.dumps({"triton": triton.__version__, "kernels": table}, indent=1))
    print(f"{len(checked) - bad} ok, {bad} failed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
