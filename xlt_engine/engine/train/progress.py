"""Where a training run reports: ``metrics.jsonl`` (one JSON object per log interval or
evaluation, each with ``run``, an id per call of ``train``, and ``time``, Unix seconds; a fresh
run starts the file over and a resumed one drops the records after its checkpoint), a click
progress bar on stderr or log lines, and optionally TensorBoard scalars. One component: the loop
hands it each record."""

from __future__ import annotations

import json
import math
import sys
import uuid
from pathlib import Path

import click

from xlt_engine.fileio import append_jsonl, atomic_write_text
from xlt_engine.inputs import read_jsonl


class Board:
    """TensorBoard scalars from the metric records (loss, lr, tokens/s, grad norm, dev scores),
    one event file folder per training stage, so runs compare in TensorBoard."""

    SKIP = ("run", "time", "step", "epoch")

    def __init__(self, folder: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder))

    def write(self, record: dict) -> None:
        for key, value in record.items():
            if key not in self.SKIP and isinstance(value, int | float) and math.isfinite(value):
                self.writer.add_scalar(key, value, record["step"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _restart_metrics(path: Path, step: int) -> None:
    """Keep the records of steps up to ``step`` (the checkpoint a run resumes from; 0: a fresh
    run), so the file never holds a killed run's steps twice or an older run's at all."""
    if not path.exists():
        return
    keep = [r for r in read_jsonl(path) if r.get("step", 0) <= step] if step else []
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in keep))


def format_loss(value: float) -> str:
    """Four significant digits: 0.6931, 12.35, 1.9e-07 (a fixed 4 decimals printed 0.0000)."""
    return f"{value:.4g}"


class RunLog:
    """The metric file, the progress bar (or log lines to ``echo``) and TensorBoard of one run;
    only the main rank writes. ``start(step, resume)`` keeps the records up to the step a run
    resumes from; ``write(record)`` adds one; ``close()`` ends the bar and the event file."""

    def __init__(self, run_dir: Path, max_steps: int, *, main: bool, echo, progress, board: bool):
        self.path, self.max_steps, self.main, self.echo = (
            run_dir / "metrics.jsonl",
            max_steps,
            main,
            echo,
        )
        self.run_id = uuid.uuid4().hex[:12]  # tells a resumed run's records from the killed one's
        self.bar = self.board = None
        if progress is None:
            progress = sys.stderr.isatty()
        if progress and main:
            label = run_dir.name  # the stage; a self-training step: "selftrain round-1 soft"
            if run_dir.parent.name.startswith("round-"):
                label = f"{run_dir.parent.parent.name} {run_dir.parent.name} {run_dir.name}"
            self.bar = click.progressbar(
                length=max_steps,
                label=label,
                file=sys.stderr,
                show_eta=True,
                item_show_func=lambda s: s,
            )
        if board and main:
            self.board = Board(run_dir / "tensorboard")

    def start(self, step: int, resume: bool) -> None:
        if not self.main:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _restart_metrics(self.path, step if resume else 0)
        if self.bar is not None:
            self.bar.__enter__()
            self.bar.update(step)

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def write(self, record: dict) -> None:
        if not self.main:
            return
        append_jsonl(self.path, record)
        if self.board is not None:
            self.board.write(record)
        line = (
            f"loss {format_loss(record['loss'])} lr {record['lr']:.2e} "
            f"{record['tokens_per_s']:,.0f} tok/s"
        )
        if self.bar is not None:
            self.bar.current_item = line
            self.bar.render_progress()
        elif self.echo:
            self.echo(f"step {record['step']}/{self.max_steps} {line}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
        if self.board is not None:
            self.board.close()
