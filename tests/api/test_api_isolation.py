"""A cardholder sees and moves only their own: every route that names an object, tried with another's ids."""

from __future__ import annotations

from typing import Any

import pytest
from api_helpers import AppEnv

from processor.issuing import cards

# A body for each write that takes one (the ids in the path are what is tried).
BODIES: dict[tuple[str, str], Any] = {
    ("PUT", "/v1/cards/{card_id}/pin"): {"pin": "9876"},
    ("POST", "/v1/conversations/{conversation_id}/messages"): {"text": "hello from eve"},
    ("PUT", "/v1/cards/{card_id}/controls"): {"per_transaction_minor": 0},
}


@pytest.fixture
def app_env(app_env_both: AppEnv) -> AppEnv:
    """These money rules run on SQLite and on PostgreSQL."""
    return app_env_both


async def test_every_route_with_an_id_refuses_another_cardholders_objects(app_env: AppEnv) -> None:
    from processor.issuing import issue_card

    service = app_env.running.service
    await app_env.write("PUT", "/v1/operator/savings-products", app_env.op, {"code": "S", "name": "S", "currency": "EUR", "annual_rate_ppm": 1})
    ada = await app_env.enroll("ada", 50_000)
    bob = await app_env.enroll("bob", 50_000)
    eve = await app_env.enroll("eve", 50_000)
    card = await issue_card(service.store, service.hsm, await service.issuer_keys(), account_id=ada.account_id, pin="1234")
    payment = (await app_env.write("POST", "/v1/payments", ada, {"to": "bob", "amount_minor": 100, "currency": "EUR"})).json()
    request = (await app_env.write("POST", "/v1/payment-requests", bob, {"from": "ada", "amount_minor": 100, "currency": "EUR"})).json()
    savings = (await app_env.write("POST", "/v1/accounts", ada, {"kind": "savings", "product": "S"})).json()
    ids = {"account_id": ada.account_id, "card_id": card.id, "conversation_id": payment["conversation_id"], "request_id": request["id"]}
    before = {"ada": await app_env.balance(ada), "bob": await app_env.balance(bob), "card": (await cards.get(app_env.store, card.id))}

    doc = (await app_env.client.get("/openapi.json")).json()
    tried = []
    for path, operations in doc["paths"].items():
        if "{" not in path or path.startswith("/v1/operator"):
            continue
        for method in operations:
            method = method.upper()
            concrete = path
            for name, value in ids.items():
                concrete = concrete.replace("{" + name + "}", str(value))
            assert "{" not in concrete, f"no id of Ada's for {path}: extend the test"
            if method == "GET":
                r = await app_env.client.get(concrete, headers=eve.auth)
            else:
                r = await app_env.write(method, concrete, eve, BODIES.get((method, path)))
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", (method, path, r.status_code, r.text)
            tried.append(f"{method} {path}")
    assert len(tried) >= 14, tried

    # Ids in bodies: Eve cannot move money out of, or into, Ada's accounts by naming them.
    for body in ({"from_account_id": ada.account_id, "to_account_id": eve.account_id, "amount_minor": 1},
                 {"from_account_id": eve.account_id, "to_account_id": savings["id"], "amount_minor": 1}):
        r = await app_env.write("POST", "/v1/transfers", eve, body)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    # Lists show only one's own.
    assert [a["id"] for a in (await app_env.client.get("/v1/accounts", headers=eve.auth)).json()] == [eve.account_id]
    assert (await app_env.client.get("/v1/cards", headers=eve.auth)).json() == []
    assert (await app_env.client.get("/v1/conversations", headers=eve.auth)).json() == []
    assert (await app_env.client.get("/v1/payment-requests", headers=eve.auth)).json() == []
    assert (await app_env.client.get("/v1/events", headers=eve.auth)).json()["items"] == []

    after_card = await cards.get(app_env.store, card.id)
    assert (after_card.status, after_card.pin_value) == (before["card"].status, before["card"].pin_value)
    assert await app_env.balance(ada) == before["ada"] and await app_env.balance(bob) == before["bob"]
    assert (await app_env.client.get(f"/v1/payment-requests/{request['id']}", headers=ada.auth)).json()["status"] == "open"
