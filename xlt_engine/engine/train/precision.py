"""``precision = "bf16-pure"``: the step runs on bf16 weights, the optimizer on fp32 masters.

Autocast (``precision = "bf16"``) keeps fp32 weights and casts them to bf16 inside every op, on
every step (the engine's H100 data: 1.41-1.93x the encoder's forward+backward time of a model
held in bf16). Here the model itself holds bf16 weights: a frozen parameter is cast once, a
trained one gets an fp32 master copy that the optimizer (and clipping) works on, whose new
values are cast into the bf16 weight after each step. Checkpoints and the model ``train``
returns hold the fp32 values (masters, and the frozen parameters' originals), so a run saves,
resumes and hands on exactly what fp32 master weights hold; the bf16 copies are a function of
them. Not under DDP (its gradient buckets are laid out for the dtype the model had when wrapped).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class PureBf16:
    """The fp32 values behind a model whose step runs in bf16: ``masters`` (trained
    parameters, what the optimizer steps) and ``originals`` (frozen ones, kept to hand back)."""

    def __init__(self, model: nn.Module):
        if isinstance(model, nn.parallel.DistributedDataParallel):
            raise ValueError(
                "precision = 'bf16-pure' does not run under DDP yet (torchrun): use 'bf16' "
                "(autocast) there"
            )
        self.params = [p for p in _unique(model.parameters()) if p.is_floating_point()]
        self.buffers = [b for b in model.buffers() if b.is_floating_point()]
        self.fp32: dict[int, torch.Tensor] = {}  # id(param or buffer) -> its fp32 values
        self.masters: dict[int, nn.Parameter] = {}  # id(trained param) -> master
        for p in self.params:
            if p.requires_grad:
                self.masters[id(p)] = nn.Parameter(p.detach().float().clone())
        self.refresh()

    def master(self, p: nn.Parameter) -> nn.Parameter:
        return self.masters[id(p)]

    def refresh(self) -> None:
        """Take the model's current (fp32) values as the masters and originals: after a
        resume loaded a checkpoint into it."""
        for t in (*self.params, *self.buffers):
            if id(t) in self.masters:
                self.masters[id(t)].data.copy_(t.detach())
                self.fp32[id(t)] = self.masters[id(t)].data
            else:
                self.fp32[id(t)] = t.detach().float().clone()

    def to_bf16(self) -> None:
        """The model's weights (and float buffers) as bf16 copies of the fp32 values."""
        for t in (*self.params, *self.buffers):
            t.data = self.fp32[id(t)].to(torch.bfloat16)

    def to_fp32(self) -> None:
        """The model's weights as the fp32 values themselves (what saves and callers see)."""
        for t in (*self.params, *self.buffers):
            t.data = self.fp32[id(t)]

    def grads_to_masters(self) -> None:
        """The bf16 gradients of this step onto the masters, in fp32 (the model's dropped)."""
        for p in self.params:
            if id(p) in self.masters:
                g, p.grad = p.grad, None
                self.masters[id(p)].grad = None if g is None else g.float()

    def masters_to_model(self) -> None:
        """After the optimizer step: the masters' new values into the bf16 weights."""
        for p in self.params:
            if id(p) in self.masters:
                p.data.copy_(self.masters[id(p)].data)

    @contextlib.contextmanager
    def full_precision(self) -> Iterator[None]:
        """The model holds its fp32 values inside (a checkpoint is written from them)."""
        self.to_fp32()
        try:
            yield
        finally:
            self.to_bf16()


def _unique(params) -> list[nn.Parameter]:
    seen, out = set(), []
    for p in params:  # tied weights (the MLM decoder) appear once
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def master_groups(groups: list[dict], pure: PureBf16) -> list[dict]:
    """The optimizer's parameter groups over the masters of their parameters."""
    return [{**g, "params": [pure.master(p) for p in g["params"]]} for g in groups]
