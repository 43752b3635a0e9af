"""Host syncs: what ``HostSyncs`` counts (and what it must not), and the loop's own step
(reading ahead, staging) on a model with no stage around it. The stages' steps are counted in
their own tests (btf, finetune, self-training: ``gpu_step_syncs``)."""

import pytest
import torch

from benchmarks.host_sync import HostSyncs
from tests.engine.conftest import gpu_step_syncs
from xlt_engine.engine.train.config import TrainConfig
from xlt_engine.engine.train.loop import Position, RunIO, stage, train


def f_item(t):
    return t.sum().item()


def test_every_kind_of_sync_is_counted_and_a_non_blocking_copy_is_not():
    t = torch.arange(6.0)
    with HostSyncs() as hs:
        t.sum().item()
        bool(t.sum() > 0)
        float(t.max())
        t.nonzero()
        t[t > 2]
        torch.masked_select(t, t > 2)
        t.unique()
        t.tolist()
        t.numpy()
        t.cpu()
        t.to("cpu")
        t.to(torch.device("cpu"), non_blocking=False)
        t.repeat_interleave(torch.tensor([1, 0, 2, 1, 1, 1]))
        t.to("cpu", non_blocking=True)  # not a sync (from pinned memory on CUDA)
        t.to(torch.float64)  # a cast, not a copy between devices
        t.repeat_interleave(torch.tensor([1, 0, 2, 1, 1, 1]), output_size=6)
        t * 2
    kinds = [s.kind for s in hs.syncs]
    assert kinds == ["item", "item", "item", "nonzero", "boolean index", "masked_select",
                     "unique", "tolist", "numpy", "cpu", "copy", "copy",
                     "repeat_interleave"], kinds  # fmt: skip
    assert all(s.ours is False for s in hs.syncs)  # made from this test file, not xlt_engine
    assert torch.Tensor.item is not None and t.cpu() is t  # the methods are restored


def test_outside_keeps_xlt_engine_syncs_outside_the_allowed_functions(monkeypatch):
    from benchmarks import host_sync

    with HostSyncs() as hs:
        f_item(torch.ones(2))
    fake = [host_sync.Sync("item", (("/x/xlt_engine/a.py", "record", 1),
                                    ("/x/xlt_engine/b.py", "f", 2))),
            host_sync.Sync("item", (("/x/xlt_engine/a.py", "step", 1),)),
            host_sync.Sync("item", (("/x/xlt_engine/a.py", "step", 1),
                                    ("/x/torch/optim/adamw.py", "_get_value", 3)))]  # fmt: skip
    hs.syncs = fake
    assert hs.outside("record") == [fake[1]]
    assert fake[1].where() == "item at /x/xlt_engine/a.py:1 (step)"


class Data:
    def __init__(self):
        self.reads = []

    def num_batches(self, epoch):
        return 3

    def batch(self, epoch, index):
        self.reads.append((epoch, index))
        x = torch.full((4, 3), float(index + 1))
        return {"x": x, "attention_mask": torch.ones(4, 5, dtype=torch.long)}


def test_the_loops_step_has_no_sync_outside_its_log_points(tmp_path):
    def loss_fn(m, batch, gen):
        return m(batch["x"]).pow(2).mean()

    model = torch.nn.Linear(3, 1)
    cfg = TrainConfig(max_steps=7, lr=1e-3, log_every=5, save_minutes=0, final_checkpoint=False)
    with gpu_step_syncs() as hs:
        r = train(model, loss_fn, Data(), cfg, tmp_path, RunIO(lambda m, f: None, echo=None))
    assert hs.in_steps() == [], [s.where() for s in hs.in_steps()]
    assert [h["step"] for h in r.history] == [5, 7]
    assert r.history[0]["tokens_per_s"] > 0  # tokens counted on the host batches


def test_a_loss_that_syncs_is_caught(tmp_path):
    def loss_fn(m, batch, gen):
        y = m(batch["x"]).pow(2).mean()
        assert bool(y > -1)  # a host sync inside the step
        return y

    cfg = TrainConfig(max_steps=3, lr=1e-3, log_every=5, save_minutes=0, final_checkpoint=False)
    with gpu_step_syncs() as hs:
        train(torch.nn.Linear(3, 1), loss_fn, Data(), cfg, tmp_path, RunIO(lambda m, f: None))
    # made from this test file, so not "ours"; the same line in xlt_engine would be counted
    assert [s.kind for s in hs.syncs if "test_host_sync" in s.frames[-1][0]] == ["item"] * 3


def test_reading_ahead_moves_the_position_only_when_a_batch_is_taken():
    data, cfg, pos = Data(), TrainConfig(max_steps=1), Position()
    cpu = torch.device("cpu")
    pos.next_batch(data, cfg, 0, 1, cpu)
    pos.read_ahead(data, cpu)
    assert (pos.epoch, pos.index) == (0, 1)  # what a checkpoint now would store
    second, tokens, _ = pos.next_batch(data, cfg, 0, 1, cpu)
    assert data.reads == [(0, 0), (0, 1)] and tokens == 20 and float(second["x"][0, 0]) == 2.0
    pos.next_batch(data, cfg, 0, 1, cpu)
    pos.read_ahead(data, cpu)  # across the epoch boundary
    assert (pos.epoch, pos.index) == (0, 3) and pos.ahead[0] == (1, 0)
    pos.index = 1  # a stale read-ahead (the position changed) is not used
    third, _, _ = pos.next_batch(data, cfg, 0, 1, cpu)
    assert float(third["x"][0, 0]) == 2.0 and data.reads[-1] == (0, 1)


def test_stage_passes_other_values_and_keeps_cpu_tensors_on_cpu():
    batch = {"x": torch.ones(2), "name": "a"}
    out = stage(batch, torch.device("cpu"))
    assert out["name"] == "a" and out["x"] is batch["x"]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_a_staged_step_passes_the_devices_own_sync_check(tmp_path):
    def loss_fn(m, batch, gen):
        return m(batch["x"]).pow(2).mean()

    model = torch.nn.Linear(3, 1).cuda()
    cfg = TrainConfig(max_steps=6, lr=1e-3, log_every=6, save_minutes=0, final_checkpoint=False)
    torch.cuda.set_sync_debug_mode("error")
    try:  # six steps, then the first sync: the log point's record
        with pytest.raises(RuntimeError, match="synchroniz") as info:
            train(model, loss_fn, Data(), cfg, tmp_path, RunIO(lambda m, f: None, echo=None))
        assert "record" in [entry.name for entry in info.traceback], info.traceback
    finally:
        torch.cuda.set_sync_debug_mode(0)
