"""Counting the host syncs of a piece of training code, on any device (CPU included).

On a GPU a host sync (the host waits for the device) stalls the launch queue: a training step
that syncs once per step runs at the host's speed, not the kernels'. ``HostSyncs`` records, while
it is active, each call that syncs on CUDA, with the Python frames that made it:

- reading a value on the host: ``.item()``, ``bool(t)``, ``int(t)``, ``float(t)`` (the aten op
  ``_local_scalar_dense``), ``.tolist()``, ``.numpy()``, ``.cpu()``;
- ops whose output size depends on values (``nonzero``, ``masked_select``, ``unique``, boolean
  indexing, ``repeat_interleave`` without ``output_size``);
- a blocking copy: ``.to(device)`` / ``.cuda()`` without ``non_blocking=True``.

On CPU none of these waits for anything, so a test on CPU can count the syncs a CUDA run would
make: ``with HostSyncs() as syncs: ...; syncs.outside(...)``. Checks that run only where they are
free (``kernels.free_checks``: on the host) are not syncs on a GPU; a test that wants a CUDA run's
count turns them off (``free_checks`` patched to False). On CUDA,
``torch.cuda.set_sync_debug_mode("error")`` is the device's own check; ``HostSyncs`` is the one
that runs in CI.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_ATEN = torch.ops.aten
_VALUE_OPS = {  # output size or value read on the host
    _ATEN._local_scalar_dense.default: "item",
    _ATEN.nonzero.default: "nonzero",
    _ATEN.masked_select.default: "masked_select",
    _ATEN._unique2.default: "unique",
    _ATEN.unique_dim.default: "unique",
    _ATEN.unique_consecutive.default: "unique",
}


_PLUMBING = "/torch/_"  # torch's private modules: the frames between a call and the mode


@dataclass(frozen=True)
class Sync:
    kind: str  # item, nonzero, cpu, numpy, tolist, copy, ...
    frames: tuple[tuple[str, str, int], ...]  # (file, function, line), innermost last

    @property
    def ours(self) -> bool:
        """Made by xlt-engine's own code (its innermost frame), not inside torch: torch's own
        step code (``clip_grad_norm_``, fused AdamW) is sync-free on CUDA, and its CPU paths
        (a CPU step count read by ``.item()``, same-device ``.to``) are not what a GPU runs."""
        return bool(self.frames) and "xlt_engine" in self.frames[-1][0]

    def where(self) -> str:
        f = next((f for f in reversed(self.frames) if "xlt_engine" in f[0]), self.frames[-1])
        return f"{self.kind} at {f[0]}:{f[2]} ({f[1]})"


class _Ops(TorchDispatchMode):
    def __init__(self, note):
        super().__init__()
        self.note = note

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind = _VALUE_OPS.get(func)
        if kind is None and func in (_ATEN.index.Tensor, _ATEN.index_put_.default,
                                     _ATEN.index_put.default):  # fmt: skip
            idx = args[1]
            if any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in idx if i is not None
            ):
                kind = "boolean index"
        if func is _ATEN.repeat_interleave.Tensor and kwargs.get("output_size") is None:
            kind = "repeat_interleave"
        if kind is not None:
            self.note(kind)
        return func(*args, **kwargs)


def _device_arg(args, kwargs) -> bool:
    target = kwargs.get("device", args[0] if args else None)
    return isinstance(target, torch.device | str) and not isinstance(target, torch.dtype)


class HostSyncs:
    """A context that records the host syncs made inside it (``self.syncs``, in order)."""

    def __init__(self):
        self.syncs: list[Sync] = []
        self._saved: dict = {}
        self._depth = 0

    def note(self, kind: str) -> None:
        if self._depth:  # a sync inside another counted one (``.cpu()`` of ``.numpy()``...)
            return
        stack = [f for f in traceback.extract_stack() if f.filename != __file__]
        while stack and _PLUMBING in stack[-1].filename.replace("\\", "/"):
            stack.pop()  # the dispatch mode's own frames (torch._compile, torch._dynamo)
        frames = tuple((f.filename, f.name, f.lineno or 0) for f in stack)
        self.syncs.append(Sync(kind, frames))

    def _wrap(self, name: str, when=lambda args, kwargs: True):
        original = getattr(torch.Tensor, name)
        self._saved[name] = original

        def method(t, *args, **kwargs):
            counted = when(args, kwargs)
            if counted:
                self.note(name if name != "to" else "copy")
                self._depth += 1
            try:
                return original(t, *args, **kwargs)
            finally:
                if counted:
                    self._depth -= 1

        setattr(torch.Tensor, name, method)

    def __enter__(self) -> HostSyncs:
        for name in ("cpu", "numpy", "tolist"):
            self._wrap(name)
        self._wrap("to", lambda a, k: _device_arg(a, k) and not k.get("non_blocking", False))
        self._wrap("cuda", lambda a, k: not k.get("non_blocking", False))
        self._mode = _Ops(lambda kind: self.note(kind) if not self._depth else None)
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)
        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)

    def outside(self, *allowed: str) -> list[Sync]:
        """xlt-engine's syncs (``Sync.ours``) not made from within a function whose name is in
        ``allowed`` (e.g. a loop's log and save points and its host-side data reads:
        ``"record", "save", "read_ahead"``)."""
        return [s for s in self.syncs if s.ours and not any(f[1] in allowed for f in s.frames)]

    def in_steps(self) -> list[Sync]:
        """The syncs made inside the training loop's steps (``loop.train``), leaving out its
        log and save points, set-up and host-side batch reads: what a GPU step must not have."""
        in_loop = [s for s in self.outside(*LOOP_POINTS) if any(
            f[1] == "train" and f[0].endswith(LOOP_FILE) for f in s.frames)]  # fmt: skip
        return in_loop


LOOP_FILE = "engine/train/loop.py"
# where the loop may sync: records and checkpoints (log and save points), the DDP agreement at
# them, set-up and resume, and reading (host work) and staging the next batch
LOOP_POINTS = ("record", "save", "due", "start", "read_ahead")
