"""Kernel test helpers: run each op through both paths of the dispatch rule, and the
flash-attention tolerance rule."""

import pytest
import torch

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(params=["triton", "torch"])
def provider(request, monkeypatch) -> str:
    """Triton (the interpreter on CPU) or the torch reference, chosen through XLT_KERNELS."""
    monkeypatch.setenv("XLT_KERNELS", request.param)
    return request.param


@pytest.fixture
def use_triton(monkeypatch) -> None:
    monkeypatch.setenv("XLT_KERNELS", "triton")


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def assert_rule(name: str, out, ref, out_torch, atol: float) -> None:
    """flash-attention's rule: the kernel may err at most twice as much as torch in the same
    precision, both measured against a float64 reference."""
    err, torch_err = max_err(out, ref), max_err(out_torch, ref)
    assert torch.isfinite(torch.as_tensor(err)), f"{name}: kernel result is not finite"
    assert err <= 2 * torch_err + atol, (
        f"{name}: kernel error {err:.3g} > 2 x torch error {torch_err:.3g} + atol {atol:g}"
    )
