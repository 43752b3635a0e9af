"""benchmarks/tune_soft_rows.py times the soft losses' row kernels as their launchers launch them
(CUDA only). Here, on CPU under Triton's interpreter: the recorded launch, run again at the
current configuration, without dz, and at another tile and warp count of the sweep, leaves the
op's loss; without a GPU the script says it needs one."""

import pytest
import torch

from benchmarks import tune_soft_rows
from xlt_engine.kernels.soft_label_kl import soft_label_kl_ref
from xlt_engine.kernels.soft_label_mse import soft_label_mse_ref

REFS = {"mse": soft_label_mse_ref, "kl": soft_label_kl_ref}


@pytest.mark.parametrize("op", sorted(tune_soft_rows.OPS))
def test_the_relaunched_row_kernel_leaves_the_ops_loss_at_each_configuration(op):
    g = torch.Generator().manual_seed(0)
    rows = 70  # not a multiple of any tile
    z = torch.randn(3, rows, 9, generator=g) * 3
    p = torch.randn(rows, 9, generator=g).softmax(-1)
    mask = torch.rand(rows, generator=g) < 0.9
    want = REFS[op](z, p, mask)
    kernel, args, cfg = tune_soft_rows.recorded(op, z, p, mask)
    assert cfg["BLOCK_C"] == 16 and cfg["NEED_DZ"] is True
    for variant in (cfg, {**cfg, "NEED_DZ": False}, {**cfg, "BLOCK_R": 16, "num_warps": 2}):
        run, loss = tune_soft_rows.launcher(kernel, args, variant, rows)
        args[tune_soft_rows.PARTIAL_ARG].fill_(float("nan"))  # nothing left from the last run
        run()
        assert torch.allclose(loss(), want, rtol=1e-5, atol=1e-7), (variant, loss(), want)


def test_the_script_needs_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        tune_soft_rows.main([])
