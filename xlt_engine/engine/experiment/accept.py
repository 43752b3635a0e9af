"""``xlt-engine accept-code``: keep results across a code change one judges harmless.

A stage folder's fingerprint holds the code its result came from (``code.stage_code``); after
an engine upgrade or an edit, ``run`` and ``ablate`` refuse the folder and name the files that
changed. ``accept_code`` rewrites the fingerprints under a folder as if the current code had made
them: each one's ``code`` becomes the current one, the upstream digests it holds follow their
stages' new digests, and the digest it had before goes to its ``accepted`` list (so a stage
elsewhere that still names the old digest keeps matching). Nothing else is touched: settings,
inputs and results stay as they are, and the next run still compares those. A folder another
process is running in is refused (``fileio.folder_lock``), and each record is written
atomically."""

from __future__ import annotations

import json
import time
from pathlib import Path

from xlt_engine.engine.experiment import registry
from xlt_engine.engine.experiment.code import describe_change, stage_code
from xlt_engine.engine.experiment.execute import load_plugins
from xlt_engine.engine.experiment.runs import (
    BODY,
    FINGERPRINT,
    FORMAT,
    StaleStageError,
    accepted,
    body_digest,
)
from xlt_engine.fileio import atomic_write_text, folder_lock
from xlt_engine.inputs import read_json


def _records(root: Path) -> dict[Path, dict]:
    found = sorted(root.rglob(FINGERPRINT)) if root.is_dir() else []
    if not found:
        raise ValueError(f"{root}: no {FINGERPRINT} under it (not a run or stage folder)")
    out = {}
    for path in found:
        try:
            record = read_json(path)
        except (OSError, ValueError) as err:
            raise StaleStageError(f"{path}: unreadable ({err}); move the folder away") from None
        if not isinstance(record, dict) or not isinstance(record.get("digest"), str):
            raise StaleStageError(f"{path}: not a fingerprint (no digest); move the folder away")
        out[path.parent] = record
    return out


def _current_code(folder: Path, record: dict) -> tuple[dict | None, str | None]:
    """The current code of the record's stage, or why it cannot be known."""
    if record.get("format", 1) != FORMAT:
        return None, f"fingerprint format {record.get('format', 1)}, this engine reads {FORMAT}"
    stage = record.get("stage")
    if not isinstance(stage, str):
        return None, "no stage named in it"
    plugins, _ = load_plugins(folder)  # the run's: its stage, or rules and formats it reads
    if stage not in registry.names():
        return None, f"stage {stage!r} is not registered and its plug-in cannot be imported"
    return stage_code(stage, plugins), None


def accept_code(root: str | Path, echo=print, dry_run: bool = False) -> list[Path]:
    """Accept the current code for every stage folder under ``root`` (module docstring); the
    folders whose fingerprint changed (with ``dry_run``: would change; nothing is written)."""
    records = _records(Path(root))
    bodies, skipped = {}, {}
    for folder, record in records.items():
        code, why = _current_code(folder, record)
        if why:
            skipped[folder] = why
            continue
        body = {k: record[k] for k in BODY if k in record and k != "code"}
        if code is not None:
            body["code"] = code
        bodies[folder] = body
    moved: dict[str, str] = {}  # a stage's recorded digest -> its digest under the current code
    for _ in range(len(bodies) + 1):  # an upstream's new digest changes its downstream's
        before = dict(moved)
        for folder, body in bodies.items():
            upstream = records[folder].get("upstream")
            if isinstance(upstream, dict):
                body["upstream"] = {k: moved.get(d, d) for k, d in upstream.items()}
            new = body_digest(body)
            if new != records[folder]["digest"]:
                moved[records[folder]["digest"]] = new
        if moved == before:
            break
    changed = []
    for folder, body in bodies.items():
        old = records[folder]
        new = body_digest(body)
        if new == old["digest"]:
            continue
        changed.append(folder)
        said = describe_change(old.get("code") or {}, body.get("code") or {})
        if echo:
            what = "; ".join(said) if said else "upstream stages accepted"
            echo(f"{folder}: {'would accept' if dry_run else 'accepted'}: {what}")
        if dry_run:
            continue
        entry = {"digest": old["digest"], "code": old.get("code"), "at": time.strftime("%FT%T%z")}
        record = {**body, "digest": new, "accepted": [*accepted(old), entry]}
        with folder_lock(folder, "accept-code"):
            atomic_write_text(folder / FINGERPRINT, json.dumps(record, indent=2) + "\n")
    for folder, why in skipped.items():
        if echo:
            echo(f"{folder}: left as it is: {why}")
    if echo and not changed:
        echo(f"{root}: every fingerprint already names the current code")
    return changed
