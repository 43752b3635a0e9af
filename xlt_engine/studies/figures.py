"""The report's plots (``studies.report``): matplotlib with the file-only backend when it is
installed (the optional ``report`` extra), each figure an ``<img>`` tag with a PNG data URI, and
the note shown in their place when it is not."""

from __future__ import annotations

import base64
import html
import io
import statistics

NO_PLOTS = (
    "Plots need matplotlib: pip install 'xlt-engine[report]' (or pip install matplotlib), then "
    "run xlt-engine report again."
)


def load_pyplot():
    """matplotlib's pyplot with the file-only backend, or None when matplotlib is absent."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _y(x) -> float:
    """A share as a plotted percentage (nan for none or a damaged value)."""
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return 100 * x
    return float("nan")


class Figures:
    """PNG images as ``<img>`` tags (data URIs), or a note when matplotlib is absent."""

    def __init__(self):
        self.plt = load_pyplot()
        self.count = 0

    def img(self, fig, alt: str) -> str:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
        self.plt.close(fig)
        self.count += 1
        data = base64.b64encode(buf.getvalue()).decode("ascii")
        return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'

    def training(self, records: list[dict], bounds: list[tuple[int, str]], title: str) -> str:
        """Loss, learning rate and tokens/s against step, one panel each; ``bounds``: (step,
        label) where a new part (a self-training step) starts."""
        if self.plt is None or not records:
            return ""
        panels = [("loss", "loss"), ("lr", "learning rate"), ("tokens_per_s", "tokens/s")]
        if any(r.get("grad_norm") is not None for r in records):
            panels.append(("grad_norm", "gradient norm (before clipping)"))
        for key in sorted({k for r in records for k in r if k.startswith("dev_")}):
            panels.append((key, key.replace("_", " ")))  # the dev score at eval_every
        fig, axes = self.plt.subplots(1, len(panels), figsize=(4.3 * len(panels), 3.2))
        x = [r["x"] for r in records]
        for ax, (key, label) in zip(axes, panels, strict=True):
            y = [float("nan") if r.get(key) is None else r[key] for r in records]
            ax.plot(x, y, marker=".", linewidth=1)
            ax.set_xlabel("step")
            ax.set_title(f"{title}: {label}", fontsize=10)
            if key == "loss" and all((r.get("loss") or 0) > 0 for r in records):
                ax.set_yscale("log")
            for at, name in bounds:
                ax.axvline(at, color="#999", linestyle=":", linewidth=1)
                if key == "loss":
                    ax.annotate(
                        name,
                        (at, 1),
                        xycoords=("data", "axes fraction"),
                        fontsize=7,
                        rotation=90,
                        va="top",
                    )
        return self.img(fig, f"training curves of {title}")

    def checks(self, checks: list[dict], title: str) -> str:
        """Self-training's check records, per step: the student's agreement with its teacher
        (all rows, the teacher's entity rows, each class) and its dev scores."""
        if self.plt is None or not checks:
            return ""
        x = range(len(checks))
        steps = [f"{c.get('of')} {c.get('round')}" for c in checks]
        devs = sorted({lang for c in checks for lang in c.get("dev", {})})
        fig, axes = self.plt.subplots(1, 2 if devs else 1, figsize=(11 if devs else 6, 3.4))
        axes = axes if devs else [axes]
        ax = axes[0]
        lines = [("all rows", "teacher_agreement", 2.0), ("entity rows", "entity_agreement", 2.0)]
        for label, key, width in lines:
            ax.plot(x, [_y(c.get(key)) for c in checks], marker="o", linewidth=width, label=label)
        for name in checks[0].get("class_agreement", {}):
            y = [_y(c.get("class_agreement", {}).get(name)) for c in checks]
            ax.plot(x, y, marker=".", linewidth=0.8, linestyle="--", label=name)
        ax.set_ylabel("% of the teacher's rows the student agrees on")
        ax.set_title(f"{title}: student vs teacher", fontsize=10)
        ax.legend(fontsize=7, ncol=2)
        if devs:
            for lang in devs:
                y = [_y(c.get("dev", {}).get(lang, {}).get("score")) for c in checks]
                axes[1].plot(x, y, marker="o", label=lang)
            axes[1].set_ylabel("dev score (%)")
            axes[1].set_title(f"{title}: each step's student on dev", fontsize=10)
            axes[1].legend(fontsize=8)
        for a in axes:
            a.set_xticks(list(x), steps, fontsize=8)
        return self.img(fig, f"checks of {title}")

    def threshold(self, th: dict, title: str, criterion: dict | None = None) -> str:
        """A round's threshold curve (accuracy, recall, coverage, alpha); with ``criterion``
        (``threshold_view.threshold_criterion``) a second panel below: what the method maximised."""
        if self.plt is None:
            return ""
        rows = 2 if criterion else 1
        fig, axes = self.plt.subplots(rows, 1, figsize=(6, 3.4 * rows), sharex=True, squeeze=False)
        ax = axes[0][0]
        t = th["thresholds"]
        alpha = th.get("alpha") if isinstance(th.get("alpha"), (int, float)) else None
        for key in ("accuracy", "recall", "coverage"):
            ax.plot(t, [float("nan") if v is None else v for v in th[key]], label=key)
        for a in [row[0] for row in axes]:
            if alpha is not None:
                a.axvline(alpha, color="crimson", linestyle="--", label=f"alpha = {alpha:g}")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=8)
        ax.set_title(title, fontsize=10)
        if criterion:
            low = axes[1][0]
            scores = [float("nan") if v is None else v for v in criterion["scores"]]
            low.plot(t, scores, marker=".", color="#555555", label=criterion["label"])
            best = criterion["top"][0]
            low.plot([best["threshold"]], [best["score"]], "o", color="black", label="largest")
            low.legend(fontsize=8)
        axes[-1][0].set_xlabel("threshold")
        return self.img(fig, f"threshold curve of {title}")

    def bars(self, result: dict, title: str) -> str:
        """Each row's mean over targets, mean +- std over seeds, as bars with error bars."""
        if self.plt is None:
            return ""
        names, means, stds = [], [], []
        for row, per_target in result["scores"].items():
            targets = sorted(per_target)
            n = min((len(per_target[t]) for t in targets), default=0)
            avg = [statistics.fmean(per_target[t][i] for t in targets) for i in range(n)]
            if not avg:
                continue
            names.append(row)
            means.append(100 * statistics.fmean(avg))
            stds.append(100 * statistics.stdev(avg) if len(avg) > 1 else 0.0)
        if not names:
            return ""
        fig, ax = self.plt.subplots(figsize=(1.2 * len(names) + 2, 3.4))
        ax.bar(range(len(names)), means, yerr=stds, capsize=4, color="#4c78a8")
        ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("score (%), mean over targets")
        ax.set_title(title, fontsize=10)
        return self.img(fig, f"bar chart of {title}")
