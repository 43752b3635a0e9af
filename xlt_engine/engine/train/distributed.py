"""torch.distributed set-up for runs launched by ``torchrun`` (NCCL on CUDA, gloo on CPU).

``init(device)`` reads torchrun's environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``); under
torchrun (one process or more) it initialises the default process group once and returns this
rank's device (``cuda:LOCAL_RANK`` on CUDA). Without torchrun it is a no-op. ``wrap`` puts a
model, whose frozen parameters are already set, into ``DistributedDataParallel`` whenever the
group is up, so ``torchrun --nproc-per-node 1`` runs the same NCCL and DDP code as a multi-GPU
run (the way to check that code on a machine with one GPU).
"""

from __future__ import annotations

import gc
import os

import torch
import torch.distributed as dist
from torch import nn


def rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


# on CUDA: cuDNN's attention builds one execution plan per shape and, without this, builds it
# again for shapes it has seen; the user's own value wins
CUDA_ENVIRONMENT = {"TORCH_CUDNN_SDPA_AVOID_RECOMPILE": "1"}


def resolve_device(name: str = "auto") -> torch.device:
    """The device ``name`` names (``auto``: CUDA when there is one); on CUDA the engine's
    environment (``CUDA_ENVIRONMENT``) is set before the first kernel runs."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: CUDA is not available on this machine")
    if device.type == "cuda":
        for key, value in CUDA_ENVIRONMENT.items():
            os.environ.setdefault(key, value)
    return device


def init(device: str = "auto") -> torch.device:
    """Join the process group torchrun describes (if any) and return this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = resolve_device(device)
    if world == 1 and "TORCHELASTIC_RUN_ID" not in os.environ:  # not launched by torchrun
        return dev
    if dev.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend=backend, **kwargs)
    return dev


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """DDP around ``model`` when the process group is up (freeze parameters before this)."""
    if not (dist.is_available() and dist.is_initialized()):
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def all_gather_rows(part: torch.Tensor, sizes: list[int], device: torch.device) -> torch.Tensor:
    """Every rank's ``part`` (``[..., sizes[rank], ...]`` along dim 1), concatenated in rank
    order along dim 1 on every rank, on ``device``. Parts are padded to the largest for the collective
    (through ``device`` on NCCL, CPU on gloo)."""
    rank = dist.get_rank()
    comm = device if dist.get_backend() == "nccl" else torch.device("cpu")
    shape = list(part.shape)
    shape[1] = max(max(sizes), 1)
    padded = torch.zeros(shape, dtype=part.dtype, device=comm)
    padded[:, : sizes[rank]] = part.to(comm)
    gathered = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(gathered, padded)
    return torch.cat([g[:, :n] for g, n in zip(gathered, sizes, strict=True)], dim=1).to(device)


def broadcast_object(obj):
    """Rank 0's ``obj`` (picklable) on every rank; itself without a process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def rank0_view(value):
    """Rank 0's ``value`` on every rank (itself without a process group). For a look at the
    file system that decides which collectives a rank enters next: rank 0 may write the file
    between another rank's look and its own, and a rank that skips a collective the others
    entered leaves them waiting (a late rank found a round's files already written, skipped a
    barrier, and the run hung)."""
    return broadcast_object(value)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group: first free what still holds its work (a DDP wrapper in a
    reference cycle keeps the reducer's last gloo work alive, and freeing it after the group is
    gone, at interpreter exit, aborted a rank: "terminate called without an active exception",
    SIGABRT, in 4 of 36 runs of tests/engine/train/ddp_accum_worker.py under torchrun before,
    0 of 60 after), then destroy the group. No barrier here: on an error path the other ranks
    may never come."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
