"""`scripts/bench`'s figures: one line per run, and medians of alternating runs of two engines side by side.

    python -m terminal_sim.bench_table --line LABEL RESULT.json
    python -m terminal_sim.bench_table --compare FOLDER     (STORE-baseline-N.json against STORE-this-N.json)
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

METRICS = (
    ("tps", "tps"),
    ("engine_us_per_auth", "engine µs/auth"),
    ("decode_unit_us", "decode µs"),
    ("engine_decode_ratio", "ratio"),
    ("postgres_us_per_auth", "PostgreSQL µs/auth"),
    ("generator_us_per_request", "generator µs/req"),
    ("p99_ms", "p99 ms"),
)


def figures(summary: dict[str, Any]) -> dict[str, float | None]:
    """The compared figures of one `terminal-sim load --json` summary."""
    cpu = summary.get("cpu") or {}
    out = {name: cpu.get(name) for name, _ in METRICS}
    out["tps"] = summary.get("tps")
    out["p99_ms"] = summary.get("p99_ms")
    return out


def line(label: str, summary: dict[str, Any]) -> str:
    f = figures(summary)
    shown = [f"{title} {f[name]}" for name, title in METRICS if f.get(name) is not None]
    status = "ok" if summary.get("ok") else "FAILED: " + "; ".join(summary.get("failures", []))
    load = (summary.get("cpu") or {}).get("load_average")
    return f"   {label}: " + ", ".join(shown) + (f", load {load}" if load else "") + f" ({status})"


def compare(folder: Path) -> dict[str, Any]:
    """{store: {"baseline": medians, "this": medians, "runs": per side}} from the folder's alternating runs that
    passed (failed ones are counted, not used)."""
    runs: dict[str, dict[str, list[dict[str, float | None]]]] = defaultdict(lambda: defaultdict(list))
    failed: Counter[str] = Counter()
    for path in sorted(folder.glob("*.json")):
        match = re.fullmatch(r"(\w+)-(baseline|this)-(\d+)\.json", path.name)
        if not match:
            continue
        summary = json.loads(path.read_text())
        if not summary.get("ok"):
            failed[match[1]] += 1  # a run that timed out or erred measures the failure, not the engine
            continue
        runs[match[1]][match[2]].append(figures(summary))
    out: dict[str, Any] = {}
    for store, sides in runs.items():
        out[store] = {"runs": {side: len(v) for side, v in sides.items()}, "failed_runs_left_out": failed[store]}
        for side, values in sides.items():
            out[store][side] = {
                name: round(statistics.median(v), 2) if (v := [x[name] for x in values if x.get(name) is not None]) else None
                for name, _ in METRICS
            }
    return out


def print_comparison(table: dict[str, Any]) -> None:
    print(f"{'store':<11} {'figure (median)':<20} {'baseline':>10} {'this':>10} {'change':>8}")
    for store, sides in table.items():
        for name, title in METRICS:
            before, after = sides.get("baseline", {}).get(name), sides.get("this", {}).get(name)
            if before is None and after is None:
                continue
            change = f"{(after - before) / before * 100:+.0f} %" if before and after is not None else ""
            print(f"{store:<11} {title:<20} {before if before is not None else '-':>10} {after if after is not None else '-':>10} {change:>8}")
    print(json.dumps(table))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m terminal_sim.bench_table")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--line", nargs=2, metavar=("LABEL", "RESULT"))
    group.add_argument("--compare", metavar="FOLDER")
    args = parser.parse_args(argv)
    if args.line:
        label, path = args.line
        try:
            summary = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            print(f"   {label}: no result ({exc})")
            return 1
        print(line(label, summary))
        return 0
    print_comparison(compare(Path(args.compare)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
