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
