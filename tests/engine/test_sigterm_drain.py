"""SIGTERM under load: the engine stops within its documented bound, whatever it was waiting for.

Here the store cannot commit at all when the signal comes: another transaction holds the row lock of the
account every terminal is charging, so the engine's batches wait on it with requests in flight. The engine
must still exit within `DRAIN_TIMEOUT_S`, with nothing half-applied: every approval a terminal received is
in the ledger, the abandoned requests are not, and `ledger check` passes.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest
from engine_helpers import build_issuer, more_terminals

from processor import ledger
from processor.config import Settings
from processor.iso8583 import Request, decode, encode
from processor.ledger import Store
from processor.server import DRAIN_ANSWER_S, DRAIN_TIMEOUT_S
from terminal_sim.iso_client import ResponseTimeout, TerminalConnection
from terminal_sim.pos import PosTerminal
from test_killed_engine import _free_port, _start_engine

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


async def test_sigterm_with_requests_stuck_behind_a_row_lock_exits_within_the_bound(pg_url: str, tmp_path: Path):
    settings = Settings(db_url=pg_url, hsm_url=f"file:{tmp_path / 'hsm.json'}")
    cards, accounts, terminals = await build_issuer(settings)
    pads = await more_terminals(settings, 8, merchant_id=terminals["shop"].merchant_id)
    port = _free_port()
    log = tmp_path / "engine.log"
    engine = _start_engine(settings, port, log)
    approved: dict[str, int] = {}
    unanswered: list[str] = []

    async def drive(conn: TerminalConnection, pad: PosTerminal) -> None:
        while True:
            request = pad.card_request(cards["ada"], 1_00, entry="magstripe")
            key = Request.from_fields(decode(encode(request))).idempotency_key()
            try:
                answer = await conn.request(request, timeout_s=DRAIN_TIMEOUT_S + 10)
            except (ConnectionError, ResponseTimeout, OSError):
                unanswered.append(key)
                return
            if answer["39"] == "00":
                approved[key] = int(request["4"])

    blocker = None
    try:
        conns = [await TerminalConnection.connect("127.0.0.1", port, terminals=[pad]) for pad in pads]
        drivers = [asyncio.create_task(drive(c, pad)) for c, pad in zip(conns, pads)]
        await asyncio.sleep(1.5)
        blocker = await asyncpg.connect(pg_url.replace("postgresql+asyncpg", "postgresql"))
        await blocker.execute("BEGIN")
        await blocker.execute("SELECT id FROM accounts WHERE id = $1 FOR UPDATE", accounts["ada"])
        await asyncio.sleep(1.0)  # every terminal now waits for an answer the store cannot commit
        answered_before = len(approved)
        stopped_at = time.monotonic()
        engine.send_signal(signal.SIGTERM)
        while engine.poll() is None and time.monotonic() - stopped_at < DRAIN_TIMEOUT_S + 30:
            await asyncio.sleep(0.1)
        took_s = time.monotonic() - stopped_at
        assert engine.poll() is not None, f"engine still running {took_s:.0f} s after SIGTERM"
        assert took_s <= DRAIN_TIMEOUT_S, f"engine took {took_s:.1f} s to stop (bound {DRAIN_TIMEOUT_S} s)"
        assert took_s >= DRAIN_ANSWER_S - 1, "the requests in flight were given their time to be answered"
        assert engine.returncode == 0
        await asyncio.wait_for(asyncio.gather(*drivers), timeout=10)
        for c in conns:
            await c.close()
    finally:
        if blocker is not None:
            await blocker.close()  # (its transaction rolls back)
        if engine.poll() is None:
            engine.kill()
            engine.wait(timeout=10)

    assert answered_before > 10, "the engine answered traffic before the lock"
    assert len(approved) == answered_before, "nothing could be approved while the account was locked"
    assert len(unanswered) == len(pads), "each terminal's request in flight went unanswered, not refused"
    text = log.read_text(errors="replace")
    assert "stopping: 8 request(s) in flight" in text and "stopped in" in text

    store = await Store.open(pg_url)
    try:
        for key in approved:
            outcome = await ledger.auths.find(store, key)
            assert outcome is not None and outcome.rc == "00", f"approval {key} was answered but is not in the ledger"
        for key in unanswered:
            assert await ledger.auths.find(store, key) is None, f"abandoned request {key} was half-applied"
        view = await ledger.accounts.get(store, accounts["ada"])
        assert view.ledger_minor == 500_00 - sum(approved.values())
        assert await ledger.invariants.check(store) == []
    finally:
        await store.close()
    check = subprocess.run([sys.executable, "-m", "processor.cli", "ledger", "check"], capture_output=True, text=True,
                           env={"PROCESSOR_DB_URL": pg_url, "PATH": "/usr/bin:/bin"}, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
