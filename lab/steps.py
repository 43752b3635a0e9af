"""Each self-training step's student, from the run folders as they stand (finished or not):
the teacher's dev scores (``evaluate-finetune-dev``), then per self-training folder and step
the check record (agreement with the round's teacher on all target rows and on its entity
rows, each dev score) and whether the round's pseudo labels collapsed. What a study in progress
can commit, with the command that resumes it; ``lab.study`` writes the finished table.

    python -m lab.steps --name init_stage1_ned_seed1_partial \\
        runs/study-init-ned/seed-1/eng-ned --note "..."
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from datetime import date
from pathlib import Path

from lab.study import pair_details, pct

ROOT = Path(__file__).resolve().parents[1]


def teacher_dev(run: Path) -> dict[str, float]:
    """The fine-tuned teacher's score per language on the dev files, where it was evaluated."""
    path = run / "evaluate-finetune-dev" / "results.json"
    if not path.is_file():
        return {}
    res = json.loads(path.read_text(encoding="utf-8"))
    return {lang: s["score"] for lang, s in res["languages"].items()}


def collapsed(run: Path) -> dict[str, bool]:
    """``<selftrain folder>/round-<r>``: whether the round's pseudo labels collapsed."""
    out = {}
    for f in sorted(run.glob("selftrain*/round-*/filter.json")):
        out[f"{f.parent.parent.name}/{f.parent.name}"] = bool(
            json.loads(f.read_text(encoding="utf-8")).get("collapse")
        )
    return out


def render(runs: list[Path], note: str, command: str) -> str:
    lines = [f"# Each self-training step's student, {date.today().isoformat()}", "",
             f"Command: `{command}`", ""]  # fmt: skip
    if note:
        lines += [note, ""]
    for run in runs:
        checks = pair_details(run)["checks"]
        teacher = teacher_dev(run)
        langs = sorted(
            {lang for c in checks.values() for lang in c.get("dev") or {}} | set(teacher)
        )
        fell = collapsed(run)
        lines += [f"## {run}", "",
                  "| step | all rows | teacher's entity rows | "
                  + " | ".join(f"dev {lang}" for lang in langs) + " | round collapsed |",
                  "|---|---|---|" + "---|" * (len(langs) + 1)]  # fmt: skip
        if teacher:
            cells = [pct(teacher.get(lang)) for lang in langs]
            lines.append("| + BTF (the teacher) | – | – | " + " | ".join(cells) + " | – |")
        for step, c in checks.items():
            dev = c.get("dev") or {}
            cells = [pct(dev[lang]["score"]) if lang in dev else "–" for lang in langs]
            rnd = step.rsplit("/", 1)[0]
            flag = {True: "yes", False: "no"}.get(fell.get(rnd), "–")
            lines.append(
                f"| {step} | {pct(c.get('teacher_agreement'))} | "
                f"{pct(c.get('entity_agreement'))} | " + " | ".join(cells) + f" | {flag} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="pair run folders (<out>/seed-<s>/<pair>)")
    p.add_argument("--name", required=True)
    p.add_argument("--note", default="")
    p.add_argument("--results", type=Path, default=ROOT / "lab" / "results")
    args = p.parse_args(argv)
    command = shlex.join(["python", "-m", "lab.steps", *argv])
    text = render(args.runs, args.note, command)
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"steps_{args.name}_{date.today().strftime('%Y%m%d')}.md"
    out.write_text(text, encoding="utf-8")
    print(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
