"""The write rule (``outputs.claim_output``): no command replaces a file or folder it did not
write. Every command that writes for a user (predict, report, export, init, quickstart, corpus,
run's and ablate's tables) is pointed at a path it reads (the input, a model file, the config),
at a user's file and at a folder of the user's files, and every byte of them is found intact;
a new path, and the same command's own earlier output, are written."""

import hashlib
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from xlt_engine.cli import main
from xlt_engine.engine.experiment.config import load_config
from xlt_engine.outputs import LEDGER, claim_output, engine_wrote, record_output


def snapshot(*roots: Path) -> dict[str, str]:
    """sha256 of every file below ``roots`` (a file root: itself)."""
    out = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def made(ner_cfg, tmp_path_factory):
    """A linear-head model fine-tuned from the pretrained tiny model (no btf), its config,
    the data it read, and a user's folder and file beside them."""
    root = tmp_path_factory.mktemp("outputs")
    cfg = root / "ner.toml"
    shutil.copy(ner_cfg, cfg)
    out = root / "run"
    args = ["run", "--stage", "finetune", "--config", str(cfg), "--out", str(out), "--no-btf",
            "--linear-head", "--set", "target=esp", "--no-progress"]  # fmt: skip
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    model = next(out.glob("*/finetune-direct-linear/model"))
    user = root / "mine"
    user.mkdir()
    (user / "corpus.de.txt").write_text("Ein Satz.\n")
    (user / "labels.json").write_text('["O", "B-PER"]\n')
    (user / "weights.safetensors").write_bytes(b"not really")
    notes = root / "notes.md"
    notes.write_text("my notes\n")
    data = Path(ner_cfg).parent
    pretrained = Path(load_config(cfg).model.path)
    return {"cfg": cfg, "out": out, "model": model, "user": user, "notes": notes, "data": data,
            "pretrained": pretrained}  # fmt: skip


def _run(args) -> tuple[int, str]:
    res = CliRunner().invoke(main, [str(a) for a in args])
    return res.exit_code, res.output


def _predict(made, output, *more):
    return _run(["run", "--stage", "predict", "--config", made["cfg"], "--out", made["out"],
                 "--set", f"predict.model={str(made['model'])!r}",
                 "--set", f"predict.input={str(made['data'] / 'esp.test')!r}",
                 "--set", f"predict.output={str(output)!r}", "--set", "target=esp",
                 *more])  # fmt: skip


def test_no_writer_replaces_what_it_reads_or_what_it_did_not_write(made, tmp_path):
    protected = [made["cfg"], made["model"], made["user"], made["notes"], made["data"],
                 made["pretrained"]]  # fmt: skip
    before = snapshot(*protected)
    model_file = made["model"] / "model.safetensors"
    refusals = {
        "predict onto the model's weights": _predict(made, model_file),
        "predict onto the config": _predict(made, made["cfg"]),
        "predict onto its input": _predict(made, made["data"] / "esp.test"),
        "predict onto a user's file": _predict(made, made["notes"]),
        "predict into the model folder": _predict(made, made["model"] / "esp.pred"),
        "predict onto the input, --overwrite": _predict(
            made, made["data"] / "esp.test", "--overwrite"
        ),
        "report onto the config": _run(["report", made["out"], "--out", made["cfg"]]),
        "report onto the weights": _run(["report", made["out"], "--out", model_file]),
        "report onto a user's file": _run(["report", made["out"], "--out", made["notes"]]),
        "export into a user's folder": _run(["export", made["model"], made["user"]]),
        "export into its own model": _run(["export", made["model"], made["model"]]),
        "init into a user's folder": _run(["init", made["user"], "--layers", "1"]),
        "quickstart into a user's folder": _run(["quickstart", "--out", made["user"]]),
        "corpus onto a user's file": _run(["corpus", "--source", made["data"] / "eng.train",
                                           "--target-text", made["notes"], "--out", made["notes"]]),
        "run with --out inside the model it reads": _run(
            ["run", "--stage", "btf", "--config", made["cfg"], "--out", made["pretrained"] / "r"]
        ),
        "run --stage all, a user's all.md in --out": None,  # below
        "ablate, a user's ablation.json in --out": None,
    }  # fmt: skip
    user_tables = tmp_path / "tables"
    user_tables.mkdir()
    (user_tables / "all.md").write_text("my table\n")
    (user_tables / "ablation.json").write_text('{"mine": true}\n')
    protected.append(user_tables)
    before |= snapshot(user_tables)
    refusals["run --stage all, a user's all.md in --out"] = _run(
        ["run", "--stage", "all", "--config", made["cfg"], "--out", user_tables, "--no-progress"]
    )
    refusals["ablate, a user's ablation.json in --out"] = _run(
        ["ablate", "--config", made["cfg"], "--seeds", "1", "--out", user_tables, "--no-progress"]
    )
    for what, (code, output) in refusals.items():
        assert code != 0, (what, output)
        assert "Traceback" not in output, what
        assert "which this command reads" in output or "did not write" in output, (what, output)
    assert snapshot(*protected) == before  # every byte
    assert sorted(p.name for p in user_tables.iterdir()) == ["ablation.json", "all.md"]


def test_a_new_path_and_the_commands_own_output_are_written(made, tmp_path):
    pred = tmp_path / "esp.pred"
    code, output = _predict(made, pred)
    assert code == 0, output
    first = pred.read_bytes()
    assert engine_wrote(pred, "predict") and not engine_wrote(pred, "report")
    code, output = _predict(made, pred)  # its own earlier output: replaced
    assert code == 0, output
    assert pred.read_bytes() == first
    pred.write_text("edited by hand\n")  # no longer what predict wrote
    code, output = _predict(made, pred)
    assert (
        code != 0
        and "changed since xlt-engine predict wrote it" in output
        and pred.read_text() == "edited by hand\n"
    )
    code, output = _predict(made, pred, "--overwrite")
    assert code == 0 and pred.read_bytes() == first
    page = tmp_path / "report.html"
    for _ in range(2):  # new, then its own
        code, output = _run(["report", made["out"], "--out", page])
        assert code == 0, output
    hf = tmp_path / "hf"
    for _ in range(2):
        code, output = _run(["export", made["model"], hf])
        assert code == 0, output
    assert (hf / LEDGER).is_file()


def test_claim_output_rules(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="is inside .* which this command reads"):
        claim_output(model / "x.txt", "out", "predict", reads=[model])
    with pytest.raises(ValueError, match="holds .*model, which this command reads"):
        claim_output(tmp_path, "OUT", "export", folder=True, reads=[model])
    link = tmp_path / "link"
    link.symlink_to(model / "config.json")
    with pytest.raises(ValueError, match="is a symbolic link"):
        claim_output(link, "out", "predict")
    loop = tmp_path / "loop"
    loop.symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(loop)
    with pytest.raises(ValueError, match="cannot be resolved"):
        claim_output(loop / "x", "out", "predict")
    mine = tmp_path / "mine.txt"
    mine.write_text("a")
    record_output(mine, "predict")
    assert claim_output(mine, "out", "predict") == mine
    with pytest.raises(ValueError, match="report did not write"):
        claim_output(mine, "out", "report")  # another command's output
    empty = tmp_path / "empty"
    empty.mkdir()
    assert claim_output(empty, "OUT", "export", folder=True) == empty


def _record_many(folder: str, tag: str, n: int) -> None:  # one process of the test below
    for i in range(n):
        path = Path(folder) / f"{tag}-{i}.md"
        path.write_text(tag)
        record_output(path, "run")


def test_processes_recording_in_one_folder_at_once_lose_no_entry(tmp_path):
    """``ablate --jobs`` runs rows of one seed as processes that record their tables in one
    ``seed-<s>/`` ledger at once: each read-change-write holds the folder's lock, so no
    process's entry is written over by another's."""
    import json
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_record_many, args=(str(tmp_path), t, 40)) for t in "abc"]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        assert p.exitcode == 0
    files = json.loads((tmp_path / LEDGER).read_text())["files"]
    assert len(files) == 120 and all(engine_wrote(tmp_path / n, "run") for n in files)
