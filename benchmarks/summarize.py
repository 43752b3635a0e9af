"""The compact table ``gpu_check.sh`` prints last: each step's exit status and time, the kernel
rows (ours against eager torch, measured over roofline), the encoder and BTF-step tokens/s against
transformers, and the self-training round by part. Reads only the files in the folder given.

    python3 -m benchmarks.summarize OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _records(folder: Path, name: str) -> list[dict]:
    """Every record in ``<name>_*.json``: a JSON list (kernels) or one JSON object per line."""
    out = []
    for path in sorted(folder.glob(f"{name}_*.json")):
        text = path.read_text()
        try:
            data = json.loads(text)
            out += data if isinstance(data, list) else [data]
        except json.JSONDecodeError:
            out += [json.loads(line) for line in text.splitlines() if line.strip()]
    return out


def _kernel_lines(run: dict) -> list[str]:
    rows = run["rows"]
    torch_ms = {
        (r["op"], r["shape"], r["mode"]): r["ms"]
        for r in rows
        if r["provider"] == "torch" and "ms" in r
    }
    lines = [
        f"kernels  {run['device']} | {run['dtype']} | torch {run['torch']} | triton {run['triton']}",
        f"  {'op':<10}{'shape':<26}{'mode':<13}{'provider':<9}{'ms':>9}{'vs torch':>9}"
        f"{'of roof':>9}{'peak MiB':>10}",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"  {r['op']:<10}{r['shape']:<26}{r['mode']:<13}{r['provider']:<9} error")
            continue
        base = torch_ms.get((r["op"], r["shape"], r["mode"]))
        speed = f"{base / r['ms']:.2f}x" if base and r["provider"] != "torch" else ""
        roof = f"{r['roofline_ms'] / r['ms']:.0%}" if r.get("roofline_ms") else ""
        p = r.get("peak_mib")  # null (older records: NaN) where not measured (CPU)
        peak = "n/a" if p is None or p != p else f"{p:.0f}"
        lines.append(
            f"  {r['op']:<10}{r['shape']:<26}{r['mode']:<13}{r['provider']:<9}"
            f"{r['ms']:>9.3f}{speed:>9}{roof:>9}{peak:>10}"
        )
    return lines


def summary(folder: Path) -> str:
    lines = [f"gpu check: {folder}"]
    steps = folder / "steps.txt"
    if steps.exists():
        lines += ["steps (name, exit status, seconds):"]
        lines += ["  " + s for s in steps.read_text().splitlines()]
    for run in _records(folder, "kernels")[-1:]:
        lines += _kernel_lines(run)
    for what in ("encoder", "btf_step"):
        for rec in _records(folder, what):
            label = rec.get("args", {}).get("precision") or rec.get("precision", "")
            lines.append(f"{what}  {rec['device']} | {label}")
            for r in rec["rows"]:
                lines.append(
                    f"  {r['impl']:<29}{r['ms_per_step']:>10.2f} ms{r['tokens_per_s']:>12,} tok/s"
                )
            if "speedup_tokens_per_s" in rec:
                lines.append(f"  speed-up over transformers: {rec['speedup_tokens_per_s']:.2f}x")
    for rec in _records(folder, "round"):
        lines.append(f"round  {rec['device']} | {rec['precision']}")
        for r in rec["rows"]:
            lines.append(f"  {r['part']:<11}{r['seconds']:>9.2f} s{r['share']:>8.1%}")
        lines.append(f"  {'total':<11}{rec['total_seconds']:>9.2f} s")
    return "\n".join(lines)


def main(argv=None) -> str:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not Path(args[0]).is_dir():
        sys.exit("usage: python3 -m benchmarks.summarize OUT_DIR (an existing folder)")
    text = summary(Path(args[0]))
    print(text)
    return text


if __name__ == "__main__":
    main()
