"""Cards in the app: freeze, report lost with a replacement the wallet follows, set and change the PIN."""

from __future__ import annotations

from typing import Any

from api_helpers import AppEnv, Person
from sqlalchemy import select

from processor.api.models import idempotency
from processor.issuing import cards
from processor.tokenization import tokens


async def _card(app_env: AppEnv, person: Person, **kwargs: Any) -> Any:
    from processor.issuing import issue_card

    service = app_env.running.service
    return await issue_card(service.store, service.hsm, await service.issuer_keys(), account_id=person.account_id, pin=None, **kwargs)


async def test_freeze_and_unfreeze_with_events(app_env: AppEnv) -> None:
    ada = await app_env.enroll("ada")
    card = await _card(app_env, ada)
    r = await app_env.write("POST", f"/v1/cards/{card.id}/freeze", ada)
    assert r.status_code == 200 and r.json()["status"] == "frozen"
    assert (await cards.get(app_env.store, card.id)).status == "frozen"
    assert (await app_env.write("POST", f"/v1/cards/{card.id}/freeze", ada)).json()["status"] == "frozen"
    assert (await app_env.write("POST", f"/v1/cards/{card.id}/unfreeze", ada)).json()["status"] == "active"
    events = (await app_env.client.get("/v1/events", headers=ada.auth)).json()["items"]
    assert [(e["type"], e["data"]["status"]) for e in events] == [("card.status", "frozen"), ("card.status", "active")]
    listed = (await app_env.client.get("/v1/cards", headers=ada.auth)).json()
    assert [c["id"] for c in listed] == [card.id] and listed[0]["last4"] == card.last4 and "pan" not in listed[0]


async def test_report_lost_issues_a_replacement_and_moves_wallet_tokens(app_env: AppEnv) -> None:
    from processor.tokenization.wallet import provision_token

    ada = await app_env.enroll("ada")
    card = await _card(app_env, ada)
    service = app_env.running.service
    token = await provision_token(service.store, service.hsm, await service.issuer_keys(), card_id=card.id, wallet="phone",
                                  device_id="PIXEL", wallet_dir=str(app_env.settings.log_dir / "bureau"))
    first = await app_env.write("POST", f"/v1/cards/{card.id}/report-lost", ada, key="lost-1")
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["card"]["status"] == "lost" and body["replacement"]["status"] == "active"
    assert body["replacement"]["id"] != card.id and body["repointed_token_ids"] == [token["id"]]
    again = await app_env.write("POST", f"/v1/cards/{card.id}/report-lost", ada, key="lost-1")
    assert again.json() == body and again.headers["Idempotent-Replayed"] == "true"
    other_key = await app_env.write("POST", f"/v1/cards/{card.id}/report-lost", ada, key="lost-2")
    assert other_key.json()["replacement"]["id"] == body["replacement"]["id"]  # still one replacement
    assert (await tokens.get(app_env.store, token["id"])).card_id == body["replacement"]["id"]
    cards = (await app_env.client.get("/v1/cards", headers=ada.auth)).json()
    assert sorted(c["status"] for c in cards) == ["active", "lost"]


async def test_set_and_change_pin_through_the_hsm(app_env: AppEnv) -> None:
    ada = await app_env.enroll("ada")
    card = await _card(app_env, ada)
    r = await app_env.write("PUT", f"/v1/cards/{card.id}/pin", ada, {"pin": "4321"})
    assert r.status_code == 200 and r.json()["pin_set"] is True
    stored = await cards.get(app_env.store, card.id)
    assert stored.pin_method == "pvv" and "4321" not in (stored.pin_value or "")
    r = await app_env.write("PUT", f"/v1/cards/{card.id}/pin", ada, {"pin": "9999"})
    assert r.json()["error"]["code"] == "invalid_request"  # the current PIN is needed to change it
    r = await app_env.write("PUT", f"/v1/cards/{card.id}/pin", ada, {"pin": "9999", "current_pin": "0000"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "wrong_pin"
    r = await app_env.write("PUT", f"/v1/cards/{card.id}/pin", ada, {"pin": "123456", "current_pin": "4321"})
    assert r.status_code == 200
    assert (await cards.get(app_env.store, card.id)).pin_method == "ibm3624"
    for _ in range(3):
        r = await app_env.write("PUT", f"/v1/cards/{card.id}/pin", ada, {"pin": "1111", "current_pin": "000000"})
    assert r.json()["error"]["code"] == "pin_tries_exceeded"

    def bodies(conn: Any) -> list[str]:
        return [f"{b} {h}" for b, h in conn.execute(select(idempotency.c.body, idempotency.c.request_hash))]

    import hashlib
    import json

    recorded = " ".join(await app_env.store.run_query(bodies))
    for pin in ("4321", "9999", "123456", "0000"):
        assert pin not in recorded
        for path in (f"/v1/cards/{card.id}/pin",):
            guess = hashlib.sha256(json.dumps(["PUT", path, {"pin": pin}], sort_keys=True, separators=(",", ":")).encode()).hexdigest()
            assert guess not in recorded


async def test_controls_are_set_and_read_through_the_api(app_env: AppEnv) -> None:
    ada = await app_env.enroll("ada")
    card = await _card(app_env, ada)
    r = await app_env.client.get(f"/v1/cards/{card.id}/controls", headers=ada.auth)
    assert r.status_code == 200 and r.json()["per_transaction_minor"] is None and r.json()["contactless"] is True
    wanted = {"per_transaction_minor": 50_00, "daily_count": 3, "blocked_categories": ["gambling"], "allowed_countries": ["DE", "FR"],
              "contactless": False}
    r = await app_env.write("PUT", f"/v1/cards/{card.id}/controls", ada, wanted)
    assert r.status_code == 200, r.text
    got = (await app_env.client.get(f"/v1/cards/{card.id}/controls", headers=ada.auth)).json()
    assert {k: got[k] for k in wanted} == wanted and got["atm"] is True
    r = await app_env.write("PUT", f"/v1/cards/{card.id}/controls", ada, {"blocked_categories": ["casinos"]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"
