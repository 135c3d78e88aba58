"""Concurrent holds from many connections, stores and processes never overdraw; acknowledged means durable."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

from ledger_helpers import healthy, op, open_funded

from processor import ledger
from processor.ledger import Store, StoreClosed, StoreError, ops

WORKER = Path(__file__).with_name("ledger_worker.py")
REPO = Path(__file__).resolve().parents[2]


async def test_200_concurrent_holds_from_four_stores_approve_exactly_50(db_url: str) -> None:
    stores = [await Store.open(db_url) for _ in range(4)]
    try:
        ada = await open_funded(stores[0], 50 * 100)
        results = await asyncio.gather(
            *(stores[i % 4].submit(op(ops.PlaceHold, ada, 100)) for i in range(200))
        )
        assert sorted({r.rc for r in results}) == ["00", "51"]
        assert sum(r.rc == "00" for r in results) == 50
        assert all(r.available_minor >= 0 for r in results)
        view = await ledger.accounts.get(stores[1], ada.account_id)
        assert (view.ledger_minor, view.held_minor, view.available_minor, len(view.holds)) == (5_000, 5_000, 0, 50)
        await healthy(stores[2])
    finally:
        for store in stores:
            await store.close()


async def test_concurrent_debits_and_partials_never_overdraw(store: Store, funded) -> None:
    ada = await funded(10_000)
    kinds = [
        op(ops.Debit, ada, 333, mti="0200", partial_ok=bool(i % 2)) if i % 3 else op(ops.PlaceHold, ada, 250)
        for i in range(120)
    ]
    results = await asyncio.gather(*(store.submit(o) for o in kinds))
    approved = sum(r.approved_minor for r in results if r.rc in ("00", "10"))
    assert approved == 10_000, "every minor unit is taken and not one more"
    assert (await ledger.accounts.get(store, ada.account_id)).available_minor == 0
    await healthy(store)


async def _spawn(url: str, account_id: int, count: int, amount_minor: int, prefix: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(WORKER), url, str(account_id), str(count), str(amount_minor), prefix,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env, cwd=str(REPO),
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert line.strip() == b"ready", line
    return proc


async def test_two_processes_share_one_account_without_overdraft(db_url: str) -> None:
    store = await Store.open(db_url)
    try:
        ada = await open_funded(store, 50 * 100)
        procs = [await _spawn(db_url, ada.account_id, 100, 100, f"p{n}") for n in range(2)]
        for proc in procs:
            proc.stdin.write(b"go\n")
            await proc.stdin.drain()
        outcomes = []
        for proc in procs:
            out, _ = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 0
            outcomes += [json.loads(line) for line in out.splitlines()]
        assert len(outcomes) == 200
        assert sum(o["rc"] == "00" for o in outcomes) == 50
        assert (await ledger.accounts.get(store, ada.account_id)).available_minor == 0
        await healthy(store)
    finally:
        await store.close()


async def test_killed_process_loses_no_acknowledged_hold(db_url: str) -> None:
    store = await Store.open(db_url)
    try:
        ada = await open_funded(store, 10**12)
        proc = await _spawn(db_url, ada.account_id, 5_000, 7, "kill")
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
        acknowledged = []
        while len(acknowledged) < 300:
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert line, "worker ended early"
            acknowledged.append(json.loads(line))
        os.kill(proc.pid, signal.SIGKILL)  # no chance to finish, flush or close anything
        rest, _ = await asyncio.wait_for(proc.communicate(), 30)
        acknowledged += [json.loads(line) for line in rest.splitlines() if line.endswith(b"}")]
        assert proc.returncode == -signal.SIGKILL
    finally:
        await store.close()
    reopened = await Store.open(db_url)
    try:
        for ack in acknowledged:
            stored = await ledger.auths.find(reopened, ack["key"])
            assert stored is not None, f"acknowledged {ack['key']} was lost"
            assert (stored.rc, stored.hold_id) == (ack["rc"], ack["hold_id"])
        view = await ledger.accounts.get(reopened, ada.account_id)
        assert len(view.holds) >= len(acknowledged)
        await healthy(reopened)
    finally:
        await reopened.close()


async def test_cancelled_writer_loses_no_acknowledged_operation(db_url: str) -> None:
    store = await Store.open(db_url)
    ada = await open_funded(store, 10**9)
    acknowledged: list[tuple[str, str, int | None]] = []

    async def one(i: int) -> None:
        outcome = await store.submit(op(ops.PlaceHold, ada, 5, idem_key=f"cancel-{i}"))
        acknowledged.append((outcome.idem_key, outcome.rc, outcome.hold_id))

    tasks = [asyncio.create_task(one(i)) for i in range(3_000)]
    while len(acknowledged) < 200:
        await asyncio.sleep(0.001)
    for writer in store._writers:  # the writer dies between (or inside) batches
        writer.cancel()
    await store.close(timeout_s=5)
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
    failures = [r for r in results if r is not None]
    assert failures, "the writer was cancelled before all operations went through"
    assert all(isinstance(r, (StoreClosed, StoreError)) for r in failures)
    assert len(acknowledged) + len(failures) == 3_000
    reopened = await Store.open(db_url)
    try:
        for key, rc, hold_id in acknowledged:
            stored = await ledger.auths.find(reopened, key)
            assert stored is not None and (stored.rc, stored.hold_id) == (rc, hold_id)
        await healthy(reopened)
    finally:
        await reopened.close()


async def test_same_request_through_several_stores_at_once_is_applied_once(db_url: str) -> None:
    stores = [await Store.open(db_url) for _ in range(3)]
    try:
        ada = await open_funded(stores[0], 1_000)
        results = await asyncio.gather(
            *(stores[i % 3].submit(op(ops.PlaceHold, ada, 400, idem_key="retransmitted")) for i in range(9))
        )
        assert sum(not r.duplicate for r in results) == 1
        assert {(r.rc, r.hold_id) for r in results} == {("00", results[0].hold_id)}
        assert (await ledger.accounts.get(stores[1], ada.account_id)).available_minor == 600
        await healthy(stores[2])
    finally:
        for store in stores:
            await store.close()


async def test_close_finishes_the_queued_operations(db_url: str) -> None:
    store = await Store.open(db_url)
    ada = await open_funded(store, 10_000)
    tasks = [asyncio.create_task(store.submit(op(ops.PlaceHold, ada, 10, idem_key=f"q-{i}"))) for i in range(500)]
    await asyncio.sleep(0)  # every submit is queued
    await store.close()
    assert [t.result().rc for t in tasks] == ["00"] * 500
    reopened = await Store.open(db_url)
    try:
        assert (await ledger.accounts.get(reopened, ada.account_id)).available_minor == 5_000
        await healthy(reopened)
    finally:
        await reopened.close()


async def test_store_recovers_when_postgres_drops_its_connections(pg_url: str) -> None:
    import asyncpg
    from sqlalchemy.engine import make_url

    store = await Store.open(pg_url)
    try:
        ada = await open_funded(store, 1_000)
        assert (await store.submit(op(ops.PlaceHold, ada, 100))).rc == "00"
        dsn = make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)
        killer = await asyncpg.connect(dsn)
        try:
            dropped = await killer.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        finally:
            await killer.close()
        assert dropped >= 1
        answers = []
        for _ in range(4):  # the first attempts may meet a dead connection; then the store reconnects
            try:
                answers.append((await store.submit(op(ops.PlaceHold, ada, 100))).rc)
            except StoreError:
                answers.append("error")
        assert answers[-2:] == ["00", "00"], answers
        for _ in range(2):
            try:
                view = await ledger.accounts.get(store, ada.account_id)
            except Exception:  # noqa: BLE001 - a pooled read connection may still be the dropped one
                continue
        assert view.available_minor == 1_000 - 100 * (1 + answers.count("00"))
        await healthy(store)
    finally:
        await store.close()
