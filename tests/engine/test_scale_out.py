"""Several engine processes on one PostgreSQL, behind one broker (MQTT) or one port (TCP, SO_REUSEPORT).

Many terminals hammer a few accounts, some without enough money for what is asked, while one engine after
another is killed with SIGKILL and started again. A terminal that loses its engine carries on: over MQTT it
publishes the same request again after a second, over TCP it reconnects (the kernel hands the connection to a
live engine) and sends the same bytes again. The store's idempotency key answers a copy of a request that was
already applied with its first answer.

Afterwards: every request got exactly one answer; no account went below zero; every approved hold is in the
ledger once; each account's balances are exactly what the terminals' approvals say; every answer a terminal
received is the one the store recorded; `processor ledger check` passes.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hsm_sim import connect
from processor import issuing, ledger
from processor.config import Settings
from processor.iso8583 import Request, decode, encode
from processor.issuing import ensure_issuer_keys, issue_card
from processor.issuing.terminals import add_terminal
from processor.ledger import Store
from terminal_sim.iso_client import ResponseTimeout, TerminalConnection
from terminal_sim.pos import CardData, PosTerminal

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

ENGINES = 3
TERMINALS = 12
SESSIONS_PER_TERMINAL = 2
# (deposit in minor units): two accounts that run dry within the run, four that do not
DEPOSITS = (40_00, 60_00, 5_000_00, 5_000_00, 5_000_00, 5_000_00)
KILLS = 3


@dataclass
class Exchange:
    """One request a terminal sent and the one answer it took from the engines."""

    terminal: PosTerminal
    request: dict[str, Any]
    answer: dict[str, Any] | None
    card: CardData

    @property
    def key(self) -> str:
        return Request.from_fields(decode(encode(self.request))).idempotency_key()


@dataclass
class Fleet:
    """Accounts, cards and terminals of the run, and what each terminal saw."""

    settings: Settings
    accounts: list[int]
    cards: list[CardData]
    terminals: list[PosTerminal]
    exchanges: list[Exchange] = field(default_factory=list)
    unanswered: int = 0


async def build_fleet(settings: Settings) -> Fleet:
    store = await Store.open(settings.db_url)
    hsm = await connect(settings.hsm_url)
    try:
        keys = await ensure_issuer_keys(store, hsm)
        accounts, cards = [], []
        for i, deposit in enumerate(DEPOSITS):
            holder = await issuing.cardholders.create(store, f"Holder {i}", f"holder-{i}-{os.getpid()}")
            account = await ledger.accounts.open_account(store, holder, "checking", "EUR")
            await ledger.accounts.deposit(store, account, deposit, reference="scale-out funding")
            issued = await issue_card(store, hsm, keys, account_id=account, pin="1234", chip=False)
            accounts.append(account)
            cards.append(CardData.from_issued(issued.as_json(), "1234"))
        terminals = []
        for i in range(TERMINALS):
            registered = await add_terminal(store, hsm, keys, terminal_id=f"SCAL{i:04d}", merchant_id=f"SCALE{i % 3:010d}",
                                            mcc="5411", chip_capable=False)
            terminals.append(PosTerminal.from_registered(registered.as_json()))
        return Fleet(settings, accounts, cards, terminals)
    finally:
        await hsm.close()
        await store.close()


class Engines:
    """`processor serve` processes, killed and restarted by index."""

    def __init__(self, settings: Settings, args: list[str], logs: Path, ready: Callable[[subprocess.Popen[bytes]], None]) -> None:
        self.settings = settings
        self.args = args
        self.logs = logs
        self.ready = ready
        self.processes: list[subprocess.Popen[bytes]] = []
        self.log_numbers: list[int] = []  # which engine-N.log each slot's current process writes
        self.started = 0

    def start(self, index: int | None = None) -> None:
        env = {**os.environ, "PROCESSOR_DB_URL": self.settings.db_url, "PROCESSOR_HSM_URL": self.settings.hsm_url,
               "PROCESSOR_LOG_FILE": str(self.logs / f"engine-{self.started}.log")}
        process = subprocess.Popen([sys.executable, "-m", "processor.cli", "serve", *self.args], env=env,
                                   stdout=subprocess.DEVNULL, stderr=open(self.logs / f"engine-{self.started}.err", "wb"))
        number = self.started
        self.started += 1
        self.ready(process)
        if index is None:
            self.processes.append(process)
            self.log_numbers.append(number)
        else:
            self.processes[index] = process
            self.log_numbers[index] = number

    def kill(self, index: int) -> None:
        self.processes[index].send_signal(signal.SIGKILL)
        self.processes[index].wait(timeout=10)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()

    def authorizations_logged(self) -> list[int]:
        """Per engine ever started: how many answers reached its log. An engine stopped with SIGTERM flushed
        them all; a SIGKILLed one lost what it had buffered (at most the last flush interval's lines)."""
        return [sum(" rc=" in line for line in (self.logs / f"engine-{i}.log").read_text(errors="replace").splitlines())
                for i in range(self.started)]


Send = Callable[[Any, dict[str, Any]], Awaitable[dict[str, Any]]]


async def hammer(fleet: Fleet, conns: dict[str, Any], send: Send, engines: Engines) -> None:
    """All sessions drive purchases and pre-authorizations until engines have been killed (and started again)
    one after another, each kill in the middle of the traffic."""
    done = asyncio.Event()
    rng = random.Random(14)

    # A terminal's sessions take turns: one device, one DUKPT transaction at a time.
    turns = {terminal.terminal_id: asyncio.Lock() for terminal in fleet.terminals}

    async def session(terminal: PosTerminal) -> None:
        while not done.is_set():
            card = rng.choice(fleet.cards)
            mti = rng.choice(("0100", "0200", "0200"))
            async with turns[terminal.terminal_id]:
                request = terminal.card_request(card, rng.randint(1_00, 9_00), mti=mti, entry="magstripe")
                try:
                    answer = await send(conns[terminal.terminal_id], request)
                except (ResponseTimeout, ConnectionError, OSError):
                    fleet.unanswered += 1
                    answer = None
            fleet.exchanges.append(Exchange(terminal, request, answer, card))

    async def killer() -> None:
        await asyncio.sleep(3.0)
        for k in range(KILLS):
            index = k % ENGINES
            await asyncio.to_thread(engines.kill, index)
            await asyncio.sleep(0.5)
            await asyncio.to_thread(engines.start, index)  # returns once it serves
            await asyncio.sleep(1.5)
        done.set()

    await asyncio.gather(killer(), *(session(t) for t in fleet.terminals for _ in range(SESSIONS_PER_TERMINAL)))


async def verify(fleet: Fleet, engines: Engines) -> None:
    """The run's promises, checked against the store."""
    assert fleet.unanswered == 0, f"{fleet.unanswered} request(s) never answered"
    assert len(fleet.exchanges) > 200, "the terminals should have sent hundreds of requests"
    codes = Counter(e.answer["39"] for e in fleet.exchanges if e.answer)
    assert set(codes) <= {"00", "51"}, codes
    assert codes["51"] > 0, "the small accounts ran dry: some requests were declined for funds"
    # With SO_REUSEPORT or a shared subscription the kernel or broker picks the engine, so an engine started
    # late may see no traffic at all; what must hold is that the load was shared.
    answered_by = sum(n > 0 for n in engines.authorizations_logged())
    assert answered_by >= 2, "the engines shared the load"

    expected_ledger = dict(zip(fleet.accounts, DEPOSITS, strict=True))
    expected_held = dict.fromkeys(fleet.accounts, 0)
    account_of = {c.pan: a for c, a in zip(fleet.cards, fleet.accounts, strict=True)}
    store = await Store.open(fleet.settings.db_url)
    try:
        holds_expected = 0
        for exchange in fleet.exchanges:
            answer = exchange.answer
            assert answer is not None
            stored = await ledger.auths.find(store, exchange.key)
            assert stored is not None, f"answered {answer['39']} but not in the store: {exchange.key}"
            assert stored.rc == answer["39"], f"{exchange.key}: the terminal got {answer['39']}, the store says {stored.rc}"
            if answer["39"] != "00":
                continue
            assert stored.auth_code == answer["38"], f"{exchange.key}: approval code differs from the store's"
            amount = int(exchange.request["4"])
            account = account_of[exchange.card.pan]
            if exchange.request["t"] == "0100":
                expected_held[account] += amount
                holds_expected += 1
                assert stored.hold_id is not None
            else:
                expected_ledger[account] -= amount
        holds_found = 0
        for account in fleet.accounts:
            view = await ledger.accounts.get(store, account)
            holds_found += len(view.holds)
            assert view.ledger_minor - view.held_minor >= 0, f"account {account} is below zero"
            assert (view.ledger_minor, view.held_minor) == (expected_ledger[account], expected_held[account]), (
                f"account {account}: the store holds {view.ledger_minor}/{view.held_minor}, the approvals say "
                f"{expected_ledger[account]}/{expected_held[account]}"
            )
            assert len(view.holds) == sum(1 for e in fleet.exchanges if e.answer["39"] == "00"
                                          and e.request["t"] == "0100" and account_of[e.card.pan] == account)
        assert holds_found == holds_expected, "every approved hold is in the ledger once"
    finally:
        await store.close()
    env = {**os.environ, "PROCESSOR_DB_URL": fleet.settings.db_url, "PROCESSOR_HSM_URL": fleet.settings.hsm_url}
    check = subprocess.run([sys.executable, "-m", "processor.cli", "ledger", "check"], env=env, capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


def wait_for_log_line(engines: Engines, process: subprocess.Popen[bytes], text: str) -> None:
    """Until the engine started last logs `text` (it serves), within 60 s."""
    deadline = time.monotonic() + 60
    log = engines.logs / f"engine-{engines.started - 1}.log"
    while time.monotonic() < deadline:
        assert process.poll() is None, "engine exited at start"
        if log.exists() and text in log.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise AssertionError(f"engine did not log {text!r} within 60 s")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.mqtt
async def test_three_engines_behind_one_broker_survive_sigkill(pg_url: str, broker: Any, tmp_path: Path):
    from processor.transport.broker import BrokerAdmin
    from terminal_sim.mqtt_client import MqttTerminalConnection

    settings = Settings(db_url=pg_url, hsm_url=f"file:{tmp_path / 'hsm.json'}")
    fleet = await build_fleet(settings)
    async with BrokerAdmin(broker.url("admin")) as admin:
        passwords = await admin.add_terminals([t.terminal_id for t in fleet.terminals])

    def subscribed(process: subprocess.Popen[bytes]) -> None:
        wait_for_log_line(engines, process, "subscribed to $share/engines")

    engines = Engines(settings, ["--tcp", "off", "--mqtt", broker.url("engine")], tmp_path, subscribed)
    url = f"mqtt://127.0.0.1:{broker.port}"
    try:
        for _ in range(ENGINES):
            engines.start()
        conns = {t.terminal_id: await MqttTerminalConnection.connect(url, t.terminal_id, password=passwords[t.terminal_id],
                                                                     timeout_s=10.0, retry_after_s=1.0)
                 for t in fleet.terminals}
        for terminal in fleet.terminals:
            conns[terminal.terminal_id].add_terminal(terminal)

        async def send(conn: Any, request: dict[str, Any]) -> dict[str, Any]:
            return await conn.request(request)

        try:
            await hammer(fleet, conns, send, engines)
        finally:
            for conn in conns.values():
                await conn.close()
    finally:
        engines.stop()
    assert sum(c.retries for c in conns.values()) > 0, "a killed engine held requests that the terminals sent again"
    await verify(fleet, engines)


async def test_three_engines_on_one_tcp_port_survive_sigkill(pg_url: str, tmp_path: Path):
    settings = Settings(db_url=pg_url, hsm_url=f"file:{tmp_path / 'hsm.json'}")
    fleet = await build_fleet(settings)
    port = _free_port()

    def listening(process: subprocess.Popen[bytes]) -> None:
        # With SO_REUSEPORT the port answers as soon as one engine listens: wait for this one's log line.
        wait_for_log_line(engines, process, "listening on")

    engines = Engines(settings, ["--tcp", f"127.0.0.1:{port}", "--reuse-port"], tmp_path, listening)
    reconnects = 0
    try:
        for _ in range(ENGINES):
            engines.start()
        sessions = {
            t.terminal_id: await TerminalConnection.connect("127.0.0.1", port, timeout_s=3.0, terminals=fleet.terminals)
            for t in fleet.terminals
        }

        async def send(conn_holder: Any, request: dict[str, Any]) -> dict[str, Any]:
            # A terminal whose connection died opens a new one and sends the same bytes again.
            nonlocal reconnects
            terminal_id = request["41"].strip()
            for _ in range(10):
                conn = sessions[terminal_id]
                try:
                    return await conn.request(request)
                except (ResponseTimeout, ConnectionError, OSError):
                    reconnects += 1
                    await conn.close()
                    try:
                        sessions[terminal_id] = await TerminalConnection.connect(
                            "127.0.0.1", port, timeout_s=3.0, terminals=fleet.terminals
                        )
                    except OSError:
                        await asyncio.sleep(0.2)
            raise ConnectionError("no engine answered after ten attempts")

        try:
            await hammer(fleet, sessions, send, engines)
        finally:
            for conn in sessions.values():
                await conn.close()
    finally:
        engines.stop()
    assert reconnects > 0, "killed engines dropped connections, and the terminals came back"
    await verify(fleet, engines)

