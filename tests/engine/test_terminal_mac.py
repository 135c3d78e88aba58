"""Terminals MAC every message under the DUKPT key of its KSN; the engine trusts nothing unMACed and MACs
its answers."""

from __future__ import annotations

import dataclasses

from engine_helpers import Issuer, raw_exchange, recorded

from processor.iso8583 import encode
from processor.iso8583.mac import encode_for_mac


async def test_answers_carry_the_engines_mac(issuer: Issuer) -> None:
    shop, ada, bob = issuer.terminals["shop"], issuer.cards["ada"], issuer.cards["bob"]
    approved = await issuer.send(shop.card_request(ada, 5_00, entry="magstripe"))
    declined = await issuer.send(shop.card_request(bob, 500_00, entry="magstripe"))
    echo = await issuer.send(shop.echo())
    assert (approved["39"], declined["39"], echo["39"]) == ("00", "51", "00")
    assert approved["_authentic"] and declined["_authentic"] and echo["_authentic"]
    assert "64" in approved and "128" in echo  # 0810 carries DE 70: its MAC is in DE 128


async def test_unmaced_forged_and_misplaced_macs_get_63_and_change_nothing(issuer: Issuer) -> None:
    shop, ada = issuer.terminals["shop"], issuer.cards["ada"]
    before = await recorded(issuer)
    request = shop.card_request(ada, 90_00, entry="magstripe")
    unmaced = encode(request)
    zero_mac = encode_for_mac({**request, "53": shop.next_ksn()})
    signed, _ = shop.sign(request)
    tampered = signed.replace(request["4"].encode(), b"000000900000")
    wrong_place = encode({**request, "53": shop.next_ksn(), "64": "00" * 8, "95": "0" * 42})
    for payload in (unmaced, zero_mac, tampered, wrong_place):
        answer = await raw_exchange(issuer, payload)
        assert answer["39"] == "63"
        assert "64" not in answer and "128" not in answer
    assert await recorded(issuer) == before
    assert (await issuer.account("ada")).ledger_minor == 500_00


async def test_a_message_under_another_terminals_key_is_refused(issuer: Issuer) -> None:
    shop, market, ivan = issuer.terminals["shop"], issuer.terminals["market"], issuer.cards["ivan"]
    sale = shop.card_request(ivan, 20_00, entry="magstripe")
    assert (await issuer.send(sale))["39"] == "00"
    # The market signs a reversal that names the shop as its terminal: its KSN is not the shop's.
    posing = dataclasses.replace(market, terminal_id=shop.terminal_id, merchant_id=shop.merchant_id)
    forged, _ = posing.sign(shop.reversal(sale))
    assert (await raw_exchange(issuer, forged))["39"] == "63"
    assert (await issuer.account("ivan")).ledger_minor == 200_00 - 20_00


async def test_a_captured_message_sent_again_gets_its_first_answer_and_nothing_more(issuer: Issuer) -> None:
    shop, ada = issuer.terminals["shop"], issuer.cards["ada"]
    captured, _ = shop.sign(shop.card_request(ada, 30_00, entry="magstripe"))
    first = await raw_exchange(issuer, captured)
    again = await raw_exchange(issuer, captured)
    assert (first["39"], again["39"], again["38"]) == ("00", "00", first["38"])
    assert (await issuer.account("ada")).ledger_minor == 500_00 - 30_00
    echo, _ = shop.sign(shop.echo())
    assert (await raw_exchange(issuer, echo))["39"] == "00"
    assert (await raw_exchange(issuer, echo))["39"] == "63", "an echo under a used KSN is a replay"


async def test_the_key_loading_device_gets_the_ipek_and_initial_ksn(issuer: Issuer) -> None:
    shop = issuer.terminals["shop"]
    assert shop.ipek and len(shop.ipek) == 32 and shop.initial_ksn and len(shop.initial_ksn) == 20


async def test_a_terminal_registered_without_a_key_is_refused_even_unmaced(issuer: Issuer) -> None:
    from processor import issuing

    shop, ada = issuer.terminals["shop"], issuer.cards["ada"]
    await issuing.terminals.create(issuer.running.store, terminal_id="KEYLESS1", merchant_id=shop.merchant_id)
    keyless = dataclasses.replace(shop, terminal_id="KEYLESS1")
    before = await recorded(issuer)
    for request in (keyless.card_request(ada, 5_00, entry="magstripe"), keyless.echo()):
        answer = await raw_exchange(issuer, encode({k: v for k, v in request.items() if k not in ("53", "64", "128")}))
        assert answer["39"] == "63"
        assert "64" not in answer and "128" not in answer
    assert await recorded(issuer) == before
    assert (await issuer.account("ada")).ledger_minor == 500_00
