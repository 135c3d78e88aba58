"""Building an issuer (cards, accounts, terminals) for the engine tests."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hsm_sim import connect
from processor import issuing, ledger
from processor.config import Settings
from processor.iso8583 import decode, encode_frame
from processor.issuing import ensure_issuer_keys, issue_card, load_issuer_keys
from processor.issuing.terminals import add_terminal
from processor.ledger import Store
from processor.server import RunningEngine, running_engine
from processor.transport.tcp import TcpLimits
from terminal_sim.iso_client import TerminalConnection
from terminal_sim.pos import CardData, PosTerminal


@dataclass
class Issuer:
    """Cards by name, terminals by name, the running engine and a terminal connection to it."""

    settings: Settings
    cards: dict[str, CardData]
    accounts: dict[str, int]
    terminals: dict[str, PosTerminal]
    running: RunningEngine
    conn: TerminalConnection

    async def send(self, request: dict[str, Any]) -> dict[str, Any]:
        return await self.conn.request(request)

    async def account(self, name: str) -> Any:
        return await ledger.accounts.get(self.running.store, self.accounts[name])


CAST = {
    # name: (deposit minor, status, expired)
    "ada": (500_00, "active", False),
    "bob": (10_00, "active", False),
    "carol": (100_00, "frozen", False),
    "dave": (100_00, "lost", False),
    "erin": (100_00, "stolen", False),
    "frank": (100_00, "active", True),
    "grace": (300_00, "active", False),
    "ivan": (200_00, "active", False),
}
# Cards without a chip (service code 101): the only ones a terminal with a chip reader may swipe.
STRIPE_ONLY = frozenset({"ivan"})
# (name, DE 41, DE 42, MCC, chip reader?). The shop is a stripe reader with a PIN pad, where the tests of
# the magnetic-stripe rules swipe chip cards; the market reads chips and enforces the chip-first rule.
TERMINALS = (
    ("shop", "SHOP0001", "SHOP00000000001", "5411", False),
    ("hotel", "HOTL0001", "HOTEL0000000001", "7011", True),
    ("market", "MRKT0001", "MARKET000000001", "5411", True),
)


async def build_issuer(settings: Settings) -> tuple[dict[str, CardData], dict[str, int], dict[str, PosTerminal]]:
    store = await Store.open(settings.db_url)
    hsm = await connect(settings.hsm_url)
    try:
        keys = await ensure_issuer_keys(store, hsm)
        today = dt.datetime.now(dt.UTC).date()
        cards, accounts = {}, {}
        for name, (deposit, status, expired) in CAST.items():
            holder = await issuing.cardholders.create(store, name.title(), f"{name}-{id(settings) % 100000}")
            account = await ledger.accounts.open_account(store, holder, "checking", "EUR")
            await ledger.accounts.deposit(store, account, deposit, reference="test funding")
            issued = await issue_card(
                store, hsm, keys, account_id=account, pin="1234", today=today.replace(year=today.year - 5) if expired else today,
                chip=name not in STRIPE_ONLY,
            )
            if status != "active":
                await issuing.cards.set_status(store, issued.id, status)
            cards[name] = CardData.from_issued(issued.as_json(), "1234")
            accounts[name] = account
        terminals = {}
        for name, tid, mid, mcc, chip_reader in TERMINALS:
            registered = await add_terminal(store, hsm, keys, terminal_id=tid, merchant_id=mid, mcc=mcc, chip_capable=chip_reader)
            terminals[name] = PosTerminal.from_registered(registered.as_json())
        return cards, accounts, terminals
    finally:
        await hsm.close()
        await store.close()


async def more_terminals(settings: Settings, count: int, *, merchant_id: str, prefix: str = "PAD") -> list[PosTerminal]:
    """`count` more stripe-reader terminals at `merchant_id`: one per connection where requests run at once,
    since a terminal's DUKPT counter must reach the engine in order."""
    store, hsm = await Store.open(settings.db_url), await connect(settings.hsm_url)
    try:
        keys = await load_issuer_keys(store, hsm)
        pads = []
        for n in range(count):
            registered = await add_terminal(
                store, hsm, keys, terminal_id=f"{prefix}{n:05d}", merchant_id=merchant_id, mcc="5411", chip_capable=False
            )
            pads.append(PosTerminal.from_registered(registered.as_json()))
        return pads
    finally:
        await hsm.close()
        await store.close()


@pytest.fixture
async def issuer(db_url: str, tmp_path: Path) -> AsyncIterator[Issuer]:
    """The cast's issuer, an engine on a free loopback port, and a terminal connection to it."""
    settings = Settings(db_url=db_url, hsm_url=f"file:{tmp_path / 'hsm.json'}", log_dir=tmp_path)
    cards, accounts, terminals = await build_issuer(settings)
    # The fixture's connection may wait a while on a loaded machine before its test sends anything; the
    # deadline for authenticating is tested on its own (test_connection_limits).
    async with running_engine(settings, limits=TcpLimits(unauthenticated_timeout_s=300.0)) as running:
        conn = await TerminalConnection.connect("127.0.0.1", running.port, timeout_s=5.0, terminals=list(terminals.values()))
        try:
            yield Issuer(settings, cards, accounts, terminals, running, conn)
        finally:
            await conn.close()


async def recorded(issuer: Any) -> int:
    """How many requests the store has recorded, whatever their answer."""
    return sum((await ledger.invariants.report(issuer.running.store))["auths_by_rc"].values())


async def raw_exchange(issuer: Any, payload: bytes) -> dict[str, Any]:
    """Send `payload` as one frame on a new connection, as an attacker's own client would, and decode the answer."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", issuer.running.port), 5.0)
    try:
        writer.write(encode_frame(payload))
        await writer.drain()
        length = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), 5.0), "big")
        return decode(await asyncio.wait_for(reader.readexactly(length), 5.0))
    finally:
        writer.close()
