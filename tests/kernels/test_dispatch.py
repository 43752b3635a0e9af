"""The dispatch rule: CPU -> reference, CUDA -> Triton, XLT_KERNELS overrides."""

import pytest
import torch

import xlt_engine.kernels.mlm_loss as mlm
from xlt_engine.kernels import _dispatch, fused_mlm_loss


def inputs():
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(8, 16, generator=g, requires_grad=True),
        torch.randn(33, 16, generator=g),
        torch.zeros(33),
        torch.randint(0, 33, (8,), generator=g),
    )


def _boom(*args, **kwargs):
    raise RuntimeError("triton launcher called")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU dispatch only")
@pytest.mark.parametrize("env, expect_triton", [(None, False), ("torch", False), ("triton", True)])
def test_cpu_tensors_use_the_reference_unless_told(monkeypatch, env, expect_triton):
    if env is None:
        monkeypatch.delenv("XLT_KERNELS", raising=False)
    else:
        monkeypatch.setenv("XLT_KERNELS", env)
    monkeypatch.setattr(mlm, "fused_mlm_loss_fwd", _boom)
    if expect_triton:
        with pytest.raises(RuntimeError, match="triton launcher called"):
            fused_mlm_loss(*inputs())
    else:
        assert torch.isfinite(fused_mlm_loss(*inputs()))


def test_unknown_choice_names_the_variable(monkeypatch):
    monkeypatch.setenv("XLT_KERNELS", "cuda")
    with pytest.raises(
        ValueError, match=r"XLT_KERNELS='cuda': expected one of auto, triton, torch"
    ):
        fused_mlm_loss(*inputs())


def test_triton_on_cpu_without_the_interpreter_is_a_clear_error(monkeypatch):
    class JITFunction:  # stands in for a compiled (not interpreted) kernel
        pass

    monkeypatch.setenv("XLT_KERNELS", "triton")
    with pytest.raises(ValueError, match="needs TRITON_INTERPRET=1"):
        _dispatch.use_triton(JITFunction(), torch.zeros(1))
