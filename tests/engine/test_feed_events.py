"""Card traffic reaches the cardholder's feed: one event per answer, written in the batch that answered it."""

from __future__ import annotations

from sqlalchemy import select

from processor.events import read_after
from processor.ledger.models import accounts


async def _events_of(issuer, name: str) -> list:
    store = issuer.running.store
    account_id = issuer.accounts[name]
    holder = await store.run_query(lambda conn: conn.execute(select(accounts.c.cardholder_id).where(accounts.c.id == account_id)).scalar_one())
    return [e for e in await store.run_query(read_after, 0, 1000) if e.cardholder_id == holder]


async def test_approvals_declines_and_reversals_become_feed_events(issuer):
    shop, ada, bob = issuer.terminals["shop"], issuer.cards["ada"], issuer.cards["bob"]
    purchase = shop.card_request(ada, 12_34, entry="magstripe")
    assert (await issuer.send(purchase))["39"] == "00"
    assert (await issuer.send(dict(purchase)))["39"] == "00"  # a retransmission: no second event
    assert (await issuer.send(shop.reversal(purchase)))["39"] == "00"
    assert (await issuer.send(shop.card_request(bob, 900_00, entry="magstripe")))["39"] == "51"

    ada_events = await _events_of(issuer, "ada")
    assert [e.type for e in ada_events] == ["card.authorization", "card.reversal"]
    approved = ada_events[0].data
    assert approved["approved"] is True and approved["amount_minor"] == 12_34 and approved["currency"] == "EUR"
    assert approved["merchant"]["terminal_id"] == "SHOP0001" and approved["merchant"]["mcc"] == "5411"
    assert approved["last4"] == ada.pan[-4:]
    assert ada_events[1].data["approved_minor"] == 12_34
    declined = (await _events_of(issuer, "bob"))[-1]
    assert declined.type == "card.authorization" and declined.data["approved"] is False and declined.data["response_code"] == "51"
    assert all(e.envelope()["schema_version"] == 1 for e in ada_events)
