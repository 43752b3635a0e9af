"""lab/tables.py: the paper's tables from study reports and from models evaluated apart, and the
tables in lab/README.md printed from the committed records by the command written above them."""

import glob
import json
import re
import shlex
from pathlib import Path

import pytest

from lab import tables

ROOT = Path(__file__).resolve().parents[2]


def _report(
    path: Path, seeds, rows: dict, *, overrides=(), seconds=60.0, details=(), preset=None
) -> Path:
    path.write_text(
        json.dumps(
            {
                "config": "configs/e5-small-cls.toml",
                **({"preset": preset} if preset else {}),
                "overrides": ["device=cpu", *overrides],
                "seeds": list(seeds),
                "rows": {r: {"scores": s, "seconds": seconds} for r, s in rows.items()},
                "details": list(details),
            }
        ),
        encoding="utf-8",
    )
    return path


def _evaluation(path: Path, scores: dict) -> Path:
    path.mkdir(parents=True)
    record = {"metric": "accuracy", "languages": {k: {"score": v} for k, v in scores.items()}}
    (path / "results.json").write_text(json.dumps(record), encoding="utf-8")
    return path / "results.json"


def test_cls_table_joins_reports_and_cells_evaluated_apart(tmp_path, capsys):
    a = _report(
        tmp_path / "a.json",
        [2, 3],
        {"- ST": {"de": [0.80, 0.90]}, "Ours": {"de": [0.83, 0.91]}},
        details=[{"pair": "en-de", "seed": 2, "rounds": {"selftrain/round-1": {"collapse": 1}}}],
    )
    b = _report(tmp_path / "b.json", [1], {"direct transfer": {"de": [0.88], "fr": [0.87]}})
    st1 = _evaluation(tmp_path / "st1", {"en": 0.9, "de": 0.86})
    ours1 = _evaluation(tmp_path / "ours1", {"de": 0.87})
    apart = ["--evaluated", f"- ST,de,1={st1}", "--evaluated", f"Ours,de,1={ours1}"]
    tables.main([str(a), str(b), "--no-wall", *apart])
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == (
        "| row | de | fr | average | paper (mBERT) de / fr | round-1 collapse flags |"
    )
    # Ours: 83, 91 and the apart 87 -> 87.00 ± 4.00 over three seeds; one collapse in three runs
    assert "| Ours | 87.00 ± 4.00 (3) | – | – | 87.65 / 86.80 | 1 / 3 |" in lines
    assert "| - ST | 85.33 ± 5.03 (3) | – | – | 87.65 / 85.55 | – |" in lines
    # one seed has no spread; the average needs every target
    assert "| direct transfer | 88.00 (1) | 87.00 (1) | 87.50 | 76.35 / 81.05 | – |" in lines
    # Ours − (− ST) over the seeds both have: (+1, +3, +1) / 3; the paper's books margin
    assert (
        "| Ours − (− ST), same seeds | +1.67 (3; paper +0.00) | – (paper +1.25) | – | | |" in lines
    )
    assert lines[-1] == "Evaluated apart (not in a report): - ST de seed 1; Ours de seed 1."


def test_each_components_share_is_ours_less_its_row_over_the_seeds_both_have(tmp_path, capsys):
    """A line per component (AT, VM, BTF, ST; the hard step as Ours less soft only), each
    target's mean difference over the seeds both rows have, their count and the paper's."""
    a = _report(
        tmp_path / "a.json",
        [1, 2],
        {
            "Ours": {"de": [0.88, 0.86], "fr": [0.87, 0.85]},
            "- AT": {"de": [0.885, 0.80]},
            "soft only": {"de": [0.87, 0.84], "fr": [0.86, 0.86]},
        },
    )
    tables.main([str(a), "--no-wall"])
    lines = capsys.readouterr().out.splitlines()
    # - AT: +0.50 -> -0.50 and +6.00 over 2 seeds: +2.75; the paper: 87.65 - 88.10; no fr cell
    assert (
        "| Ours − (− AT), same seeds | +2.75 (2; paper -0.45) | – (paper +1.15) | – | | |" in lines
    )
    # the hard step: (+1, +2) / 2 on de, (+1, -1) / 2 on fr; no paper row; the average of both
    assert (
        "| Ours − soft only (the hard step), same seeds | +1.50 (2) | +0.00 (2) | +0.75 | | |"
        in lines
    )
    assert not [x for x in lines if "− (− VM)" in x or "− (− ST)" in x]  # rows not run


def test_wall_column_sums_each_rows_report_seconds(tmp_path, capsys):
    a = _report(tmp_path / "a.json", [1], {"Ours": {"esp": [0.7]}}, seconds=120.0)
    b = _report(tmp_path / "b.json", [2], {"Ours": {"esp": [0.72]}}, seconds=240.0)
    tables.main([str(a), str(b)])
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].endswith("| round-1 collapse flags | wall (min, all seeds) |")
    assert rows[2] == "| Ours | 71.00 ± 1.41 (2) | 71.00 | 78.38 | 0 / 2 | 6.0 |"
    # a cell run again (a later loan's Ours beside soft only) counts its wall once: here seed 1
    # again and seed 3 new, in one report of 600 s, adds half of it
    again = _report(tmp_path / "c.json", [1, 3], {"Ours": {"esp": [0.7, 0.74]}}, seconds=600.0)
    tables.main([str(a), str(b), str(again)])
    rows = capsys.readouterr().out.splitlines()
    assert rows[2] == "| Ours | 72.00 ± 2.00 (3) | 72.00 | 78.38 | 0 / 3 | 11.0 |"


def test_wall_of_a_row_evaluated_apart_only_is_a_dash(tmp_path, capsys):
    a = _report(tmp_path / "a.json", [1], {"Ours": {"de": [0.87]}}, seconds=120.0)
    st = _evaluation(tmp_path / "st", {"de": 0.86})
    tables.main([str(a), "--evaluated", f"- ST,de,1={st}"])
    rows = capsys.readouterr().out.splitlines()
    assert "| Ours | 87.00 (1) | 87.00 | 87.65 | 0 / 1 | 2.0 |" in rows
    assert "| - ST | 86.00 (1) | 86.00 | 87.65 | – | – |" in rows


def test_bad_input_is_named(tmp_path):
    a = _report(tmp_path / "a.json", [1], {"- ST": {"de": [0.80]}})
    other = _report(tmp_path / "b.json", [2], {"- ST": {"de": [0.81]}}, overrides=["lr=1"])
    with pytest.raises(ValueError, match=r"b.json: other settings .*\[\] / \[.lr=1.\]"):
        tables.collect([a, other])
    fr_only = _evaluation(tmp_path / "fr", {"fr": 0.8})
    with pytest.raises(ValueError, match=r"results.json: no score for 'de' \(it has \['fr'\]\)"):
        tables.evaluated_apart(f"- ST,de,1={fr_only}")
    with pytest.raises(ValueError, match="expected ROW,TARGET,SEED="):
        tables.evaluated_apart(f"- ST,de={fr_only}")
    scores, _, _ = tables.collect([a])
    clash = _evaluation(tmp_path / "clash", {"de": 0.79})
    with pytest.raises(ValueError, match="a report has 0.8"):
        tables.add_evaluated(scores, [f"- ST,de,1={clash}"])


def _resolved(*overrides: str) -> dict:
    from xlt_engine.engine.experiment.config import load_config, to_dict

    return tables.learning_part(to_dict(load_config(ROOT / CLS, list(overrides))))


CLS = "configs/e5-small-cls.toml"
LR = "selftrain.soft.lr=2e-4"  # not the preset's value


def test_reports_join_when_they_ran_the_same_settings_however_they_said_them(tmp_path):
    """A report records what it ran (``resolved``); one written before did not, and its settings
    are rebuilt from its preset at its commit. A preset that changed between the runs keeps its
    reports apart, though their commands are the same; the preset that adopted a ``--set`` joins
    the reports that set it."""
    import subprocess

    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                          text=True)  # fmt: skip
    if head.returncode != 0:
        pytest.skip("not a git checkout: a report's commit cannot be read")
    at_head = {"git_sha": head.stdout.strip()}

    def report(name, seed, score, overrides=(), **extra):
        path = _report(tmp_path / name, [seed], {"Ours": {"de": [score]}}, overrides=overrides)
        r = json.loads(path.read_text(encoding="utf-8")) | extra
        path.write_text(json.dumps(r), encoding="utf-8")
        return path

    old = report("old.json", 1, 0.80, environment=at_head)  # the preset as committed
    old_lr = report("old_lr.json", 2, 0.88, [LR], environment=at_head)
    unreadable = report("gone.json", 3, 0.85, environment={"git_sha": "0" * 40})
    dirty = report("dirty.json", 3, 0.85, environment={"git_sha": at_head["git_sha"] + "+dirty"})
    now = report("now.json", 3, 0.86, resolved=_resolved())
    adopted = report("adopted.json", 1, 0.87, resolved=_resolved(LR))

    scores, _, _ = tables.collect([now, old])  # the same commands, the same settings
    assert scores["Ours"]["de"] == {3: 0.86, 1: 0.80}
    scores, _, _ = tables.collect([adopted, old_lr])  # said two ways, the same settings
    assert scores["Ours"]["de"] == {1: 0.87, 2: 0.88}
    with pytest.raises(ValueError, match=r"old.json: other settings than .*adopted.json: "
                                         r"selftrain.soft.lr: 0.0002 / 0.0001"):  # fmt: skip
        tables.collect([adopted, old])
    for path in (unreadable, dirty):  # no such commit; a tree that was not its commit
        with pytest.raises(ValueError, match=f"{path.name}: .*could not be read back"):
            tables.collect([now, path])
    with pytest.raises(ValueError, match=r"old_lr.json: .*learning overrides \[\] / \['selftr"):
        tables.collect([old, old_lr])  # neither records its settings: their commands differ

    # the where is not a setting; a key one record lacks (added to the engine later) is skipped
    placed = _resolved("data.root=/x", "model.path=/m", 'targets=["fr"]', "device=cpu")
    assert placed == _resolved() and "languages" not in placed and "root" not in placed["data"]
    # one list says the where, for a --set and for a recorded setting alike
    where = ("data.max_train=5", "languages.de.unlabeled=x.review", "seed=4", "device=cpu")
    assert not any(tables.is_learning(o) for o in where)
    assert all(_resolved(o) == _resolved() for o in where)
    for o in ("evaluate.split=dev", LR, "btf.train.log_every=5"):  # scored, learned; logging
        assert tables.is_learning(o) is (not o.startswith("btf")), o
        assert (_resolved(o) == _resolved()) is o.startswith("btf"), o
    later = _resolved() | {"new_section": {"knob": 1}}
    assert (
        tables.settings_differ({"config": CLS, "resolved": later}, json.loads(now.read_text()))
        is None
    )


def test_a_stale_commit_is_read_as_the_one_given_for_its_folder(tmp_path, capsys):
    """``--commit PATH=SHA``: the reports under PATH (a folder or the file) ran at SHA, where
    they record a stale "+dirty" one (a lent GPU's copy of the working tree, 2026-11-26 / -27).
    Their settings are then rebuilt at SHA and checked like any others; reports elsewhere keep
    their own record."""
    import subprocess

    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                          text=True)  # fmt: skip
    if head.returncode != 0:
        pytest.skip("not a git checkout: a report's commit cannot be read")
    sha = head.stdout.strip()
    stale = {"git_sha": "f" * 40 + "+dirty"}
    loan = tmp_path / "loan"
    loan.mkdir()

    def report(path, seed, score, overrides=(), **extra):
        path = _report(path, [seed], {"Ours": {"de": [score]}}, overrides=overrides)
        path.write_text(json.dumps(json.loads(path.read_text()) | extra), encoding="utf-8")
        return path

    old = report(loan / "old.json", 1, 0.80, environment=stale)
    old_lr = report(loan / "old_lr.json", 2, 0.88, [LR], environment=stale)
    now = report(tmp_path / "now.json", 3, 0.86, resolved=_resolved())
    with pytest.raises(ValueError, match="old.json: .*could not be read back"):
        tables.collect([now, old])
    scores, _, _ = tables.collect([now, old], {str(loan): sha[:7]})
    assert scores["Ours"]["de"] == {3: 0.86, 1: 0.80}
    with pytest.raises(ValueError, match=r"old_lr.json: other settings .*selftrain.soft.lr"):
        tables.collect([now, old_lr], {str(old_lr): sha})  # rebuilt, then compared
    with pytest.raises(ValueError, match="could not be read back"):
        tables.collect([now, old], {str(tmp_path / "elsewhere"): sha})  # not above it
    tables.main(["--commit", f"{loan}={sha}", str(now), str(old)])
    assert "| Ours | 83.00 ± 4.24 (2) |" in capsys.readouterr().out
    for bad in (f"{loan}", f"{loan}=nothex", f"={sha}"):
        with pytest.raises(SystemExit):
            tables.main(["--commit", bad, str(now)])
    assert "expected PATH=SHA" in capsys.readouterr().err


OURS = ["btf", "evaluate", "finetune", "selftrain"]  # the stages each row ran (lab.study)
DIRECT = ["evaluate", "finetune"]
NOBTF = ["evaluate", "finetune", "selftrain"]


def test_a_row_joins_rows_that_ran_its_stages_alike(tmp_path):
    """A row is compared with another on the settings of the stages both ran: a preset whose btf
    changed keeps its Ours rows apart but not its direct-transfer rows (no btf), and - BTF joins
    on btf but not on self-training. A row that does not say its stages compares on all."""
    cold, lr = _resolved("btf.head_warmup_epochs=0"), _resolved(LR)

    def report(name, seed, rows, resolved):
        path = _report(tmp_path / name, [seed], {r: {"de": [v]} for r, (v, _) in rows.items()})
        r = json.loads(path.read_text(encoding="utf-8")) | {"resolved": resolved}
        for row, (_, stages) in rows.items():
            if stages:
                r["rows"][row]["stages"] = stages
        path.write_text(json.dumps(r), encoding="utf-8")
        return path

    now = report("now.json", 1, {"Ours": (0.88, OURS), "direct transfer": (0.87, DIRECT)},
                 _resolved())  # fmt: skip
    direct = report("direct.json", 2, {"direct transfer": (0.86, DIRECT)}, cold)
    nobtf = report("nobtf.json", 1, {"- BTF": (0.85, NOBTF)}, cold)
    scores, _, _ = tables.collect([now, direct, nobtf])
    assert scores["direct transfer"]["de"] == {1: 0.87, 2: 0.86} and scores["- BTF"]["de"][1]
    ours = report("ours.json", 2, {"Ours": (0.84, OURS)}, cold)
    with pytest.raises(ValueError, match=r"ours.json: other settings than .*now.json: btf.head_w"
                                         r"armup_epochs: 2.0 / 0.0 \(rows Ours / Ours\)"):  # fmt: skip
        tables.collect([now, ours])
    assert tables.collect([ours, direct])[0]["Ours"]["de"] == {2: 0.84}  # one preset: all join
    for late in ([direct, nobtf, now], [nobtf, direct, now]):  # in any order
        assert tables.collect(late)[0]["direct transfer"]["de"] == {1: 0.87, 2: 0.86}
    unsaid = report("unsaid.json", 2, {"direct transfer": (0.86, None)}, cold)
    with pytest.raises(ValueError, match="unsaid.json: .*head_warmup_epochs"):
        tables.collect([now, unsaid])
    soft = report("soft.json", 2, {"- BTF": (0.85, NOBTF)}, lr)
    with pytest.raises(ValueError, match=r"soft.json: .*selftrain.soft.lr: 0.0001 / 0.0002"):
        tables.collect([now, soft])


def _scored(path: Path, scores: dict) -> str:
    """An evaluation's results.json with per-class counts: ``{lang: (neg right, neg as pos,
    pos right, pos as neg)}`` of 100 + 100 reviews."""
    path.mkdir(parents=True)
    languages = {
        lang: {
            "score": (nn + pp) / 200,
            "confusion": {
                "negative": {"negative": nn, "positive": np_},
                "positive": {"positive": pp, "negative": pn},
            },
        }
        for lang, (nn, np_, pp, pn) in scores.items()
    }
    record = {"metric": "accuracy", "source": "en", "languages": languages}
    (path / "results.json").write_text(json.dumps(record), encoding="utf-8")
    return str(path / "results.json")


def test_models_table_shows_accuracy_and_each_targets_lean(tmp_path, capsys):
    a1 = _scored(tmp_path / "a1", {"en": (90, 10, 94, 6), "jp": (10, 90, 100, 0)})
    a2 = _scored(
        tmp_path / "a2", {"en": (92, 8, 92, 8), "jp": (30, 70, 98, 2), "fr": (1, 99, 99, 1)}
    )
    b1 = _scored(tmp_path / "b1", {"en": (90, 10, 90, 10), "jp": (70, 30, 90, 10)})
    tables.main(["--targets", "jp", "--models", "BTF", a1, a2, "--models", "none", b1])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| model | en | jp | jp recall % (negative / positive) |"
    # BTF: en 92.0 and 92.0; jp 55.0 and 64.0 -> 59.50 ± 6.36; recall (10+30)/2, (100+98)/2
    assert lines[2] == "| BTF | 92.00 ± 0.00 (2) | 59.50 ± 6.36 (2) | 20.0 / 99.0 |"
    assert lines[3] == "| none | 90.00 (1) | 80.00 (1) | 70.0 / 90.0 |"
    with pytest.raises(ValueError, match="b1/results.json: no score for 'fr'"):
        tables.main(["--models", "x", a2, b1])
    with pytest.raises(ValueError, match="--targets: \\['de'\\]"):
        tables.main(["--targets", "de", "--models", "x", a1])
    (tmp_path / "bad.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.json: not an evaluation"):
        tables.main(["--models", "x", str(tmp_path / "bad.json")])
    with pytest.raises(SystemExit):  # a table of reports or of models, not both
        tables.main([a1, "--models", "x", a1])
    with pytest.raises(SystemExit):  # --targets picks the targets of --models only
        tables.main([a1, "--targets", "jp"])


def _readme_tables(text: str):
    """Each ``python -m lab.tables`` command in an indented block of lab/README.md (continued
    with a trailing backslash) and what follows it: the table's lines, and the line naming the
    cells evaluated apart after a blank line."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if not line.startswith("    python -m lab.tables "):
            continue
        command, j = line.strip(), i
        while command.endswith("\\"):
            j += 1
            command = command[:-1] + " " + lines[j].strip()
        j += 1
        while not lines[j].startswith("|"):
            j += 1
        printed = []
        while j < len(lines) and lines[j].startswith("|"):
            printed.append(lines[j])
            j += 1
        if lines[j + 1 : j + 2] and lines[j + 1].startswith("Evaluated apart"):
            printed += ["", lines[j + 1]]
        yield command, printed


def test_lab_readme_tables_are_what_their_commands_print(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    found = list(_readme_tables((ROOT / "lab" / "README.md").read_text(encoding="utf-8")))
    assert found, "lab/README.md names no `python -m lab.tables` command"
    for command, printed in found:
        argv = []
        for arg in shlex.split(command)[3:]:
            matches = sorted(glob.glob(arg)) if re.search(r"[*?\[]", arg) else [arg]
            assert matches, f"{arg}: no file"
            argv += matches
        tables.main(argv)
        assert capsys.readouterr().out.rstrip("\n").splitlines() == printed, command


def test_readme_copies_lab_readme_tables_as_printed():
    """A table of README.md's whose header line is that of a table lab/README.md prints is one
    of those tables, line for line (two printed tables may share a header: same targets)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    lab = (ROOT / "lab" / "README.md").read_text(encoding="utf-8")
    printed = [[x for x in out if x.startswith("|")] for _, out in _readme_tables(lab)]
    blocks, block = [], []
    for line in [*readme, ""]:
        if line.startswith("|"):
            block.append(line)
        elif block:
            blocks.append(block)
            block = []
    copies = [b for b in blocks if any(b[0] == rows[0] for rows in printed)]
    for b in copies:
        assert b in printed, f"README.md's table {b[0]} ... {b[-1]} is none lab/README.md prints"
    assert copies, "README.md shows none of lab/README.md's printed tables"


def test_row_of_reads_past_the_settings_every_row_shares():
    """CLS's preset runs two rounds: its folders are ``selftrain-rounds2...``, and a round-1
    collapse there must still count for its row (it counted for none before)."""
    rows = {"Ours": {}, "soft only": {}, "- AT": {}, "rule = class_quota": {}}
    assert tables.row_of("selftrain-rounds2/round-1", rows) == "Ours"
    assert tables.row_of("selftrain-rounds2-softonly/round-1", rows) == "soft only"
    assert tables.row_of("selftrain-alpha0.9-rounds2/round-1", rows) == "- AT"
    assert tables.row_of("selftrain-rounds2-class_quota/round-1", rows) == "rule = class_quota"
    assert tables.row_of("selftrain-srcall/round-1", rows) == "Ours"
    assert tables.row_of("selftrain-linear-rounds2/round-1", rows) is None  # - VM not a row here
    # a start and a rule: the engine names the rule first; the row names the start first
    both = {**rows, "init = teacher; rule = class_quota": {}}
    got = tables.row_of("selftrain-rounds2-class_quota-init_teacher/round-1", both)
    assert got == "init = teacher; rule = class_quota"


def test_rows_of_reads_the_folders_each_row_read_where_the_report_recorded_them(tmp_path):
    """lab.study records each row's stage folders (``row_folders``): a round maps to the rows that
    read its folder whatever the folder's name; reports without the record fall back to the
    name."""
    rows = {"Ours": {}, "- VM": {}, "soft only": {}}
    detail = {"row_folders": {"Ours": ["btf", "finetune", "selftrain-x"],
                              "- VM": ["finetune-linear", "selftrain-y"],
                              "- AT": ["selftrain-alpha0.9"]}}  # fmt: skip
    assert tables.rows_of("selftrain-x/round-1", detail, rows) == ["Ours"]
    assert tables.rows_of("selftrain-y/round-1/soft", detail, rows) == ["- VM"]
    assert tables.rows_of("selftrain-alpha0.9/round-1", detail, rows) == []  # - AT: not a row
    assert tables.rows_of("selftrain-softonly/round-1", detail, rows) == ["soft only"]  # by name
    assert tables.rows_of("selftrain-linear/round-1", {}, rows) == ["- VM"]
    # the table counts a collapse for the row that read the folder
    collapse = {"selftrain-y/round-1": {"collapse": 1}, "selftrain-x/round-1": {"collapse": 0}}
    path = _report(
        tmp_path / "r.json",
        [1],
        {"Ours": {"de": [0.8]}, "- VM": {"de": [0.7]}},
        details=[{"pair": "en-de", "seed": 1, "rounds": collapse, **detail}],
    )
    _, collapsed, _ = tables.collect([path])
    assert collapsed == {"- VM": {("de", 1)}}
