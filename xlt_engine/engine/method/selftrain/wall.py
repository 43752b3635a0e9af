"""Where a self-training stage's time went, from its records: training steps, forward-only
passes, the threshold's and the filter's arithmetic and what no record covers; the report reads
the same shares."""

from __future__ import annotations

WALL_PARTS = {  # a record's step -> the part of the stage's wall it is
    "soft": "training steps",
    "hard": "training steps",
    "teacher": "forward-only passes",
    "check": "forward-only passes",
    "filter": "threshold and filter arithmetic",
    "threshold": "threshold and filter arithmetic",
}
SPLIT = ("threshold", "filter")  # steps whose model forwards (if any) are forward-only passes


def wall_breakdown(records: list[dict], total: float | None = None) -> dict:
    """Where a self-training run's time went, from its records: seconds per part
    (``WALL_PARTS``: the soft and hard steps' training, the passes that only run the model
    forward, i.e. teacher probabilities, checks and the threshold step's pass over the source
    rows, and the arithmetic of the threshold and the filter: the rest of their steps; the
    filter reads the soft check's pass and runs none of its own unless that file lacks it),
    of which ``forward`` the passes' model forwards alone, ``shared`` what steps taken from a
    twin folder took there (in their parts too), and with ``total`` (this process's wall)
    ``other``: what no record covers (loading, writing, waiting)."""
    parts = dict.fromkeys(WALL_PARTS.values(), 0.0)
    forward = shared = 0.0
    for r in records:
        part = WALL_PARTS.get(r.get("step"))
        secs = r.get("seconds") or 0.0
        if part is None:
            continue
        ahead = r.get("forward_seconds") or 0.0
        split = r.get("step") in SPLIT  # its model forwards are a forward-only pass
        if split:
            parts["forward-only passes"] += ahead
            secs -= ahead
        parts[part] += secs
        forward += ahead
        if "shared_from" in r:
            shared += secs + (ahead if split else 0.0)
    out = {k: round(v, 3) for k, v in parts.items()}
    out |= {"forward": round(forward, 3), "shared": round(shared, 3)}
    if total is not None:
        out["other"] = round(max(0.0, total - (sum(parts.values()) - shared)), 3)
    return out


def wall_shares(wall: dict, names=None) -> list[tuple[str, float, float]]:
    """``wall_breakdown``'s parts (and ``other``), or another stage's parts ``names``, as
    (part, seconds, share of their sum); a part that is missing or not a number (a damaged
    summary) is left out."""
    names = [*dict.fromkeys(WALL_PARTS.values()), "other"] if names is None else names
    parts = [(k, wall[k]) for k in names if type(wall.get(k)) in (int, float)]
    whole = sum(v for _, v in parts) or 1.0
    return [(k, v, v / whole) for k, v in parts]


def describe_wall(wall: dict) -> str:
    """``training steps 177.0 s (86%), forward-only passes 20.1 s (10%), ...``"""
    return ", ".join(f"{k} {v:.1f} s ({100 * share:.0f}%)" for k, v, share in wall_shares(wall))
