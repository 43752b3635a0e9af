import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from xlt_engine import __version__
from xlt_engine.cli import main
from xlt_engine.cli.guard import run_guarded
from xlt_engine.model import load_pretrained

ROOT = Path(__file__).resolve().parents[1]


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


@pytest.mark.parametrize("where", ["under-a-file", "dev-null", "is-a-file"])
def test_bad_output_locations_are_one_line_errors_before_any_work(tmp_path, where):
    """An --out that cannot be a folder gave NotADirectoryError / FileExistsError tracebacks."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    out = {
        "under-a-file": blocker / "run",
        "dev-null": Path("/dev/null/run"),
        "is-a-file": blocker,
    }[where]
    commands = [
        ["init", str(out)],
        ["quickstart", "--out", str(out)],
        ["bench", "kernels", "--op", "mse", "--out", str(out)],
        [
            "run",
            "--stage",
            "finetune",
            "--config",
            str(ROOT / "configs" / "quickstart.toml"),
            "--out",
            str(out),
        ],
    ]
    for args in commands:
        res = CliRunner().invoke(main, args)
        assert res.exit_code in (1, 2), (args, res.output, res.exception)  # 2: click's usage
        assert isinstance(res.exception, SystemExit), (args, res.exception)
        line = res.output.strip().splitlines()[-1]
        assert line.startswith("Error: ") and str(out) in line, (args, res.output)
        assert "not a folder" in line or "is a file" in line, (args, line)
    assert blocker.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_check_writable_names_what_cannot_be_written(tmp_path, monkeypatch):
    """A folder the process may not write in (faked: this test may run as root, which may)."""
    import tempfile

    from xlt_engine.fileio import check_writable

    def refuse(*_a, **_k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(ValueError, match=rf"--out {tmp_path}/x/y: cannot write in {tmp_path} "):
        check_writable(tmp_path / "x" / "y", "--out")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_outside_a_training_loop_exits_130_with_the_resume_hint(sig, capsys):
    """Issue 23 (5): SIGTERM outside the loop ended the process with no word (SIGINT with a
    KeyboardInterrupt traceback); both now say what is kept and how to resume, as the loop does."""
    before = signal.getsignal(signal.SIGTERM)

    def work():
        os.kill(os.getpid(), sig)
        time.sleep(5)  # the signal interrupts this
        raise AssertionError("the signal did not stop the work")

    # Python's own SIGINT handler (KeyboardInterrupt), which a test run started in the
    # background (`cmd &`) lacks: such a process inherits SIGINT ignored, and keeps it so
    old_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(SystemExit) as stopped:
            run_guarded(work)
    finally:
        signal.signal(signal.SIGINT, old_int)
    assert stopped.value.code == 130
    err = capsys.readouterr().err
    assert f"{sig.name} received outside a training loop" in err
    assert "continue with the same command plus --resume" in err
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back


def test_a_run_prints_the_exact_command_that_repeats_or_continues_it(tmp_path, monkeypatch):
    """A finished run names the command that repeats it (reusing what it made); an interrupted
    one, or one the collapse guard stopped, the command that continues it (the same arguments,
    quoted, plus --resume)."""
    from xlt_engine.engine.experiment import pipeline
    from xlt_engine.engine.method.selftrain.guard import CollapseError
    from xlt_engine.engine.train.loop import Interrupted
    from xlt_engine.quickstart import Sizes, prepare

    cfg = prepare(tmp_path / "odd name", seed=2, sizes=Sizes(train=20, dev=5, test=5))
    args = ["run", "--stage", "all", "--config", str(cfg), "--set", "btf.train.lr=0.002"]
    want = f"xlt-engine run --stage all --config '{cfg}' --set btf.train.lr=0.002"
    outcomes = {"ok": None, "stop": Interrupted("SIGTERM: checkpoint written"),
                "collapse": CollapseError("round 1: the pseudo labels collapsed")}  # fmt: skip
    for name, err in outcomes.items():

        def fake_run_all(cfg, err=err, **kw):
            if err is not None:
                raise err

        monkeypatch.setattr(pipeline, "run_all", fake_run_all)
        res = CliRunner().invoke(main, [*args, "--resume"] if name == "stop" else args)
        if name == "ok":
            assert res.exit_code == 0, res.output
            assert f"to repeat it (finished stages are reused): {want}\n" in res.output
        else:
            assert res.exit_code == (130 if name == "stop" else 1), res.output
            assert f"to continue: {want} --resume\n" in res.output  # once, however it was given
            assert str(err) in res.output
    # a non-finite loss: the same settings would diverge again, so no "continue" line
    from xlt_engine.engine.train.loop import NonFiniteLoss

    def diverged(cfg, **kw):
        raise NonFiniteLoss("non-finite loss nan at step 3")

    monkeypatch.setattr(pipeline, "run_all", diverged)
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 1 and "non-finite loss nan" in res.output
    assert "to continue" not in res.output and "to repeat it" not in res.output


def test_the_quickstarts_config_names_its_runs_folder_and_seed(tmp_path):
    import tomllib

    from xlt_engine.engine.experiment.config import load_config
    from xlt_engine.quickstart import Sizes, prepare

    cfg = prepare(tmp_path / "qs", seed=4, sizes=Sizes(train=20, dev=5, test=5))
    raw = tomllib.loads(cfg.read_text())
    assert (raw["out"], raw["seed"]) == (str(tmp_path / "qs" / "runs"), 4)
    loaded = load_config(cfg)
    assert (loaded.out, loaded.seed) == (str(tmp_path / "qs" / "runs"), 4)


def _one_line_error(res, *words):
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.output
    errors = [line for line in res.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, res.output
    for w in words:
        assert w in errors[0], (w, errors[0])
    return errors[0]


@pytest.mark.parametrize(
    "raised",
    [
        OSError(28, "No space left on device", "/runs/x/model.safetensors"),
        Exception(  # what safetensors raises from Rust on a full disk
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No '
            'space left on device" })'
        ),
    ],
)
def test_a_full_disk_is_one_line_that_says_to_resume(tmp_path, monkeypatch, raised):
    from tests.engine.experiment.test_config import MINIMAL
    from xlt_engine.engine.experiment import execute

    def full(*args, **kwargs):
        raise raised

    monkeypatch.setattr(execute, "run_stage", full)
    cfg = tmp_path / "x.toml"
    cfg.write_text(MINIMAL)
    res = CliRunner().invoke(main, ["run", "--stage", "btf", "--config", str(cfg),
                                    "--out", str(tmp_path / "o")])  # fmt: skip
    line = _one_line_error(res, "no space left on device", "--resume")
    if isinstance(raised, OSError):
        assert line.startswith("Error: /runs/x/model.safetensors: ")
    assert "to continue: " in res.output  # the command that picks it up


def test_an_out_folder_in_a_link_loop_is_one_line(tmp_path):
    from tests.engine.experiment.test_config import MINIMAL

    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    cfg = tmp_path / "x.toml"
    cfg.write_text(MINIMAL)
    for args in (
        ["run", "--stage", "btf", "--config", str(cfg), "--out", str(tmp_path / "a" / "x")],
        ["quickstart", "--out", str(tmp_path / "a" / "q")],
        ["report", str(tmp_path), "--out", str(tmp_path / "a" / "r.html")],
    ):
        res = CliRunner().invoke(main, args)
        _one_line_error(res, str(tmp_path / "a"))


def test_a_damaged_table_or_log_is_one_line_naming_it_or_reported(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "all.json").write_text(json.dumps({"metric": "entity_f1", "targets": {"esp": "x"}}))
    page = tmp_path / "report.html"
    res = CliRunner().invoke(main, ["report", str(runs), "--out", str(page)])
    _one_line_error(res, str(runs / "all.json"), "wrong type")
    assert not page.exists()
    (runs / "all.json").unlink()
    stage = runs / "eng-esp" / "finetune"
    stage.mkdir(parents=True)
    (stage / "metrics.jsonl").write_text(
        '{"step": 1, "loss": 1.0, "tokens_per_s": Infinity}\n'
        '{"step": 2, "loss": 2.0, "tokens_per_s": -Infinity}\n'
        '{"step": 3, "loss": 0.5, "tokens_per_s": 100.0}\n'
    )
    res = CliRunner().invoke(main, ["report", str(runs), "--out", str(page)])
    assert res.exit_code == 0, res.output
    assert "mean 100 tokens/s over 1 log points" in page.read_text()
