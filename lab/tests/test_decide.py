"""lab/decide.py: the pre-registered preset decisions read off study reports (the rules of
lab/results/cls_btf_cause_20261128/README.md), on made-up reports around each boundary and on
the committed CLS records."""

import glob
import json
from pathlib import Path

import pytest

from lab import decide

ROOT = Path(__file__).resolve().parents[2]
WARM = "btf.head_warmup_epochs=2"


def _report(
    path: Path,
    rows: dict,
    *,
    overrides=(),
    config="configs/e5-small-cls.toml",
    details=(),
    resolved=None,
) -> Path:
    """A report of seeds 1-3 whose rows give ``{target: [score a seed]}``."""
    path.write_text(
        json.dumps(
            {
                "config": config,
                **({"resolved": resolved} if resolved else {}),
                "overrides": ["device=cpu", "data.max_train=1000000", *overrides],
                "seeds": [1, 2, 3],
                "rows": {r: {"scores": s, "seconds": 1.0} for r, s in rows.items()},
                "details": list(details),
            }
        ),
        encoding="utf-8",
    )
    return path


def _cls(tmp_path, base_ours, warm_ours, base_st=(0.85,) * 3, warm_st=(0.85,) * 3):
    """Two CLS arms with the same scores on de and fr (so a mean is that of three seeds)."""
    base = _report(
        tmp_path / "base.json",
        {
            "Ours": {"de": list(base_ours), "fr": list(base_ours)},
            "- ST": {"de": list(base_st), "fr": list(base_st)},
        },
    )
    warm = _report(
        tmp_path / "warm.json",
        {
            "Ours": {"de": list(warm_ours), "fr": list(warm_ours)},
            "- ST": {"de": list(warm_st), "fr": list(warm_st)},
        },
        overrides=[WARM],
    )
    return ["cls", "--base", str(base), "--variant", str(warm)]


@pytest.mark.parametrize(
    ("warm_ours", "verdict", "rc"),
    [
        ((0.8725, 0.8725, 0.8725), "adopt", 0),  # +0.25 exactly: at least the margin adopts
        ((0.8800, 0.8700, 0.8800), "adopt", 0),  # +0.33
        ((0.8675, 0.8675, 0.8675), "keep", 0),  # -0.25 exactly keeps
        ((0.8600, 0.8700, 0.8700), "keep", 0),  # -0.33
    ],
)
def test_cls_outside_the_margin_reads_ours_only(tmp_path, capsys, warm_ours, verdict, rc):
    # - ST favours the variant in every case: outside the margin it must not matter
    args = _cls(tmp_path, (0.87,) * 3, warm_ours, base_st=(0.80,) * 3, warm_st=(0.90,) * 3)
    assert decide.main(args) == rc
    out = capsys.readouterr().out
    assert out.rstrip().endswith(f"Verdict: {verdict}")
    assert f"The variant arm adds ['{WARM}']" in out


@pytest.mark.parametrize(
    ("warm_ours", "warm_st", "verdict"),
    [
        ((0.870, 0.872, 0.874), (0.86,) * 3, "adopt"),  # +0.2; - ST higher; std equal
        ((0.870, 0.872, 0.874), (0.85,) * 3, "keep"),  # - ST equal, not higher
        ((0.868, 0.872, 0.876), (0.86,) * 3, "keep"),  # Ours std larger
        ((0.8685, 0.8695, 0.8705), (0.86,) * 3, "adopt"),  # -0.05, a tie; std smaller
    ],
)
def test_cls_tie_reads_st_and_spread(tmp_path, capsys, warm_ours, warm_st, verdict):
    args = _cls(tmp_path, (0.868, 0.870, 0.872), warm_ours, warm_st=warm_st)
    assert decide.main(args) == 0
    out = capsys.readouterr().out
    assert "within the margin: a tie" in out
    assert out.rstrip().endswith(f"Verdict: {verdict}")


def test_a_missing_cell_leaves_it_undecided_and_names_the_cell(tmp_path, capsys):
    base = _report(tmp_path / "b.json", {"Ours": {"de": [0.8, 0.8, 0.8], "fr": [0.8] * 3}})
    warm = tmp_path / "w.json"
    warm.write_text(
        json.dumps(
            {
                "config": "configs/e5-small-cls.toml",
                "overrides": ["device=cpu", WARM],
                "seeds": [3],
                "rows": {"Ours": {"scores": {"de": [0.9], "fr": [0.9]}, "seconds": 1.0}},
                "details": [],
            }
        ),
        encoding="utf-8",
    )
    assert decide.main(["cls", "--base", str(base), "--variant", str(warm)]) == decide.UNDECIDED
    out = capsys.readouterr().out
    assert "variant Ours de seed 1, variant Ours de seed 2, variant Ours fr seed 1" in out
    assert "| variant | Ours | – | – | 90.00 | – | – | 90.00 | 90.00 ± 0.00 (2) |" in out
    assert out.rstrip().endswith("Verdict: undecided")


def test_a_cls_tie_without_every_st_cell_is_undecided(tmp_path, capsys):
    base = _report(tmp_path / "b.json", {"Ours": {"de": [0.87] * 3, "fr": [0.87] * 3}})
    warm = _report(
        tmp_path / "w.json",
        {"Ours": {"de": [0.871] * 3, "fr": [0.871] * 3}, "- ST": {"de": [0.9] * 3}},
        overrides=[WARM],
    )
    assert decide.main(["cls", "--base", str(base), "--variant", str(warm)]) == decide.UNDECIDED
    out = capsys.readouterr().out
    assert "the tie reads - ST; missing: shipped - ST de seed 1" in out
    assert "variant - ST fr seed 3" in out


QUOTA = "rule = class_quota"


def _paired(path: Path, ours, quota, **kwargs) -> Path:
    """A report holding Ours and the class_quota row, the same scores on de and fr."""
    rows = {"Ours": {t: list(ours) for t in ("de", "fr")}}
    return _report(path, rows | {QUOTA: {t: list(quota) for t in ("de", "fr")}}, **kwargs)


@pytest.mark.parametrize(
    ("quota", "verdict", "why"),
    [
        ((0.8725,) * 3, "adopt", "+0.25 (margin 0.25)"),  # at least the margin adopts
        ((0.8675,) * 3, "keep", "-0.25 (margin 0.25)"),
        ((0.8720, 0.8750, 0.8650), "keep", "a tie keeps the base"),  # +0.03, smaller spread too
    ],
)
def test_cls_rule_reads_two_rows_of_the_same_runs(tmp_path, capsys, quota, verdict, why):
    """``cls_rule``: the class_quota row against Ours of the same reports (no --variant);
    a tie keeps the paper's rule whatever - ST or the spread say."""
    paired = _paired(tmp_path / "p.json", (0.87,) * 3, quota)
    assert decide.main(["cls_rule", "--base", str(paired), "--variant-label", "quota"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Rule cls_rule: 'rule = class_quota' against Ours, test accuracy")
    assert "The quota arm is the row 'rule = class_quota' of the same runs" in out
    assert (
        "| shipped | Ours | 87.00 | 87.00 | 87.00 | 87.00 | 87.00 | 87.00 | 87.00 ± 0.00 (6) |"
        in out
    )
    assert f"| quota | {QUOTA} | {100 * quota[0]:.2f} |" in out
    assert f"- {QUOTA} − Ours: quota − shipped = " in out and why in out
    assert "- ST" not in out
    assert out.rstrip().endswith(f"Verdict: {verdict}")


def test_cls_rule_reads_ours_only_beside_its_twin(tmp_path, capsys):
    """Ours cells of reports without the class_quota row (an older run of the same seed, in
    another precision) are not read: each Ours cell is its twin's; a missing twin is named."""
    older = _report(tmp_path / "old.json", {"Ours": {"de": [0.5] * 3, "fr": [0.5] * 3}})
    paired = tmp_path / "p.json"
    paired.write_text(
        json.dumps(
            {
                "config": "configs/e5-small-cls.toml",
                "overrides": ["device=cpu", "data.max_train=1000000"],
                "seeds": [3],
                "rows": {
                    "Ours": {"scores": {"de": [0.9], "fr": [0.9]}, "seconds": 1.0},
                    QUOTA: {"scores": {"de": [0.91], "fr": [0.92]}, "seconds": 1.0},
                },
                "details": [],
            }
        ),
        encoding="utf-8",
    )
    argv = ["cls_rule", "--base", str(older), str(paired)]
    assert decide.main(argv) == decide.UNDECIDED
    out = capsys.readouterr().out
    assert "| shipped | Ours | – | – | 90.00 | – | – | 90.00 | 90.00 ± 0.00 (2) |" in out
    assert "missing: shipped Ours de seed 1" in out and f"variant {QUOTA} fr seed 2" in out
    assert decide.main(["cls_rule", "--base", str(older)]) == 2
    assert f"shipped: no report holds the row '{QUOTA}'" in capsys.readouterr().err


def test_cls_rule_refuses_rows_of_other_settings(tmp_path, capsys):
    base = _paired(tmp_path / "b.json", (0.87,) * 3, (0.88,) * 3)
    warm = _paired(tmp_path / "w.json", (0.87,) * 3, (0.88,) * 3, overrides=[WARM])
    assert decide.main(["cls_rule", "--base", str(base), "--variant", str(warm)]) == 2
    err = capsys.readouterr().err
    assert "compares two rows of the same runs, and the arms' settings differ" in err
    with pytest.raises(SystemExit):  # a rule of two arms needs both
        decide.main(["cls", "--base", str(base)])
    assert "rule cls compares two arms: --variant is required" in capsys.readouterr().err


def _checks(target: str, steps: dict) -> dict:
    return {
        name: {"dev": {"eng": {"score": 0.9}, target: {"score": v}}} for name, v in steps.items()
    }


def _conll(tmp_path, name, scores: dict, overrides=()) -> Path:
    """A CoNLL report whose Ours and soft-only rows end with the given target dev F1 per seed;
    each pair's earlier steps and the soft-only row score higher, to be ignored."""
    details = []
    for target, per_seed in scores.items():
        for seed, last in enumerate(per_seed, start=1):
            checks = _checks(
                target,
                {
                    # insertion order is not step order: the round-2 soft step is Ours' last
                    "selftrain/round-2/soft": last,
                    "selftrain/round-1/soft": 0.99,
                    "selftrain/round-1/hard": 0.98,
                    "selftrain-softonly/round-2/soft": 0.97,
                },
            )
            details.append({"pair": f"eng-{target}", "seed": seed, "rounds": {}, "checks": checks})
    return _report(
        tmp_path / name,
        {"Ours": {t: [0.5] * 3 for t in scores}, "soft only": {t: [0.5] * 3 for t in scores}},
        overrides=overrides,
        config="configs/e5-small-conll.toml",
        details=details,
    )


def test_conll_reads_the_last_self_training_step_and_a_tie_keeps(tmp_path, capsys):
    base = _conll(tmp_path, "b.json", {"esp": [0.70, 0.70, 0.70], "ned": [0.78] * 3})
    warm = _conll(tmp_path, "w.json", {"esp": [0.704] * 3, "ned": [0.78] * 3}, [WARM])
    assert decide.main(["conll", "--base", str(base), "--variant", str(warm)]) == 0
    out = capsys.readouterr().out
    assert "| shipped | Ours | 70.00 | 70.00 | 70.00 | 78.00 | 78.00 | 78.00 |" in out
    assert "Ours: variant − shipped = +0.20 (margin 0.5)" in out
    assert out.rstrip().endswith("a tie keeps the base\n\nVerdict: keep")
    warm = _conll(tmp_path, "w2.json", {"esp": [0.71] * 3, "ned": [0.78] * 3}, [WARM])
    assert decide.main(["conll", "--base", str(base), "--variant", str(warm)]) == 0
    assert capsys.readouterr().out.rstrip().endswith("Verdict: adopt")


def _conll_paired(path: Path, ours: dict, quota: dict) -> Path:
    """A CoNLL report of Ours and the class_quota row of the same runs, each row's folders
    recorded (``row_folders``, as lab.study writes them): their target dev F1 at the last step
    given per target and seed, round 1's soft step (shared, in Ours' folder) higher."""
    folder = "selftrain-class_quota"
    details = []
    for target in ours:
        for seed in (1, 2, 3):
            checks = _checks(
                target,
                {
                    "selftrain/round-1/soft": 0.99,  # shared: read for neither row's last step
                    "selftrain/round-1/hard": 0.98,
                    "selftrain/round-2/soft": ours[target][seed - 1],
                    f"{folder}/round-1/hard": 0.97,
                    f"{folder}/round-2/soft": quota[target][seed - 1],
                },
            )
            # as lab.study records them: a row's own stage folders (the quota row reads round
            # 1's soft step from Ours' folder, but lists only its own)
            folders = {"Ours": ["btf", "finetune", "selftrain"], QUOTA: ["btf", "finetune", folder]}
            details.append({"pair": f"eng-{target}", "seed": seed, "rounds": {},
                            "checks": checks, "row_folders": folders})  # fmt: skip
    return _report(
        path,
        {"Ours": {t: [0.5] * 3 for t in ours}, QUOTA: {t: [0.6] * 3 for t in ours}},
        config="configs/e5-small-conll.toml",
        details=details,
    )


@pytest.mark.parametrize(
    ("quota_esp", "verdict", "why"),
    [
        ((0.71,) * 3, "adopt", "+0.50 (margin 0.5)"),  # esp +1.00, ned 0: +0.50 on the mean
        ((0.69,) * 3, "keep", "-0.50 (margin 0.5)"),
        ((0.72, 0.70, 0.688), "keep", "a tie keeps the base"),  # +0.13
    ],
)
def test_conll_rule_reads_the_two_rows_last_dev_step(tmp_path, capsys, quota_esp, verdict, why):
    """``conll_rule``: the class_quota row's target dev F1 at its own last step against Ours'
    of the same runs (the test scores, 50 / 60, are not read); German is not a cell."""
    ours = {"esp": [0.70] * 3, "ned": [0.78] * 3, "deu": [0.6] * 3}
    quota = {"esp": list(quota_esp), "ned": [0.78] * 3, "deu": [0.9] * 3}
    paired = _conll_paired(tmp_path / "p.json", ours, quota)
    assert decide.main(["conll_rule", "--base", str(paired), "--variant-label", "quota"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        "Rule conll_rule: 'rule = class_quota' against Ours, target dev F1, last self-training "
        "step over esp, ned x seeds 1, 2, 3; config configs/e5-small-conll.toml"
    )
    assert "| shipped | Ours | 70.00 | 70.00 | 70.00 | 78.00 | 78.00 | 78.00 |" in out
    cells = " | ".join(f"{100 * v:.2f}" for v in quota_esp)
    assert f"| quota | {QUOTA} | {cells} | 78.00 | 78.00 | 78.00 |" in out
    assert f"- {QUOTA} − Ours: quota − shipped = " in out and why in out
    assert out.rstrip().endswith(f"Verdict: {verdict}")


def test_conll_dev_rule_takes_no_ours_cell_evaluated_apart(tmp_path, capsys):
    base = _conll(tmp_path, "b.json", {"esp": [0.7] * 3, "ned": [0.78] * 3})
    warm = _conll(tmp_path, "w.json", {"esp": [0.7] * 3, "ned": [0.78] * 3}, [WARM])
    args = ["conll", "--base", str(base), "--variant", str(warm)]
    assert decide.main([*args, "--variant-evaluated", "Ours,esp,1=x.json"]) == 2
    assert "this rule reads dev F1" in capsys.readouterr().err


def test_a_step_without_target_dev_names_report_and_step(tmp_path, capsys):
    base = _conll(tmp_path, "b.json", {"esp": [0.7] * 3, "ned": [0.78] * 3})
    report = json.loads(base.read_text(encoding="utf-8"))
    del report["details"][0]["checks"]["selftrain/round-2/soft"]["dev"]["esp"]
    base.write_text(json.dumps(report), encoding="utf-8")
    warm = _conll(tmp_path, "w.json", {"esp": [0.7] * 3, "ned": [0.78] * 3}, [WARM])
    assert decide.main(["conll", "--base", str(base), "--variant", str(warm)]) == 2
    err = capsys.readouterr().err
    assert f"{base}: seed 1 eng-esp: selftrain/round-2/soft has no esp dev check" in err


@pytest.mark.parametrize(
    ("variant_kwargs", "message"),
    [
        ({}, "the arms have the same learning settings"),
        ({"overrides": [WARM], "config": "configs/conll.toml"}, "the arms use different configs"),
    ],
)
def test_arms_that_are_not_one_change_apart_are_refused(tmp_path, capsys, variant_kwargs, message):
    base = _report(tmp_path / "b.json", {"Ours": {"de": [0.8] * 3}})
    warm = _report(tmp_path / "w.json", {"Ours": {"de": [0.8] * 3}}, **variant_kwargs)
    assert decide.main(["cls", "--base", str(base), "--variant", str(warm)]) == 2
    assert message in capsys.readouterr().err


def test_arms_said_alike_are_told_apart_by_what_they_ran(tmp_path, capsys):
    """Where a report records what it ran (``resolved``), the arms are compared on that: the
    same command over a preset whose settings changed is a decision; a preset that adopted the
    variant's ``--set`` is the variant, not a second arm."""
    from lab.tables import learning_part
    from xlt_engine.engine.experiment.config import load_config, to_dict

    cls = Path(__file__).resolve().parents[2] / "configs/e5-small-cls.toml"
    cold = ["btf.head_warmup_epochs=0"]  # the preset's earlier value, whatever it says now
    shipped, warm = (learning_part(to_dict(load_config(cls, o))) for o in (cold, [WARM]))
    base = _report(tmp_path / "b.json", {"Ours": {"de": [0.8] * 3}}, resolved=shipped)
    changed = _report(tmp_path / "c.json", {"Ours": {"de": [0.9] * 3}}, resolved=warm)
    assert decide.main(["cls", "--base", str(base), "--variant", str(changed)]) == 3
    out = capsys.readouterr().out
    assert "ran the preset with other settings: btf.head_warmup_epochs: 0.0 / 2" in out
    said = _report(tmp_path / "s.json", {"Ours": {"de": [0.9] * 3}}, overrides=[WARM],
                   resolved=warm)  # fmt: skip
    assert decide.main(["cls", "--base", str(changed), "--variant", str(said)]) == 2
    assert "the arms have the same learning settings" in capsys.readouterr().err


def test_a_file_that_is_not_a_report_is_named(tmp_path, capsys):
    base = _report(tmp_path / "b.json", {"Ours": {"de": [0.8] * 3}})
    bad = tmp_path / "results.json"
    bad.write_text(json.dumps({"languages": {}}), encoding="utf-8")
    assert decide.main(["cls", "--base", str(base), "--variant", str(bad)]) == 2
    assert f"{bad}: not a lab/study.py report (no config, overrides" in capsys.readouterr().err
    bad.write_text("{", encoding="utf-8")
    assert decide.main(["cls", "--base", str(base), "--variant", str(bad)]) == 2
    assert f"{bad}: not JSON" in capsys.readouterr().err


def test_the_precision_of_each_ours_cell_is_printed_where_recorded(tmp_path, capsys):
    """A report from lab.study since 2026-11-29 records what each pair's stages ran in; the
    verdict does not read it, the table shows it (``?`` for a cell whose report is older)."""

    def pair(target, seed, ran):
        ran = {"btf": ran, "selftrain": ran}
        return {"seed": seed, "pair": f"en-{target}", "dev": {}, "rounds": {}, "precision": ran}

    argv = _cls(tmp_path, (0.87,) * 3, (0.88,) * 3)
    base = Path(argv[2])
    report = json.loads(base.read_text(encoding="utf-8"))
    report["details"] = [pair("de", 1, "bf16"), pair("de", 2, "fp32"), pair("fr", 3, "bf16, fp32"),
                         pair("jp", 1, "bf16")]  # fmt: skip
    base.write_text(json.dumps(report), encoding="utf-8")
    assert decide.main(argv) == 0
    out = capsys.readouterr().out
    assert "| shipped | Ours ran in | bf16 | fp32 | ? | ? | ? | bf16, fp32 | |" in out
    assert "| variant | Ours ran in | ? | ? | ? | ? | ? | ? | |" in out
    assert out.rstrip().endswith("Verdict: adopt")
    for name in ("base.json", "warm.json"):  # no report records it: no such row
        r = json.loads((tmp_path / name).read_text(encoding="utf-8"))
        (tmp_path / name).write_text(json.dumps({**r, "details": []}), encoding="utf-8")
    assert decide.main(argv) == 0
    assert "ran in" not in capsys.readouterr().out


def test_committed_cls_records(capsys):
    """The committed CLS reports: every cell of both arms (the shipped arm's - ST seed 1 cells
    evaluated apart), and the rule's verdict of 2026-11-29: adopt."""
    early = ROOT / "lab/results/cls_cpu_full_20261127/early"
    rc = decide.main(
        [
            "cls",
            "--base",
            *sorted(glob.glob(str(ROOT / "lab/results/cls_cpu_full_20261127/reports/*.json"))),
            *sorted(glob.glob(str(ROOT / "lab/results/cls_shipped_ours_*/reports/*.json"))),
            "--variant",
            *sorted(glob.glob(str(ROOT / "lab/results/cls_warm_*_2026112*/reports/*.json"))),
            "--base-evaluated",
            f"- ST,de,1={early}/finetune_de/results.json",
            "--base-evaluated",
            f"- ST,fr,1={early}/finetune_fr/results.json",
            "--variant-label",
            "warm",
        ]
    )
    out = capsys.readouterr().out
    assert (
        "| shipped | - ST | 87.65 | 73.35 | 87.75 | 85.20 | 84.10 | 87.95 | 84.33 ± 5.61 (6) |"
        in out
    )
    assert (
        "| warm | - ST | 87.50 | 85.00 | 87.60 | 87.45 | 86.50 | 87.80 | 86.98 ± 1.07 (6) |" in out
    )
    assert "| shipped | Ours | 87.70 | 84.00 | 88.30 | 85.00 | 87.05 | 87.10 |" in out  # s2-3: bf16
    assert "| warm | Ours | 88.15 | 87.10 | 87.90 | 87.35 | 88.25 | 87.60 |" in out  # s1-2: bf16
    assert "- Ours: warm − shipped = +1.20 (margin 0.25)" in out and "missing" not in out
    assert rc == 0 and out.rstrip().endswith("Verdict: adopt")  # every cell committed


def test_the_lab_readme_decide_command_runs_and_prints_the_cells_it_quotes(capsys, monkeypatch):
    """lab/README.md's ``python -m lab.decide`` command, globbed as a shell would: its numbers
    (the warm seed-3 Ours cells, the two - ST means) are what it prints."""
    import re
    import shlex

    monkeypatch.chdir(ROOT)
    lines = (ROOT / "lab" / "README.md").read_text(encoding="utf-8").splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("    python -m lab.decide ")]
    assert starts, "lab/README.md names no `python -m lab.decide` command"
    command, j = lines[starts[0]].strip(), starts[0]
    while command.endswith("\\"):
        j += 1
        command = command[:-1] + " " + lines[j].strip()
    argv = []
    for arg in shlex.split(command)[3:]:
        matches = sorted(glob.glob(arg)) if re.search(r"[*?\[]", arg) else [arg]
        assert matches, f"{arg}: no file"
        argv += matches
    rc = decide.main(argv)
    out = capsys.readouterr().out
    assert "| warm | Ours | 88.15 | 87.10 | 87.90 | 87.35 | 88.25 | 87.60 |" in out
    assert "86.52 ± 1.66 (6)" in out and "87.73 ± 0.45 (6)" in out
    assert "84.33 ± 5.61 (6)" in out and "86.98 ± 1.07 (6)" in out
    assert rc == 0 and out.rstrip().endswith("Verdict: adopt")
