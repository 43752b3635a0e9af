"""Gradient accumulation under DDP (launched by torchrun in test_ddp.py): a small MLP trained by
``train`` with ``grad_accum`` micro-batches, a communication hook counting the gradient
all-reduces. Writes the final weights and the count to ``argv[1]`` (a folder)."""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

from xlt_engine.engine.train import distributed
from xlt_engine.engine.train.config import TrainConfig
from xlt_engine.engine.train.loop import RunIO, train


class Batches:
    """Global batch ``g`` is a function of ``g``; rank r's i-th batch is global batch
    ``i * world + r`` (round-robin, as ``data.batching.shard``)."""

    def __init__(self, rank: int, world: int):
        self.rank, self.world = rank, world

    def num_batches(self, epoch: int) -> int:
        return 16 // self.world

    def batch(self, epoch: int, index: int) -> dict:
        g = torch.Generator().manual_seed(1000 * epoch + index * self.world + self.rank)
        return {"x": torch.randn(6, 8, generator=g), "y": torch.randn(6, 1, generator=g)}


def run(out: Path, grad_accum: int, steps: int) -> tuple[int, dict]:
    rank, world = distributed.rank_world()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    wrapped = distributed.wrap(model, torch.device("cpu"))
    calls = {"n": 0}
    if world > 1:

        def counting_hook(state, bucket):
            calls["n"] += 1
            return allreduce_hook(state, bucket)

        wrapped.register_comm_hook(dist.group.WORLD, counting_hook)

    def loss_fn(m, batch, gen):
        return nn.functional.mse_loss(m(batch["x"]), batch["y"])

    cfg = TrainConfig(max_steps=steps, lr=1e-2, grad_accum=grad_accum, log_every=steps, seed=1)
    train(
        wrapped,
        loss_fn,
        Batches(rank, world),
        cfg,
        out,
        RunIO(lambda m, f: None, lambda m, f: None, echo=None, progress=False),
    )
    return calls["n"], {k: v.detach().clone() for k, v in model.state_dict().items()}


def main(out: Path, grad_accum: int) -> None:
    distributed.init("cpu")
    rank, world = distributed.rank_world()
    try:
        one_micro, _ = run(out / "accum1", 1, 3)
        calls, weights = run(out / f"accum{grad_accum}", grad_accum, 3)
        if rank == 0:
            save_file(weights, str(out / "weights.safetensors"))
            counts = {"accum1": one_micro, f"accum{grad_accum}": calls, "world": world}
            (out / "calls.json").write_text(json.dumps(counts))
        if world > 1:
            # both ranks reach teardown together (the SIGABRT "terminate called without an
            # active exception" seen here was gloo work freed after the group: fixed in
            # distributed.shutdown, which frees it first)
            dist.barrier()
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
