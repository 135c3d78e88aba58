"""Building an issuer (cards, accounts, terminals) for the engine tests."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime as dt
import shutil
import sqlite3
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from database_kinds import DATABASES

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


@dataclass
class BuiltIssuer:
    """The cast's issuer built once: its database (a SQLite file, or a PostgreSQL database used as a
    template), its key store with the audit log beside it, and what build_issuer returned."""

    database: str
    keystore: Path
    cards: dict[str, CardData]
    accounts: dict[str, int]
    terminals: dict[str, PosTerminal]


class IssuerCopies:
    """The cast's issuer per database kind, built on first use; each engine test starts from a copy, which
    is what build_issuer would have given it, but for the cardholders' handles (the same in every copy)."""

    def __init__(self, folder_factory: pytest.TempPathFactory) -> None:
        self._folders = folder_factory
        self._built: dict[str, BuiltIssuer] = {}
        self._pg_templates: list[tuple[Any, str]] = []

    async def copy(self, kind: str, folder: Path, request: pytest.FixtureRequest) -> tuple[
        Settings, dict[str, CardData], dict[str, int], dict[str, PosTerminal]
    ]:
        """Settings on a new database of `kind` ("sqlite": a file in `folder`; "postgres": dropped after the
        test) and a key store in `folder`, holding the cast's issuer; the cast's cards and terminals are new
        objects (a terminal's DUKPT counter and STAN start over)."""
        pg_server = None if kind == "sqlite" else request.getfixturevalue("pg_server")
        built = self._built.get(kind) or await self._build(kind, pg_server)
        if pg_server is None:
            database = folder / "processor.db"
            with contextlib.closing(sqlite3.connect(built.database)) as source, contextlib.closing(sqlite3.connect(database)) as target:
                source.backup(target)
            db_url = f"sqlite+aiosqlite:///{database}"
        else:
            name = pg_server.create_database(template=built.database)
            request.addfinalizer(lambda: pg_server.drop_database_later(name))
            db_url = pg_server.url_for(name)
        keystore = folder / "hsm.json"
        for suffix in ("", ".audit.jsonl"):
            shutil.copy2(f"{built.keystore}{suffix}", f"{keystore}{suffix}")
        settings = Settings(db_url=db_url, hsm_url=f"file:{keystore}", log_dir=folder)
        return settings, *copy.deepcopy((built.cards, built.accounts, built.terminals))

    async def _build(self, kind: str, pg_server: Any) -> BuiltIssuer:
        home = self._folders.mktemp(f"issuer-{kind}")
        if pg_server is None:
            database = str(home / "processor.db")
            url = f"sqlite+aiosqlite:///{database}"
        else:
            database = pg_server.create_database("processor_issuer")
            self._pg_templates.append((pg_server, database))
            url = pg_server.url_for(database)
        cards, accounts, terminals = await build_issuer(Settings(db_url=url, hsm_url=f"file:{home / 'hsm.json'}"))
        self._built[kind] = BuiltIssuer(database, home / "hsm.json", cards, accounts, terminals)
        return self._built[kind]

    def close(self) -> None:
        for pg_server, database in self._pg_templates:
            pg_server.drop_database(database)


@pytest.fixture(scope="session")
def issuer_copies(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IssuerCopies]:
    copies = IssuerCopies(tmp_path_factory)
    yield copies
    copies.close()


@pytest.fixture(params=DATABASES)
async def issuer(tmp_path: Path, issuer_copies: IssuerCopies, request: pytest.FixtureRequest) -> AsyncIterator[Issuer]:
    """The cast's issuer on each kind of database (as `db_url`), an engine on a free loopback port, and a
    terminal connection to it."""
    settings, cards, accounts, terminals = await issuer_copies.copy(request.param, tmp_path, request)
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
