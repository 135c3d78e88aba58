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


async def test_the_apps_history_shows_card_transactions_with_merchant_and_status(issuer):
    from processor.api.views import transactions

    shop, ada = issuer.terminals["shop"], issuer.cards["ada"]
    shop.name_location = f"{'Corner Shop':<23}{'Berlin':<13}DE"
    pending = shop.card_request(ada, 5_00, mti="0100", entry="magstripe")
    posted = shop.card_request(ada, 7_00, entry="magstripe")
    reversed_ = shop.card_request(ada, 9_00, entry="magstripe")
    for request in (pending, posted, reversed_):
        assert (await issuer.send(request))["39"] == "00"
    assert (await issuer.send(shop.reversal(reversed_)))["39"] == "00"
    store = issuer.running.store
    account_id = issuer.accounts["ada"]
    holder = await store.run_query(lambda conn: conn.execute(select(accounts.c.cardholder_id).where(accounts.c.id == account_id)).scalar_one())
    page = await store.run_query(transactions, holder, account_id, None, 2)
    cards = [t for t in page["items"] if t["type"] == "card_payment"]
    assert [(t["amount_minor"], t["status"]) for t in cards] == [(-9_00, "reversed"), (-7_00, "posted")]
    assert cards[0]["merchant"]["mcc"] == "5411" and page["next_cursor"] is not None
    rest = await store.run_query(transactions, holder, account_id, page["next_cursor"], 10)
    assert [(t["type"], t["amount_minor"], t["status"]) for t in rest["items"]] == [
        ("card_payment", -5_00, "pending"), ("deposit", 500_00, "posted")]
