"""What `terminal-sim load` measured, for people and for machines: HdrHistogram latencies, the live line, the summary.

Latencies go into an HdrHistogram (microseconds, 3 significant figures, up to two minutes), so a long run
keeps a fixed amount of memory and its percentiles up to p99.99 are exact to 0.1 %. The summary prints the
percentile distribution as wrk does, a histogram on a 1-2-5 scale, and the encoded histogram for HdrHistogram
tools (`latency_hdr` in `--json`).
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TextIO

from hdrh.histogram import HdrHistogram
from rich.console import Console
from rich.live import Live
from rich.text import Text

LATENCY_LOWEST_US = 1
LATENCY_HIGHEST_US = 120_000_000
LATENCY_SIGNIFICANT_FIGURES = 3
PERCENTILES = (50.0, 75.0, 90.0, 95.0, 99.0, 99.9, 99.99, 100.0)
# Upper bounds of the histogram's buckets, in milliseconds: a 1-2-5 scale from 0.1 ms to 10 s, then the rest.
HISTOGRAM_BOUNDS_MS = tuple(m * 10.0**e for e in range(-1, 4) for m in (1, 2, 5)) + (10_000.0, math.inf)
HISTOGRAM_BAR_WIDTH = 40


class Latencies:
    """An HdrHistogram of latencies recorded in milliseconds, kept in microseconds."""

    def __init__(self) -> None:
        self._histogram = HdrHistogram(LATENCY_LOWEST_US, LATENCY_HIGHEST_US, LATENCY_SIGNIFICANT_FIGURES)

    def record(self, latency_ms: float) -> None:
        self._histogram.record_value(max(LATENCY_LOWEST_US, min(LATENCY_HIGHEST_US, round(latency_ms * 1000))))

    def record_us(self, latencies_us: Iterable[int]) -> None:
        """Record many latencies given in microseconds at once (each distinct value once, with its count)."""
        record = self._histogram.record_value
        for value_us, count in Counter(latencies_us).items():
            record(max(LATENCY_LOWEST_US, min(LATENCY_HIGHEST_US, value_us)), count)

    def add(self, other: "Latencies") -> None:
        """Count `other`'s latencies in this histogram too."""
        self._histogram.add(other._histogram)

    @property
    def count(self) -> int:
        return self._histogram.get_total_count()

    def percentile_ms(self, q: float) -> float:
        """The latency at percentile `q` (0-100), 0 when nothing was recorded."""
        if not self.count:
            return 0.0
        if q >= 100:
            return self.max_ms
        return self._histogram.get_value_at_percentile(q) / 1000

    @property
    def max_ms(self) -> float:
        return self._histogram.get_max_value() / 1000 if self.count else 0.0

    @property
    def mean_ms(self) -> float:
        return self._histogram.get_mean_value() / 1000 if self.count else 0.0

    def buckets(self) -> list[tuple[float, int]]:
        """(upper bound in ms, count) on HISTOGRAM_BOUNDS_MS, without the empty buckets at either end."""
        counts = [0] * len(HISTOGRAM_BOUNDS_MS)
        for item in self._histogram.get_recorded_iterator():
            # A bucket of the histogram holds values within 0.1 % of each other: file it by its lowest value,
            # so that 5 ms recorded lands in "<= 5 ms".
            value_ms = self._histogram.get_lowest_equivalent_value(item.value_iterated_to) / 1000
            index = next(i for i, bound in enumerate(HISTOGRAM_BOUNDS_MS) if value_ms <= bound)
            counts[index] += item.count_at_value_iterated_to
        used = [i for i, n in enumerate(counts) if n]
        if not used:
            return []
        return [(HISTOGRAM_BOUNDS_MS[i], counts[i]) for i in range(used[0], used[-1] + 1)]

    def encoded(self) -> str:
        """The histogram in HdrHistogram's compressed base64 form (`HdrHistogram.decode` reads it back)."""
        return self._histogram.encode().decode("ascii")


def nearest_rank(sorted_ms: list[float], q: float) -> float:
    """The nearest-rank percentile `q` of an already sorted list (0 when empty)."""
    if not sorted_ms:
        return 0.0
    return sorted_ms[max(0, math.ceil(q / 100 * len(sorted_ms)) - 1)]


def distribution_json(latencies: Latencies) -> dict[str, float]:
    """{"50": ms, ..., "99.9": ms, "100": ms}."""
    return {f"{q:g}": round(latencies.percentile_ms(q), 3) for q in PERCENTILES}


def histogram_json(latencies: Latencies) -> list[dict[str, Any]]:
    """[{"le_ms": upper bound or null for the open bucket, "count": answers in the bucket}, ...]."""
    return [{"le_ms": None if math.isinf(bound) else bound, "count": n} for bound, n in latencies.buckets()]


# ---------------------------------------------------------------- the live line


@dataclass(frozen=True, slots=True)
class LoadProgress:
    """One second of a run, as the live line shows it."""

    elapsed_s: float
    answered: int
    answered_last_s: int
    approved: int
    declined: Counter[str]
    unexpected: int
    timeouts: int
    errors: int
    p99_last_s_ms: float

    def text(self) -> Text:
        """The line, coloured: declines in yellow, anything that fails the run in red."""
        line = Text()
        line.append(f"[{self.elapsed_s:5.1f}s] {self.answered:8,d} answered {self.answered_last_s:7,d}/s  ")
        line.append(f"approved {self.approved:,d}  ", style="green" if self.approved else "")
        declined = sum(self.declined.values())
        detail = ", ".join(f"{code}={n:,d}" for code, n in self.declined.most_common(3))
        line.append(f"declined {declined:,d}" + (f" ({detail})" if detail else "") + "  ", style="yellow" if declined else "")
        for label, count in (("unexpected", self.unexpected), ("timeouts", self.timeouts), ("errors", self.errors)):
            line.append(f"{label} {count:,d}  ", style="bold red" if count else "")
        line.append(f"p99 {self.p99_last_s_ms:.2f} ms")
        return line


class ProgressDisplay:
    """The live line on standard error: redrawn in place on a terminal, one line per second in a log."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True, highlight=False)
        self._live: Live | None = None

    def __enter__(self) -> "ProgressDisplay":
        if self.console.is_terminal:
            self._live = Live(console=self.console, auto_refresh=False, transient=False)
            self._live.start()
        return self

    def __call__(self, progress: LoadProgress) -> None:
        if self._live is not None:
            self._live.update(progress.text(), refresh=True)
        else:
            self.console.print(progress.text(), soft_wrap=True)

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.stop()


# ---------------------------------------------------------------- the summary for people


def print_summary(summary: dict[str, Any], out: TextIO | None = None) -> None:
    """The summary as aligned text: totals, answers, latency distribution and histogram, kinds, batches."""
    out = out or sys.stdout
    print(
        f"{summary['count']:,d} answers in {summary['seconds']} s over {summary['connections']} connections: "
        f"{summary['tps']:,} tps; timeouts {summary['timeouts']}, errors {summary['errors']}"
        + (f", reversals {summary['reversals']}" if summary.get("reversals") else ""),
        file=out,
    )
    declined = ", ".join(f"{c}={n}" for c, n in summary["declined_codes"].items()) or "none"
    print(f"approved {summary['approved']:,d}, declined {summary['declined']:,d} ({declined}), "
          f"unexpected {summary['unexpected']:,d}", file=out)
    print("response codes: " + ", ".join(f"{c}={n}" for c, n in summary["codes"].items()), file=out)
    if summary.get("batches"):
        b = summary["batches"]
        print(
            f"batches closed {b['closed']}, in balance {b['in_balance']}: debits {b['debits_count']} "
            f"({b['debits_minor']}), credits {b['credits_count']} ({b['credits_minor']}); slowest close {b['close_max_ms']} ms",
            file=out,
        )
    cpu = summary.get("cpu")
    if cpu:
        parts = []
        if cpu.get("engine_us_per_auth") is not None:
            parts.append(f"engine {cpu['engine_us_per_auth']:,.0f} µs per answer = {cpu['engine_decode_ratio']} decode units "
                         f"({cpu['decode_unit_us']:.1f} µs each)")
        if cpu.get("postgres_us_per_auth") is not None:
            parts.append(f"PostgreSQL {cpu['postgres_us_per_auth']:,.0f} µs")
        parts.append(f"load generator {cpu['generator_us_per_request']:,.0f} µs per request")
        load = ", ".join(f"{x:.2f}" for x in cpu["load_average"])
        print(f"CPU: {'; '.join(parts)} (load average {load})", file=out)
    print("latency distribution:", file=out)
    for q, ms in summary["latency_distribution_ms"].items():
        print(f"  {q + '%':>7} {ms:10.2f} ms", file=out)
    buckets = summary["latency_histogram_ms"]
    if buckets:
        print("latency histogram:", file=out)
        peak = max(b["count"] for b in buckets)
        block = _bar_character(out)
        for bucket in buckets:
            bound = "<= " + _ms(bucket["le_ms"]) if bucket["le_ms"] is not None else "> " + _ms(HISTOGRAM_BOUNDS_MS[-2])
            bar = block * math.ceil(HISTOGRAM_BAR_WIDTH * bucket["count"] / peak) if bucket["count"] else ""
            print(f"  {bound:>10} {bucket['count']:9,d} {bar}", file=out)
    print(f"  {'kind':<11} {'answers':>8} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9}  codes", file=out)
    for kind, info in summary["by_kind"].items():
        codes = ", ".join(f"{c}={n}" for c, n in info["codes"].items())
        flag = f"  unexpected {info['unexpected']} (expected {'/'.join(info['expected'])})" if info["unexpected"] else ""
        print(
            f"  {kind:<11} {info['count']:8,d} {info['p50_ms']:8.2f} {info['p99_ms']:8.2f} {info['p99_9_ms']:9.2f}  {codes}{flag}",
            file=out,
        )
    for failure in summary["failures"]:
        print(f"FAILED: {failure}", file=out)


def _ms(value: float) -> str:
    return f"{value:g} ms"


def _bar_character(out: TextIO) -> str:
    """A full block where the output can show one, else '#'."""
    try:
        "█".encode(getattr(out, "encoding", None) or "ascii")
    except (UnicodeEncodeError, LookupError):
        return "#"
    return "█"

