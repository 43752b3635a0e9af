"""Run btf or finetune from a JSON spec (argv[1]); launched by torchrun in test_ddp.py."""

import json
import sys

from xlt_engine.engine import distributed
from xlt_engine.engine.btf import BtfConfig, run_btf
from xlt_engine.engine.finetune import FinetuneConfig, run_finetune
from xlt_engine.engine.loop import TrainConfig


def main(spec: dict) -> None:
    train = TrainConfig(**spec.pop("train"))
    stage = spec.pop("stage")
    try:
        if stage == "btf":
            spec["texts"] = tuple(spec["texts"])
            run_btf(BtfConfig(train=train, **spec), echo=None, progress=False)
        else:
            run_finetune(FinetuneConfig(train=train, **spec), echo=None, progress=False)
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
