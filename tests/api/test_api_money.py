"""Conversations that carry money: messages, payments by handle, requests, limits and frozen accounts."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from api_helpers import AppEnv
from sqlalchemy import update

from processor.api.models import payment_requests
from processor.ledger import accounts, invariants


@pytest.fixture
def app_env(app_env_both: AppEnv) -> AppEnv:
    """These money rules run on SQLite and on PostgreSQL."""
    return app_env_both


async def test_a_payment_by_handle_is_instant_and_shows_in_both_threads(app_env: AppEnv) -> None:
    ada = await app_env.enroll("ada", 10_000)
    bob = await app_env.enroll("bob")
    r = await app_env.write("POST", "/v1/payments", ada, {"to": "@bob", "amount_minor": 1_250, "currency": "EUR", "note": "pizza"})
    assert r.status_code == 201, r.text
    payment = r.json()
    assert payment["from"] == "ada" and payment["to"] == "bob" and payment["balance"]["available_minor"] == 8_750
    assert await app_env.balance(ada) == 8_750 and await app_env.balance(bob) == 1_250

    r = await app_env.write("POST", "/v1/conversations", bob, {"with": "@ada"})
    assert r.status_code == 200 and r.json()["id"] == payment["conversation_id"] and r.json()["with"] == "ada"
    r = await app_env.write("POST", f"/v1/conversations/{payment['conversation_id']}/messages", bob, {"text": "thanks!"})
    assert r.status_code == 201
    for who in (ada, bob):
        thread = (await app_env.client.get(f"/v1/conversations/{payment['conversation_id']}/items", headers=who.auth)).json()["items"]
        assert [(i["type"], i["text"]) for i in thread] == [("message", "thanks!"), ("payment", "pizza")]
        assert thread[1]["amount_minor"] == 1_250 and thread[1]["sender"] == "ada"
    history = (await app_env.client.get(f"/v1/accounts/{bob.account_id}/transactions", headers=bob.auth)).json()["items"]
    assert [(t["type"], t["status"], t["amount_minor"]) for t in history] == [("p2p", "posted", 1_250)]
    failures = await invariants.check(app_env.store)
    assert failures == []


async def test_thread_pages_with_a_cursor(app_env: AppEnv) -> None:
    ada = await app_env.enroll("ada", 10_000)
    await app_env.enroll("bob")
    conv = (await app_env.write("POST", "/v1/conversations", ada, {"with": "bob"})).json()["id"]
    for n in range(7):
        await app_env.write("POST", f"/v1/conversations/{conv}/messages", ada, {"text": f"m{n}"})
    seen, cursor = [], None
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = (await app_env.client.get(f"/v1/conversations/{conv}/items", params=params, headers=ada.auth)).json()
        seen += [i["text"] for i in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"m{n}" for n in reversed(range(7))]


async def test_frozen_accounts_neither_send_nor_receive(app_env: AppEnv) -> None:
    ada = await app_env.enroll("ada", 10_000)
    bob = await app_env.enroll("bob", 10_000)
    await accounts.set_status(app_env.store, bob.account_id, "frozen")
    r = await app_env.write("POST", "/v1/payments", ada, {"to": "bob", "amount_minor": 100, "currency": "EUR"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "recipient_cannot_receive"
    r = await app_env.write("POST", "/v1/payments", bob, {"to": "ada", "amount_minor": 100, "currency": "EUR"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "account_not_open"
    assert await app_env.balance(ada) == 10_000
    assert await invariants.check(app_env.store) == []


async def test_insufficient_funds_and_daily_limits(app_env: AppEnv) -> None:
    r = await app_env.write("PUT", "/v1/operator/p2p-limits", app_env.op, {"daily_limit_minor": 1000, "daily_count": 3})
    assert r.status_code == 200, r.text
    ada = await app_env.enroll("ada", 10_000)
    await app_env.enroll("bob")
    pay = lambda amount: app_env.write("POST", "/v1/payments", ada, {"to": "bob", "amount_minor": amount, "currency": "EUR"})  # noqa: E731
    assert (await pay(20_000)).json()["error"]["code"] == "daily_limit_exceeded"
    assert (await pay(600)).status_code == 201
    assert (await pay(500)).json()["error"]["code"] == "daily_limit_exceeded"
    assert (await pay(400)).status_code == 201
    assert (await pay(0)).status_code == 400
    # Two at once against the last free slot of the count: exactly one passes.
    await app_env.write("PUT", "/v1/operator/p2p-limits", app_env.op, {"daily_limit_minor": 100_000, "daily_count": 3})
    answers = await asyncio.gather(pay(1), pay(1))
    assert sorted(r.status_code for r in answers) == [201, 422]
    assert (await pay(1)).json()["error"]["code"] == "daily_count_exceeded"
    assert await app_env.balance(ada) == 10_000 - 1_001


async def test_payment_requests_pay_decline_cancel_and_expire(app_env: AppEnv) -> None:
    ada = await app_env.enroll("ada", 10_000)
    bob = await app_env.enroll("bob", 5_000)
    r = await app_env.write("POST", "/v1/payment-requests", bob, {"from": "@ada", "amount_minor": 2_000, "currency": "EUR", "note": "tickets"})
    assert r.status_code == 201, r.text
    req = r.json()
    assert req["status"] == "open" and req["payer"] == "ada"

    r = await app_env.write("POST", f"/v1/payment-requests/{req['id']}/pay", bob)
    assert r.status_code == 403  # only the payer pays
    first, second = await asyncio.gather(*(app_env.write("POST", f"/v1/payment-requests/{req['id']}/pay", ada) for _ in range(2)))
    assert sorted([first.status_code, second.status_code]) == [200, 201]
    assert first.json()["id"] == second.json()["id"]  # paying twice answers the one payment
    assert await app_env.balance(ada) == 8_000 and await app_env.balance(bob) == 7_000
    assert (await app_env.client.get(f"/v1/payment-requests/{req['id']}", headers=ada.auth)).json()["status"] == "paid"

    r2 = (await app_env.write("POST", "/v1/payment-requests", bob, {"from": "ada", "amount_minor": 1, "currency": "EUR"})).json()
    assert (await app_env.write("POST", f"/v1/payment-requests/{r2['id']}/cancel", ada)).status_code == 403
    assert (await app_env.write("POST", f"/v1/payment-requests/{r2['id']}/decline", ada)).json()["status"] == "declined"
    r = await app_env.write("POST", f"/v1/payment-requests/{r2['id']}/pay", ada)
    assert r.json()["error"]["code"] == "request_not_open"

    r3 = (await app_env.write("POST", "/v1/payment-requests", bob, {"from": "ada", "amount_minor": 1, "currency": "EUR"})).json()
    assert (await app_env.write("POST", f"/v1/payment-requests/{r3['id']}/cancel", bob)).json()["status"] == "cancelled"

    r4 = (await app_env.write("POST", "/v1/payment-requests", bob, {"from": "ada", "amount_minor": 1, "currency": "EUR"})).json()

    def backdate(conn):  # noqa: ANN001, ANN202
        past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
        conn.execute(update(payment_requests).where(payment_requests.c.id == r4["id"]).values(expires_at=past))

    await app_env.store.run_write(backdate)
    r = await app_env.write("POST", f"/v1/payment-requests/{r4['id']}/pay", ada)
    assert r.json()["error"]["code"] == "request_expired"
    assert (await app_env.client.get(f"/v1/payment-requests/{r4['id']}", headers=bob.auth)).json()["status"] == "expired"
    assert await app_env.balance(ada) == 8_000
    statuses = [q["status"] for q in (await app_env.client.get("/v1/payment-requests", headers=ada.auth)).json()]
    assert sorted(statuses) == ["cancelled", "declined", "expired", "paid"]
    assert await invariants.check(app_env.store) == []


async def test_savings_product_accrual_and_own_transfers(app_env: AppEnv) -> None:
    from processor.savings import accrue

    r = await app_env.write("PUT", "/v1/operator/savings-products", app_env.op,
                            {"code": "SAVE2", "name": "Saver 2%", "currency": "EUR", "annual_rate_ppm": 20_000})
    assert r.status_code == 200, r.text
    ada = await app_env.enroll("ada", 200_000_00)
    r = await app_env.write("POST", "/v1/accounts", ada, {"kind": "savings", "product": "SAVE2"})
    assert r.status_code == 201, r.text
    savings = r.json()
    assert savings["savings"]["annual_rate_ppm"] == 20_000
    r = await app_env.write("POST", "/v1/transfers", ada, {"from_account_id": ada.account_id, "to_account_id": savings["id"], "amount_minor": 100_000_00})
    assert r.status_code == 201 and r.json()["to_balance_minor"] == 100_000_00
    today = dt.datetime.now(dt.UTC).date()
    report = await accrue(app_env.store, today)
    assert report.days_accrued == 1 and report.accrued_minor == {"EUR": 548}
    again = await accrue(app_env.store, today)
    assert again.days_accrued == 0  # idempotent per day
    assert await invariants.check(app_env.store) == []
