"""Launch configurations, in one table, and the one place the launchers start a kernel.

``config(name, ...)`` gives the block sizes (constexpr arguments), warps and stages a launcher uses;
``launch(kernel, grid, *args, **config)`` starts it. The sm_90 compile check
(``tests/kernels/sm90_compile.py``) runs the real launchers inside ``recording()``: each launch is
recorded (kernel, argument values, config) instead of run, then compiled for H100/H200 with the
argument types and 16-byte alignment Triton would specialise on. So the check compiles what the
launchers launch, with no second copy of any signature or block size.

Block sizes of the row-block kernels are chosen by register budget (``mlm_rows`` is measured on an
H100, below): a row-block kernel holds
``BLOCK_R x BLOCK_C`` values per live tensor. With 2,048 elements over 128 threads,
``soft_label_mse`` needed 223-244 registers at C = 2 and 9 and ``voter_filter`` 168 with spill
stores (sm_90, Triton 3.9). 1,024 elements over 256 threads still spilled in ``soft_label_mse``
at C = 9 under Triton 3.6 (capped at 64 registers); 512 elements over 128 threads need at most
72 registers and no spills under both versions, so seven blocks of four warps fit on an SM. The
compile test fails on any spill.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import triton

ROW_BLOCK_ELEMS = 512  # elements of one [rows, classes] tile in the row-block kernels


def _row_block(classes: int) -> dict:
    block_c = triton.next_power_of_2(max(classes, 1))
    return dict(BLOCK_C=block_c, BLOCK_R=max(16, ROW_BLOCK_ELEMS // block_c), num_warps=4)


def _mlm_rows(dtype_bytes: int) -> dict:
    # One program per row, BLOCK_V = 1,024 over 8 warps (4 elements per thread). Measured on an
    # H100 in bf16 (benchmarks/tune_mlm_rows.py, 2026-11-23): 2.44 ms at N = 8,192 rows (2.40
    # TB/s) against 3.59 ms for the 2,048 this table held; 0.228 against 0.321 ms at N = 614;
    # 4 warps, larger blocks and num_stages 1-2 were no faster.
    del dtype_bytes  # the same in fp32 (4 fp32 = one 16-byte load per thread)
    return dict(BLOCK_V=1024, num_warps=8, num_stages=2)


def _threshold(k: int) -> dict:
    block_k = min(64, triton.next_power_of_2(max(k, 1)))
    return dict(BLOCK_K=block_k, BLOCK_N=max(64, 4096 // block_k), num_warps=8)


def _supcon_tiles(dim: int) -> dict:
    # S tiles of 64 anchors x 64 rows, D in chunks of 64 (``tl.dot`` needs >= 16). At 4 warps the
    # fp32 forward needed 255 registers with 7 spill stores (sm_90, Triton 3.9); 8 warps: 192 and
    # none. Not yet timed on a GPU.
    block_d = min(64, max(16, triton.next_power_of_2(dim)))
    return dict(BLOCK_M=64, BLOCK_N=64, BLOCK_D=block_d, num_warps=8)


def _supcon_rows(dim: int) -> dict:
    # one program per row, the whole row at once (D up to a few thousand)
    block = triton.next_power_of_2(max(dim, 1))
    return dict(BLOCK_D=block, num_warps=8 if block >= 2048 else 4)


_TABLE: dict[str, Callable[..., dict]] = {
    "mlm_rows": _mlm_rows,
    "soft_label_mse": _row_block,
    "soft_label_kl": _row_block,
    "voter_filter": _row_block,
    "threshold_curve": _threshold,
    "supcon": _supcon_tiles,
    "supcon_rows": _supcon_rows,
}


def config(name: str, *shape: int) -> dict:
    """The launch configuration of kernel ``name`` for these sizes (constexprs and options)."""
    out = dict(_TABLE[name](*shape))
    out.setdefault("num_warps", 4)
    out.setdefault("num_stages", 3)
    return out


_recorder: list | None = None


def launch(kernel, grid: tuple[int, ...], *args, **cfg) -> None:
    """Start ``kernel`` on ``grid``, or record the launch inside ``recording()``."""
    if _recorder is not None:
        _recorder.append((kernel, tuple(args), dict(cfg)))
        return
    kernel[grid](*args, **cfg)


@contextmanager
def recording() -> Iterator[list]:
    """Record launches instead of running them: yields the list of (kernel, args, config)."""
    global _recorder
    old, _recorder = _recorder, []
    try:
        yield _recorder
    finally:
        _recorder = old
