"""Store throughput: concurrent PlaceHold (or Debit) submitters against one store.

    python -m demo.bench_ledger --db sqlite+aiosqlite:////tmp/bench.db --seconds 5 --concurrency 64 [--json]

Prints operations/s and the p50/p99 latency of `submit` (queue + batch + commit), then checks the invariants.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import random
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from processor.auth.answers import LEDGER_ANSWERS as ANSWER_CODES
from processor import issuing, ledger
from processor.ledger import Store, ops


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


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

        started = time.perf_counter()
        await asyncio.gather(*(submitter(n) for n in range(concurrency)))
        elapsed = time.perf_counter() - started
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
            "batches": store.batches,
            "mean_batch": round(store.batched_ops / max(1, store.batches), 1),
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
    parser.add_argument("--pg-writers", type=int, default=4, help="writer connections on PostgreSQL")
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
