"""The hostile-output matrix (issue 66, rule 1): every writer registered in
``fileio.BUILTIN_WRITERS``, crossed with every target a user (or an accident) can put where its output
goes. Each cell asserts that the command refuses with one ``Error:`` line naming the path, with
no traceback, and that every watched file (its inputs, the target, the user's files) holds the
same bytes after. A writer registered without an entry in ``WRITER_CASES`` fails
``test_every_registered_writer_is_crossed``."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.engine.experiment.test_outputs import made, snapshot  # noqa: F401 (a fixture)
from xlt_engine.cli import main
from xlt_engine.outputs import BUILTIN_WRITERS, record_output

TARGETS = (
    "its input",
    "a symbolic link to its input",
    "a hard link to its input",
    "the folder holding its input",
    "a user's file of that name",
    "its earlier output, edited",
    "a FIFO",
    "a socket",
    "a read-only folder",
    "a full disk",
)
ALWAYS = {  # refused even with --overwrite
    "its input",
    "a symbolic link to its input",
    "a hard link to its input",
    "the folder holding its input",
    "a FIFO",
    "a socket",
}


@dataclass
class Writer:
    argv: Callable[[Path], list]  # the command that writes the claimed path
    inputs: list[Path] = field(default_factory=list)  # files it reads
    earlier: Callable[[Path], None] | None = None  # makes an earlier output of it at a path
    folder: bool = False  # it writes a folder


def _run(args) -> tuple[int, str]:
    res = CliRunner().invoke(main, [str(a) for a in args])
    return res.exit_code, res.output


def _ran(argv):
    def make(path: Path):
        code, output = _run(argv(path))
        assert code == 0, output

    return make


def _recorded(by: str, folder: bool):
    """An earlier output of ``by`` made by hand and recorded as its own (the whole command,
    a quickstart or a run of every stage, would take minutes for the same ledger entry)."""

    def make(path: Path):
        if folder:
            path.mkdir()
            (path / "a.txt").write_text("written by the engine\n")
            record_output(path, by, entries=["a.txt"])
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("written by the engine\n")
            record_output(path, by)

    return make


@pytest.fixture(scope="module")
def writers(made, tmp_path_factory) -> dict[str, Writer]:  # noqa: F811 (the fixture)
    root = tmp_path_factory.mktemp("writers")
    runs = root / "runs"
    runs.mkdir()
    (runs / "all.json").write_text(
        '{"metric": "entity_f1", "source": "src", "split": "test", '
        '"targets": {"tgt": {"direct": 0.38, "btf": 0.63, "selftrain": 0.67}}}\n'
    )
    xnli = root / "xnli"
    xnli.mkdir()
    (xnli / "dev-en.tsv").write_text(
        "A cat sits.\tAn animal sits.\tentailment\nIt rains.\tIt is dry.\tcontradiction\n"
    )
    (xnli / "dev-de.tsv").write_text(
        "Eine Katze sitzt.\tEin Tier sitzt.\tentailment\nEs regnet.\tEs ist trocken.\tcontradiction\n"
    )
    conll = made["data"] / "eng.train"
    words = [line.split()[0] for line in conll.read_text().splitlines()[:400] if line.strip()]
    text = root / "target.txt"  # the source's own words: its entity names are found there
    text.write_text("".join(" ".join(words[i : i + 12]) + "\n" for i in range(0, len(words), 12)))
    vocab = root / "vocab.txt"
    vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nanna\nberlin\n")
    esp_test = made["data"] / "esp.test"

    def predict(path: Path) -> list:
        return ["run", "--stage", "predict", "--config", made["cfg"], "--out", made["out"],
                "--set", f"predict.model={str(made['model'])!r}",
                "--set", f"predict.input={str(esp_test)!r}",
                "--set", f"predict.output={str(path)!r}", "--set", "target=esp"]  # fmt: skip

    def tables(path: Path) -> list:  # run --stage all claims <out>/all.md before any work
        return ["run", "--stage", "all", "--config", made["cfg"], "--out", path.parent,
                "--no-progress"]  # fmt: skip

    def bench(path: Path) -> list:  # it appends to <out>/kernels_cpu_<date>.json and .csv
        return ["bench", "kernels", "--op", "mse", "--mode", "forward", "--provider", "torch",
                "--device", "cpu", "--reps", "1", "--out", path.parent]  # fmt: skip

    def init(path: Path) -> list:
        return ["init", path, "--vocab", vocab, "--layers", "1", "--hidden", "8", "--heads", "2",
                "--intermediate", "16", "--max-positions", "16"]  # fmt: skip

    def corpus(path: Path) -> list:
        return ["corpus", "--source", conll, "--target-text", text, "--out", path]

    def parallel(path: Path) -> list:
        return ["xnli-parallel", "--xnli", xnli, "--languages", "de", "-n", "2", "--out", path]

    return {
        "predict": Writer(predict, [esp_test, made["model"] / "model.safetensors"], _ran(predict)),
        "run": Writer(tables, [made["cfg"]], _recorded("run", False)),
        "report": Writer(
            lambda p: ["report", runs, "--out", p],
            [runs / "all.json"],
            _ran(lambda p: ["report", runs, "--out", p]),
        ),
        "bench": Writer(bench, [], _ran(bench)),
        "corpus": Writer(corpus, [conll, text], _ran(corpus)),
        "xnli-parallel": Writer(parallel, [xnli / "dev-en.tsv"], _ran(parallel)),
        "export": Writer(
            lambda p: ["export", made["model"], p],
            [made["model"] / "model.safetensors"],
            _ran(lambda p: ["export", made["model"], p]),
            folder=True,
        ),
        "init": Writer(init, [vocab], _ran(init), folder=True),
        "quickstart": Writer(
            lambda p: ["quickstart", "--out", p, "--no-progress"],
            [],
            _recorded("quickstart", True),
            folder=True,
        ),
    }


WRITER_CASES = ("predict", "run", "report", "bench", "corpus", "xnli-parallel", "export", "init",
                "quickstart")  # fmt: skip


def test_every_registered_writer_is_crossed():
    """The engine's own writers (a stage of one's own that claims files joins ``WRITERS`` too,
    but is the user's to test)."""
    assert set(BUILTIN_WRITERS) == set(WRITER_CASES), "add the writer's case to WRITER_CASES"


@pytest.fixture
def short_dir():
    """A folder with a short path (a Unix socket's is limited to about 100 bytes); whatever a
    cell mounted below it is unmounted first, even when the cell failed half-way."""
    import subprocess

    with tempfile.TemporaryDirectory(dir="/tmp", prefix="xw") as d:
        yield Path(d)
        while _MOUNTED:
            subprocess.run(["umount", str(_MOUNTED.pop())], check=False)


def _claimed(name: str, w: Writer, folder: Path) -> Path:
    """Where the writer ``name`` writes when pointed at ``folder``."""
    if name == "run":
        return folder / "all.md"
    if name == "bench":
        return _bench_file(folder)
    return folder / ("out" if w.folder else "out.txt")


def _bench_file(folder: Path) -> Path:
    import torch

    from xlt_engine.provenance import result_file

    return result_file(folder, "kernels", torch.device("cpu"))


def _place(target: str, name: str, w: Writer, work: Path):
    """The path the writer is pointed at for ``target`` (made on disk), the files to watch,
    and what must stay open meanwhile (a socket); None where the target cannot exist for this
    writer (no input to point at), with the reason."""
    path = _claimed(name, w, work)
    path.parent.mkdir(parents=True, exist_ok=True)
    keep = None
    if target in ("its input", "a symbolic link to its input", "a hard link to its input",
                  "the folder holding its input"):  # fmt: skip
        if not w.inputs or name in ("run", "bench"):
            return None, f"{name} writes fixed names in --out; no input can be there", None
        src = w.inputs[0]
        if target == "its input":
            path = src
        elif target == "a symbolic link to its input":
            path.symlink_to(src)
        elif target == "a hard link to its input":
            os.link(src, path)
        else:
            path = src.parent
    elif target == "a user's file of that name":
        if w.folder:
            path.mkdir()
            (path / "notes.md").write_text("mine\n")
        else:
            path.write_text("mine\n")
    elif target == "its earlier output, edited":
        w.earlier(path)
        edited = path / sorted(p.name for p in path.iterdir() if not p.name.startswith("."))[0] \
            if w.folder else path  # fmt: skip
        with open(edited, "a") as f:
            f.write("edited by hand\n")
    elif target == "a FIFO":
        os.mkfifo(path)
    elif target == "a socket":
        keep = socket.socket(socket.AF_UNIX)
        keep.bind(str(path))
    elif target == "a read-only folder":
        if os.geteuid() == 0:
            return None, "root writes into a read-only folder: nothing to refuse", None
        path.parent.chmod(0o500)
    elif target == "a full disk":
        full = path.parent / "full"
        if not _mount_small(full):
            return None, "needs a small file system mounted for the test (mount refused)", None
        path = full / path.name
        keep = full
    return path, [*w.inputs, path], keep


_MOUNTED: list[Path] = []


def request_umount(folder: Path) -> None:
    _MOUNTED.append(folder)


def _mount_small(folder: Path) -> bool:
    """A 1 MiB tmpfs at ``folder``, full (root only), or False."""
    import subprocess

    if os.geteuid() != 0:
        return False
    folder.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True
    )
    if done.returncode != 0:
        folder.rmdir()
        return False
    request_umount(folder)
    with open(folder / "filler", "wb", buffering=0) as f:  # to the last byte
        try:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
        except OSError:
            pass
    return True


CELLS = [(w, t) for w in WRITER_CASES for t in TARGETS]


@pytest.mark.parametrize(("name", "target"), CELLS)
def test_a_writer_refuses_what_it_may_not_replace(writers, name, target, short_dir):
    w = writers[name]
    path, watched, keep = _place(target, name, w, short_dir)
    if path is None:
        pytest.skip(watched)
    try:
        before = snapshot(*[p for p in watched if p.exists() and not _special(p)])
        for extra in ([], ["--overwrite"]) if target in ALWAYS else ([],):
            if name == "run" and extra:
                extra = []  # run's tables have no --overwrite: its refusal stands alone
            code, output = _run([*w.argv(path), *extra])
            # 2: click's own refusal of a folder given for a file option (one line too)
            assert code in (1, 2), (name, target, extra, output)
            assert "Traceback" not in output, output
            errors = [line for line in output.splitlines() if line.startswith("Error: ")]
            assert len(errors) == 1, output
            if target == "a full disk":
                assert "no space left on device" in errors[0], errors[0]
                assert str(path.parent) in errors[0], errors[0]
                if name not in ("run", "quickstart"):  # those keep finished steps to resume
                    left = sorted(p.name for p in path.parent.iterdir() if p.name != "filler")
                    assert left in ([], [".xlt-engine-outputs.json"]), left  # none half-written
                break
            assert str(path) in errors[0] or path.name in errors[0], (errors[0], path)
        assert snapshot(*[p for p in watched if p.exists() and not _special(p)]) == before
        if target in ("a FIFO", "a socket"):
            assert _special(path)  # still there, never replaced
    finally:
        if keep is not None and not isinstance(keep, Path):
            keep.close()
        if target == "a read-only folder":
            path.parent.chmod(0o700)


def _special(p: Path) -> bool:
    import stat

    try:
        mode = os.lstat(p).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode))
