import json

import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from xlt_engine import __version__
from xlt_engine.cli import main
from xlt_engine.model import load_pretrained


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_version_and_help():
    assert __version__ in run("--version").output
    out = run("--help").output
    assert "inspect" in out and "init" in out


def test_init_then_inspect(tmp_path):
    out = tmp_path / "tiny"
    r = run("init", out, "--layers", 3, "--hidden", 64, "--heads", 4, "--intermediate", 96)
    assert r.exit_code == 0, r.output
    model = load_pretrained(out)
    assert model.config.num_hidden_layers == 3 and model.config.hidden_size == 64
    r = run("inspect", out)
    assert r.exit_code == 0, r.output
    n_layer = 4 * (64 * 64 + 64) + 2 * 2 * 64 + (64 * 96 + 96) + (96 * 64 + 64)
    assert f"3 x {n_layer:,}" in r.output
    total = sum(p.numel() for p in model.parameters())
    assert f"{total:,}" in r.output
    assert "F32 x" in r.output and "do_lower_case=False" in r.output
    assert "renamed keys 0" in r.output


def test_inspect_reports_renamed_and_ignored(tmp_path):
    out = tmp_path / "m"
    run("init", out)
    sd = load_file(str(out / "model.safetensors"))
    sd = {k.replace("LayerNorm.weight", "LayerNorm.gamma"): v.half() for k, v in sd.items()}
    sd["cls.seq_relationship.weight"] = torch.zeros(2, 128)
    save_file(sd, str(out / "model.safetensors"))
    r = run("inspect", out)
    assert r.exit_code == 0, r.output
    assert "bert.embeddings.LayerNorm.gamma -> embeddings.LayerNorm.weight" in r.output
    assert "cls.seq_relationship.weight: next-sentence-prediction classifier" in r.output
    assert "F16 x" in r.output
    r = run("inspect", out, "--encoder")
    assert "cls.predictions.bias: MLM head" in r.output


def test_inspect_bad_checkpoint_fails_cleanly(tmp_path):
    out = tmp_path / "m"
    run("init", out)
    cfg = json.loads((out / "config.json").read_text())
    cfg["hidden_act"] = "swish"
    (out / "config.json").write_text(json.dumps(cfg))
    r = CliRunner().invoke(main, ["inspect", str(out)])
    assert r.exit_code == 1
    assert "hidden_act" in r.output and "config.json" in r.output


def test_init_with_mbert_vocab(tmp_path, mbert_vocab):
    r = run(
        "init",
        tmp_path / "m",
        "--vocab",
        mbert_vocab,
        "--layers",
        1,
        "--hidden",
        32,
        "--heads",
        2,
        "--intermediate",
        64,
    )
    assert r.exit_code == 0, r.output
    r = run("inspect", tmp_path / "m")
    assert "V=119547" in r.output and "[CLS]=101" in r.output
