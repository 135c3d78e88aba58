"""End to end over TCP: what a terminal sees, and what the cardholder's balance shows afterwards."""

from __future__ import annotations

import asyncio

from processor import issuing, ledger
from processor.iso8583 import Balance
from engine_helpers import more_terminals

from terminal_sim.iso_client import TerminalConnection
from terminal_sim.pos import CardData


async def test_purchase_approved_and_posted(issuer):
    shop, ada = issuer.terminals["shop"], issuer.cards["ada"]
    answer = await issuer.send(shop.card_request(ada, 42_50, entry="magstripe"))
    assert answer["t"] == "0210"
    assert answer["39"] == "00"
    assert len(answer["38"]) == 6
    view = await issuer.account("ada")
    assert view.ledger_minor == 500_00 - 42_50
    assert view.available_minor == 500_00 - 42_50


async def test_chip_purchase_with_dukpt_pin(issuer):
    shop, ada = issuer.terminals["shop"], issuer.cards["ada"]
    answer = await issuer.send(shop.card_request(ada, 10_00, entry="magstripe", with_pin=True))
    assert answer["39"] == "00"
    assert shop.dukpt_counter == 1


async def test_retransmission_gets_first_answer_without_second_posting(issuer):
    shop, ada = issuer.terminals["shop"], issuer.cards["ada"]
    request = shop.card_request(ada, 25_00, entry="magstripe")
    first = await issuer.send(request)
    again = await issuer.send(dict(request))
    assert (first["39"], first["38"]) == (again["39"], again["38"])
    assert (await issuer.account("ada")).ledger_minor == 500_00 - 25_00


async def test_insufficient_funds_and_partial_approval(issuer):
    shop, bob = issuer.terminals["shop"], issuer.cards["bob"]
    assert (await issuer.send(shop.card_request(bob, 50_00, entry="magstripe")))["39"] == "51"
    partial = await issuer.send(shop.card_request(bob, 50_00, entry="magstripe", partial_ok=True))
    assert partial["39"] == "10"
    assert int(partial["4"]) == 10_00
    amounts = {b.amount_type: b.amount_minor for b in Balance.parse_all(partial["54"])}
    assert amounts["57"] == 50_00
    assert (await issuer.account("bob")).ledger_minor == 0


async def test_card_status_declines(issuer):
    shop = issuer.terminals["shop"]
    expected = {"carol": "62", "dave": "41", "erin": "43", "frank": "54"}
    for name, code in expected.items():
        answer = await issuer.send(shop.card_request(issuer.cards[name], 5_00, entry="magstripe"))
        assert answer["39"] == code, name


async def test_unknown_card(issuer):
    shop = issuer.terminals["shop"]
    stranger = CardData(pan="4000000000000002", expiry="3012", track2="4000000000000002=30122010000000000", cvv2="123")
    assert (await issuer.send(shop.card_request(stranger, 5_00, entry="magstripe")))["39"] == "14"


async def test_wrong_pin_three_times_blocks_the_pin(issuer):
    shop, grace = issuer.terminals["shop"], issuer.cards["grace"]
    codes = []
    for pin in ("1111", "2222", "3333", "1234"):
        answer = await issuer.send(shop.card_request(grace, 5_00, entry="magstripe", with_pin=True, pin=pin))
        codes.append(answer["39"])
    assert codes == ["55", "55", "75", "75"]
    assert (await issuer.account("grace")).ledger_minor == 300_00


async def test_right_pin_resets_the_try_counter(issuer):
    shop, grace = issuer.terminals["shop"], issuer.cards["grace"]
    assert (await issuer.send(shop.card_request(grace, 1_00, entry="magstripe", with_pin=True, pin="1111")))["39"] == "55"
    assert (await issuer.send(shop.card_request(grace, 1_00, entry="magstripe", with_pin=True)))["39"] == "00"
    card = await issuing.cards.get(issuer.running.store, grace.card_id)
    assert card.pin_tries == 0


async def test_cvv2_and_stripe_cvv(issuer):
    shop, ada = issuer.terminals["shop"], issuer.cards["ada"]
    good = await issuer.send(shop.card_request(ada, 3_00, entry="manual", cvv2=ada.cvv2))
    assert good["39"] == "00"
    wrong = "000" if ada.cvv2 != "000" else "999"
    assert (await issuer.send(shop.card_request(ada, 3_00, entry="manual", cvv2=wrong)))["39"] == "N7"
    pan, rest = ada.track2.split("=")
    tampered_cvv = str((int(rest[12:15]) + 1) % 1000).zfill(3)
    forged = CardData(pan=ada.pan, expiry=ada.expiry, track2=f"{pan}={rest[:12]}{tampered_cvv}{rest[15:]}", cvv2=ada.cvv2)
    assert (await issuer.send(shop.card_request(forged, 3_00, entry="magstripe")))["39"] == "82"


async def test_amount_and_currency_checks(issuer):
    shop, ada = issuer.terminals["shop"], issuer.cards["ada"]
    zero = shop.card_request(ada, 0, entry="magstripe")
    assert (await issuer.send(zero))["39"] == "13"
    dollars = shop.card_request(ada, 5_00, entry="magstripe")
    dollars["49"] = "840"
    assert (await issuer.send(dollars))["39"] == "13"


async def test_preauth_increment_completion(issuer):
    hotel, ada = issuer.terminals["hotel"], issuer.cards["ada"]
    preauth = hotel.card_request(ada, 150_00, mti="0100", entry="manual", cvv2=ada.cvv2)
    assert (await issuer.send(preauth))["39"] == "00"
    view = await issuer.account("ada")
    assert (view.ledger_minor, view.available_minor) == (500_00, 350_00)
    assert (await issuer.send(hotel.incremental(preauth, 30_00)))["39"] == "00"
    assert (await issuer.account("ada")).available_minor == 320_00
    done = await issuer.send(hotel.completion(preauth, 170_00))
    assert done["t"] == "0230" and done["39"] == "00"
    view = await issuer.account("ada")
    assert (view.ledger_minor, view.available_minor, len(view.holds)) == (330_00, 330_00, 0)


async def test_reversals(issuer):
    shop, ada = issuer.terminals["shop"], issuer.cards["ada"]
    purchase = shop.card_request(ada, 60_00, entry="magstripe")
    assert (await issuer.send(purchase))["39"] == "00"
    assert (await issuer.send(shop.reversal(purchase)))["39"] == "00"
    assert (await issuer.account("ada")).ledger_minor == 500_00
    assert (await issuer.send(shop.reversal(purchase)))["39"] == "00"
    assert (await issuer.account("ada")).ledger_minor == 500_00
    orphan = dict(purchase, **{"11": "999999"})
    assert (await issuer.send(shop.reversal(orphan)))["39"] == "25"


async def test_partial_reversal_of_a_hold(issuer):
    shop, ada = issuer.terminals["shop"], issuer.cards["ada"]
    pump = shop.card_request(ada, 100_00, mti="0100", entry="magstripe")
    assert (await issuer.send(pump))["39"] == "00"
    assert (await issuer.send(shop.reversal(pump, remaining_minor=35_00)))["39"] == "00"
    view = await issuer.account("ada")
    assert view.available_minor == 500_00 - 35_00
    assert [h.amount_minor for h in view.holds] == [35_00]


async def test_refund_and_balance_inquiry(issuer):
    shop, ada = issuer.terminals["shop"], issuer.cards["ada"]
    assert (await issuer.send(shop.card_request(ada, 5_00, processing_code="200000", entry="magstripe")))["39"] == "00"
    answer = await issuer.send(shop.card_request(ada, 0, processing_code="310000", entry="magstripe", with_pin=True))
    assert answer["39"] == "00"
    amounts = {b.amount_type: b.amount_minor for b in Balance.parse_all(answer["54"])}
    assert amounts == {"01": 505_00, "02": 505_00}


async def test_advice_is_never_declined(issuer):
    shop, bob = issuer.terminals["shop"], issuer.cards["bob"]
    answer = await issuer.send(shop.card_request(bob, 80_00, mti="0120", entry="magstripe"))
    assert answer["t"] == "0130" and answer["39"] == "00"
    assert (await issuer.account("bob")).available_minor == 10_00 - 80_00


async def test_network_management(issuer):
    shop = issuer.terminals["shop"]
    for code in ("001", "301", "002"):
        answer = await issuer.send(shop.echo(code))
        assert (answer["t"], answer["39"]) == ("0810", "00")


async def test_concurrent_connections_never_overdraw(issuer):
    """60 connections each try 10.00 against bob's 10.00 at once: exactly one wins."""
    bob = issuer.cards["bob"]
    pads = await more_terminals(issuer.settings, 60, merchant_id=issuer.terminals["shop"].merchant_id)
    conns = [await TerminalConnection.connect("127.0.0.1", issuer.running.port, timeout_s=10.0, terminals=[p]) for p in pads]
    try:
        answers = await asyncio.gather(*(c.request(p.card_request(bob, 10_00, entry="magstripe")) for c, p in zip(conns, pads)))
    finally:
        for c in conns:
            await c.close()
    codes = sorted(a["39"] for a in answers)
    assert codes.count("00") == 1 and codes.count("51") == 59
    view = await issuer.account("bob")
    assert view.ledger_minor == 0
    assert await ledger.invariants.check(issuer.running.store) == []
