"""Checkpoint loading rules and bad input: every problem is named, nothing half-written."""

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.model.hf_utils import TINY_CONFIGS, batch
from xlt_engine.data.tokenizer import default_tokenizer
from xlt_engine.model import (
    BertConfig,
    BertForMLM,
    load_encoder,
    load_pretrained,
    plan_checkpoint,
    save_pretrained,
)
from xlt_engine.model import checkpoint as ckpt

CFG = TINY_CONFIGS[0]


@pytest.fixture
def saved(tmp_path):
    """A saved random BertForMLM and its HF-named state dict."""
    model = BertForMLM(BertConfig(**CFG)).eval()
    out = save_pretrained(model, tmp_path / "model")
    return model, out, load_file(str(out / "model.safetensors"))


def rewrite(folder, sd):
    save_file(sd, str(folder / "model.safetensors"))


def error_of(path, **kw):
    with pytest.raises(ValueError) as err:
        load_pretrained(path, **kw)
    return str(err.value)


def test_saved_keys_are_hugging_face_names(saved):
    _, _, sd = saved
    assert "bert.embeddings.word_embeddings.weight" in sd
    assert "bert.encoder.layer.1.attention.self.query.weight" in sd
    assert "bert.encoder.layer.0.output.LayerNorm.bias" in sd
    assert "cls.predictions.transform.dense.weight" in sd and "cls.predictions.bias" in sd
    assert "cls.predictions.decoder.weight" not in sd  # tied: transformers omits it too
    assert all(k.startswith(("bert.", "cls.predictions.")) for k in sd)


def test_key_table_maps_every_parameter_both_ways():
    model = BertForMLM(BertConfig(**CFG))
    for name, _ in model.named_parameters():
        hf = ckpt.ours_to_hf(name)
        assert ckpt.hf_to_ours(hf.removeprefix("bert.")) == name


def test_missing_key(saved):
    _, folder, sd = saved
    del sd["bert.encoder.layer.0.output.dense.weight"]
    rewrite(folder, sd)
    msg = error_of(folder)
    assert "missing keys" in msg and "bert.encoder.layer.0.output.dense.weight" in msg


def test_unexpected_key(saved):
    _, folder, sd = saved
    sd["bert.encoder.layer.7.output.dense.weight"] = torch.zeros(2)
    sd["something.else"] = torch.zeros(1)
    rewrite(folder, sd)
    msg = error_of(folder)
    assert "unexpected keys" in msg
    assert "bert.encoder.layer.7.output.dense.weight" in msg and "something.else" in msg


def test_wrong_shape(saved):
    _, folder, sd = saved
    sd["bert.encoder.layer.1.intermediate.dense.weight"] = torch.zeros(3, 5)
    rewrite(folder, sd)
    msg = error_of(folder)
    assert (
        "bert.encoder.layer.1.intermediate.dense.weight" in msg
        and "[3, 5]" in msg
        and "[64, 32]" in msg
    )


def test_all_problems_in_one_error(saved):
    _, folder, sd = saved
    del sd["bert.embeddings.LayerNorm.weight"]
    sd["extra.key"] = torch.zeros(1)
    sd["cls.predictions.bias"] = torch.zeros(5)
    rewrite(folder, sd)
    msg = error_of(folder)
    assert (
        "bert.embeddings.LayerNorm.weight" in msg
        and "extra.key" in msg
        and "cls.predictions.bias" in msg
    )


def test_truncated_file_names_the_file(saved):
    _, folder, _ = saved
    f = folder / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    msg = error_of(folder)
    assert str(f) in msg and "truncated" in msg


def test_garbage_file_names_the_file(saved):
    _, folder, _ = saved
    f = folder / "model.safetensors"
    f.write_bytes(b"\x00" * 16)
    assert str(f) in error_of(folder)


def test_config_vocab_size_mismatch(saved):
    _, folder, _ = saved
    cfg = json.loads((folder / "config.json").read_text())
    cfg["vocab_size"] = 500
    (folder / "config.json").write_text(json.dumps(cfg))
    msg = error_of(folder)
    assert "vocab_size = 500, but bert.embeddings.word_embeddings.weight has 97" in msg


def test_tokenizer_larger_than_vocab_size(tmp_path):
    tok = default_tokenizer()
    model = BertForMLM(BertConfig(**{**CFG, "vocab_size": tok.vocab_size}))
    folder = save_pretrained(model, tmp_path / "m", tok)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["vocab_size"] = 100
    (folder / "config.json").write_text(json.dumps(cfg))
    sd = load_file(str(folder / "model.safetensors"))
    sd["bert.embeddings.word_embeddings.weight"] = sd["bert.embeddings.word_embeddings.weight"][
        :100
    ].clone()
    sd["cls.predictions.bias"] = sd["cls.predictions.bias"][:100].clone()
    rewrite(folder, sd)
    msg = error_of(folder)
    assert f"{tok.vocab_size} tokens" in msg and "vocab_size is 100" in msg
    with pytest.raises(ValueError, match="vocab_size"):
        save_pretrained(BertForMLM(BertConfig(**CFG)), tmp_path / "x", tok)


def test_gamma_and_weight_both_present(saved):
    _, folder, sd = saved
    sd["bert.embeddings.LayerNorm.gamma"] = sd["bert.embeddings.LayerNorm.weight"].clone()
    rewrite(folder, sd)
    msg = error_of(folder)
    assert "bert.embeddings.LayerNorm.gamma" in msg and "bert.embeddings.LayerNorm.weight" in msg
    assert "both present" in msg


def test_gamma_renamed_only_under_layernorm(saved):
    _, folder, sd = saved
    sd["bert.encoder.layer.0.attention.self.gamma"] = torch.zeros(1)
    rewrite(folder, sd)
    assert "bert.encoder.layer.0.attention.self.gamma" in error_of(folder)


def test_same_key_with_and_without_prefix(saved):
    _, folder, sd = saved
    sd["embeddings.word_embeddings.weight"] = sd["bert.embeddings.word_embeddings.weight"].clone()
    rewrite(folder, sd)
    assert "both present" in error_of(folder)


def test_ignored_keys_are_reported(saved):
    _, folder, sd = saved
    sd["bert.embeddings.position_ids"] = torch.arange(40)[None]
    sd["cls.seq_relationship.weight"] = torch.zeros(2, 32)
    sd["cls.seq_relationship.bias"] = torch.zeros(2)
    sd["bert.pooler.dense.weight"] = torch.zeros(32, 32)
    sd["bert.pooler.dense.bias"] = torch.zeros(32)
    rewrite(folder, sd)
    plan = plan_checkpoint(folder)
    assert sorted(k for k, _ in plan.ignored) == sorted(
        ["bert.embeddings.position_ids", "cls.seq_relationship.weight", "cls.seq_relationship.bias"]
    )
    assert plan.pooler  # the pooler is loaded now (LaBSE-style sentence representations)
    model = load_pretrained(folder)
    assert model.encoder.pooler is not None and model.encoder.pooler.weight.abs().max() == 0


def test_tied_decoder_weight_must_equal_embeddings(saved):
    model, folder, sd = saved
    sd["cls.predictions.decoder.weight"] = sd["bert.embeddings.word_embeddings.weight"].clone()
    sd["cls.predictions.decoder.bias"] = sd["cls.predictions.bias"].clone()
    rewrite(folder, sd)
    loaded = load_pretrained(folder)  # equal copies: fine
    assert torch.equal(loaded.decoder_weight, model.decoder_weight)
    sd["cls.predictions.decoder.weight"][5, 3] += 1.0
    rewrite(folder, sd)
    msg = error_of(folder)
    assert "cls.predictions.decoder.weight" in msg and "tied" in msg
    sd["cls.predictions.decoder.weight"][5, 3] -= 1.0
    sd["cls.predictions.decoder.bias"][0] += 1.0
    rewrite(folder, sd)
    msg = error_of(folder)
    assert "cls.predictions.decoder.bias" in msg and "cls.predictions.bias" in msg


def test_non_float_dtype(saved):
    _, folder, sd = saved
    sd["cls.predictions.bias"] = torch.zeros(CFG["vocab_size"], dtype=torch.int32)
    rewrite(folder, sd)
    assert "cls.predictions.bias: dtype I32" in error_of(folder)


@pytest.mark.parametrize("stored", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("wanted", [torch.float32, torch.bfloat16, None])
def test_dtypes_convert_on_load(saved, stored, wanted):
    _, folder, sd = saved
    rewrite(folder, {k: v.to(stored) for k, v in sd.items()})
    model = load_pretrained(folder, dtype=wanted)
    expect = wanted or stored
    assert {p.dtype for p in model.parameters()} == {expect}
    w = model.encoder.embeddings.word.weight
    assert torch.equal(w, sd["bert.embeddings.word_embeddings.weight"].to(stored).to(expect))


def test_mixed_stored_dtypes_need_a_dtype(saved):
    _, folder, sd = saved
    sd["cls.predictions.bias"] = sd["cls.predictions.bias"].half()
    rewrite(folder, sd)
    assert "mixes dtypes" in error_of(folder, dtype=None)
    assert load_pretrained(folder).head.bias.dtype == torch.float32


def test_single_file_path_and_explicit_config(saved, tmp_path):
    model, folder, _sd = saved
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(folder / "model.safetensors", lone / "weights.safetensors")
    with pytest.raises(ValueError, match="no config.json"):
        load_pretrained(lone / "weights.safetensors")
    loaded = load_pretrained(lone / "weights.safetensors", config=model.config)
    assert torch.equal(loaded.head.bias, model.head.bias)
    shutil.copy(folder / "config.json", lone / "config.json")
    assert torch.equal(load_pretrained(lone / "weights.safetensors").head.bias, model.head.bias)


def test_sharded_index(saved):
    model, folder, sd = saved
    keys = sorted(sd)
    half = len(keys) // 2
    shards = {
        "model-00001-of-00002.safetensors": keys[:half],
        "model-00002-of-00002.safetensors": keys[half:],
    }
    for name, ks in shards.items():
        save_file({k: sd[k] for k in ks}, str(folder / name))
    (folder / "model.safetensors").unlink()
    index = {"metadata": {}, "weight_map": {k: n for n, ks in shards.items() for k in ks}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    ids, mask, types = batch(CFG)
    loaded = load_pretrained(folder)
    sel = mask.bool()
    with torch.no_grad():
        assert torch.equal(loaded(ids, sel, mask, types), model(ids, sel, mask, types))
    (folder / "model-00002-of-00002.safetensors").unlink()
    msg = error_of(folder)
    assert "model-00002-of-00002.safetensors" in msg and "missing" in msg


def test_bin_loads_with_weights_only(saved, tmp_path):
    model, folder, sd = saved
    b = tmp_path / "bin"
    b.mkdir()
    torch.save(
        {k.replace("LayerNorm.weight", "LayerNorm.gamma"): v for k, v in sd.items()},
        b / "pytorch_model.bin",
    )
    shutil.copy(folder / "config.json", b)
    loaded = load_pretrained(b)
    assert torch.equal(
        loaded.encoder.layers[0].attn_norm.weight, model.encoder.layers[0].attn_norm.weight
    )
    assert len(plan_checkpoint(b).renamed) == 2 * CFG["num_hidden_layers"] + 2


class Evil:
    def __reduce__(self):
        return (print, ("pickle code ran",))


def test_bin_with_pickled_code_is_refused(tmp_path, saved, capsys):
    _, folder, _ = saved
    b = tmp_path / "evil"
    b.mkdir()
    torch.save({"x": Evil()}, b / "pytorch_model.bin")
    shutil.copy(folder / "config.json", b)
    msg = error_of(b)
    assert "pytorch_model.bin" in msg
    assert "pickle code ran" not in capsys.readouterr().out


def test_truncated_bin(tmp_path, saved):
    _, folder, sd = saved
    b = tmp_path / "bin"
    b.mkdir()
    torch.save(sd, b / "pytorch_model.bin")
    data = (b / "pytorch_model.bin").read_bytes()
    (b / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    shutil.copy(folder / "config.json", b)
    assert str(b / "pytorch_model.bin") in error_of(b)


def test_no_weights_in_folder(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert "no weights found" in error_of(tmp_path)


def test_load_encoder_ignores_mlm_head(saved):
    model, folder, _ = saved
    enc = load_encoder(folder)
    plan = plan_checkpoint(folder, "encoder")
    assert any(k == "cls.predictions.bias" for k, _ in plan.ignored)
    ids, mask, types = batch(CFG)
    with torch.no_grad():
        assert torch.equal(enc(ids, mask, types), model.encoder(ids, mask, types))


def test_an_encoder_only_checkpoint_gets_a_fresh_head(tmp_path):
    """No MLM head stored (it was an error before): a fresh head, named in the plan; the
    encoder's weights are the stored ones."""
    enc = BertForMLM(BertConfig(**CFG)).encoder
    folder = save_pretrained(enc, tmp_path / "enc")
    assert plan_checkpoint(folder).initialised[0] == "head.bias"
    model = load_pretrained(folder)
    for (name, a), b in zip(
        enc.state_dict().items(), model.encoder.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_save_replaces_atomically_and_cleans_up_on_failure(saved, monkeypatch):
    model, folder, _sd = saved
    before = (folder / "model.safetensors").read_bytes()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ckpt, "save_file", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        save_pretrained(model, folder)
    assert (folder / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in folder.parent.iterdir()) == ["model"]  # no temp leftovers
    monkeypatch.undo()
    with torch.no_grad():
        model.head.bias.add_(1.0)
    save_pretrained(model, folder)
    assert torch.equal(load_pretrained(folder).head.bias, model.head.bias)
    assert sorted(p.name for p in folder.parent.iterdir()) == ["model"]


def test_load_onto_meta_free_model_keeps_requires_grad(saved):
    _, folder, _ = saved
    model = load_pretrained(folder)
    assert all(p.requires_grad and p.device.type == "cpu" for p in model.parameters())
    assert model.decoder_weight is model.encoder.embeddings.word.weight


MEMORY_PROBE = r"""
import sys, torch
from xlt_engine.model import BertConfig, BertForMLM, load_pretrained, save_pretrained

def hwm_mib():  # peak resident set of this process so far
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

folder, stored, wanted = sys.argv[1], getattr(torch, sys.argv[2]), getattr(torch, sys.argv[3])
tiny = BertConfig(vocab_size=50, hidden_size=32, num_attention_heads=2, num_hidden_layers=1, intermediate_size=64)
save_pretrained(BertForMLM(tiny), folder + "/warm", dtype=stored)
load_pretrained(folder + "/warm", dtype=wanted)  # warm up lazily loaded code and allocator
before = hwm_mib()
model = load_pretrained(folder + "/big", dtype=wanted)
size = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
print(size, hwm_mib() - before)
"""


@pytest.mark.skipif(
    not __import__("os").path.exists("/proc/self/status"), reason="needs Linux /proc"
)
@pytest.mark.parametrize("stored, wanted", [("float32", "float32"), ("bfloat16", "float32")])
def test_loading_keeps_no_second_full_copy(tmp_path, stored, wanted):
    """Peak memory while loading is the model plus about one tensor, not two models."""
    import subprocess
    import sys

    cfg = BertConfig(
        vocab_size=1000,
        hidden_size=384,
        num_attention_heads=6,
        num_hidden_layers=6,
        intermediate_size=1536,
    )
    save_pretrained(BertForMLM(cfg), tmp_path / "big", dtype=getattr(torch, stored))
    # every allocation above 64 KiB gets its own mapping, returned to the system when freed:
    # the peak then measures the loader, not glibc heap fragmentation (which made it flaky)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(tmp_path), stored, wanted],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout.split()
    size, growth = float(out[0]), float(out[1])
    assert size > 40
    # the largest single tensor is 1536 x 384 fp32 = 2.25 MiB; allow allocator slack
    assert growth < 1.15 * size + 4, (
        f"loading a {size:.0f} MiB model grew the peak by {growth:.0f} MiB"
    )


def test_save_refuses_to_replace_a_foreign_folder(tmp_path):
    model = BertForMLM(BertConfig(**CFG))
    precious = tmp_path / "work"
    (precious / "src").mkdir(parents=True)
    (precious / "notes.md").write_text("keep me")
    with pytest.raises(ValueError, match="refusing to replace"):
        save_pretrained(model, precious)
    assert (precious / "notes.md").read_text() == "keep me" and (precious / "src").is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        save_pretrained(model, tmp_path / "file")
    empty = tmp_path / "empty"
    empty.mkdir()
    save_pretrained(model, empty)
    assert (empty / "model.safetensors").is_file()


def test_nan_or_inf_weights_are_refused_naming_the_tensors(saved):
    """A diverged run's checkpoint loaded silently and failed at the next stage's first step
    ("non-finite loss"), blaming the training; now the loader names the bad tensors."""
    _, folder, sd = saved
    sd["bert.encoder.layer.1.attention.self.query.weight"][0, :3] = float("nan")
    sd["bert.embeddings.word_embeddings.weight"][5, 0] = float("inf")
    rewrite(folder, sd)
    for load in (load_pretrained, load_encoder):
        with pytest.raises(ValueError) as err:
            load(folder)
        msg = str(err.value)
        assert "2 tensor(s) hold NaN or inf" in msg and "allow_nonfinite=True" in msg
        assert "bert.encoder.layer.1.attention.self.query.weight (3 of " in msg
        assert "bert.embeddings.word_embeddings.weight (1 of " in msg
    loaded = load_pretrained(folder, allow_nonfinite=True)  # for analysis
    assert torch.isnan(loaded.encoder.layers[1].attn.q.weight).sum() == 3


def test_nan_in_a_task_models_head_is_refused(saved, tmp_path):
    from xlt_engine.model.heads import VotersModule
    from xlt_engine.model.task import TaskModel, load_task_model, save_task_model

    model, _, _ = saved
    task = TaskModel(
        model.encoder, VotersModule(CFG["hidden_size"], 3, 2), "token", ["O", "B", "I"]
    )
    out = save_task_model(task, tmp_path / "task")
    voters = load_file(str(out / "voters.safetensors"))
    name = sorted(voters)[0]
    voters[name].view(-1)[0] = float("nan")
    save_file(voters, str(out / "voters.safetensors"))
    with pytest.raises(
        ValueError, match=rf"voters.safetensors: 1 tensor\(s\) hold NaN or inf: {name}"
    ):
        load_task_model(out)
    assert torch.isnan(
        dict(load_task_model(out, allow_nonfinite=True).voters.named_parameters())[name]
    ).any()


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("num_hidden_layers", 1_000_000, "num_hidden_layers = 1,000,000, but the weights hold 2"),
        ("vocab_size", 2**63, "key vocab_size = 9223372036854775808 is beyond 2\\*\\*31 - 1"),
        ("vocab_size", 2**30, "vocab_size = 1,073,741,824, but bert.embeddings.word_embeddings"),
        ("hidden_size", 2**20, "hidden_size = 1,048,576, but bert.embeddings.word_embeddings"),
        ("intermediate_size", 8, "intermediate_size = 8, but bert.encoder.layer.0.intermediate"),
    ],
)
def test_an_absurd_config_is_refused_from_the_headers_before_anything_is_built(
    saved, key, value, message
):
    """A config.json claiming a million layers allocated for two minutes (3.7 GB) before its
    missing keys were named; a vocabulary of 2**63 gave a raw C++ traceback."""
    import resource
    import time

    _, folder, _ = saved
    raw = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(raw | {key: value}))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    for load in (load_pretrained, load_encoder, plan_checkpoint):
        with pytest.raises(ValueError, match=f"config.json: .*{message}"):
            load(folder)
    assert time.perf_counter() - start < 10  # (it was 89 s for 100,000 layers)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB


def test_a_deeply_nested_config_is_a_clear_error(saved):
    _, folder, _ = saved
    (folder / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="config.json: invalid config: JSON nested too deeply"):
        load_pretrained(folder)


def test_parameter_count_is_the_models_and_a_model_beyond_memory_is_refused(saved):
    for c in TINY_CONFIGS:
        cfg = BertConfig(**c)
        model = BertForMLM(cfg)
        assert cfg.parameter_count() == sum(p.numel() for p in model.parameters())
        assert cfg.parameter_count(mlm_head=False) == sum(
            p.numel() for p in model.encoder.parameters()
        )
    base = BertConfig()  # mBERT-base: 178M parameters with its head
    assert 177e6 < base.parameter_count() < 180e6
    base.check_fits(4, budget=2**30)  # 0.7 GB in 1 GiB
    with pytest.raises(ValueError, match=r"x: the model's weights alone need 0\.7 GiB .* 0\.5 GiB"):
        base.check_fits(4, "x", budget=2**29)
    huge = BertConfig(num_hidden_layers=1_000_000)
    with pytest.raises(ValueError, match="num_hidden_layers = 1,000,000"):
        huge.check_fits(4, "--layers")  # against this machine's memory


def test_init_refuses_a_model_beyond_this_machines_memory(tmp_path):
    from click.testing import CliRunner

    from xlt_engine.cli import main

    res = CliRunner().invoke(main, ["init", str(tmp_path / "m"), "--layers", "1000000"])
    assert res.exit_code == 1 and "the model's weights alone need" in res.output
    assert not (tmp_path / "m").exists()


def test_a_finite_weight_beyond_fp16s_range_is_refused_when_loaded_as_fp16(saved):
    """The check reads what the model will hold: 1e6 is finite in fp32 and inf in fp16."""
    _, folder, sd = saved
    sd["bert.encoder.layer.0.output.dense.weight"][0, 0] = 1e6
    rewrite(folder, sd)
    for load in (load_pretrained, load_encoder):
        with pytest.raises(ValueError, match=r"beyond the range of the dtype asked for.*"
                           r"layer.0.output.dense.weight \(1 of "):  # fmt: skip
            load(folder, dtype=torch.float16)
        load(folder, dtype=torch.bfloat16)  # bf16 holds it
        load(folder)


def test_weights_holding_nan_are_never_written(saved, tmp_path):
    from xlt_engine.model.heads import VotersModule
    from xlt_engine.model.task import TaskModel, save_task_model

    model, _, _ = saved
    with torch.no_grad():
        model.encoder.layers[0].attn.q.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"1 tensor\(s\) hold NaN or inf: .*nothing was written"):
        save_pretrained(model, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    with torch.no_grad():
        model.encoder.layers[0].attn.q.weight[0, 0] = 0.0
    head = VotersModule(CFG["hidden_size"], 3, 2)
    with torch.no_grad():
        head.voters[1].classifier.bias[0] = float("inf")
    task = TaskModel(model.encoder, head, "token", ["O", "B", "I"])
    with pytest.raises(ValueError, match=r"voters.safetensors: 1 tensor\(s\) hold NaN or inf"):
        save_task_model(task, tmp_path / "task")
    assert not (tmp_path / "task").exists()


@pytest.mark.parametrize(
    ("values", "dtype", "bad"),
    [
        ([1.0, -2.0, 3.0], torch.float32, 0),
        ([1.0, float("inf"), 3.0], torch.float32, 1),
        ([float("inf"), float("-inf"), 1.0], torch.float32, 2),  # their sum is NaN
        ([float("nan"), 1.0, float("nan")], torch.bfloat16, 2),
        ([3e38, 3e38, -1.0], torch.float32, 0),  # finite values whose sum overflows
        ([60000.0, 60000.0], torch.float16, 0),  # beyond fp16's range once summed
        ([1e308, 1e308], torch.float64, 0),
        ([1e308, float("nan")], torch.float64, 1),
    ],
)
def test_non_finite_counts_are_exact_whatever_the_sum_does(values, dtype, bad):
    """The count's fast path (a finite sum: nothing to count) never hides a NaN or inf, and a
    sum that overflows on finite values falls back to counting them."""
    t = torch.tensor(values, dtype=dtype)
    assert ckpt.NonFiniteWeights.count(t) == bad
    assert ckpt.NonFiniteWeights.count(torch.tensor([1, 2])) == 0  # integers hold no NaN


def test_a_loader_parses_a_tokenizer_once_per_process_and_sees_its_edits(tmp_path, monkeypatch):
    """Loading a model checks its tokenizer against vocab_size; e5's tokenizer.json took 3 s to
    parse on a busy core, once per model load (8 a self-training round). Copies of one tokenizer are parsed
    once; an edited file is parsed again, and a broken one is refused every time."""
    from xlt_engine.data import tokenizer as tk

    tok = default_tokenizer()
    model = BertForMLM(BertConfig(**{**CFG, "vocab_size": tok.vocab_size}))
    first = save_pretrained(model, tmp_path / "a", tok)
    second = save_pretrained(model, tmp_path / "b", tok)  # a copy, like each step's student
    parsed = []
    real = tk.load_tokenizer
    monkeypatch.setattr(tk, "load_tokenizer", lambda *a, **k: parsed.append(a[0]) or real(*a, **k))
    monkeypatch.setattr(tk, "_VOCAB_SIZES", {})
    load_encoder(first)
    load_encoder(second)
    load_pretrained(first)
    assert parsed == [first]
    assert plan_checkpoint(second).tokenizer.vocab_size == tok.vocab_size  # describe's: loaded
    vocab = (second / "vocab.txt").read_text().splitlines()
    raw = json.loads((second / "tokenizer.json").read_text())
    raw["model"]["vocab"]["extra-token"] = len(vocab)  # one token more than the embeddings
    (second / "tokenizer.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=f"has {tok.vocab_size + 1} tokens but config vocab_size"):
        load_encoder(second)
    (second / "tokenizer.json").write_text("{not json")
    for _ in range(2):
        with pytest.raises(ValueError, match="tokenizer.json: invalid JSON"):
            load_encoder(second)
    load_encoder(first)
    assert parsed.count(first) == 1
