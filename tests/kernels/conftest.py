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


def assert_scaled(name: str, out, ref, out_torch, rel: float) -> None:
    """The rule per tensor, with the absolute tolerance scaled to that tensor's own magnitude
    (a fixed atol hides every error in an output whose values are all below it)."""
    scale = ref.double().abs().max().item() if ref.numel() else 0.0
    assert scale > 0, f"{name}: the reference is all zeros, the check would prove nothing"
    assert_rule(name, out, ref, out_torch, rel * scale)


def onehot_parts(hidden, weight, labels, ignore_index=-100):
    """The one-hot part of each MLM gradient in float64: with G = (softmax - onehot) / K,
    dh -> -W[y] / K, dW -> -sum_n onehot(y_n) h_n / K, db -> -count(y) / K."""
    h, w = hidden.detach().double(), weight.detach().double()
    valid = labels != ignore_index
    k = max(int(valid.sum()), 1)
    y = labels[valid].long()
    dh = torch.zeros_like(h)
    dh[valid] = -w[y] / k
    dw = torch.zeros_like(w).index_add_(0, y, -h[valid] / k)
    db = torch.zeros(w.shape[0], dtype=torch.float64, device=w.device)
    db.index_add_(0, y, torch.full((len(y),), -1.0 / k, dtype=torch.float64, device=w.device))
    return dh, dw, db


def assert_mlm_grads(grads, ref_grads, torch_grads, inputs, rel: float) -> None:
    """Each gradient, and its softmax part on its own (the gradient minus its exact one-hot
    part), against float64 with tolerances scaled to that part's magnitude: a kernel that drops
    the softmax term, or computes it wrongly, fails here even where that term is small. A
    gradient given as None (an input that needs none) is skipped."""
    hidden, weight, _, labels = inputs
    parts = onehot_parts(hidden, weight, labels)
    names = ("d hidden", "d weight", "d bias")
    for name, g, r, s, part in zip(names, grads, ref_grads, torch_grads, parts, strict=True):
        if g is None:
            continue
        assert_scaled(name, g, r, s, rel)
        g, r, s = (x.double() - part for x in (g, r, s))
        assert_scaled(name + " (softmax part)", g, r, s, rel)
