"""Store throughput: concurrent PlaceHold (or Debit) submitters against one store.

    python -m demo.bench_ledger --db sqlite+aiosqlite:////tmp/bench.db --seconds 5 --concurrency 64 [--json]

Prints operations/s and the p50/p99 latency of `submit` (queue + batch + commit), then checks the invariants.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import text

from processor.auth.answers import LEDGER_ANSWERS as ANSWER_CODES
from processor import issuing, ledger
from processor.ledger import Store, ops


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def _process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process on this machine, from /proc (None when not readable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _pg_backends_cpu_s(store: Store) -> dict[int, float]:
    """CPU so far of each PostgreSQL backend connected to the store's database (empty: not PostgreSQL or not local)."""
    if store.dialect != "postgresql":
        return {}

    def pids(conn: Any) -> list[int]:
        return list(conn.execute(text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")).scalars())

    found = {pid: _process_cpu_s(pid) for pid in await store.run_query(pids)}
    return {pid: cpu for pid, cpu in found.items() if cpu is not None}


async def run(
    url: str, seconds: float, concurrency: int, accounts: int, pg_writers: int, max_batch: int, kind: str = "hold"
) -> dict[str, Any]:
    """Set up `accounts` funded accounts, then hold (or debit) from `concurrency` submitters for `seconds`."""
    store = await Store.open(url, pg_writers=pg_writers, max_batch=max_batch)
    try:
        run_id = uuid.uuid4().hex[:8]
        account_ids = []
        for i in range(accounts):
            cardholder = await issuing.cardholders.create(store, f"Bench {i}", f"bench-{run_id}-{i}")
            account_id = await ledger.accounts.open_account(store, cardholder, "checking", "EUR")
            await ledger.accounts.deposit(store, account_id, 10**12, reference="bench funding")
            account_ids.append(account_id)
        expires_at = dt.datetime.now(dt.UTC) + dt.timedelta(days=7)
        latencies_ms: list[float] = []
        declined = 0
        stop_at = time.perf_counter() + seconds
        rng = random.Random(7)

        async def submitter(n: int) -> None:
            nonlocal declined
            seq = 0
            while time.perf_counter() < stop_at:
                seq += 1
                common: dict[str, Any] = dict(
                    idem_key=f"bench-{run_id}-{n}-{seq}",
                    mti="0100" if kind == "hold" else "0200",
                    terminal_id="BENCH001",
                    stan=f"{seq % 1000000:06d}",
                    rrn="",
                    card_id=None,
                    account_id=rng.choice(account_ids),
                    amount_minor=rng.randint(100, 10000),
                    currency="EUR",
                    auth_code="BENCH1",
                    answer_codes=ANSWER_CODES,
                )
                op = ops.PlaceHold(**common, expires_at=expires_at) if kind == "hold" else ops.Debit(**common)
                started = time.perf_counter()
                outcome = await store.submit(op)
                latencies_ms.append((time.perf_counter() - started) * 1000)
                if not outcome.approved:
                    declined += 1

        pg_before = await _pg_backends_cpu_s(store)
        started, cpu_started = time.perf_counter(), time.process_time()
        batches_before, batched_before = store.batches, store.batched_ops
        await asyncio.gather(*(submitter(n) for n in range(concurrency)))
        elapsed, cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
        batches, batched = store.batches - batches_before, store.batched_ops - batched_before
        pg_after = await _pg_backends_cpu_s(store)
        # Backends that served the run: their CPU since the start (a new one counts from zero).
        pg_cpu_s = sum(cpu - pg_before.get(pid, 0.0) for pid, cpu in pg_after.items()) if pg_after else None
        latencies_ms.sort()
        failures = await ledger.invariants.check(store)
        return {
            "db": store.dialect,
            "op": kind,
            "concurrency": concurrency,
            "seconds": round(elapsed, 3),
            "ops": len(latencies_ms),
            "declined": declined,
            "ops_per_s": round(len(latencies_ms) / elapsed, 1),
            "latency_ms_p50": round(_percentile(latencies_ms, 0.50), 2),
            "latency_ms_p99": round(_percentile(latencies_ms, 0.99), 2),
            "latency_ms_max": round(latencies_ms[-1], 2) if latencies_ms else 0.0,
            "batches": batches,
            "mean_batch": round(batched / max(1, batches), 1),
            # This process's CPU (submitters, event loop, writer threads) per operation, and PostgreSQL's.
            "cpu_us_per_op": round(cpu_s / max(1, len(latencies_ms)) * 1e6, 1),
            "pg_cpu_us_per_op": round(pg_cpu_s / max(1, len(latencies_ms)) * 1e6, 1) if pg_cpu_s is not None else None,
            "invariant_failures": len(failures),
        }
    finally:
        await store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo.bench_ledger", description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="database URL (default: a new SQLite file in a temporary folder)")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--accounts", type=int, default=200)
    parser.add_argument("--pg-writers", type=int, default=2, help="writer connections on PostgreSQL")
    parser.add_argument("--max-batch", type=int, default=256)
    parser.add_argument("--op", choices=["hold", "debit"], default="hold", help="PlaceHold (0100) or Debit (0200)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ledger-bench-") as tmp:
        url = args.db or f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
        try:
            import uvloop

            runner = uvloop.run
        except ImportError:  # pragma: no cover
            runner = asyncio.run
        result = runner(run(url, args.seconds, args.concurrency, args.accounts, args.pg_writers, args.max_batch, args.op))
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>20}: {value}")
    return 1 if result["invariant_failures"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
