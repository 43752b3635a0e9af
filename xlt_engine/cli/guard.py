"""The commands' error path: what an expected failure prints (``expected_failure``: one line
naming the path and what to do), the command that repeats or continues the one running
(``again``), and the guard around a command's work (``run_guarded``)."""

from __future__ import annotations

import click

from xlt_engine.cli.options import fail
from xlt_engine.fileio import disk_full


def again(resume: bool = True) -> str:
    """The exact command that repeats the one running (its arguments as given, quoted for a
    shell), with ``--resume`` where it continues an interrupted run."""
    import shlex

    ctx = click.get_current_context()
    argv = [a for a in ctx.find_root().meta.get("xlt_engine.argv", []) if a != "--resume"]
    return shlex.join(["xlt-engine", *argv, *(["--resume"] if resume else [])])


def resumable() -> bool:
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return False
    command = ctx.meta.get("xlt_engine.command", ctx.command)
    return any(p.name == "resume" for p in command.params)


OUTSIDE_LOOP = (
    "{name} received outside a training loop (evaluation, threshold, filters, reading data): "
    "every finished step is kept and the one under way is redone; continue with the same "
    "command plus --resume"
)


def os_problem(err: OSError) -> str:
    """An operating-system error as one line: the file, what happened, and what to do with the
    options the running command has (``--resume`` only where it has one)."""
    import errno

    where = f"{err.filename}: " if err.filename else ""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        what = "no space left on device" if err.errno == errno.ENOSPC else "disk quota exceeded"
        if resumable():
            return (
                f"{where}{what}: free some (or choose another --out), then continue with "
                "--resume: every finished step and the last checkpoint are kept"
            )
        return f"{where}{what}: free some, or choose another output path, and run it again"
    remedies = {
        errno.ELOOP: "too many levels of symbolic links (a link loop?): choose another path",
        errno.EROFS: "read-only file system: choose an output path on a writable one",
        errno.EACCES: "permission denied: choose a path you may write (or read), or fix its mode",
        errno.EPERM: "operation not permitted: choose another path",
        errno.ENAMETOOLONG: "file name too long: choose a shorter path",
        errno.ENOTDIR: "a part of the path is a file, not a folder: choose another path",
        errno.EISDIR: "is a folder: name a file",
        errno.ENOENT: "no such file or folder",
        errno.EMFILE: "too many open files: raise the limit (ulimit -n) and run it again",
    }
    return f"{where}{remedies.get(err.errno, err.strerror or str(err))}"


def expected_failure(err: BaseException) -> str | None:
    """The one line a command prints for ``err`` when it is an expected failure (bad input or a
    setting: ``ValueError``; the file system: ``OSError``; a damaged file a library read), or
    None for a bug, whose traceback stays."""
    import errno
    import pickle
    import zipfile

    from safetensors import SafetensorError

    if isinstance(err, OSError):
        return os_problem(err)
    if disk_full(err):
        return os_problem(OSError(errno.ENOSPC, "No space left on device"))
    if isinstance(err, ValueError):
        return str(err)
    if isinstance(err, RecursionError):
        return f"an input nested too deeply to read ({err})"
    if isinstance(err, SafetensorError):
        return f"a damaged safetensors file: {err}"
    if isinstance(err, EOFError | pickle.UnpicklingError | zipfile.BadZipFile):
        return f"a truncated or damaged file: {err}"
    return None


def run_guarded(fn, repeat_resumes: bool = False) -> None:
    """Run ``fn``; an interrupt exits 130 with the resume hint, a config or data problem is a
    clean error; the process group is closed either way. Inside a training loop SIGINT/SIGTERM
    write a checkpoint first (the loop's own handlers); outside one they stop at once with the
    same hint, SIGTERM included (by default it ended the process with no word). A finished
    run names the command that repeats it (with ``--resume`` where ``repeat_resumes``: a
    command that refuses a folder it already filled); an interrupted one, or one the collapse
    guard stopped, the command that continues it. (A non-finite loss gets no such line: the
    same settings would diverge again.)"""
    import os
    import signal
    import sys
    import threading

    from xlt_engine.engine.train import distributed
    from xlt_engine.engine.train.loop import Interrupted, NonFiniteLoss

    def on_term(signum, _frame):
        raise Interrupted(OUTSIDE_LOOP.format(name=signal.Signals(signum).name))

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_term) if main_thread else None
    from xlt_engine.engine.method.selftrain.guard import CollapseError

    def continue_with() -> None:  # what picks the run up where it stopped
        if resumable():
            click.echo(f"to continue: {again()}", err=True)

    try:
        fn()
    except Interrupted as err:
        click.echo(str(err), err=True)
        continue_with()
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo(OUTSIDE_LOOP.format(name="SIGINT"), err=True)
        continue_with()
        sys.exit(130)
    except CollapseError as err:
        continue_with()
        fail(err)
    except NonFiniteLoss as err:
        fail(err)
    except Exception as err:  # the group's boundary prints it; a full disk can be resumed
        if disk_full(err):
            continue_with()
        raise
    else:
        if resumable() and os.environ.get("RANK", "0") == "0":
            repeat = again(resume=repeat_resumes)
            click.echo(f"to repeat it (finished stages are reused): {repeat}")
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
        distributed.shutdown()
