"""Where the soft-label losses spend their time on a GPU, and launch configurations of their row
kernels.

The last H100 loan timed ``soft_label_mse`` forward + backward at 14-18% of the copy bandwidth and
``soft_label_kl`` at 10-14% (M 3 voters, N 16M rows, C 9 and 2, bf16;
benchmarks/results/gpu_h100_20261126/kernels-new), where their docstrings aim at 70%. That
figure counts the row kernel's bytes only (z, p and the mask read, dz written), while the timed
call also runs the backward's scaling of the stored dz (one more read and write of M*R*C), the
valid-row count and the sum of the partial sums. Part 1 times each piece apart, so the gap is
split between the kernel and what surrounds it. Part 2 times the row kernel alone over tile
sizes (elements of one [rows, classes] tile: 512 today, ``_launch.ROW_BLOCK_ELEMS``), warps and
stages, the configuration ``_launch.config`` gives marked, so a change of the table is a
measured one. The kernels are launched as their launchers launch them (``_launch.recording``),
with no second copy of a signature. Medians of ``triton.testing.do_bench``. CUDA only.

    python3 -m benchmarks.tune_soft_rows [--rows 16777216] [--classes 2 9] [--op mse kl] [--quick]
"""

from __future__ import annotations

import argparse
import itertools

import torch
import triton

from benchmarks.tuning import bench, print_fastest, time_configs
from xlt_engine.kernels import _launch
from xlt_engine.kernels.soft_label_kl import soft_label_kl, soft_label_kl_fwd
from xlt_engine.kernels.soft_label_mse import soft_label_mse, soft_label_mse_fwd

OPS = {  # op -> (the autograd function, the forward launcher with dz)
    "mse": (soft_label_mse, lambda z, p, m: soft_label_mse_fwd(z, p, m, True, False)),
    "kl": (soft_label_kl, lambda z, p, m: soft_label_kl_fwd(z, p, m, True)),
}
SCALE_ARG, PARTIAL_ARG = 3, 4  # both row kernels take (z, p, mask, scale, partial, dz, ...)
VOTERS = 3


def inputs(m: int, n: int, c: int, dtype=torch.bfloat16):
    """As ``bench_kernels``' cases: logits in ``dtype``, fp32 teacher probabilities, 90% mask."""
    g = torch.Generator(device="cuda").manual_seed(0)
    z = (torch.randn(m, n, c, device="cuda", generator=g) * 3).to(dtype)
    p = torch.randn(n, c, device="cuda", generator=g).softmax(-1)
    mask = torch.rand(n, device="cuda", generator=g) < 0.9
    return z, p, mask


def recorded(op: str, z, p, mask):
    """The row kernel's launch as the op's launcher makes it: (kernel, args, config), with a
    partial-sums buffer large enough for the smallest tile of the sweep (16 rows)."""
    with _launch.recording() as launches:
        OPS[op][1](z, p, mask)
    [(kernel, args, cfg)] = launches
    args = list(args)
    args[PARTIAL_ARG] = torch.empty(triton.cdiv(z.shape[1], 16), device=z.device)
    return kernel, args, cfg


def launcher(kernel, args: list, cfg: dict, rows: int):
    """A function that runs the row kernel over ``rows`` rows with ``cfg``, and one that reads
    the loss it left (its partial sums times the weight)."""
    grid = (triton.cdiv(rows, cfg["BLOCK_R"]),)

    def run():
        kernel[grid](*args, **cfg)

    def loss():
        return args[PARTIAL_ARG][: grid[0]].sum() * args[SCALE_ARG][0]

    return run, loss


def kernel_bytes(m: int, n: int, c: int, zb: int, need_dz: bool = True) -> int:
    """What the row kernel reads and writes: z, p (fp32) and the mask; dz when it is written."""
    return m * n * c * zb + n * c * 4 + n + (m * n * c * zb if need_dz else 0)


def copy_rate() -> float:
    """The device's copy bandwidth now (bytes read plus written per ms)."""
    src = torch.empty(1 << 28, device="cuda", dtype=torch.uint8)
    dst = torch.empty_like(src)
    return 2 * src.numel() / bench(lambda: dst.copy_(src))


def parts(op: str, n: int, c: int, rate: float) -> None:
    z, p, mask = inputs(VOTERS, n, c)
    kernel, args, cfg = recorded(op, z, p, mask)
    with_dz, loss = launcher(kernel, args, cfg, n)
    loss_only, _ = launcher(kernel, args, {**cfg, "NEED_DZ": False}, n)
    dz = torch.empty_like(z)
    zg = z.clone().requires_grad_()

    def whole():
        zg.grad = None
        OPS[op][0](zg, p, mask).backward()

    g = torch.ones((), device="cuda")
    times = {
        "autograd fwd + bwd (as timed)": bench(whole),
        "row kernel: loss and dz": bench(with_dz),
        "row kernel: loss only": bench(loss_only),
        "backward: dz * grad": bench(lambda: dz * g),
        "valid-row count": bench(lambda: mask.sum(dtype=torch.int64)),
        "partial sums": bench(loss),
    }
    zb = z.element_size()
    scaling = 2 * VOTERS * n * c * zb  # the backward reads dz and writes the scaled copy
    moved = {
        "autograd fwd + bwd (as timed)": kernel_bytes(VOTERS, n, c, zb) + scaling,
        "row kernel: loss and dz": kernel_bytes(VOTERS, n, c, zb),
        "row kernel: loss only": kernel_bytes(VOTERS, n, c, zb, need_dz=False),
        "backward: dz * grad": scaling,
    }
    print(f"\n{op} parts at M={VOTERS} N={n} C={c} (bf16), config {cfg_str(cfg)}:")
    for k, ms in times.items():
        roof = f"{moved[k] / rate / ms:6.0%} of copy" if k in moved else ""
        print(f"  {k:<32}{ms:9.3f} ms  {roof}")


def cfg_str(cfg: dict) -> str:
    keys = ("BLOCK_R", "BLOCK_C", "num_warps", "num_stages")
    return ", ".join(f"{k}={cfg[k]}" for k in keys if k in cfg)


def sweep(op: str, n: int, c: int, rate: float, quick: bool) -> None:
    z, p, mask = inputs(VOTERS, n, c)
    kernel, args, current = recorded(op, z, p, mask)
    block_c = current["BLOCK_C"]
    elems = (512, 2048) if quick else (256, 512, 1024, 2048, 4096)
    warps = (2, 4, 8) if quick else (1, 2, 4, 8)
    stages = (1, 3) if quick else (1, 2, 3, 4)
    configs = [
        {**current, "BLOCK_R": max(16, e // block_c), "num_warps": nw, "num_stages": ns}
        for e, nw, ns in itertools.product(elems, warps, stages)
    ]
    rows = time_configs(configs, lambda cfg: launcher(kernel, args, cfg, n)[0], cfg_str)
    moved = kernel_bytes(VOTERS, n, c, z.element_size())
    print(f"\n{op} row kernel at M={VOTERS} N={n} C={c}: {moved / 1e9:.3f} GB; fastest first")
    print_fastest(rows, current, lambda ms: f"{moved / rate / ms:6.0%} of copy", cfg_str, top=12)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, nargs="+", default=[1 << 24])
    p.add_argument("--classes", type=int, nargs="+", default=[2, 9])
    p.add_argument("--op", nargs="+", choices=sorted(OPS), default=sorted(OPS, reverse=True))
    p.add_argument("--quick", action="store_true", help="fewer configurations")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("tune_soft_rows.py needs a CUDA GPU")
    print(torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__)
    rate = copy_rate()
    print(f"copy bandwidth: {rate / 1e9:.2f} TB/s")
    for op, n, c in itertools.product(args.op, args.rows, args.classes):
        parts(op, n, c, rate)
        sweep(op, n, c, rate, args.quick)


if __name__ == "__main__":
    main()
