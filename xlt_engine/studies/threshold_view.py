"""What the automatic threshold read on a self-training round's curve, for the report
(``report.rounds_section``): the criterion per grid point, its largest points, and a sentence
that sets it beside the paper's description (issue 64: why curvature picks what it picks)."""

from __future__ import annotations

import math

from xlt_engine.engine.method.threshold import choose

CRITERIA = {  # the automatic threshold's methods (method/threshold.py), as the report names them
    "curvature": "curvature |A''| / (1 + A'^2)^1.5",
    "max_second_difference": "second derivative A''",
}


def threshold_criterion(th: dict) -> dict | None:
    """What the automatic threshold read on a round's curve: the criterion per grid point
    (recorded; for a fixed alpha, the default method's, computed here from the recorded
    accuracy), the points where it is largest, and a sentence that sets it beside the paper's
    description. None when the record holds no usable curve."""
    t, acc = th.get("thresholds"), th.get("accuracy")
    if not (isinstance(t, list) and isinstance(acc, list) and len(t) == len(acc) >= 3):
        return None
    if not all(_real(x) for x in t) or not all(x is None or _real(x) for x in acc):
        return None
    method, used = th.get("method"), True
    scores = th.get("score")
    if method not in CRITERIA:  # "fixed": what the automatic threshold would have read
        method, used = "curvature", False
        scores = choose(t, [math.nan if a is None else a for a in acc], method)[1]
    if not (isinstance(scores, list) and len(scores) == len(t)):
        return None
    points = [(s, x) for x, s in zip(t, scores, strict=True) if _real(s) and math.isfinite(s)]
    if not points:
        return None
    top = sorted(points, key=lambda p: (-p[0], p[1]))[:3]
    largest = ", ".join(f"{x:g} ({s:.3g})" for s, x in top)
    paper = (
        "The paper (section 3.2): alpha is the grid point where the soft student's accuracy on "
        "the source rows above it changes fastest, the accuracy curve's greatest curvature."
    )
    if used:
        here = f"Here: {CRITERIA[method]} by finite differences over {len(t)} grid points"
    else:
        here = (
            f"Here alpha is fixed at {_text(th.get('alpha'))} (- AT); the automatic threshold "
            f"({CRITERIA[method]}) would choose {top[0][1]:g} on this curve"
        )
    return {
        "label": CRITERIA[method] + ("" if used else ", not used"),
        "scores": [s if _real(s) and math.isfinite(s) else None for s in scores],
        "top": [{"threshold": x, "score": s} for s, x in top],
        "text": f"{paper} {here}; largest at {largest}.",
    }


def _real(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _text(x) -> str:
    """A number as ``g`` formats it; anything else (a damaged record) as its text."""
    return format(x, "g") if _real(x) else str(x)
