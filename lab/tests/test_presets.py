"""One source of truth for a study's settings (issue 64): the lab's study scripts read their
preset and set only what the preset does not say. A ``--set`` that leaves the settings as they
were (the preset's value restated, or an earlier ``--set`` of the chain repeated) fails: a later
edit of the preset would leave the script behind without a word. The scripts that make the
preset's own table (configs/e5-small-conll.toml: issue 54's stage 1 and 2 and the GPU tables'
jobs) set no learning setting at all: only where the data are, how much of it, the device,
which split is scored and how often to log.

The scripts are read as a shell would split them (comments dropped, continued lines joined);
an ``exec bash lab/X.sh`` passes its arguments on, so its ``--set``s come after X's own."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from lab import tables
from xlt_engine.engine.experiment.config import load_config

ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT / "lab"
PRESET_TABLE = (
    "study_init_conll_e5small_stage2.sh",
    "study_init_conll_e5small.sh",
    "study_rules_conll_e5small.sh",
)


def words(text: str) -> list[str]:
    """A script's words: comments dropped, continued lines joined."""
    lines = [ln for ln in text.replace("\\\n", " ").splitlines() if not ln.lstrip().startswith("#")]
    return shlex.split("\n".join(lines), comments=True)


def chain(script: Path) -> tuple[str | None, list[str]]:
    """The config a script's study reads and its ``--set``s in the order they take effect:
    those of the script it execs first, then its own (passed on as that script's arguments)."""
    w = words(script.read_text(encoding="utf-8"))
    config, sets, inner = None, [], None
    for i, word in enumerate(w[:-1]):
        if word == "--config":
            config = w[i + 1]
        elif word == "--set":  # a bash array's last word keeps its ")": not the value's
            sets.append(w[i + 1][:-1] if w[i + 1].endswith(")") else w[i + 1])
        elif (
            word == "bash"
            and w[i + 1].startswith("lab/")
            and w[i + 1].endswith(".sh")
            and inner is None
        ):
            inner = LAB / Path(w[i + 1]).name
    if inner is not None and config is None:
        config, before = chain(inner)
        sets = before + sets
    return config, sets


def is_learning(setting: str) -> bool:
    """A --set that changes how a study learns: not where it ran (``lab.tables.is_learning``),
    nor which split it scores (a decision reads dev)."""
    return tables.is_learning(setting) and not setting.startswith("evaluate.split=")


def literal(setting: str) -> bool:
    return "$" not in setting


def restated(config: str, sets: list[str]) -> list[str]:
    """The ``--set``s of ``sets`` that change nothing: each is applied after those before it."""
    out = []
    for i, s in enumerate(sets):
        if not literal(s) or s.startswith(("data.root=", "targets=", "device=")):
            continue  # where the data are and the device are said for the reader, changed or not
        before = [x for x in sets[:i] if literal(x)]
        if load_config(ROOT / config, before) == load_config(ROOT / config, [*before, s]):
            out.append(s)
    return out


SCRIPTS = sorted(p for p in LAB.glob("*.sh") if (chain(p)[0] or "").startswith("configs/"))


def test_scripts_with_a_preset_are_found():
    names = {p.name for p in SCRIPTS}
    assert set(PRESET_TABLE) <= names and "study_conll_e5small.sh" in names, names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_a_study_script_restates_nothing_its_preset_says(script):
    config, sets = chain(script)
    assert (ROOT / config).is_file(), f"{script.name}: --config {config}: no such file"
    assert not restated(config, sets), (
        f"{script.name}: {restated(config, sets)} restate what {config} (or an earlier --set) "
        "already says: drop them, so that the preset stays the one source of the settings"
    )


@pytest.mark.parametrize("name", PRESET_TABLE)
def test_the_presets_own_studies_set_no_learning_setting(name):
    config, sets = chain(LAB / name)
    assert config == "configs/e5-small-conll.toml"
    learning = [s for s in sets if is_learning(s)]
    assert not learning, f"{name}: {learning} are learning settings: they belong in {config}"


def test_the_gpu_tables_jobs_run_the_presets_as_shipped():
    text = (LAB / "gpu_tables.sh").read_text(encoding="utf-8")
    for var, preset in (("FULL", "conll"), ("CLS", "cls")):
        value = re.search(rf'^{var}="([^"]*)"', text, re.M).group(1)
        w = shlex.split(value)
        assert w[:2] == ["--config", f"configs/e5-small-{preset}.toml"], (var, w)
        sets = [w[i + 1] for i, x in enumerate(w) if x == "--set"]
        assert sets and not [s for s in sets if is_learning(s)], (var, sets)
    # VARIANT=warm: the CoNLL preset plus the one pre-registered setting, nothing else (the CLS
    # preset says it since 2026-11-29)
    warm = re.search(r'^WARM_CONLL="([^"]*)"', text, re.M).group(1)
    assert shlex.split(warm) == ["$FULL", "--set", "btf.head_warmup_epochs=2"], warm
    assert not re.search(r"^WARM=", text, re.M)
    cls = load_config(ROOT / "configs/e5-small-cls.toml", [])
    assert dict(cls.sections)["btf"].head_warmup_epochs == 2  # adopted: lab.decide cls


def run_list(**env):
    """``lab/gpu_tables.sh list`` under ``env``, as run (its status, stdout and stderr)."""
    import os
    import subprocess

    return subprocess.run(
        ["bash", str(LAB / "gpu_tables.sh"), "list"], env={**os.environ, **env},
        capture_output=True, text=True,
    )  # fmt: skip


def list_jobs(**env) -> list[list[str]]:
    """``lab/gpu_tables.sh list`` under ``env``: one [name, settings, target, seed, rows] a job."""
    listed = run_list(**env)
    listed.check_returncode()
    return [line.split("|") for line in listed.stdout.splitlines() if line]


# the --sets a preset adopted by a decision, from then on said by the preset itself: a report
# written before reports recorded their settings ran the preset as it stands now when its
# learning --sets are exactly these (before the adoption the preset did not say them)
ADOPTED: dict[str, list[str]] = {
    "configs/e5-small-cls.toml": ["btf.head_warmup_epochs=2"]  # 2026-11-29, lab.decide cls
}


def as_shipped(report: dict) -> bool:
    """A report that ran its preset as the preset stands now, the where aside: the settings it
    recorded (``resolved``) are the preset's; a report written before reports recorded them set
    no learning setting but what the preset adopted since (``ADOPTED``). Its recorded commit is
    not trusted for this: the 2026-11-26 H200 reports name a stale one."""
    if "resolved" not in report:
        learning = [s for s in report["overrides"] if is_learning(s)]
        return learning == ADOPTED.get(report["config"], [])
    from lab.tables import learning_part, settings_differ
    from xlt_engine.engine.experiment.config import to_dict

    now = {"config": report["config"]}
    now["resolved"] = learning_part(to_dict(load_config(ROOT / report["config"], [])))
    return settings_differ(now, report) is None


def test_the_warm_variant_runs_its_preregistered_rows():
    """``VARIANT=warm``: Ours, - ST and soft only with the one setting on every CoNLL target at
    seeds 1-3, in jobs of their own names (their own runs folders and reports); with another
    value, or on CLS (whose preset has the setting since 2026-11-29), the script stops before
    running anything."""
    table, settings, targets = "conll", "WARM_CONLL", ("esp", "ned", "deu")

    jobs = list_jobs(TABLE=table, VARIANT="warm")
    assert {(t, s) for _, _, t, s, _ in jobs} == {(t, s) for t in targets for s in "123"}
    assert len(jobs) == 9
    for name, got, target, seed, rows in jobs:
        assert name == f"{table}_warm_{target}_s{seed}" and got == settings, name
        assert rows == "Ours,- ST,soft only", name
    shipped = {j[0] for j in list_jobs(TABLE=table)}
    assert not shipped & {j[0] for j in jobs}
    for env in ({"TABLE": table, "VARIANT": "hot"}, {"TABLE": table, "VARIANT": "Warm"}):
        bad = run_list(**env)
        assert bad.returncode == 2 and "VARIANT must be" in bad.stderr and not bad.stdout, env
    cls = run_list(TABLE="cls", VARIANT="warm")
    assert cls.returncode == 2 and "has btf.head_warmup_epochs = 2" in cls.stderr and not cls.stdout


def test_the_rules_variant_runs_its_preregistered_rows():
    """``VARIANT=rules``: Ours beside ``rule = class_quota`` with the CoNLL preset as shipped on
    every target at seeds 1-3 (lab/results/conll_rule_prereg_20261130.md), rows ``ablate`` knows,
    in jobs of their own names; ``lab.decide conll_rule`` reads the cells they make (esp and
    ned at seeds 1-3: its rule's); on CLS the script stops before running anything."""
    from lab.decide import RULES
    from xlt_engine.studies.ablate import ablation_rows

    jobs = list_jobs(TABLE="conll", VARIANT="rules")
    cfg = load_config(ROOT / "configs/e5-small-conll.toml", [])
    rule = RULES["conll_rule"]
    assert len(jobs) == 9 and len({j[0] for j in jobs}) == 9
    for name, settings, target, seed, rows in jobs:
        assert name == f"conll_rule_{target}_s{seed}" and settings == "FULL", name
        assert rows.split(",") == ["Ours", rule.variant_row], name
        assert set(rows.split(",")) <= set(ablation_rows(cfg)), name
    made = {(t, int(s)) for _, _, t, s, _ in jobs}
    assert {(t, s) for t in rule.targets for s in rule.seeds} <= made
    assert {t for t, _ in made} == {"esp", "ned", "deu"}
    others = {j[0] for j in list_jobs(TABLE="conll", VARIANT="warm") + list_jobs(TABLE="conll")}
    assert not others & {j[0] for j in jobs}  # their own runs folders and reports
    prereg = (LAB / "results" / "conll_rule_prereg_20261130.md").read_text(encoding="utf-8")
    assert "lab.decide conll_rule" in prereg and "VARIANT=rules" in prereg
    cls = run_list(TABLE="cls", VARIANT="rules")
    assert cls.returncode == 2 and "VARIANT=rules is CoNLL's" in cls.stderr and not cls.stdout


def test_a_report_with_a_learning_setting_is_not_the_preset_as_shipped():
    from lab.tables import learning_part
    from xlt_engine.engine.experiment.config import to_dict

    def report(*overrides, ran=()):
        cls = "configs/e5-small-cls.toml"
        resolved = learning_part(to_dict(load_config(ROOT / cls, list(ran))))
        return {"config": cls, "overrides": list(overrides), "resolved": resolved}

    assert as_shipped(report("data.max_train=1000000", "device=cpu", 'targets=["de"]'))
    lr = "selftrain.soft.lr=2e-4"
    assert not as_shipped(report("data.max_train=1000000", lr, ran=[lr]))
    assert not as_shipped(report("data.max_train=1000000", ran=[lr]))  # the preset then said it
    warm = "btf.head_warmup_epochs=2"  # adopted by the CLS preset: the same settings said twice
    assert as_shipped(report("data.max_train=1000000", warm, ran=[warm]))
    before = {"config": "configs/e5-small-cls.toml", "overrides": ["data.max_train=1000000"]}
    assert as_shipped(before | {"overrides": [warm]}) and not as_shipped(before)  # before 11-29
    conll = {"config": "configs/e5-small-conll.toml", "overrides": ["data.max_train=1000000"]}
    assert as_shipped(conll) and not as_shipped(conll | {"overrides": [warm]})


def test_the_check_catches_a_restated_and_a_learning_setting(tmp_path):
    """The rules above fail where they should: a preset value restated, a repeat of an earlier
    --set, and a learning setting in the preset's own study."""
    preset = "configs/e5-small-conll.toml"
    assert restated(preset, ["selftrain.soft_loss=kl"]) == ["selftrain.soft_loss=kl"]
    assert restated(preset, ["model.max_len=32", "model.max_len=32"]) == ["model.max_len=32"]
    assert restated(preset, ["evaluate.split=dev", "evaluate.split=test"]) == []
    assert restated(preset, ["selftrain.soft.lr=2e-4"]) == []
    assert is_learning("selftrain.soft.lr=2e-4") and not is_learning("data.max_train=10")
    assert not is_learning("btf.train.log_every=5")


@pytest.mark.parametrize(("table", "preset", "targets"), [("conll", "conll", {"esp", "ned", "deu"}),
                                                          ("cls", "cls", {"de", "fr", "jp"})])  # fmt: skip
def test_the_gpu_tables_jobs_are_rows_the_ablation_knows_on_every_target_and_seed(
    table, preset, targets
):
    """``lab/gpu_tables.sh list``: each job names rows ``ablate`` can make for its preset, and
    Ours, - ST and soft only run on every target at seeds 1-3 (issue 64's table), in a job or in
    a committed report that ran the preset as it stands now at full size, from a GPU loan or this
    CPU: the list holds what they left open, and no cell they hold. A report that ran other
    settings (``VARIANT=warm``'s, or an earlier version of the preset) is not the preset's row."""
    from xlt_engine.studies.ablate import ablation_rows, method_rows

    jobs = list_jobs(TABLE=table)
    cfg = load_config(ROOT / f"configs/e5-small-{preset}.toml", [])
    known = set(ablation_rows(cfg))
    assert len({j[0] for j in jobs}) == len(jobs)  # one name a job: one runs folder a job
    for name, settings, target, seed, rows in jobs:
        assert settings == {"conll": "FULL", "cls": "CLS"}[table], name  # the preset as shipped
        assert target in targets and seed in {"1", "2", "3"}, name
        assert set(rows.split(",")) <= known, (name, rows)
    done = set()
    for path in LAB.glob("results/*/**/study_*.json"):  # a GPU loan's or the CPU's
        report = json.loads(path.read_text())
        if "merged_from" in report or "overrides" not in report:
            continue
        full = "data.max_train=1000000" in report["command"]  # the preset at full size
        if report["config"] == f"configs/e5-small-{preset}.toml" and full and as_shipped(report):
            for row, cell in report["rows"].items():
                for t, scores in cell["scores"].items():
                    done |= {(row, t, str(s)) for s, _ in zip(report["seeds"], scores, strict=True)}
    # a loan runs no cell the records hold, but Ours and - ST beside a row read in pairs with
    # Ours' run (soft only: the hard step's share; another rule or start): it takes round 1's
    # soft step from Ours' folder
    paired = {"soft only", *method_rows(cfg)}
    listed = {
        (r, t, s)
        for _, _, t, s, rows in jobs
        for r in rows.split(",")
        if not (paired & set(rows.split(",")) and r in ("Ours", "- ST"))
    }
    assert not listed & done, sorted(listed & done)
    for row in ("Ours", "- ST", "soft only"):
        have = {(t, s) for _, _, t, s, rows in jobs if row in rows.split(",")}
        have |= {(t, s) for r, t, s in done if r == row}
        assert have == {(t, s) for t in targets for s in "123"}, row
