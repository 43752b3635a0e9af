"""The one dispatch rule every fused op follows, and the input checks they share.

CUDA tensors run the Triton kernels, CPU tensors the pure-torch reference;
``XLT_KERNELS=triton|torch`` (or ``auto``, the default) overrides that. Triton on CPU tensors
only works under Triton's interpreter, which reads ``TRITON_INTERPRET=1`` when the kernels are
decorated, so it must be set before ``xlt_engine.kernels`` is first imported (the tests do this).
"""

from __future__ import annotations

import os

import torch

ENV_VAR = "XLT_KERNELS"
_CHOICES = ("auto", "triton", "torch")
_FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def is_interpreted(kernel) -> bool:
    """True when ``kernel`` was decorated under ``TRITON_INTERPRET=1`` (runs on CPU tensors)."""
    return type(kernel).__name__ == "InterpretedFunction"


def use_triton(kernel, *tensors: torch.Tensor) -> bool:
    """Decide between the Triton kernel and the torch reference for these input tensors."""
    choice = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if choice not in _CHOICES:
        raise ValueError(
            f"{ENV_VAR}={os.environ[ENV_VAR]!r}: expected one of {', '.join(_CHOICES)}"
        )
    on_cuda = tensors[0].is_cuda
    if choice == "torch" or (choice == "auto" and not on_cuda):
        return False
    if not on_cuda and not is_interpreted(kernel):
        raise ValueError(
            f"{ENV_VAR}=triton with CPU tensors needs TRITON_INTERPRET=1 in the environment before "
            "xlt_engine.kernels is imported (Triton compiles for GPUs only)"
        )
    if on_cuda and is_interpreted(kernel):
        raise ValueError("TRITON_INTERPRET=1 is set but the tensors are on CUDA; unset it")
    return True


def free_checks(device: torch.device) -> bool:
    """Whether checks that read tensor values (a host sync on a GPU) are free on ``device``: on
    the host they are, so the kernels and the loop run them there at every call; on a GPU they run
    only where the host syncs anyway (the loop's log points) or when asked. The host-sync test
    patches this to False to count a GPU run's syncs on CPU. While torch.compile traces they are
    not free anywhere (reading a value breaks the graph), so they are left out of compiled code."""
    return device.type == "cpu" and not torch.compiler.is_compiling()


def check_same_device(op: str, **tensors: torch.Tensor | None) -> torch.device:
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    first = next(iter(devices.values()))
    if any(d != first for d in devices.values()):
        listed = ", ".join(f"{k} on {v}" for k, v in devices.items())
        raise ValueError(f"{op}: all inputs must be on one device, got {listed}")
    return first


def check_float(op: str, name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOATS:
        raise ValueError(
            f"{op}: {name} must be float32, float16, bfloat16 or float64, got {t.dtype}"
        )


def check_int(op: str, name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise ValueError(f"{op}: {name} must hold integers, got {t.dtype}")


def shape_str(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"
