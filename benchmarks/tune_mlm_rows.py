"""Where ``fused_mlm_loss`` spends its time on a GPU, and launch configurations of its row kernel.

Part 1 times each piece of the fused forward at mBERT shapes (V = 119,547, H = 768, bf16), one
chunk: the padded weight copy, the logits matmul, ``mlm_rows_kernel`` (loss and G in place),
``dh = G W``, ``dW = G^T h`` and ``db = sum_rows G``; the same matmuls with the odd V unpadded;
and eager torch's whole forward + backward.
Part 2 times ``mlm_rows_kernel`` alone over BLOCK_V x num_warps x num_stages, with the
configuration ``_launch.config("mlm_rows", 2)`` gives marked, so a change of the table is a
measured one. Medians of ``triton.testing.do_bench``. CUDA only.

    python3 -m benchmarks.tune_mlm_rows [--rows 614 8192] [--quick]
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import torch

from benchmarks.tuning import bench, print_fastest, time_configs
from xlt_engine.kernels._launch import config
from xlt_engine.kernels.mlm_loss import ROW_ALIGN, fused_mlm_loss_ref, mlm_rows_kernel

ROOT = Path(__file__).resolve().parents[1]

V, H = 119547, 768


def inputs(n: int, dtype=torch.bfloat16):
    g = torch.Generator(device="cuda").manual_seed(0)
    h = torch.randn(n, H, device="cuda", dtype=dtype, generator=g)
    w = torch.randn(V, H, device="cuda", dtype=dtype, generator=g) * 0.02
    b = torch.randn(V, device="cuda", dtype=dtype, generator=g) * 0.02
    y = torch.randint(0, V, (n,), device="cuda", generator=g)
    return h, w, b, y


def rows_launcher(z, b, y, inv, loss, v_pad, **cfg):
    def run():
        mlm_rows_kernel[(z.shape[0],)](
            z, b, y, inv, loss, V, v_pad, -100, HAS_BIAS=True, NEED_GRAD=True, **cfg
        )

    return run


def parts(n: int) -> None:
    h, w, b, y = inputs(n)
    v_pad = (V + ROW_ALIGN - 1) // ROW_ALIGN * ROW_ALIGN
    buf = torch.empty(n, v_pad, device="cuda", dtype=h.dtype)
    z = buf[:, :V]
    inv = torch.full((1,), 1.0 / n, device="cuda")
    loss = torch.zeros(n, device="cuda")
    dh = torch.empty(n, H, device="cuda", dtype=h.dtype)
    dw = torch.empty(v_pad, H, device="cuda", dtype=h.dtype)
    w_pad = torch.zeros(v_pad, H, device="cuda", dtype=h.dtype)
    w_pad[:V] = w
    cfg = config("mlm_rows", 2)
    times = {  # the fused op's parts (padded to V_pad) first, then the same matmuls with odd V
        "pad W": bench(lambda: w_pad[:V].copy_(w)),
        "logits h W^T": bench(lambda: torch.mm(h, w_pad.t(), out=buf)),
        "rows kernel": bench(rows_launcher(z, b, y, inv, loss, v_pad, **cfg)),
        "dh = G W": bench(lambda: torch.mm(buf, w_pad, out=dh)),
        "dW = G^T h": bench(lambda: torch.mm(buf.t(), h, out=dw)),
        "db sum(0)": bench(lambda: z.sum(0, dtype=torch.float32)),
        "logits, odd V": bench(lambda: torch.mm(h, w.t(), out=z)),
        "dh, odd V": bench(lambda: torch.mm(z, w, out=dh)),
        "dW, odd V": bench(lambda: torch.mm(z.t(), h, out=dw[:V])),
    }
    hw, ww, bw = (t.clone().requires_grad_() for t in (h, w, b))

    def eager():
        fused_mlm_loss_ref(hw, ww, bw, y, upcast=False).backward()

    times["eager fwd+bwd"] = bench(eager)
    print(f"\nparts at N={n} (bf16, V={V}, H={H}), ms:")
    for k, t in times.items():
        print(f"  {k:<16}{t:8.3f}")
    print(f"  {'sum of fused':<16}{sum(times[k] for k in list(times)[:6]):8.3f}")


def sweep(n: int, quick: bool) -> None:
    h, w, b, y = inputs(n)
    v_pad = (V + ROW_ALIGN - 1) // ROW_ALIGN * ROW_ALIGN
    z = torch.empty(n, v_pad, device="cuda", dtype=h.dtype)[:, :V]
    torch.mm(h, w.t(), out=z)
    inv = torch.full((1,), 1.0 / n, device="cuda")
    loss = torch.zeros(n, device="cuda")
    current = config("mlm_rows", 2)
    blocks = (1024, 2048, 4096) if quick else (1024, 2048, 4096, 8192)
    warps = (4, 8) if quick else (4, 8, 16)
    stages = (1, 2) if quick else (1, 2, 3, 4)
    configs = [
        dict(BLOCK_V=bv, num_warps=nw, num_stages=ns)
        for bv, nw, ns in itertools.product(blocks, warps, stages)
    ]
    rows = time_configs(configs, lambda cfg: rows_launcher(z, b, y, inv, loss, v_pad, **cfg))
    gbytes = 3 * n * v_pad * 2 / 1e9
    print(f"\nmlm_rows_kernel at N={n}: {gbytes:.3f} GB moved per call; fastest first")
    print_fastest(rows, current, lambda ms: f"{gbytes / ms:.2f} TB/s")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, nargs="+", default=[614, 8192])
    p.add_argument("--quick", action="store_true", help="fewer configurations")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("tune_mlm_rows.py needs a CUDA GPU")
    print(torch.cuda.get_device_name(), "torch", torch.__version__)
    for n in args.rows:
        parts(n)
        sweep(n, args.quick)


if __name__ == "__main__":
    main()
