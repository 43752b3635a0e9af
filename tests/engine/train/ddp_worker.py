"""Run btf, finetune or selftrain from a JSON spec (argv[1]); launched by torchrun in
test_ddp.py."""

import json
import sys

import torch.distributed as dist

from xlt_engine.engine.method.btf import BtfConfig, run_btf
from xlt_engine.engine.method.finetune import FinetuneConfig, run_finetune
from xlt_engine.engine.method.rules import make_rule
from xlt_engine.engine.method.selftrain import SelftrainConfig, run_selftrain
from xlt_engine.engine.method.settings import HeadSettings
from xlt_engine.engine.train import distributed
from xlt_engine.engine.train.loop import TrainConfig


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


def main(spec: dict) -> None:
    report_wrap()
    stage = spec.pop("stage")
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
