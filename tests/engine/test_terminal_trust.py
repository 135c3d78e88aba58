"""A terminal is who DE 41 says only when it is registered and names its own merchant; its DUKPT counter
only moves forward; a retransmission gets its first answer; PIN tries are counted atomically."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from engine_helpers import Issuer, build_issuer

from hsm_sim import connect
from processor import issuing, ledger
from processor.config import Settings
from processor.issuing import load_issuer_keys
from processor.issuing.terminals import add_terminal
from processor.ledger import Store
from processor.ledger.apply import KSN_WINDOW
from processor.server import running_engine
from terminal_sim.iso_client import TerminalConnection
from terminal_sim.pos import PosTerminal


async def recorded(issuer: Issuer) -> int:
    return sum((await ledger.invariants.report(issuer.running.store))["auths_by_rc"].values())


async def test_an_unregistered_terminal_gets_03_for_every_message_and_nothing_is_recorded(issuer: Issuer) -> None:
    shop, ada = issuer.terminals["shop"], issuer.cards["ada"]
    purchase = shop.card_request(ada, 5_00, entry="magstripe")
    assert (await issuer.send(purchase))["39"] == "00"
    before = await recorded(issuer)
    stranger = dataclasses.replace(shop, terminal_id="NOBODY01")
    messages = [
        stranger.card_request(ada, 5_00, entry="magstripe"),
        stranger.card_request(ada, 5_00, mti="0100", entry="magstripe"),
        stranger.card_request(ada, 5_00, mti="0120", entry="magstripe"),
        stranger.completion(purchase, 5_00),
        stranger.reversal(purchase),
        stranger.reversal(purchase, advice=True),
        stranger.echo("301"),
        stranger.echo("001"),
    ]
    for message in messages:
        answer = await issuer.send(message)
        assert answer["39"] == "03", message["t"]
    assert await recorded(issuer) == before
    assert (await issuer.account("ada")).ledger_minor == 500_00 - 5_00


async def test_de42_must_be_the_terminals_merchant(issuer: Issuer) -> None:
    shop, ada = issuer.terminals["shop"], issuer.cards["ada"]
    posing = dataclasses.replace(shop, merchant_id=issuer.terminals["hotel"].merchant_id)
    assert (await issuer.send(posing.card_request(ada, 5_00, entry="magstripe")))["39"] == "03"
    without = shop.card_request(ada, 5_00, entry="magstripe")
    del without["42"]
    assert (await issuer.send(without))["39"] == "03"
    assert (await issuer.account("ada")).ledger_minor == 500_00


async def test_a_terminal_cannot_reverse_another_terminals_sale(issuer: Issuer) -> None:
    shop, market, ivan = issuer.terminals["shop"], issuer.terminals["market"], issuer.cards["ivan"]
    sale = shop.card_request(ivan, 50_00, entry="magstripe")
    assert (await issuer.send(sale))["39"] == "00"
    # The market names the shop's sale in DE 90: on the market's own terminal id there is no such sale.
    assert (await issuer.send(market.reversal(sale)))["39"] == "25"
    assert (await issuer.account("ivan")).ledger_minor == 200_00 - 50_00
    assert (await issuer.send(shop.reversal(sale)))["39"] == "00"
    assert (await issuer.account("ivan")).ledger_minor == 200_00


async def test_a_retransmission_with_a_new_transmission_time_gets_the_first_answer(issuer: Issuer) -> None:
    shop, ada = issuer.terminals["shop"], issuer.cards["ada"]
    request = shop.card_request(ada, 25_00, entry="magstripe")
    first = await issuer.send(request)
    for mti, de7 in (("0200", "1231235959"), ("0201", "0101000001")):
        again = await issuer.send(dict(request, **{"t": mti, "7": de7}))
        assert (again["t"], again["39"], again["38"]) == ("0210", first["39"], first["38"])
    assert (await issuer.account("ada")).ledger_minor == 500_00 - 25_00
    reversal = shop.reversal(request)
    assert (await issuer.send(reversal))["39"] == "00"
    repeat = await issuer.send(dict(reversal, **{"t": "0401", "7": "0101000002"}))
    assert (repeat["t"], repeat["39"]) == ("0410", "00")
    assert (await issuer.account("ada")).ledger_minor == 500_00
    # The same STAN with another local time is another request: answered on its own.
    later = dict(request, **{"12": "235959", "37": request["37"][:-1] + "9"})
    assert (await issuer.send(later))["39"] == "00"
    assert (await issuer.account("ada")).ledger_minor == 500_00 - 25_00


async def test_a_replayed_pin_block_is_refused_and_changes_nothing(issuer: Issuer) -> None:
    shop, ada = issuer.terminals["shop"], issuer.cards["ada"]
    first = shop.card_request(ada, 10_00, entry="magstripe", with_pin=True)
    assert (await issuer.send(first))["39"] == "00"
    # The captured PIN block and KSN, in a new request of the same terminal: the counter went backwards.
    replay = shop.card_request(ada, 400_00, entry="magstripe")
    replay["52"], replay["53"] = first["52"], first["53"]
    assert (await issuer.send(replay))["39"] == "63"
    # Pipelined requests reach the store in any order: one numbered before an answered one, but never used
    # itself, is accepted once; its PIN block and KSN in another request are a replay.
    older = shop.card_request(ada, 1_00, entry="magstripe", with_pin=True)
    newer = shop.card_request(ada, 1_00, entry="magstripe", with_pin=True)
    assert (await issuer.send(newer))["39"] == "00"
    assert (await issuer.send(older))["39"] == "00"
    lifted = shop.card_request(ada, 1_00, entry="magstripe")
    lifted["52"], lifted["53"] = older["52"], older["53"]
    assert (await issuer.send(lifted))["39"] == "63"
    # A counter never used but further below the highest than the window reaches: refused too.
    behind = shop.dukpt_counter
    shop.dukpt_counter += KSN_WINDOW + 10
    assert (await issuer.send(shop.card_request(ada, 1_00, entry="magstripe", with_pin=True)))["39"] == "00"
    shop.dukpt_counter = behind
    assert (await issuer.send(shop.card_request(ada, 1_00, entry="magstripe", with_pin=True)))["39"] == "63"
    assert (await issuer.account("ada")).ledger_minor == 500_00 - 10_00 - 3 * 1_00
    card = await issuing.cards.get(issuer.running.store, ada.card_id)
    assert card.pin_tries == 0


@pytest.fixture
async def two_engines(db_url: str, tmp_path: Path) -> AsyncIterator[tuple[Issuer, list[Any], list[PosTerminal]]]:
    """Two engine processes' worth of engines on one store, and 30 more terminals at the shop's merchant."""
    settings = Settings(db_url=db_url, hsm_url=f"file:{tmp_path / 'hsm.json'}", log_dir=tmp_path)
    cards, accounts, terminals = await build_issuer(settings)
    store, hsm = await Store.open(settings.db_url), await connect(settings.hsm_url)
    try:
        keys = await load_issuer_keys(store, hsm)
        shop = terminals["shop"]
        pads = []
        for n in range(30):
            registered = await add_terminal(
                store, hsm, keys, terminal_id=f"PAD{n:05d}", merchant_id=shop.merchant_id, mcc="5411", chip_capable=False
            )
            pads.append(PosTerminal.from_registered(registered.as_json()))
    finally:
        await hsm.close()
        await store.close()
    async with running_engine(settings) as one, running_engine(settings) as two:
        known = [*terminals.values(), *pads]
        conns = [await TerminalConnection.connect("127.0.0.1", e.port, timeout_s=20.0, terminals=known) for e in (one, two)]
        try:
            yield Issuer(settings, cards, accounts, terminals, one, conns[0]), conns, pads
        finally:
            for conn in conns:
                await conn.close()


async def test_thirty_concurrent_wrong_pins_on_two_engines_block_the_card(two_engines) -> None:
    issuer, conns, pads = two_engines
    grace = issuer.cards["grace"]
    guesses = [pad.card_request(grace, 5_00, entry="magstripe", with_pin=True, pin=f"{n:04d}") for n, pad in enumerate(pads, 1)]
    answers = await asyncio.gather(*(conns[n % 2].request(g) for n, g in enumerate(guesses)))
    codes = sorted(a["39"] for a in answers)
    # Each wrong guess counts once, in the statement that reads the count: two may say "wrong PIN".
    assert codes.count("55") == 2 and codes.count("75") == 28, codes
    assert (await issuing.cards.get(issuer.running.store, grace.card_id)).pin_tries >= 3
    right = pads[0].card_request(grace, 5_00, entry="magstripe", with_pin=True)
    assert (await conns[1].request(right))["39"] == "75"
    assert (await issuer.account("grace")).ledger_minor == 300_00


async def test_one_pin_block_replayed_on_two_engines_at_once_is_accepted_once(two_engines) -> None:
    issuer, conns, pads = two_engines
    ada = issuer.cards["ada"]
    captured = pads[0].card_request(ada, 30_00, entry="magstripe", with_pin=True)
    copies = []
    for _ in range(10):
        copy = pads[0].card_request(ada, 30_00, entry="magstripe")
        copy["52"], copy["53"] = captured["52"], captured["53"]
        copies.append(copy)
    answers = await asyncio.gather(*(conns[n % 2].request(c) for n, c in enumerate(copies)))
    codes = sorted(a["39"] for a in answers)
    assert codes == ["00"] + ["63"] * 9
    assert (await issuer.account("ada")).ledger_minor == 500_00 - 30_00


def test_every_store_result_has_its_response_code_in_auth() -> None:
    from processor.auth.answers import LEDGER_ANSWERS
    from processor.ledger.ops import Result

    assert set(LEDGER_ANSWERS) == set(Result)
    assert LEDGER_ANSWERS[Result.REPLAYED_KEY_SERIAL] == "63"
