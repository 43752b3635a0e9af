"""The training loop on its own (a linear model, no stage): non-finite losses and weights,
config errors, logging, the progress bar, checkpoints by the clock, resume guards, the head's
learning-rate scale. Its kill-and-resume and SIGTERM tests run through btf (test_btf.py)."""

import pytest
import torch

from xlt_engine.engine.train.checkpoints import latest_checkpoint
from xlt_engine.engine.train.config import TrainConfig
from xlt_engine.engine.train.loop import NonFiniteLoss, RunIO, train


class Data:
    def num_batches(self, epoch):
        return 4

    def batch(self, epoch, index):
        return {"x": torch.full((2, 3), float(index))}


def square_loss(m, batch, gen):
    return m(batch["x"]).pow(2).mean()


def save_weights(m, folder):
    folder.mkdir()
    torch.save(m.state_dict(), folder / "w.pt")


def load_weights(m, folder):
    m.load_state_dict(torch.load(folder / "w.pt"))


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    model = torch.nn.Linear(3, 1)
    calls = {"n": 0}

    def loss_fn(m, batch, gen):
        calls["n"] += 1
        y = m(batch["x"]).sum()
        return y * float("nan") if calls["n"] == 7 else y**2

    def save(m, folder):
        folder.mkdir()
        torch.save(m.state_dict(), folder / "w.pt")

    cfg = TrainConfig(max_steps=10, lr=1e-3, save_every=5, log_every=1)
    with pytest.raises(NonFiniteLoss, match=r"step 7, epoch 1, batch 2.*ckpt-00000005"):
        train(model, loss_fn, Data(), cfg, tmp_path, RunIO(save, None, echo=None))
    assert latest_checkpoint(tmp_path).name == "ckpt-00000005"


def test_train_config_errors():
    with pytest.raises(ValueError, match="max_steps must be a positive integer"):
        TrainConfig(max_steps=0)
    with pytest.raises(ValueError, match="warmup_ratio must be in"):
        TrainConfig(max_steps=1, warmup_ratio=1.5)
    with pytest.raises(ValueError, match="precision must be one of"):
        TrainConfig(max_steps=1, precision="fp8")
    with pytest.raises(ValueError, match="freeze pattern '\\(' is not a regex"):
        TrainConfig(max_steps=1, freeze=("(",))


def test_logged_loss_is_the_mean_of_its_own_steps(tmp_path):
    """Saving between log intervals also logs; each record averages only the steps since the
    previous record (a fixed loss of 2.0 must log 2.0 every time)."""
    model = torch.nn.Linear(3, 1)

    def loss_fn(m, batch, gen):
        return m(batch["x"]).sum() * 0 + 2.0

    def save(m, folder):
        folder.mkdir()

    cfg = TrainConfig(max_steps=12, lr=1e-3, log_every=4, save_every=3)
    r = train(model, loss_fn, Data(), cfg, tmp_path, RunIO(save, None, echo=None))
    assert [h["step"] for h in r.history] == [3, 4, 6, 8, 9, 12]
    assert all(abs(h["loss"] - 2.0) < 1e-6 for h in r.history), r.history


def test_progress_bar_and_fresh_run_guard(tmp_path, capsys):
    model = torch.nn.Linear(3, 1)

    def loss_fn(m, batch, gen):
        return m(batch["x"]).pow(2).mean()

    def save(m, folder):
        folder.mkdir()

    cfg = TrainConfig(max_steps=4, lr=1e-3, log_every=2)
    run = tmp_path / "bar-run"
    train(model, loss_fn, Data(), cfg, run, RunIO(save, None, echo=None, progress=True))
    assert "bar-run" in capsys.readouterr().err  # click's bar (hidden off a terminal: its label)
    with pytest.raises(ValueError, match="holds the checkpoints of an earlier run"):
        train(model, loss_fn, Data(), cfg, run, RunIO(save, None, echo=None))


def test_epochs_resolve_to_steps():
    assert TrainConfig(epochs=2.5, grad_accum=2).with_steps(9).max_steps == 12  # ceil(22.5 / 2)
    assert TrainConfig(max_steps=5, epochs=3).with_steps(100).max_steps == 5  # max_steps wins
    with pytest.raises(ValueError, match="resolve epochs first"):
        train(torch.nn.Linear(1, 1), None, Data(), TrainConfig(epochs=1), "x", RunIO(None, None))


def test_checkpoints_are_written_by_the_clock_by_default(tmp_path):
    """A kill loses at most ``save_minutes`` of training: with no save_every, a step that
    outlasts the period is followed by a checkpoint; save_minutes = 0 saves only at the end."""
    import time

    assert TrainConfig(max_steps=1).save_minutes == 10  # on unless turned off
    model = torch.nn.Linear(3, 1)

    def loss_fn(m, batch, gen):
        time.sleep(0.01)  # 10 ms a step, more than the 6 ms period below
        return m(batch["x"]).pow(2).mean()

    for minutes, want in ((1e-4, [1, 2, 3, 4, 5]), (0, [5])):
        saved = []

        def save(m, folder, saved=saved):
            folder.mkdir()
            saved.append(int(folder.parent.name.split("-")[1]))

        cfg = TrainConfig(max_steps=5, lr=1e-3, log_every=100, save_minutes=minutes)
        out = tmp_path / f"m{minutes}"
        train(model, loss_fn, Data(), cfg, out, RunIO(save, None, echo=None))
        assert saved == want
        assert [p.name for p in out.glob("ckpt-*")] == ["ckpt-00000005"]  # keep_checkpoints 1
    for bad in (-1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="save_minutes must be a finite number >= 0"):
            TrainConfig(max_steps=1, save_minutes=bad)


def test_small_losses_print_and_nan_before_any_checkpoint_says_so(tmp_path):
    model = torch.nn.Linear(3, 1)
    lines = []

    def tiny_loss(m, batch, gen):
        return m(batch["x"]).sum() * 0 + 1.9e-7

    def save(m, folder):
        folder.mkdir()

    cfg = TrainConfig(max_steps=2, lr=1e-3, log_every=1)
    train(model, tiny_loss, Data(), cfg, tmp_path / "a", RunIO(save, None, echo=lines.append))
    assert "loss 1.9e-07 " in lines[0], lines  # a fixed 4 decimals printed 0.0000

    def nan_loss(m, batch, gen):
        return m(batch["x"]).sum() * float("nan")

    with pytest.raises(NonFiniteLoss, match="no checkpoint was written yet") as info:
        train(model, nan_loss, Data(), cfg, tmp_path / "b", RunIO(save, None, echo=None))
    assert "None" not in str(info.value)


def test_metrics_records_carry_a_run_id_and_time_and_never_mix_runs(tmp_path):
    """A fresh run into a folder a killed run left records in (no checkpoint yet) starts the
    file over; a resumed run drops the killed run's records after its checkpoint."""
    import json

    model = torch.nn.Linear(3, 1)
    loss_fn, save, load = square_loss, save_weights, load_weights
    run = tmp_path / "run"
    run.mkdir()
    stale = {"run": "killed", "step": 1, "loss": 9.0}
    (run / "metrics.jsonl").write_text(json.dumps(stale) + "\n" + '{"step": 2, "lo')  # cut
    cfg = TrainConfig(max_steps=6, lr=1e-3, log_every=1, save_every=3)
    train(model, loss_fn, Data(), cfg, run, RunIO(save, load, echo=None))
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert len({r["run"] for r in records}) == 1 and all(r["time"] > 1.7e9 for r in records)
    # as if killed after step 5: its checkpoint is step 3; the resumed run logs 4..6 again
    (run / "latest").write_text("ckpt-00000003\n")
    import shutil

    shutil.copytree(run / "ckpt-00000006", run / "ckpt-00000003")
    state = torch.load(run / "ckpt-00000003" / "state.pt", weights_only=False)
    state.update(step=3, index=3)
    torch.save(state, run / "ckpt-00000003" / "state.pt")
    train(model, loss_fn, Data(), cfg, run, RunIO(save, load, echo=None), resume=True)
    again = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in again] == [1, 2, 3, 4, 5, 6]
    assert again[:3] == records[:3] and again[3]["run"] != records[0]["run"]


def test_weights_that_overflowed_are_never_saved_as_a_good_checkpoint(tmp_path):
    """lr = 1e30 made a checkpoint of inf weights the 'last good' one; resuming gave NaN again.
    Here a finite loss with an infinite gradient (sqrt at 0) turns the bias into NaN at step 1."""
    model = torch.nn.Linear(3, 1)

    def loss_fn(m, batch, gen):
        return (m.bias - m.bias.detach()).sqrt().sum() + m(batch["x"]).pow(2).mean()

    def save(m, folder):
        folder.mkdir()
        torch.save(m.state_dict(), folder / "w.pt")

    cfg = TrainConfig(max_steps=6, lr=1e-3, log_every=100, save_every=1, clip=0.0)
    with pytest.raises(NonFiniteLoss, match=r"non-finite weights at step 1 \(bias\)") as info:
        train(model, loss_fn, Data(), cfg, tmp_path, RunIO(save, None, echo=None))
    assert "no checkpoint was written yet" in str(info.value)
    assert latest_checkpoint(tmp_path) is None


def test_resume_refuses_a_changed_training_setting_by_name(tmp_path):
    model = torch.nn.Linear(3, 1)
    loss_fn, save, load = square_loss, save_weights, load_weights
    cfg = TrainConfig(max_steps=3, lr=1e-3, log_every=1, freeze=("bias",))
    train(model, loss_fn, Data(), cfg, tmp_path, RunIO(save, load, echo=None))
    io = RunIO(save, load, echo=None)
    changed = TrainConfig(max_steps=3, lr=2e-3, log_every=5, freeze=("bias",))
    with pytest.raises(ValueError, match=r"other settings: lr: 0.001 -> 0.002; resume with"):
        train(model, loss_fn, Data(), changed, tmp_path, io, resume=True)
    train(model, loss_fn, Data(), changed, tmp_path, io, resume="accept_changes")
    # log_every is free to change, and a stored tuple reads back equal
    train(model, loss_fn, Data(), TrainConfig(**{**cfg.__dict__, "log_every": 7}), tmp_path, io,
          resume=True)  # fmt: skip


class TwoPart(torch.nn.Module):
    """An encoder stand-in and a task head named as the task model's (``voters.*``)."""

    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Linear(3, 3)
        self.voters = torch.nn.Linear(3, 1)

    def forward(self, x):
        return self.voters(self.encoder(x))


@pytest.mark.parametrize("scale", [1.0, 10.0])
def test_head_lr_scale_moves_the_head_that_much_faster(tmp_path, scale):
    """Adam's first step moves every weight by lr (|m/sqrt(v)| = 1): the head's by
    head_lr_scale x lr, the rest by lr, biases included."""
    torch.manual_seed(0)
    model = TwoPart()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    lr = 1e-3
    cfg = TrainConfig(max_steps=1, lr=lr, head_lr_scale=scale, warmup_ratio=0, weight_decay=0)
    data = type("Ones", (), {"num_batches": lambda s, e: 1,
                             "batch": lambda s, e, i: {"x": torch.ones(2, 3)}})()  # fmt: skip
    train(model, square_loss, data, cfg, tmp_path, RunIO(save_weights, None, echo=None))  # fmt: skip
    for name, p in model.named_parameters():
        want = lr * (scale if name.startswith("voters.") else 1.0)
        moved = (p.detach() - before[name]).abs()
        assert torch.allclose(moved, torch.full_like(moved, want), rtol=1e-3), (name, moved)


def test_head_lr_scale_needs_a_head_and_a_sane_value(tmp_path):
    with pytest.raises(ValueError, match=r"head_lr_scale must be in \(0, 1000\], got 0"):
        TrainConfig(max_steps=1, head_lr_scale=0)
    cfg = TrainConfig(max_steps=1, head_lr_scale=10)
    with pytest.raises(ValueError, match=r"head_lr_scale=10: this model has no trainable task"):
        train(torch.nn.Linear(3, 1), square_loss, Data(), cfg, tmp_path, RunIO(save_weights, None, echo=None))  # fmt: skip


def test_a_checkpoint_from_before_a_setting_existed_resumes_at_its_default():
    from dataclasses import asdict

    from xlt_engine.engine.train.loop import config_changes

    cfg = TrainConfig(max_steps=3)
    stored = asdict(cfg)
    del stored["head_lr_scale"]  # written before the setting existed
    assert config_changes(stored, asdict(cfg)) == []
    scaled = asdict(TrainConfig(max_steps=3, head_lr_scale=10))
    assert config_changes(stored, scaled) == ["head_lr_scale: 1.0 -> 10"]


def _tiny_mlm(layers: int, ids: torch.Tensor):
    """A dropout-free MLM model of ``layers`` layers (seed 0), a data source that masks ``ids``
    afresh for each (epoch, batch) as btf does, and the loss the loop calls."""
    from xlt_engine.data.masking import MlmMasker
    from xlt_engine.data.tokenizer import default_tokenizer
    from xlt_engine.engine.train.loop import batch_generator
    from xlt_engine.model import BertConfig, BertForMLM

    tok = default_tokenizer()
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=layers,
                     num_attention_heads=2, intermediate_size=64, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)  # fmt: skip
    model = BertForMLM(cfg)
    masker = MlmMasker.from_tokenizer(tok)

    class Batches:
        def num_batches(self, epoch):
            return 8

        def batch(self, epoch, index):
            attn = torch.ones_like(ids)
            m = masker(ids, attn, batch_generator(0, epoch, index))
            return {"ids": m.input_ids, "pos": m.positions, "attn": attn, "y": m.labels}

    def loss_fn(m, b, gen):
        return m(b["ids"], b["pos"], b["attn"], b["y"])

    return model, Batches(), loss_fn


def _mlm_losses(tmp_path, compile_mode, capsys=None):
    """Per-step losses of 4 btf steps of a tiny dropout-free MLM model, as the loop runs them."""
    from xlt_engine.data.tokenizer import default_tokenizer
    from xlt_engine.engine.method.btf import MlmObjective

    vocab = default_tokenizer().vocab_size
    torch.manual_seed(0)  # the ids are drawn first, then the model (seed 0 again, in _tiny_mlm)
    ids = torch.randint(5, vocab, (4, 32))
    model, data, loss_fn = _tiny_mlm(1, ids)
    train_cfg = TrainConfig(max_steps=4, lr=1e-3, log_every=1, compile=compile_mode)
    r = train(MlmObjective(model), loss_fn, data, train_cfg, tmp_path / compile_mode,
              RunIO(save_weights, None, echo=print))  # fmt: skip
    return [h["loss"] for h in r.history]


def test_a_compiled_step_follows_the_eager_loss_curve(tmp_path, capsys):
    """train.compile = "compile" (torch.compile of the model the loss calls) trains the same
    model: the per-step losses within 1e-4 (relative) of eager; "graphs" off CUDA runs as
    "compile" and says so."""
    eager = _mlm_losses(tmp_path, "off")
    graphs = _mlm_losses(tmp_path, "graphs")
    assert "compile = 'graphs' needs CUDA (the device is cpu): running 'compile'" in (
        capsys.readouterr().out
    )
    assert len(eager) == len(graphs) == 4 and eager[0] != eager[-1]
    assert graphs == pytest.approx(eager, rel=1e-4)
    with pytest.raises(ValueError, match="compile must be one of"):
        TrainConfig(max_steps=1, compile="jit")


def _mlm_run(tmp_path, precision, max_steps=6, resume=False, echo=None, **kw):
    """A tiny dropout-free MLM model trained by the loop at ``precision``; (losses, model)."""
    from xlt_engine.engine.method.btf import MlmObjective

    # a learnable text: each row repeats a 7-token cycle, so the masked tokens can be inferred
    ids = 10 + (torch.arange(32) % 7 + torch.arange(8)[:, None] * 7) % 280
    model, data, loss_fn = _tiny_mlm(2, ids)

    def save(m, folder):
        folder.mkdir()
        torch.save(m.model.state_dict(), folder / "w.pt")

    def load(m, folder):
        m.model.load_state_dict(torch.load(folder / "w.pt"))

    train_cfg = TrainConfig(max_steps=max_steps, lr=3e-3, log_every=1, precision=precision,
                            freeze=(r"encoder\.layers\.0\.",), warmup_ratio=0.0, **kw)  # fmt: skip
    r = train(MlmObjective(model), loss_fn, data, train_cfg, tmp_path,
              RunIO(save, load, echo=echo), resume=resume)  # fmt: skip
    return [h["loss"] for h in r.history], model


def test_bf16_pure_trains_like_fp32_and_autocast_and_hands_back_fp32_masters(tmp_path):
    """precision = "bf16-pure": the step in bf16 weights, AdamW on fp32 masters. Over 6 steps the
    loss curve stays within 1% of fp32's and of bf16 autocast's (measured: within 0.05%); the
    model comes back in fp32, its frozen layer exactly as it was, its trained weights the
    masters (not bf16-rounded values)."""
    fp32, m32 = _mlm_run(tmp_path / "fp32", "fp32")
    amp, _ = _mlm_run(tmp_path / "amp", "bf16")
    pure, mp = _mlm_run(tmp_path / "pure", "bf16-pure")
    assert fp32[-1] < fp32[0] - 0.1  # it trains
    assert pure == pytest.approx(fp32, rel=0.01) and pure == pytest.approx(amp, rel=0.01)
    assert all(p.dtype == torch.float32 for p in mp.parameters())
    from xlt_engine.model import BertForMLM

    torch.manual_seed(0)  # the same initial weights as every run above
    init = BertForMLM(m32.config).state_dict()
    frozen = [k for k in init if k.startswith("encoder.layers.0.")]
    assert frozen and all(torch.equal(mp.state_dict()[k], init[k]) for k in frozen)
    trained = mp.state_dict()["encoder.layers.1.ffn_out.weight"]
    assert not torch.equal(trained, init["encoder.layers.1.ffn_out.weight"])
    assert not torch.equal(trained, trained.bfloat16().float())  # masters, not bf16 values


def test_bf16_pure_resumes_bit_exact(tmp_path):
    """A run resumed from its step-3 checkpoint (the fp32 masters and their AdamW state: what a
    kill after step 3 leaves) ends where the uninterrupted run ends, bit for bit."""
    import shutil

    kw = dict(save_every=3, keep_checkpoints=2)
    _, m_whole = _mlm_run(tmp_path / "whole", "bf16-pure", **kw)
    shutil.copytree(tmp_path / "whole", tmp_path / "cut")
    shutil.rmtree(tmp_path / "cut" / "ckpt-00000006")
    (tmp_path / "cut" / "latest").write_text("ckpt-00000003\n")
    losses, m_resumed = _mlm_run(tmp_path / "cut", "bf16-pure", resume=True, **kw)
    assert len(losses) == 3  # steps 4-6 only
    state = torch.load(tmp_path / "cut" / "ckpt-00000003" / "model" / "w.pt")
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    for k, v in m_whole.state_dict().items():
        assert torch.equal(v, m_resumed.state_dict()[k]), k


def test_auto_precision_resumes_in_the_precision_its_checkpoint_was_written_in(
    tmp_path, monkeypatch
):
    """precision = "auto" is bf16 on a CPU with native bf16 and fp32 on one without. A run
    begun on the first and resumed on the second continued in fp32 and ended nowhere near the
    uninterrupted run; now the checkpoint names its precision, the resumed run continues in it
    (and says so), and ends where the uninterrupted run ends, bit for bit. Every metric record
    names the precision its steps ran in. Resumed in fp32 (the old behaviour), it differs."""
    import json
    import shutil

    from xlt_engine.engine.train import optim

    monkeypatch.setattr(optim, "CPU_BF16_MIN_WIDTH", 1)  # the tiny model counts as wide
    said = []

    def run(folder, native, resume=False, precision="auto"):
        with optim.assume_native_bf16(native):
            _, model = _mlm_run(folder, precision, resume=resume, echo=said.append, save_every=3,
                                keep_checkpoints=2)  # fmt: skip
        return model.state_dict()

    def cut(name):
        shutil.copytree(tmp_path / "whole", tmp_path / name)
        shutil.rmtree(tmp_path / name / "ckpt-00000006")
        (tmp_path / name / "latest").write_text("ckpt-00000003\n")

    whole = run(tmp_path / "whole", native=True)
    cut("cut")
    resumed = run(tmp_path / "cut", native=False, resume=True)
    pinned = [x for x in said if x.startswith("resumed in")]
    assert pinned == ["resumed in bf16, the precision this run began in (precision 'auto' picks "
                      "fp32 on this machine)"]  # fmt: skip
    for k, v in whole.items():
        assert torch.equal(v, resumed[k]), k
    records = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["precision"]) for r in records] == [(i, "bf16") for i in range(1, 7)]
    state = torch.load(tmp_path / "cut" / "ckpt-00000006" / "state.pt", weights_only=True)
    assert state["precision"] == "bf16"
    state["precision"] = "fp8"  # a damaged record is named, with its checkpoint
    torch.save(state, tmp_path / "cut" / "ckpt-00000006" / "state.pt")
    with pytest.raises(ValueError, match=r"ckpt-00000006: the checkpoint's precision 'fp8' is "
                       r"none of \['bf16', 'fp16', 'fp32'\]"):  # fmt: skip
        run(tmp_path / "cut", native=False, resume=True)
    # the same cut continued in fp32, as before the record: another model
    cut("fp32")
    other = run(tmp_path / "fp32", native=False, resume="accept_changes", precision="fp32")
    assert not all(torch.equal(v, other[k]) for k, v in whole.items())


def test_a_resume_with_another_cpu_thread_count_says_it_may_leave_the_bits(tmp_path):
    """A CPU sum over a large tensor splits by thread count, so a run resumed with another
    count than it began with may end off the uninterrupted run's bits. The checkpoint records
    its count; such a resume says so (and how to match it); a resume with the same count, or
    from a checkpoint from before the record, says nothing."""
    import shutil

    before = torch.get_num_threads()
    said = []

    def run(folder, threads, resume=False):
        torch.set_num_threads(threads)
        try:
            _mlm_run(folder, "fp32", resume=resume, echo=said.append, save_every=3,
                     keep_checkpoints=2)  # fmt: skip
        finally:
            torch.set_num_threads(before)

    def cut(name):
        shutil.copytree(tmp_path / "whole", tmp_path / name)
        shutil.rmtree(tmp_path / name / "ckpt-00000006")
        (tmp_path / name / "latest").write_text("ckpt-00000003\n")
        return tmp_path / name

    run(tmp_path / "whole", 1)
    state = torch.load(tmp_path / "whole" / "ckpt-00000003" / "state.pt", weights_only=True)
    assert state["threads"] == 1
    said.clear()
    run(cut("two"), 2, resume=True)
    assert [x for x in said if "thread" in x] == [
        "resumed with 2 CPU thread(s) where the checkpoint was written with 1: large sums (the "
        "gradient norm) split by thread count, so this run may leave the bits of one that was "
        "not stopped; OMP_NUM_THREADS=1 resumes as it ran"
    ]
    said.clear()
    run(cut("one"), 1, resume=True)
    old = cut("old")  # a checkpoint from before the record
    path = old / "ckpt-00000003" / "state.pt"
    state = torch.load(path, weights_only=True)
    del state["threads"]
    torch.save(state, path)
    run(old, 2, resume=True)
    assert not [x for x in said if "thread" in x]


def test_a_checkpoint_whose_optimizer_state_holds_nan_is_named_when_read_and_never_written(
    tmp_path,
):
    """Resuming from a checkpoint with NaN Adam moments trained on until the loss went NaN and
    then called that checkpoint "the last good one"; now the checkpoint is refused as damaged
    when read, and a state holding NaN is never written."""
    model = torch.nn.Linear(3, 1)
    cfg = TrainConfig(max_steps=8, lr=1e-3, save_every=4, log_every=1)
    io = RunIO(save_weights, load_weights, echo=None)
    train(model, square_loss, Data(), TrainConfig(max_steps=4, lr=1e-3, log_every=1), tmp_path, io)
    ckpt = latest_checkpoint(tmp_path)
    state = torch.load(ckpt / "state.pt", weights_only=True)
    state["optimizer"]["state"][0]["exp_avg_sq"][0, 1] = float("nan")
    torch.save(state, ckpt / "state.pt")
    with pytest.raises(
        ValueError, match=rf"{ckpt}: a damaged checkpoint: .*optimizer.state.0.exp_avg_sq"
    ):
        train(torch.nn.Linear(3, 1), square_loss, Data(), cfg, tmp_path, io, resume=True)

    from xlt_engine.engine.train.checkpoints import Checkpoints

    other = tmp_path / "other"
    saver = Checkpoints(other, save_weights, load_weights, keep=2)
    bad = {"optimizer": {"state": {0: {"exp_avg": torch.tensor([1.0, float("inf")])}}}}
    with pytest.raises(ValueError, match=r"step 3: the optimizer / scaler state holds NaN or inf "
                       r"\(optimizer.state.0.exp_avg\); no checkpoint written"):  # fmt: skip
        saver.save(model, 3, bad)
    assert latest_checkpoint(other) is None
    good = {"optimizer": {"state": {0: {"exp_avg": torch.ones(2)}}}, "scaler": {"scale": 1.0}}
    assert saver.save(model, 4, good) == latest_checkpoint(other)


def test_auto_precision_trains_in_bf16_on_a_cpu_only_where_it_was_measured_faster(monkeypatch):
    """auto: bf16 on CUDA; on a CPU with native bf16, for training a model whose widest layer
    has >= 1,024 inputs (e5-small's 1,536: 2.2x fp32's tokens/s); fp32 for a small model (0.5x
    at 128), on a CPU without native bf16, and for inference (no width given)."""
    from xlt_engine.engine.train import optim

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(optim, "cpu_has_native_bf16", lambda: True)
    assert optim.resolve_precision("auto", cpu, 1536) == torch.bfloat16
    assert optim.resolve_precision("auto", cpu, 128) is None
    assert optim.resolve_precision("auto", cpu) is None  # inference
    assert optim.resolve_precision("fp32", cpu, 1536) is None  # asked for: kept
    assert optim.resolve_precision("auto", cuda) == torch.bfloat16
    monkeypatch.setattr(optim, "cpu_has_native_bf16", lambda: False)
    assert optim.resolve_precision("auto", cpu, 1536) is None
    model = torch.nn.Sequential(torch.nn.Linear(3, 1536), torch.nn.Linear(1536, 7))
    assert optim.widest_layer(model) == 1536 and optim.widest_layer(torch.nn.ReLU()) == 0


def test_the_loop_autocasts_a_wide_model_on_a_bf16_cpu(tmp_path, monkeypatch):
    from xlt_engine.engine.train import optim

    monkeypatch.setattr(optim, "cpu_has_native_bf16", lambda: True)
    seen = []

    class Wide(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(3, 1024), torch.nn.Linear(1024, 1)

        def forward(self, x):
            h = self.a(x)
            seen.append(h.dtype)
            return self.b(h)

    cfg = TrainConfig(max_steps=2, lr=1e-3, log_every=1)
    train(Wide(), square_loss, Data(), cfg, tmp_path, RunIO(save_weights, None, echo=None))
    assert seen == [torch.bfloat16, torch.bfloat16]


def test_the_loop_says_where_its_time_went_over_every_run(tmp_path):
    """``loop-wall.json``: the seconds in dev evaluation and in checkpoints, the rest as training
    steps; a resumed run adds its own to the earlier run's."""
    import json
    import time

    from xlt_engine.engine.train.loop import LOOP_WALL

    def evaluate(m):
        time.sleep(0.05)
        return {"dev": 1.0}

    def slow_save(m, folder):
        time.sleep(0.05)
        save_weights(m, folder)

    cfg = TrainConfig(max_steps=4, lr=1e-3, log_every=2, eval_every=2, save_every=2)
    t0 = time.perf_counter()
    train(torch.nn.Linear(3, 1), square_loss, Data(), cfg, tmp_path,
          RunIO(slow_save, load_weights, echo=None), evaluate=evaluate)  # fmt: skip
    took = time.perf_counter() - t0
    first = json.loads((tmp_path / LOOP_WALL).read_text())
    assert set(first) == {"training steps", "dev evaluation", "checkpoints"}
    assert first["dev evaluation"] >= 0.1 and first["checkpoints"] >= 0.1  # 2 of each
    assert 0 <= first["training steps"] and sum(first.values()) <= took + 1e-3
    more = TrainConfig(max_steps=6, lr=1e-3, log_every=2, eval_every=2, save_every=2)
    train(torch.nn.Linear(3, 1), square_loss, Data(), more, tmp_path,
          RunIO(slow_save, load_weights, echo=None), resume="accept_changes",
          evaluate=evaluate)  # fmt: skip
    second = json.loads((tmp_path / LOOP_WALL).read_text())
    assert second["dev evaluation"] >= first["dev evaluation"] + 0.04  # one more evaluation
    assert all(second[k] >= first[k] for k in first)
