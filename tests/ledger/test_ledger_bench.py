"""The store benchmark runs and reports what it measured."""

from __future__ import annotations

from demo.bench_ledger import run


async def test_bench_reports_throughput_and_a_healthy_ledger(db_url: str) -> None:
    result = await run(db_url, seconds=0.3, concurrency=8, accounts=3, pg_writers=2, max_batch=64, kind="debit")
    assert result["ops"] > 0 and result["ops_per_s"] > 0 and result["declined"] == 0
    assert 0 < result["latency_ms_p50"] <= result["latency_ms_p99"] <= result["latency_ms_max"]
    assert result["invariant_failures"] == 0
