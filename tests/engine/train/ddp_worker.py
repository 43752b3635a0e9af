"""Run btf, finetune or selftrain from a JSON spec (argv[1]); launched by torchrun in
test_ddp.py."""

import datetime
import json
import sys
import time

import torch.distributed as dist

from xlt_engine.engine.method.btf import BtfConfig, run_btf
from xlt_engine.engine.method.finetune import FinetuneConfig, run_finetune
from xlt_engine.engine.method.rules import make_rule
from xlt_engine.engine.method.selftrain import SelftrainConfig, run_selftrain
from xlt_engine.engine.method.settings import HeadSettings
from xlt_engine.engine.train import distributed
from xlt_engine.engine.train.config import TrainConfig


def report_wrap():
    """Print what ``distributed.wrap`` made of the model, with the process group it runs in."""
    wrap = distributed.wrap

    def recording(model, device):
        out = wrap(model, device)
        if dist.is_initialized():
            print(
                f"process group: {dist.get_backend()}, world {dist.get_world_size()}, "
                f"model {type(out).__name__}",
                flush=True,
            )
        return out

    distributed.wrap = recording


def slow_rank(rank: int, seconds: float) -> None:
    """Rank ``rank`` enters each step of a self-training round ``seconds`` late: whatever rank
    0 writes there without waiting for it, it finds already written."""
    from xlt_engine.engine.method import selftrain

    for name in ("teacher_probs", "soft_step", "hard_step", "check", "filter_round"):
        step = getattr(selftrain, name)

        def late(*args, _step=step, **kwargs):
            if dist.get_rank() == rank:
                time.sleep(seconds)
            return _step(*args, **kwargs)

        setattr(selftrain, name, late)


def main(spec: dict) -> None:
    report_wrap()
    stage = spec.pop("stage")
    if "timeout_s" in spec:  # a collective one rank never joins fails after this, not 30 min
        timeout = datetime.timedelta(seconds=spec.pop("timeout_s"))
        dist.init_process_group("gloo", timeout=timeout)
    if "slow_rank" in spec:
        slow_rank(*spec.pop("slow_rank"))
    if stage == "selftrain":
        for step in ("soft", "hard"):
            spec[step] = TrainConfig(**spec[step])
        if "student_head" in spec:
            spec["student_head"] = HeadSettings(**spec["student_head"])
        if "rule" in spec:  # the [selftrain.rule] table: its name picks the rule
            spec["rule"] = make_rule(**spec["rule"])
    else:
        train = TrainConfig(**spec.pop("train"))
    try:
        if stage == "selftrain":
            run_selftrain(SelftrainConfig(**spec), echo=None, progress=False)
        elif stage == "btf":
            spec["texts"] = tuple(spec["texts"])
            run_btf(BtfConfig(train=train, **spec), echo=None, progress=False)
        else:
            run_finetune(FinetuneConfig(train=train, **spec), echo=None, progress=False)
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
