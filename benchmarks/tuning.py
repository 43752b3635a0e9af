"""What the kernel-tuning scripts (``tune_mlm_rows``, ``tune_soft_rows``) share: the timer, and a
sweep over launch configurations that skips the impossible ones and lists the fastest, the
configuration the launcher uses today marked."""

from __future__ import annotations

from collections.abc import Callable, Iterable


def bench(fn) -> float:
    """The median milliseconds of ``fn()`` (``triton.testing.do_bench``)."""
    import triton.testing

    return triton.testing.do_bench(fn, return_mode="median")


def time_configs(
    configs: Iterable[dict], run: Callable[[dict], Callable[[], None]], name=str, timer=bench
) -> list[tuple[float, dict]]:
    """(ms, config) for each configuration ``run(config)`` can launch, fastest first. A
    configuration the compiler refuses (registers, shared memory) is named and left out."""
    rows = []
    for cfg in configs:
        try:
            rows.append((timer(run(cfg)), cfg))
        except Exception as err:
            print(f"  {name(cfg)}: {type(err).__name__}")
    return sorted(rows, key=lambda r: r[0])


def print_fastest(
    rows: list[tuple[float, dict]], current: dict, rate: Callable[[float], str], name=str, top=10
) -> float | None:
    """The ``top`` fastest of ``time_configs``' rows, each with ``rate(ms)`` (a bandwidth or
    share of one), the current configuration marked and its time last. Returns that time (None
    when it was not among the rows)."""
    for ms, cfg in rows[:top]:
        mark = "  <- current" if cfg == current else ""
        print(f"  {name(cfg):<48}{ms:8.3f} ms {rate(ms)}{mark}")
    now = next((ms for ms, cfg in rows if cfg == current), None)
    if now is not None:
        print(f"  current ({name(current)}): {now:.3f} ms")
    return now
