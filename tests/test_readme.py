"""The README's test command is exactly what CI runs."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    return re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), flags=re.S)


def test_ci_runs_the_readme_test_command():
    quickstart, tests = readme_commands()[:2]
    assert "xlt-engine" in quickstart and "pytest" in tests
    assert tests in (ROOT / ".ci" / "run").read_text().splitlines()


def test_the_quickstart_command_installs_what_the_reports_plots_need():
    """The first command's report has plots: it installs the ``report`` extra, which holds
    matplotlib (the report's only optional dependency)."""
    quickstart = readme_commands()[0]
    assert "-e '.[report]'" in quickstart
    setup = (ROOT / "setup.py").read_text()
    report = re.search(r'"report": \[([^\]]*)\]', setup)
    assert report and "matplotlib" in report[1]


def test_the_readme_stays_a_manual():
    """The README is the short manual (at most 350 lines); the reference is docs/manual.md and
    the study narrative lab/README.md, both linked from it."""
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 350
    for doc in ("docs/manual.md", "lab/README.md"):
        assert f"]({doc})" in text and (ROOT / doc).is_file()
