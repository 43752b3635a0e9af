"""The kernel benchmark's cases (``bench.kernels``): the ops, providers and modes, the shapes'
work counts (see ``bench.kernels``' docstring), and for each op the list of ``Case``s, each a
callable with its provider, shape and counted flops or bytes; the baselines' loaders (torch.compile,
Hugging Face, Liger, Cut Cross-Entropy)."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from xlt_engine.kernels import (
    fused_mlm_loss,
    fused_mlm_loss_ref,
    soft_label_kl,
    soft_label_kl_ref,
    soft_label_mse,
    soft_label_mse_ref,
    supcon_loss,
    supcon_loss_ref,
    threshold_curve,
    threshold_curve_ref,
    voter_filter,
    voter_filter_ref,
)
from xlt_engine.kernels.threshold_curve import _curve_ref

OPS = ("mlm", "mse", "kl", "voters", "threshold", "supcon")
PROVIDERS = ("triton", "torch", "compile", "hf", "liger", "cce")
# Liger's fused linear cross-entropy cuts the rows into chunks of about BT / ceil(V / (c * H))
# (next power of 2): at BERT's V / H (156) its default c = 1 gives 154 chunks of 4 rows at
# N = 614. "liger" runs c = 1, 16, 64 and 256 (to a single chunk): the table shows the best.
LIGER_CHUNK_CONSTS = (1, 16, 64, 256)
MODES = ("forward", "backward", "full", "frozen")
MLM_FLOPS = {"forward": 2, "backward": 4, "full": 6, "frozen": 4}  # times N * V * H
SUPCON_FLOPS = {"forward": 2, "backward": 4, "full": 6}  # times B * B * D (ours and eager alike)
SUPCON_TAU = 0.3
MBERT_V, MBERT_H = 119547, 768
XLMR_V = 250002  # XLM-R's vocabulary (hidden 768 for base)


@dataclass
class Case:
    op: str
    shape: str
    provider: str
    mode: str
    run: Callable[[], object]  # the timed call
    setup: Callable[[], None] | None = None  # untimed, before each timed call (backward mode)
    flops: float = 0.0
    nbytes: float = 0.0
    floor_bytes: float = 0.0  # bytes the roofline counts when they differ from nbytes (MLM)
    result: dict = field(default_factory=dict)

    def roofline_ms(self, yard: dict) -> float | None:
        """The least time this case can take at the measured matmul rate and copy bandwidth:
        flops / matmul rate + bytes / copy bandwidth. None where no roofline is counted (the
        MLM loss's forward and backward alone)."""
        if not yard:
            return None
        if self.flops:  # MLM: only where the bytes that go with the flops are counted
            if not self.floor_bytes:
                return None
            return self.flops / (yard["matmul_tflops"] * 1e9) + self.floor_bytes / (
                yard["copy_gbps"] * 1e6
            )
        return self.nbytes / (yard["copy_gbps"] * 1e6) if self.nbytes else None


@contextmanager
def provider_kernels(provider: str):
    """Force the dispatch rule for one provider: triton for ours, torch for the references."""
    old = os.environ.get("XLT_KERNELS")
    os.environ["XLT_KERNELS"] = "triton" if provider == "triton" else "torch"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("XLT_KERNELS", None)
        else:
            os.environ["XLT_KERNELS"] = old


def _liger_losses() -> dict[str, Callable]:
    """Liger-Kernel's fused linear cross-entropy, ``(hidden, weight, bias, labels) -> loss``,
    at each chunk setting of ``LIGER_CHUNK_CONSTS`` its version takes (``chunk_mem_const``:
    0.8.5 and later), else at its default; {} when it is not installed."""
    try:
        from liger_kernel.ops.fused_linear_cross_entropy import (
            LigerFusedLinearCrossEntropyFunction as Flce,
        )
    except ImportError:
        return {}
    takes_chunks = "chunk_mem_const" in inspect.signature(Flce.forward).parameters
    out = {}
    for c in LIGER_CHUNK_CONSTS if takes_chunks else (1,):
        # apply's positional order: input, weight, target, bias, ce_weight, ignore_index,
        # lse_square_scale, label_smoothing, reduction, softcap, return_z_loss, accum_dtype,
        # use_token_scaling, return_token_accuracy, return_predicted_tokens, ce_impl, ce_mode,
        # chunk_mem_const
        extra = (None, False, False, False, None, None, c) if takes_chunks else ()
        out["liger" if c == 1 else f"liger c={c}"] = lambda hh, w, b, y, _x=extra: Flce.apply(
            hh, w, y, b, None, -100, 0.0, 0.0, "mean", None, False, *_x
        )[0]
    return out


def _cce_loss() -> Callable | None:
    """Cut Cross-Entropy (``linear_cross_entropy``); it takes no bias, so it does a little less
    than the others (no bias add or gradient); None when it is not installed."""
    try:
        from cut_cross_entropy import linear_cross_entropy
    except ImportError:
        return None
    return lambda hh, w, b, y: linear_cross_entropy(hh, w, y)


def _compiled(fn):
    return torch.compile(fn, dynamic=False)


# --- cases -----------------------------------------------------------------------------------


def mlm_cases(device, dtype, shapes, providers, modes) -> list[Case]:
    """shapes: (label, rows N, all positions B*T or None, V, H)."""
    cases = []
    liger = _liger_losses() if "liger" in providers else {}
    cce = _cce_loss() if "cce" in providers else None
    for label, n, bt, v, h in shapes:
        g = torch.Generator(device=device).manual_seed(0)
        weight = (torch.randn(v, h, device=device, generator=g) * 0.05).to(dtype)
        bias = torch.zeros(v, device=device, dtype=dtype)
        rows = torch.randn(n, h, device=device, generator=g).to(dtype)
        labels = torch.randint(0, v, (n,), device=device, generator=g)
        fns: dict[str, Callable] = {
            "triton": lambda hh, w, b, y: fused_mlm_loss(hh, w, b, y, check_labels=False),
            "torch": lambda hh, w, b, y: fused_mlm_loss_ref(hh, w, b, y, upcast=False),
        }
        if "compile" in providers:
            compiled = _compiled(lambda hh, w, b, y: fused_mlm_loss_ref(hh, w, b, y, upcast=False))
            fns["compile"] = compiled
        fns.update(liger)
        if cce is not None:
            fns["cce"] = cce
        inputs = dict.fromkeys(fns, (rows, labels))
        if bt is not None and "hf" in providers:
            # Hugging Face's BertForMaskedLM: logits for every position, loss over masked ones
            everything = torch.randn(bt, h, device=device, generator=g).to(dtype)
            every_label = torch.full((bt,), -100, device=device, dtype=torch.long)
            every_label[torch.randperm(bt, device=device, generator=g)[:n]] = labels
            # as BertForMaskedLM computes it: CrossEntropyLoss on the logits in their own dtype
            fns["hf"] = lambda hh, w, b, y: F.cross_entropy(F.linear(hh, w, b), y)
            inputs["hf"] = (everything, every_label)
        for provider, fn in fns.items():
            if provider.split()[0] not in providers:
                continue
            x, y = inputs[provider]
            # the least the op must move: the logits written, read twice and their gradient
            # written once (the fused row kernel), read once more for db; in the compute dtype
            floor_bytes = 4 * n * v * weight.element_size()
            for mode in modes:
                if mode == "frozen":  # full, with the weight frozen (BTF): no dW
                    leaves = [x, bias]
                    call = lambda hh, b, yy, _fn=fn, _w=weight: _fn(hh, _w, b, yy)  # noqa: E731
                else:
                    leaves, call = [x, weight, bias], fn
                flops = MLM_FLOPS[mode] * n * v * h
                if provider == "triton" and mode == "backward":
                    flops = 0  # computed in the forward: its backward only scales the stored
                    # gradients, so a rate of 4NVH over that time would be no rate (3,886
                    # "TFLOP/s" on the H100, 2026-11-26)
                case = _autograd_case(("mlm", label, provider, mode), call, leaves, y, flops=flops)
                if mode in ("full", "frozen"):
                    case.floor_bytes = floor_bytes
                cases.append(case)
    return cases


SOFT_LOSSES = {
    "mse": (soft_label_mse, soft_label_mse_ref),
    "kl": (soft_label_kl, soft_label_kl_ref),
}


def mse_cases(device, dtype, shapes, providers, modes, op: str = "mse") -> list[Case]:
    """shapes: (label, M, R, C). z in ``dtype``, teacher probabilities fp32, a 90% mask; ``op``:
    the soft loss timed (``mse``: soft_label_mse, ``kl``: soft_label_kl: the same bytes)."""
    fused, ref = SOFT_LOSSES[op]
    cases = []
    for label, m, r, c in shapes:
        g = torch.Generator(device=device).manual_seed(0)
        z = (torch.randn(m, r, c, device=device, generator=g) * 3).to(dtype)
        p = torch.randn(r, c, device=device, generator=g).softmax(-1)
        mask = torch.rand(r, device=device, generator=g) < 0.9
        zb = z.element_size()
        read = m * r * c * zb + r * c * 4 + r
        nbytes = {"forward": read, "backward": m * r * c * zb, "full": read + m * r * c * zb}
        fns = {
            "triton": lambda zz, pp, mm, _f=fused: _f(zz, pp, mm),
            "torch": lambda zz, pp, mm, _r=ref: _r(zz, pp, mm, upcast=False),
        }
        if "compile" in providers:
            fns["compile"] = _compiled(lambda zz, pp, mm, _r=ref: _r(zz, pp, mm, upcast=False))
        for provider, fn in fns.items():
            if provider.split()[0] not in providers:
                continue
            for mode in (m for m in modes if m in nbytes):  # no weight, so no "frozen"
                cases.append(
                    _autograd_case(
                        (op, label, provider, mode),
                        lambda zz, pp, mm, _fn=fn: _fn(zz, pp, mm),
                        [z],
                        p,
                        extra=(mask,),
                        nbytes=nbytes[mode],
                    )
                )
    return cases


def supcon_cases(device, dtype, shapes, providers, modes) -> list[Case]:
    """shapes: (label, B, D). Embeddings in ``dtype``, 3 labels (XNLI), tau 0.3."""
    cases = []
    for label, b, d in shapes:
        g = torch.Generator(device=device).manual_seed(0)
        h = torch.randn(b, d, device=device, generator=g).to(dtype)
        labels = torch.randint(0, 3, (b,), device=device, generator=g)
        fns = {
            "triton": supcon_loss,
            "torch": lambda hh, yy, tau: supcon_loss_ref(hh, yy, tau, upcast=False),
        }
        if "compile" in providers:
            fns["compile"] = _compiled(lambda hh, yy, tau: supcon_loss_ref(hh, yy, tau, False))
        for provider, fn in fns.items():
            if provider.split()[0] not in providers:
                continue
            for mode in (m for m in modes if m in SUPCON_FLOPS):
                flops = SUPCON_FLOPS[mode] * b * b * d
                cases.append(
                    _autograd_case(
                        ("supcon", label, provider, mode),
                        fn,
                        [h],
                        labels,
                        extra=(SUPCON_TAU,),
                        flops=flops,
                    )
                )
    return cases


def voter_cases(device, dtype, shapes, providers) -> list[Case]:
    cases = []
    for label, m, n, c in shapes:
        g = torch.Generator(device=device).manual_seed(0)
        z = (torch.randn(m, n, c, device=device, generator=g) * 3).to(dtype)
        nbytes = m * n * c * z.element_size() + n * (8 + 4 + 4 * c)
        fns = {"triton": voter_filter, "torch": voter_filter_ref}
        cases += _forward_cases("voters", label, fns, providers, (z, 0.7), nbytes)
    return cases


def threshold_cases(device, shapes, providers) -> list[Case]:
    cases = []
    for label, n, k in shapes:
        g = torch.Generator(device=device).manual_seed(0)
        conf = torch.rand(n, device=device, generator=g)
        correct = torch.rand(n, device=device, generator=g) < conf
        thresholds = torch.linspace(0.5, 0.999, k, device=device)
        fns = {"triton": threshold_curve, "torch": threshold_curve_ref}
        args = (conf, correct, thresholds)
        # compile the reference's computation: its input checks read a value on the host (a
        # graph break that dynamo warns about at every compile)
        cases += _forward_cases(
            "threshold", label, fns, providers, args, n * 5, compile_target=_curve_ref
        )
    return cases


def _forward_cases(op, label, fns, providers, args, nbytes, compile_target=None) -> list[Case]:
    """Ops with no backward: one forward case per provider; compile compiles the reference
    (or ``compile_target``)."""
    if "compile" in providers:
        fns = {**fns, "compile": _compiled(compile_target or fns["torch"])}
    return [
        Case(op, label, provider, "forward", lambda f=fn: f(*args), nbytes=nbytes)
        for provider, fn in fns.items()
        if provider in providers
    ]


def _autograd_case(what: tuple, fn, leaves, target, *, extra=(), flops=0, nbytes=0):
    """A case timing ``fn(*leaves, target, *extra)`` and its backward; ``what``: (op, label,
    provider, mode)."""
    op, label, provider, mode = what
    leaves = [t.detach().requires_grad_() for t in leaves]
    state: dict = {}

    def forward():
        return fn(*leaves, target, *extra)

    def make_graph():
        for t in leaves:
            t.grad = None
        state["loss"] = forward()

    if mode == "forward":
        run, setup = forward, None
    elif mode == "backward":
        run, setup = (lambda: state["loss"].backward()), make_graph
    else:

        def run():
            forward().backward()

        setup = None
    return Case(op, label, provider, mode, run, setup=setup, flops=flops, nbytes=nbytes)
