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


def test_row_counts_do_not_make_new_triton_specialisations():
    """Triton compiles a kernel once per specialisation of its integer arguments (divisible by
    16, equal to 1): a row count that changes every batch would compile again and again on a
    GPU. Each kernel that takes a row count opts out for it."""
    import importlib

    def module(name):  # the package exports functions of the modules' names
        return importlib.import_module(f"xlt_engine.kernels.{name}")

    soft_label_mse, supcon_loss = module("soft_label_mse"), module("supcon_loss")
    soft_label_kl = module("soft_label_kl")
    threshold_curve, voter_filter = module("threshold_curve"), module("voter_filter")
    expected = {
        soft_label_mse.soft_label_mse_fwd_kernel: {"R", "stride_m"},
        soft_label_kl.soft_label_kl_fwd_kernel: {"R", "stride_m"},
        supcon_loss.supcon_fwd_kernel: {"B"},
        supcon_loss.supcon_bwd_kernel: {"B"},
        voter_filter.voter_filter_fwd_kernel: {"N", "stride_m"},
        threshold_curve.threshold_curve_kernel: {"N"},
    }
    for kernel, names in expected.items():
        options = getattr(kernel, "kwargs", None)  # the interpreter keeps the jit options here
        dns = options["do_not_specialize"] if options is not None else kernel.do_not_specialize
        named = {kernel.arg_names[i] if isinstance(i, int) else i for i in dns}
        assert names <= named, (kernel, named)
        assert names <= set(kernel.arg_names)
