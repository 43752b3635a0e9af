"""The options and the error path the commands share (``xlt_engine.cli``)."""

from __future__ import annotations

from pathlib import Path

import click


def fail(err: Exception) -> None:
    raise click.ClickException(str(err))


def overwrite_option(what: str):
    return click.option(
        "--overwrite",
        is_flag=True,
        help=f"replace an existing {what} that this command did not write (never a file it reads)",
    )


def folder_option(default: str, help: str):
    """``--out`` naming a folder, with a default."""
    return click.option(
        "--out",
        type=click.Path(file_okay=False, path_type=Path),
        default=Path(default),
        show_default=True,
        help=help,
    )


def file_option(*names: str, **kwargs):
    """An option naming one file (not a folder), given as a ``Path``."""
    return click.option(*names, type=click.Path(dir_okay=False, path_type=Path), **kwargs)
