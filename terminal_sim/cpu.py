"""CPU accounting for load runs: what the engine, its database and the load generator spent per request.

Throughput on a shared machine swings with its neighbours; the CPU a process spends per request holds
still. The engine's (and PostgreSQL's backends') CPU comes from the kernel's own accounting in
/proc/<pid>/stat, summed over the process and its descendants, so an engine with worker processes counts
whole. The yardstick is the *decode unit*: the CPU of one pyiso8583 decode of the same request, measured in
a separate process while the load runs, so that it sees the same machine (caches, frequency, neighbours).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
# A burst of decodes every BURST_INTERVAL_S, each about BURST_CPU_S of CPU: enough to time well, little
# enough (under 10 % of one core) not to weigh on what it is measured beside.
BURST_INTERVAL_S = 0.5
BURST_CPU_S = 0.03


def _stat_cpu_s(pid: int) -> float:
    """utime + stime of one process, in seconds (0 when it is gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # The command name (field 2) may hold spaces and parentheses: the fields after it follow the last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S


def descendants(pid: int) -> list[int]:
    """The process and every process below it (children of each of its threads, recursively)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                children = Path(f"/proc/{current}/task/{task}/children").read_text().split()
            except OSError:
                continue
            todo.extend(int(c) for c in children)
    return out


class ProcessCpu:
    """CPU seconds of a set of processes between `start()` and `stop()`; processes that appear in between
    count from zero, those that end in between count up to their last reading."""

    def __init__(self, pids: list[int], *, tree: bool = True) -> None:
        self.roots = pids
        self.tree = tree
        self._start: dict[int, float] = {}
        self._last: dict[int, float] = {}

    def _pids(self) -> list[int]:
        if not self.tree:
            return list(self.roots)
        return [p for root in self.roots for p in descendants(root)]

    def sample(self) -> None:
        """Read every process now (call now and then so that a process which ends is not lost)."""
        for pid in self._pids():
            self._last[pid] = _stat_cpu_s(pid) or self._last.get(pid, 0.0)

    def start(self) -> None:
        self.sample()
        self._start = dict(self._last)

    def stop(self) -> float:
        """CPU seconds spent since start()."""
        self.sample()
        return sum(max(0.0, cpu - self._start.get(pid, 0.0)) for pid, cpu in self._last.items())


async def postgres_backends(url: str) -> list[int]:
    """The server processes of every connection to the database `url` names (but this one), when the
    server runs on this machine; its CPU per request is then theirs."""
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"), timeout=5)
    try:
        rows = await conn.fetch(
            "select pid from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid()"
        )
    finally:
        await conn.close()
    return [int(r["pid"]) for r in rows]


class PostgresCpu:
    """CPU of a database's backends on this machine; backends are looked up again at every sample."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.cpu = ProcessCpu([], tree=False)

    async def _refresh(self) -> None:
        self.cpu.roots = await postgres_backends(self.url)

    async def start(self) -> None:
        await self._refresh()
        self.cpu.start()

    async def sample(self) -> None:
        await self._refresh()
        self.cpu.sample()

    async def stop(self) -> float:
        await self._refresh()
        return self.cpu.stop()


# ---------------------------------------------------------------- the decode unit


def decode_unit_bursts(raw: bytes, seconds: float) -> list[float]:
    """CPU seconds of one pyiso8583 decode of `raw`, one figure per burst, bursts for `seconds`."""
    import iso8583

    from processor.iso8583 import SPEC

    iso8583.decode(raw, SPEC)  # a message we cannot decode fails here, before any timing
    per_burst = 200
    start = time.process_time()
    for _ in range(per_burst):
        iso8583.decode(raw, SPEC)
    per_burst = max(50, int(BURST_CPU_S / max(1e-7, (time.process_time() - start) / per_burst)))
    figures = []
    deadline = time.monotonic() + seconds
    while True:
        began = time.process_time()
        for _ in range(per_burst):
            iso8583.decode(raw, SPEC)
        figures.append((time.process_time() - began) / per_burst)
        if time.monotonic() + BURST_INTERVAL_S > deadline:
            return figures
        time.sleep(BURST_INTERVAL_S)


class DecodeUnit:
    """The decode unit measured in a process of its own beside the load: start it, then read its median."""

    def __init__(self, raw: bytes, seconds: float) -> None:
        self.raw = raw
        self.seconds = seconds
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "terminal_sim.cpu", self.raw.hex(), f"{self.seconds:.3f}",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )

    async def result(self, timeout_s: float = 30.0) -> dict[str, Any]:
        """{"decode_us": median, "bursts": n}; ValueError when the measuring process failed."""
        assert self._proc is not None
        try:
            out, err = await asyncio.wait_for(self._proc.communicate(), timeout_s)
        except TimeoutError:
            self._proc.kill()
            await self._proc.wait()
            raise ValueError("the decode-unit process did not finish in time") from None
        if self._proc.returncode != 0:
            lines = err.decode(errors="replace").strip().splitlines() or [f"exit status {self._proc.returncode}"]
            raise ValueError(f"the decode-unit process failed: {lines[-1]}")
        return json.loads(out)

    async def cancel(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()
            await self._proc.wait()


@dataclass(frozen=True)
class CpuFigures:
    """What one run cost in CPU, per answered request, in microseconds."""

    answers: int
    engine_s: float | None
    generator_s: float
    decode_unit_us: float | None
    postgres_s: float | None = None
    generator_system_s: float | None = None  # the part of generator_s spent in the kernel (system calls)

    def as_json(self) -> dict[str, Any]:
        def per(seconds: float | None) -> float | None:
            return round(seconds / self.answers * 1e6, 1) if seconds is not None and self.answers else None

        engine_us = per(self.engine_s)
        ratio = round(engine_us / self.decode_unit_us, 2) if engine_us is not None and self.decode_unit_us else None
        out: dict[str, Any] = {
            "engine_us_per_auth": engine_us,
            "decode_unit_us": round(self.decode_unit_us, 2) if self.decode_unit_us else None,
            "engine_decode_ratio": ratio,
            "generator_us_per_request": per(self.generator_s),
            "generator_system_us_per_request": per(self.generator_system_s),
            "load_average": [round(x, 2) for x in os.getloadavg()],
        }
        if self.postgres_s is not None:
            out["postgres_us_per_auth"] = per(self.postgres_s)
        return out


def main(argv: list[str]) -> int:
    """`python -m terminal_sim.cpu HEX SECONDS`: the decode unit of that message, as JSON."""
    raw, seconds = bytes.fromhex(argv[0]), float(argv[1])
    figures = decode_unit_bursts(raw, seconds)
    print(json.dumps({"decode_us": statistics.median(figures) * 1e6, "bursts": len(figures)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
