"""A stage of one's own, in this one file: its settings, a runner that trains a few steps with the
engine's loop and writes a result, registered with ``registry.register`` and named by a config's
``plugins``. Run through ``xlt-engine run --stage toy``: planned, fingerprinted, reused on a second
run, refused on a changed setting, resumed after a kill, and reported as a row of the report's
table of stages."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from xlt_engine.cli import main
from xlt_engine.engine.experiment import registry
from xlt_engine.engine.experiment.registry import Stage, register
from xlt_engine.engine.experiment.runs import StagePlan, flat, stage_dir
from xlt_engine.engine.train.config import TrainConfig
from xlt_engine.engine.train.loop import RunIO, train
from xlt_engine.fileio import atomic_write_text

ROOT = Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class ToySection:
    """``[toy]``: a linear model of ``width`` inputs fitted to the source file's line count."""

    width: int = 4
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(max_steps=12, lr=0.05, warmup_ratio=0.0, clip=0.0,
                                            save_every=1, save_minutes=0.0, log_every=1)
    )  # fmt: skip

    def __post_init__(self):
        if self.width < 1:
            raise ValueError(f"width must be >= 1, got {self.width}")


@dataclass(frozen=True)
class ToyConfig:
    width: int
    train: TrainConfig
    source_file: str
    out: str


class ToyData:
    """Batches drawn from (epoch, index): the same on a resumed run."""

    def __init__(self, width: int, target: float):
        self.width, self.target = width, target

    def num_batches(self, epoch: int) -> int:
        return 4

    def batch(self, epoch: int, index: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(1000 * epoch + index)
        x = torch.randn(8, self.width, generator=g)
        return {"x": x, "y": x.sum(-1, keepdim=True) * self.target}


def build(cfg) -> ToyConfig:
    return ToyConfig(
        width=cfg.section(ToySection).width,
        train=cfg.seeded(cfg.section(ToySection).train),
        source_file=str(cfg.data_path(cfg.source, "train")),
        out=str(stage_dir(cfg, "toy")),
    )


def run_toy(tc: ToyConfig, resume: bool = False, echo=print, progress=None) -> Path:
    lines = len(Path(tc.source_file).read_text(encoding="utf-8").splitlines())
    torch.manual_seed(tc.train.seed)
    model = nn.Linear(tc.width, 1)
    out = Path(tc.out)

    def save(m, folder):
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(m.state_dict(), folder / "toy.pt")

    def load(m, folder):
        m.load_state_dict(torch.load(folder / "toy.pt"))

    def loss_fn(m, batch, gen):
        return nn.functional.mse_loss(m(batch["x"]), batch["y"])

    data = ToyData(tc.width, target=lines % 7 / 7)
    result = train(model, loss_fn, data, tc.train, out, RunIO(save, load, echo=echo),
                   resume=resume)  # fmt: skip
    weights = [round(w, 6) for w in model.weight.detach().flatten().tolist()]
    record = {"steps": result.step, "loss": result.last_loss, "weights": weights}
    atomic_write_text(out / "result.json", json.dumps(record) + "\n")  # last: the marker
    return out / "result.json"


def plan(cfg, common: dict, head: dict, trained: dict) -> StagePlan:
    plan = StagePlan(
        cfg, "toy", {**common, **flat("toy", cfg.section(ToySection), {}), **trained}, {}
    )
    plan.inputs[f"languages.{cfg.source}.train"] = cfg.data_path(cfg.source, "train")
    return plan


def files(cfg, need) -> None:
    need(f"languages.{cfg.source}.train", cfg.data_path(cfg.source, "train"))


def table(folder: Path) -> dict:
    result = json.loads((folder / "result.json").read_text(encoding="utf-8"))
    return {"toy steps": result["steps"], "toy loss": round(result["loss"], 6)}


TOY = register(
    Stage(name="toy", section=ToySection, build=build, run=run_toy, files=files, plan=plan,
          output="result.json", trains=("train",), table=table),
    replace=True,
)  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def _registered():
    """The toy registered while this file's tests run (importing it registers it: a config's
    ``plugins`` does just that), and gone after them."""
    register(TOY, replace=True)
    yield
    registry.unregister("toy")


def _config(tmp_path: Path) -> Path:
    model = tmp_path / "model"  # the toy reads no model: a folder is all the config asks
    model.mkdir(exist_ok=True)
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "en.txt").write_text("EU B-ORG\n\nrejects O\n", encoding="utf-8")
    cfg = tmp_path / "toy.toml"
    cfg.write_text(
        f"""task = "ner"
source = "en"
targets = ["de"]
plugins = ["{__name__}"]
out = "{tmp_path / "runs"}"

[languages.en]
train = "en.txt"

[languages.de]
train = "en.txt"

[data]
root = "{tmp_path / "data"}"

[model]
path = "{model}"

[toy]
width = 4
""",
        encoding="utf-8",
    )
    return cfg


def _run(cfg: Path, *extra: str):
    return CliRunner().invoke(main, ["run", "--stage", "toy", "--config", str(cfg),
                                     "--no-progress", *extra])  # fmt: skip


def test_a_stage_of_ones_own_runs_reuses_refuses_resumes_and_reports(tmp_path):
    cfg = _config(tmp_path)
    folder = tmp_path / "runs" / "en-de" / "toy"

    first = _run(cfg)
    assert first.exit_code == 0, first.output
    result = json.loads((folder / "result.json").read_text())
    assert result["steps"] == 12
    recorded = json.loads((folder / "fingerprint.json").read_text())
    assert recorded["stage"] == "toy"
    assert recorded["settings"]["toy.width"] == 4  # what the stage said counts
    assert (
        "toy.train.lr" in recorded["settings"] and "toy.train.log_every" not in recorded["settings"]
    )
    assert "languages.en.train" in recorded["inputs"]

    again = _run(cfg)  # a finished stage: not run twice into one folder
    assert again.exit_code != 0 and "holds the finished toy" in again.output
    reused = _run(cfg, "--resume")
    assert reused.exit_code == 0 and "not run again" in reused.output

    changed = _run(cfg, "--set", "toy.width=5")
    assert changed.exit_code != 0
    assert (
        "toy.width: 4 -> 5" in changed.output and "was made with other settings" in changed.output
    )
    assert json.loads((folder / "result.json").read_text()) == result  # kept as it was

    # killed after step 5 in another folder (a process of its own), then resumed here
    killed_out = tmp_path / "killed"
    env = {**os.environ, "XLT_KILL_AT": "toy:5", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "xlt_engine.cli", "run", "--stage", "toy", "--config", str(cfg),
           "--no-progress", "--out", str(killed_out)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    killed = killed_out / "en-de" / "toy"
    assert not (killed / "result.json").exists() and (killed / "latest").exists()
    refused = _run(cfg, "--out", str(killed_out))
    assert refused.exit_code != 0 and "--resume" in refused.output
    resumed = _run(cfg, "--out", str(killed_out), "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((killed / "result.json").read_text()) == result  # as if never killed

    report = tmp_path / "report.html"
    done = CliRunner().invoke(
        main, ["report", str(tmp_path / "runs" / "en-de"), "--out", str(report)]
    )
    assert done.exit_code == 0, done.output
    page = report.read_text()
    assert "<th>toy loss</th>" in page
    assert f"<td>{round(result['loss'], 6):g}</td>" in page and "<td>toy</td>" in page
    assert "<h4>toy</h4>" in page  # its training, as btf's: wall time, loss and the curves
    if importlib.util.find_spec("matplotlib") is not None:
        assert '<img alt="training curves of toy"' in page


def test_a_plugin_that_cannot_be_imported_is_named(tmp_path):
    cfg = _config(tmp_path)
    cfg.write_text(cfg.read_text().replace(__name__, "no_such_module_here"))
    res = _run(cfg)
    assert res.exit_code != 0
    assert "plugins: 'no_such_module_here': cannot import it" in res.output


def test_a_stage_name_is_checked_and_taken_once():
    with pytest.raises(ValueError, match="registered already"):
        register(Stage(name="toy", build=build, run=run_toy))
    with pytest.raises(ValueError, match="top-level setting"):
        Stage(name="model", build=build, run=run_toy)
    with pytest.raises(ValueError, match="Python identifier"):
        Stage(name="my-stage", build=build, run=run_toy)
    with pytest.raises(ValueError, match="model names"):
        register(Stage(name="toy2", build=build, run=run_toy, models={"finetune": lambda c: c}))
    assert "toy2" not in registry.names() and registry.names()[:6] == (
        "btf", "finetune", "selftrain", "cotrain", "evaluate", "predict")  # fmt: skip


LINES_PLUGIN = '''"""A stage of one's own in one file: counts the source file's lines."""
import json
from dataclasses import dataclass
from pathlib import Path

from xlt_engine.engine.experiment.registry import Stage, register
from xlt_engine.engine.experiment.runs import StagePlan, flat, stage_dir
from xlt_engine.fileio import atomic_write_text


@dataclass(frozen=True)
class LinesSection:
    scale: int = 1


@dataclass(frozen=True)
class LinesConfig:
    scale: int
    source_file: str
    out: str


def build(cfg):
    return LinesConfig(cfg.section(LinesSection).scale, str(cfg.data_path(cfg.source, "train")),
                       str(stage_dir(cfg, "lines")))


def run(lc, resume=False, echo=print, progress=None):
    n = len(Path(lc.source_file).read_text(encoding="utf-8").splitlines()) * lc.scale
    out = Path(lc.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "result.json", json.dumps({"lines": n}) + "\\n")
    return out / "result.json"


def plan(cfg, common, head, trained):
    p = StagePlan(cfg, "lines", {**common, **flat("lines", cfg.section(LinesSection), {})}, {})
    p.inputs[f"languages.{cfg.source}.train"] = cfg.data_path(cfg.source, "train")
    return p


def table(folder):
    return {"lines counted": json.loads((folder / "result.json").read_text())["lines"]}


register(Stage(name="lines", section=LinesSection, build=build, run=run, plan=plan,
               files=lambda cfg, need: need("x", cfg.data_path(cfg.source, "train")),
               output="result.json", table=table), replace=True)
'''


@pytest.mark.parametrize("where", ["the working directory", "the config's folder"])
def test_a_plugin_file_outside_the_repository_runs_and_reports_through_the_installed_script(
    tmp_path, where
):
    """The installed ``xlt-engine`` script has no working directory on its path (``python -m``
    has): a plug-in beside the config or in the working directory failed to import, and
    ``report`` in a fresh process showed its stage as "finished: no" without its columns. Each
    command runs here in a process of its own, from a folder outside the repository."""
    import shutil

    script = shutil.which("xlt-engine") or str(Path(sys.executable).parent / "xlt-engine")
    if not Path(script).exists():
        pytest.skip("the xlt-engine console script is not installed")
    project = tmp_path / "project"
    (project / "myplugins").mkdir(parents=True)
    (project / "myplugins" / "__init__.py").write_text("")
    (project / "myplugins" / "lines.py").write_text(LINES_PLUGIN)
    cfg = _config(project)
    cfg.write_text(
        cfg.read_text().replace(f'plugins = ["{__name__}"]', 'plugins = ["myplugins.lines"]')
        .replace("[toy]\nwidth = 4\n", "[lines]\nscale = 3\n")
    )  # fmt: skip
    cwd = project if where == "the working directory" else tmp_path
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def xlt(*args, ok=True):
        done = subprocess.run([script, *map(str, args)], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=300)  # fmt: skip
        assert (done.returncode == 0) == ok, done.stdout + done.stderr
        return done.stdout + done.stderr

    xlt("run", "--stage", "lines", "--config", cfg, "--no-progress")
    result = json.loads((project / "runs" / "en-de" / "lines" / "result.json").read_text())
    assert result == {"lines": 3 * 3}
    xlt("report", project / "runs" / "en-de", "--out", tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert "<th>lines counted</th>" in page and "<td>9</td>" in page
    assert "<td>lines</td><td>yes</td>" in page  # finished, as a built-in stage's row
    # its code is in the fingerprint: an edit is named on the next run, never a stale reuse
    plugin = project / "myplugins" / "lines.py"
    plugin.write_text(plugin.read_text().replace("* lc.scale", "* lc.scale + 1"))
    refused = xlt("run", "--stage", "lines", "--config", cfg, "--no-progress", "--resume", ok=False)
    assert "was made with other settings" in refused and "code sha256:" in refused
    # judged harmless, the edit is accepted explicitly (the plug-in found through the folder's
    # saved config, in a process of its own); the result is then returned as it is
    said = xlt("accept-code", project / "runs")
    assert "lines: accepted: code sha256:" in said
    reused = xlt("run", "--stage", "lines", "--config", cfg, "--no-progress", "--resume")
    assert "not run again" in reused
    assert json.loads((project / "runs" / "en-de" / "lines" / "result.json").read_text()) == result


def _manual_block(opening: str) -> str:
    """The code block of docs/manual.md that starts with ``opening`` (its first line)."""
    text = (ROOT / "docs" / "manual.md").read_text(encoding="utf-8")
    start = text.index(opening)
    start = text.index("\n", start) + 1
    return text[start : text.index("\n```", start) + 1]


def test_the_manuals_stage_example_runs_as_printed_and_reads_an_upstream_model(tmp_path):
    """docs/manual.md's "A stage of your own": its module and its config table, taken from the
    manual as they are printed, run through the installed script after btf (the model the
    stage reads, an upstream stage in its fingerprint), and shown by report in a process of its
    own."""
    import shutil

    script = shutil.which("xlt-engine") or str(Path(sys.executable).parent / "xlt-engine")
    if not Path(script).exists():
        pytest.skip("the xlt-engine console script is not installed")
    (tmp_path / "mystages").mkdir()
    (tmp_path / "mystages" / "__init__.py").write_text("")
    (tmp_path / "mystages" / "size.py").write_text(_manual_block("```python\n# mystages/size.py"))
    table = _manual_block('```toml\nplugins = ["mystages.size"]')
    data = tmp_path / "data"
    data.mkdir()
    conll = "".join(f"Anna B-PER\nlives O\nin O\nParis B-LOC\n{w} O\n\n" for w in "abcdefgh")
    (data / "en.conll").write_text(conll)
    (data / "de.conll").write_text(conll.replace("lives", "wohnt"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def xlt(*args):
        done = subprocess.run([script, *map(str, args)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    xlt("init", tmp_path / "model", "--layers", "1", "--hidden", "16", "--heads", "2",
        "--intermediate", "32", "--max-positions", "64")  # fmt: skip
    cfg = tmp_path / "my.toml"
    cfg.write_text(
        f'task = "ner"\nsource = "en"\ntargets = ["de"]\nout = "{tmp_path / "runs"}"\n'
        f'{table}\n[data]\nroot = "{data}"\n[model]\npath = "{tmp_path / "model"}"\n'
        "max_len = 32\nfreeze_layers = 0\n"
        '[languages.en]\ntrain = "en.conll"\n[languages.de]\nunlabeled = "de.conll"\n'
        "[btf]\nbatch_size = 4\n[btf.train]\nmax_steps = 2\n"
    )
    xlt("run", "--stage", "btf", "--config", cfg, "--no-progress")
    xlt("run", "--stage", "size", "--config", cfg, "--no-progress")
    folder = tmp_path / "runs" / "en-de" / "size"
    counted = json.loads((folder / "size.json").read_text())["parameters"]
    assert counted > 1000
    fingerprint = json.loads((folder / "fingerprint.json").read_text())
    assert "size.model" in fingerprint["upstream"]  # btf's digest: a new btf recomputes it
    assert fingerprint["code"]["module"] == "mystages.size"
    xlt("report", tmp_path / "runs" / "en-de", "--out", tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert "<th>parameters</th>" in page and f"<td>{counted:g}</td>" in page


COPY_PLUGIN = '''"""A stage of one's own that makes a model: a copy of another (a stand-in for a stage that
adapts the encoder), usable as any model name, e.g. selftrain.base = "copied"."""
import shutil
from dataclasses import dataclass
from pathlib import Path

from xlt_engine.engine.experiment.registry import Stage, register
from xlt_engine.engine.experiment.runs import StagePlan, flat, model_input, model_path, stage_dir


@dataclass(frozen=True)
class CopySection:
    model: str = "pretrained"


@dataclass(frozen=True)
class CopyConfig:
    model: str
    out: str


def build(cfg) -> CopyConfig:
    model = model_path(cfg, cfg.section(CopySection).model, "copy.model")
    return CopyConfig(str(model), str(stage_dir(cfg, "copy")))


def run(cc: CopyConfig, resume: bool = False, echo=print, progress=None) -> Path:
    out, tmp = Path(cc.out) / "model", Path(cc.out) / "model.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(cc.model, tmp)
    tmp.rename(out)  # last: the finished model marks the stage done
    return out


def plan(cfg, common: dict, head: dict, trained: dict) -> StagePlan:
    section = cfg.section(CopySection)
    p = StagePlan(cfg, "copy", {**common, **flat("copy", section, {})}, {})
    model_input(cfg, section.model, "copy.model", p)
    return p


register(Stage(name="copy", section=CopySection, build=build, run=run, plan=plan,
               output="model", models={"copied": lambda cfg: cfg}))
'''


def test_a_stage_that_makes_a_model_runs_inside_ablate_through_the_installed_script(tmp_path):
    """A stage of one's own whose model another stage reads (``selftrain.base = "copied"``):
    ``ablate`` (and ``run --stage all``) plan it before the stage that reads it, run it once,
    and the report shows its row; each command a process of its own, from outside the
    repository."""
    import shutil

    from xlt_engine.quickstart import Sizes, prepare

    script = shutil.which("xlt-engine") or str(Path(sys.executable).parent / "xlt-engine")
    if not Path(script).exists():
        pytest.skip("the xlt-engine console script is not installed")
    cfg = prepare(tmp_path / "project", 1, Sizes(train=120, dev=20, test=30, vocab_size=400))
    cfg.write_text('plugins = ["mycopy"]\n' + cfg.read_text(encoding="utf-8"))
    (cfg.parent / "mycopy.py").write_text(COPY_PLUGIN)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    sets = ["btf.train.max_steps=10", "finetune.train.max_steps=20", "selftrain.rounds=1",
            "selftrain.soft.max_steps=10", "selftrain.hard.max_steps=5",
            'selftrain.base="copied"']  # fmt: skip
    out = tmp_path / "ablation"
    args = [script, "ablate", "--config", str(cfg), "--seeds", "1", "--rows", "Ours",
            "--no-progress", "--out", str(out), *(x for s in sets for x in ("--set", s))]  # fmt: skip
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    pair = out / "seed-1" / "src-tgt"
    assert (pair / "copy" / "model" / "model.safetensors").is_file()
    selftrain = json.loads((next(pair.glob("selftrain*")) / "fingerprint.json").read_text())
    copy = json.loads((pair / "copy" / "fingerprint.json").read_text())
    assert selftrain["upstream"]["selftrain.base"] == copy["digest"]  # it read the copy
    assert "Ours" in json.dumps(json.loads((out / "ablation.json").read_text()))
    report = tmp_path / "r.html"
    done = subprocess.run([script, "report", str(pair), "--out", str(report)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "<td>copy</td><td>yes</td>" in report.read_text()
