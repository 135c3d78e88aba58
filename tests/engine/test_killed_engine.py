"""kill -9 in the middle of traffic: every approval a terminal was sent is in the ledger after a restart,
and a terminal retransmitting what went unanswered gets consistent answers and no double posting."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from engine_helpers import build_issuer, more_terminals

from processor import ledger
from processor.config import Settings
from processor.iso8583 import Request, decode, encode
from processor.ledger import Store
from terminal_sim.iso_client import ResponseTimeout, TerminalConnection
from terminal_sim.pos import PosTerminal


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Bounds for waits that end on an event (the engine listens, the approvals come): generous, since only a
# broken engine reaches them and a loaded machine must not.
START_BOUND_S = 120
APPROVALS_BOUND_S = 120
# Approvals the terminals must have received before the kill, so that the kill lands in the middle of
# traffic with acknowledged approvals to lose.
APPROVALS_BEFORE_KILL = 21


def _start_engine(settings: Settings, port: int, log: Path) -> subprocess.Popen:
    """The engine as its own process, once it accepts connections (or a failure as soon as it exits)."""
    env = {**os.environ, "PROCESSOR_DB_URL": settings.db_url, "PROCESSOR_HSM_URL": settings.hsm_url, "PROCESSOR_LOG_FILE": str(log)}
    proc = subprocess.Popen([sys.executable, "-m", "processor.cli", "serve", "--tcp", f"127.0.0.1:{port}"], env=env)
    deadline = time.monotonic() + START_BOUND_S
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    proc.wait(timeout=10)
    raise AssertionError(f"engine did not start listening (exit {proc.returncode}; log {log})")


@pytest.mark.slow
async def test_kill_9_loses_no_acknowledged_approval(db_url: str, tmp_path: Path):
    settings = Settings(db_url=db_url, hsm_url=f"file:{tmp_path / 'hsm.json'}")
    cards, accounts, terminals = await build_issuer(settings)
    ada = cards["ada"]
    # Eight terminals, one per connection: each device sends one transaction at a time (DUKPT counters).
    pads = await more_terminals(settings, 8, merchant_id=terminals["shop"].merchant_id)
    port = _free_port()
    engine = _start_engine(settings, port, tmp_path / "engine.log")
    sent: list[dict] = []
    approved: dict[str, int] = {}
    enough_approved = asyncio.Event()

    async def drive(conn: TerminalConnection, pad: PosTerminal) -> None:
        while True:
            request = pad.card_request(ada, 1_00, entry="magstripe")
            sent.append(request)
            try:
                answer = await conn.request(request, timeout_s=30.0)
            except (ConnectionError, ResponseTimeout, OSError):
                return
            if answer["39"] == "00":
                approved[Request.from_fields(decode(encode(request))).idempotency_key()] = int(request["4"])
                if len(approved) >= APPROVALS_BEFORE_KILL:
                    enough_approved.set()

    conns = [await TerminalConnection.connect("127.0.0.1", port, terminals=[pad]) for pad in pads]
    drivers = [asyncio.create_task(drive(c, pad)) for c, pad in zip(conns, pads)]
    # The kill comes once the terminals hold enough approvals, however long the machine takes to give them;
    # the drivers keep sending, so it lands in the middle of traffic.
    waiting = asyncio.create_task(enough_approved.wait())
    await asyncio.wait([waiting, *drivers], timeout=APPROVALS_BOUND_S, return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    engine.send_signal(signal.SIGKILL)
    engine.wait(timeout=10)
    await asyncio.wait_for(asyncio.gather(*drivers), timeout=60)
    for c in conns:
        await c.close()
    assert len(approved) >= APPROVALS_BEFORE_KILL, "the engine should have answered some approvals before the kill"

    store = await Store.open(db_url)
    try:
        for key in approved:
            outcome = await ledger.auths.find(store, key)
            assert outcome is not None and outcome.rc == "00", f"approval {key} was answered but is not in the ledger"
        assert await ledger.invariants.check(store) == []
    finally:
        await store.close()

    # The terminals come back and retransmit everything: answered requests get their first answer,
    # unanswered ones are processed once.
    engine = _start_engine(settings, port, tmp_path / "engine2.log")
    try:
        approvals = 0
        async with await TerminalConnection.connect("127.0.0.1", port, timeout_s=30.0, terminals=pads) as conn:
            for request in sent:
                answer = await conn.request(request)
                key = Request.from_fields(decode(encode(request))).idempotency_key()
                if key in approved:
                    assert answer["39"] == "00"
                assert answer["39"] in ("00", "51")
                approvals += answer["39"] == "00"
        store = await Store.open(db_url)
        try:
            view = await ledger.accounts.get(store, accounts["ada"])
            assert view.ledger_minor == 500_00 - 1_00 * approvals
            assert await ledger.invariants.check(store) == []
        finally:
            await store.close()
    finally:
        engine.terminate()
        engine.wait(timeout=10)


async def test_an_unconfirmed_commit_is_not_answered_and_the_retransmission_gets_the_first_answer(tmp_path: Path):
    """The store cannot confirm a commit in time (another process holds the database's write lock): the
    engine answers nothing rather than a 96 the store may contradict; once the commit lands, the terminal's
    retransmission gets the recorded approval and the account is charged once."""
    import sqlite3

    from hsm_sim import connect
    from processor.auth.engine import Engine
    from processor.issuing import load_issuer_keys

    db = tmp_path / "p.db"
    settings = Settings(db_url=f"sqlite+aiosqlite:///{db}", hsm_url=f"file:{tmp_path / 'hsm.json'}")
    cards, accounts, terminals = await build_issuer(settings)
    store = await Store.open(settings.db_url, submit_timeout_s=0.5)
    hsm = await connect(settings.hsm_url)
    try:
        engine = Engine(store, hsm, await load_issuer_keys(store, hsm))
        shop = terminals["shop"]
        request = shop.card_request(cards["ada"], 12_00, entry="magstripe")
        payload, _ = shop.sign(request)
        before = (await ledger.accounts.get(store, accounts["ada"])).ledger_minor
        blocker = sqlite3.connect(db, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            assert await engine.handle(payload) is None, "no answer while the commit is not confirmed"
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        key = Request.from_fields(decode(encode(request))).idempotency_key()
        for _ in range(100):
            if await ledger.auths.find(store, key) is not None:
                break
            await asyncio.sleep(0.05)
        recorded = await ledger.auths.find(store, key)
        assert recorded is not None and recorded.rc == "00", "the operation was applied after all"
        answer = decode(await engine.handle(payload))
        assert answer["39"] == "00" and answer["38"] == recorded.auth_code, "the retransmission gets the first answer"
        assert (await ledger.accounts.get(store, accounts["ada"])).ledger_minor == before - 12_00, "charged once"
    finally:
        await hsm.close()
        await store.close()
