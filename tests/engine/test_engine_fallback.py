"""Magnetic-stripe rules for chip cards: at a chip terminal the chip is read, the stripe only as fallback."""

from __future__ import annotations

import dataclasses

import pytest
from engine_helpers import Issuer

from processor import issuing
from processor.auth.policy import Policy
from terminal_sim.pos import CardData, InsertChip


def careless(terminal):  # type: ignore[no-untyped-def]
    """The same terminal, with its chip-first rule switched off: it swipes whatever it is given."""
    return dataclasses.replace(terminal, chip_capable=False)


async def test_chip_card_swiped_at_a_chip_terminal_is_refused_and_costs_no_pin_try(issuer: Issuer) -> None:
    market, ada = issuer.terminals["market"], issuer.cards["ada"]
    before = await issuer.account("ada")
    answer = await issuer.send(careless(market).card_request(ada, 12_00, entry="magstripe", with_pin=True, pin="0000"))
    assert answer["39"] == "57"
    after = await issuer.account("ada")
    assert (after.ledger_minor, after.available_minor) == (before.ledger_minor, before.available_minor)
    # The wrong PIN of the refused swipe was never checked: the right PIN still works first time.
    assert (await issuer.send(issuer.terminals["shop"].card_request(ada, 1_00, entry="magstripe", with_pin=True)))["39"] == "00"
    card = await issuing.cards.get(issuer.running.store, await _card_id(issuer, "ada"))
    assert card.pin_tries == 0


async def test_the_terminal_itself_asks_for_the_chip(issuer: Issuer) -> None:
    with pytest.raises(InsertChip):
        issuer.terminals["market"].card_request(issuer.cards["ada"], 12_00, entry="magstripe")
    with pytest.raises(ValueError, match="no chip reader"):
        issuer.terminals["shop"].card_request(issuer.cards["ada"], 12_00, entry="fallback")


async def test_fallback_after_a_chip_failure_is_approved_up_to_the_limit(issuer: Issuer) -> None:
    market, ada = issuer.terminals["market"], issuer.cards["ada"]
    limit = Policy().fallback_max_minor
    request = market.card_request(ada, limit, entry="fallback")
    assert request["22"] == "801"
    assert (await issuer.send(request))["39"] == "00"
    above = await issuer.send(market.card_request(ada, limit + 1, entry="fallback"))
    assert above["39"] == "57"
    assert (await issuer.account("ada")).ledger_minor == 500_00 - limit


async def test_fallback_needs_a_chip_card_and_a_chip_terminal(issuer: Issuer) -> None:
    ivan = issuer.cards["ivan"]
    market, shop = issuer.terminals["market"], issuer.terminals["shop"]
    assert (await issuer.send(market.card_request(ivan, 1_00, entry="fallback")))["39"] == "57"
    # A stripe-only terminal that claims a chip fallback.
    claims = dataclasses.replace(shop, chip_capable=True).card_request(issuer.cards["ada"], 1_00, entry="fallback")
    assert (await issuer.send(claims))["39"] == "57"


async def test_stripe_only_cards_swipe_anywhere_and_chip_cards_at_stripe_readers(issuer: Issuer) -> None:
    market, shop = issuer.terminals["market"], issuer.terminals["shop"]
    assert (await issuer.send(market.card_request(issuer.cards["ivan"], 3_00, entry="magstripe")))["39"] == "00"
    assert (await issuer.send(shop.card_request(issuer.cards["ada"], 3_00, entry="magstripe")))["39"] == "00"


async def test_a_stripe_claiming_no_chip_does_not_verify(issuer: Issuer) -> None:
    """Rewriting the service code of a chip card's stripe to 101 to dodge the rule breaks its CVV."""
    ada = issuer.cards["ada"]
    pan, rest = ada.track2.split("=")
    forged = CardData(pan=ada.pan, expiry=ada.expiry, track2=f"{pan}={rest[:4]}101{rest[7:]}", cvv2=ada.cvv2)
    answer = await issuer.send(issuer.terminals["market"].card_request(forged, 3_00, entry="magstripe"))
    assert answer["39"] == "82"


async def _card_id(issuer: Issuer, name: str) -> int:
    cards = await issuing.cards.list_for_account(issuer.running.store, issuer.accounts[name])
    return cards[0].card_id
