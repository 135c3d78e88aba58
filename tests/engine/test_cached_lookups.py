"""The engine caches cards and terminals, and a change reaches every engine at once: the first
authorization after a card is frozen (by the CLI, another process) is declined, and the first message of a
terminal given a new key is checked under the new key, on each of two engines sharing the store."""

from __future__ import annotations

import asyncio
import os
import sys

from engine_helpers import Issuer
from sqlalchemy import update

from hsm_sim import connect
from processor.issuing import load_issuer_keys
from processor.issuing.terminals import allocate_initial_ksn
from processor.ledger import Store, invariants
from processor.ledger.models import terminals
from processor.server import running_engine
from terminal_sim.iso_client import TerminalConnection
from terminal_sim.pos import PosTerminal


async def _cli(issuer: Issuer, *args: str) -> None:
    settings = issuer.settings
    env = {**os.environ, "PROCESSOR_DB_URL": settings.db_url, "PROCESSOR_HSM_URL": settings.hsm_url}
    done = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "processor.cli", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=env, cwd=settings.log_dir,
    )
    out, err = await asyncio.wait_for(done.communicate(), timeout=60)
    assert done.returncode == 0, err.decode()


async def test_a_card_frozen_through_the_cli_is_declined_at_once_by_both_engines(issuer: Issuer) -> None:
    shop, ada = issuer.terminals["shop"], issuer.cards["ada"]
    async with running_engine(issuer.settings) as second:
        other = await TerminalConnection.connect("127.0.0.1", second.port, timeout_s=10.0, terminals=[shop])
        try:
            for conn in (issuer.conn, other, issuer.conn, other):  # each engine has the card in its cache
                assert (await conn.request(shop.card_request(ada, 1_00, entry="magstripe")))["39"] == "00"
            await _cli(issuer, "card", "freeze", str(ada.card_id))
            for conn in (issuer.conn, other):
                assert (await conn.request(shop.card_request(ada, 1_00, entry="magstripe")))["39"] == "62"
            await _cli(issuer, "card", "unfreeze", str(ada.card_id))
            for conn in (other, issuer.conn):
                assert (await conn.request(shop.card_request(ada, 1_00, entry="magstripe")))["39"] == "00"
        finally:
            await other.close()
    assert await invariants.check(issuer.running.store) == []


async def test_a_terminal_given_a_new_key_is_checked_under_it_at_once_by_both_engines(issuer: Issuer) -> None:
    shop, ada = issuer.terminals["shop"], issuer.cards["ada"]
    async with running_engine(issuer.settings) as second:
        other = await TerminalConnection.connect("127.0.0.1", second.port, timeout_s=10.0, terminals=[shop])
        try:
            for conn in (issuer.conn, other):
                assert (await conn.request(shop.card_request(ada, 1_00, entry="magstripe")))["39"] == "00"
            # The terminal gets a new initial key (a new KSN and IPEK under the issuer's BDK), as a key-loading
            # device would inject it, its DUKPT counters starting over; its row changes in another connection.
            store, hsm = await Store.open(issuer.settings.db_url), await connect(issuer.settings.hsm_url)
            try:
                keys = await load_issuer_keys(store, hsm)
                ksn = await allocate_initial_ksn(store, keys)
                ipek = await hsm.inject_ipek(keys.bdk, ksn)
                await store.run_write(
                    lambda c: c.execute(update(terminals).where(terminals.c.terminal_id == shop.terminal_id).values(initial_ksn=ksn, ksn_counter=None, ksn_window=None))
                )
            finally:
                await hsm.close()
                await store.close()
            rekeyed = PosTerminal(
                terminal_id=shop.terminal_id, merchant_id=shop.merchant_id, mcc=shop.mcc, ipek=ipek, initial_ksn=ksn,
                currency_numeric=shop.currency_numeric, chip_capable=shop.chip_capable,
            )
            # The old key is refused at once on both engines, and the new one is accepted.
            for conn in (issuer.conn, other):
                assert (await conn.request(shop.card_request(ada, 1_00, entry="magstripe")))["39"] == "63"
            for conn in (other, issuer.conn):
                conn.add_terminal(rekeyed)
                assert (await conn.request(rekeyed.card_request(ada, 1_00, entry="magstripe")))["39"] == "00"
        finally:
            await other.close()
