"""`terminal-sim card --vpcd` and `terminal-sim pos --reader` as a user runs them: pyscard -> pcscd -> vpcd -> card.

The issuer (SQLite, in-process HSM) and its engine run in the test; the card and the terminal are the
installed command, in subprocesses, talking through the machine's pcscd (started by the `pcscd`
fixture when it is not running).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from hsm_sim import connect
from processor import issuing, ledger
from processor.config import Settings
from processor.issuing import ensure_issuer_keys, issue_card
from processor.issuing.personalization import form_bureau_key, personalize
from processor.issuing.terminals import add_terminal
from processor.ledger import Store
from processor.server import running_engine
from terminal_sim.bureau import TRANSPORT_KEY_ENV, state_path, transport_key_from_components

pytestmark = [pytest.mark.pcsc, pytest.mark.filterwarnings("ignore:.*TripleDES.*")]

DEPOSIT = 200_00
PIN = "4321"


def _command() -> list[str]:
    installed = Path(sys.executable).parent / "terminal-sim"
    return [str(installed)] if installed.exists() else [sys.executable, "-m", "terminal_sim.cli"]


async def _issue(settings: Settings, bureau: Path, terminal_file: Path) -> tuple[bytes, int, int]:
    store = await Store.open(settings.db_url)
    hsm = await connect(settings.hsm_url)
    try:
        keys = await ensure_issuer_keys(store, hsm)
        ceremony = await form_bureau_key(store, hsm)
        holder = await issuing.cardholders.create(store, "Ada Reader", "ada-reader")
        account = await ledger.accounts.open_account(store, holder, "checking", "EUR")
        await ledger.accounts.deposit(store, account, DEPOSIT, reference="test funding")
        card = await issue_card(store, hsm, keys, account_id=account, pin=PIN, today=dt.date.today())
        await personalize(store, hsm, keys, card.id, directory=bureau)
        registered = await add_terminal(store, hsm, keys, terminal_id="PCSC0001", merchant_id="PCSCSHOP0000001", mcc="5411")
        terminal_file.write_text(json.dumps(registered.as_json()), encoding="utf-8")
        return transport_key_from_components(ceremony["components"]), card.id, account
    finally:
        await hsm.close()
        await store.close()


class _Card:
    """`terminal-sim card --vpcd` in a subprocess, stopped by its PID."""

    def __init__(self, env: dict[str, str], card_id: int, bureau: Path, interface: str) -> None:
        self.args = [*_command(), "card", "--vpcd", "--card-id", str(card_id), "--bureau-dir", str(bureau),
                     "--interface", interface]
        self.env = env
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> "_Card":
        self.proc = await asyncio.create_subprocess_exec(*self.args, env=self.env, stderr=asyncio.subprocess.PIPE)
        assert self.proc.stderr is not None
        line = await asyncio.wait_for(self.proc.stderr.readline(), timeout=20)
        assert b"in the vpcd reader" in line, line.decode(errors="replace")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.proc.wait(), timeout=10)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise
        assert code == 0


async def _pos(env: dict[str, str], port: int, reader: str, terminal_file: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    proc = await asyncio.create_subprocess_exec(
        *_command(), "pos", "--tcp", f"127.0.0.1:{port}", "--reader", reader, "--terminal", str(terminal_file),
        "--json", *extra, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert out.strip(), err.decode(errors="replace")
    return proc.returncode, json.loads(out)


async def _close_batch(env: dict[str, str], port: int, terminal_file: Path) -> tuple[int, dict[str, Any]]:
    proc = await asyncio.create_subprocess_exec(
        *_command(), "close-batch", "--tcp", f"127.0.0.1:{port}", "--terminal", str(terminal_file), "--json",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert out.strip(), err.decode(errors="replace")
    return proc.returncode, json.loads(out)


async def test_card_in_vpcd_reader_pays_contact_and_contactless(pcscd, sqlite_url, tmp_path):
    settings = Settings(db_url=sqlite_url, hsm_url=f"file:{tmp_path / 'hsm.json'}", log_dir=tmp_path)
    bureau, terminal_file = tmp_path / "bureau", tmp_path / "terminal.json"
    transport_key, card_id, account = await _issue(settings, bureau, terminal_file)
    env = dict(os.environ, PYTHONWARNINGS="ignore", **{TRANSPORT_KEY_ENV: transport_key.hex().upper()})

    async with running_engine(settings) as engine:
        async with _Card(env, card_id, bureau, "contact"):
            code, first = await _pos(env, engine.port, pcscd, terminal_file, "--amount", "12.34", "--pin", PIN)
            assert (code, first["rc"], first["cryptogram"], first["atc"]) == (0, "00", "TC", 1)
            assert first["pan"].count("*") == 6
            code, wrong = await _pos(env, engine.port, pcscd, terminal_file, "--amount", "1.00", "--pin", "9999")
            assert (code, wrong["rc"], wrong["cryptogram"], wrong["atc"]) == (1, "55", "AAC", 2)
        async with _Card(env, card_id, bureau, "contactless"):
            code, tap = await _pos(env, engine.port, pcscd, terminal_file, "--amount", "5.00", "--interface", "contactless")
            assert (code, tap["rc"], tap["cryptogram"], tap["atc"]) == (0, "00", "TC", 3)
        view = await ledger.accounts.get(engine.store, account)
        assert view.ledger_minor == DEPOSIT - 12_34 - 5_00
        # The terminal's STAN sequence carried over between runs (no collision on the idempotency key).
        assert len({first["stan"], wrong["stan"], tap["stan"]}) == 3
        # End of day: the terminal's batch, kept in its state file across the runs, balances with ours.
        code, close = await _close_batch(env, engine.port, terminal_file)
        assert (code, close["rc"], close["batch_number"]) == (0, "00", "000001")
        assert close["terminal"] == close["host"]
        assert (close["terminal"]["debits_count"], close["terminal"]["debits_minor"]) == (2, 12_34 + 5_00)
        code, empty = await _close_batch(env, engine.port, terminal_file)
        assert (code, empty["rc"], empty["batch_number"], empty["host"]["debits_count"]) == (0, "00", "000002", 0)
    # The card's counter outlived its process, next to its record.
    assert json.loads(state_path(bureau, card_id).read_text())["atc"] == 3


async def test_pos_without_a_card_in_the_reader_fails_cleanly(pcscd, sqlite_url, tmp_path):
    settings = Settings(db_url=sqlite_url, hsm_url=f"file:{tmp_path / 'hsm.json'}", log_dir=tmp_path)
    terminal_file = tmp_path / "terminal.json"
    await _issue(settings, tmp_path / "bureau", terminal_file)
    proc = await asyncio.create_subprocess_exec(
        *_command(), "pos", "--tcp", "127.0.0.1:9", "--reader", pcscd, "--terminal", str(terminal_file),
        "--amount", "1.00", "--card-timeout", "0.5", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 2
    assert b"no card" in err and b"Traceback" not in err
