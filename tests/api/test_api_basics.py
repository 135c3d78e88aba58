"""Sign-in, accounts, idempotency and the error shape, over real HTTP to a real uvicorn."""

from __future__ import annotations

import asyncio

from api_helpers import PASSWORD, AppEnv


async def test_sign_in_refresh_and_sign_out(app_env: AppEnv) -> None:
    ada = await app_env.enroll("ada", 10_000)
    me = await app_env.client.get("/v1/me", headers=ada.auth)
    assert me.status_code == 200 and me.json()["handle"] == "ada"

    r = await app_env.client.post("/v1/auth/refresh", json={"refresh_token": ada.refresh_token})
    assert r.status_code == 200
    fresh = r.json()
    assert fresh["access_token"] != ada.token
    # The spent refresh token used again: the whole sign-in is revoked, the new tokens too.
    r = await app_env.client.post("/v1/auth/refresh", json={"refresh_token": ada.refresh_token})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_refresh_token"
    r = await app_env.client.post("/v1/auth/refresh", json={"refresh_token": fresh["refresh_token"]})
    assert r.status_code == 401
    r = await app_env.client.get("/v1/me", headers={"Authorization": f"Bearer {fresh['access_token']}"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated"

    r = await app_env.client.post("/v1/auth/sign-in", json={"handle": "@ada", "password": PASSWORD})
    token = r.json()["access_token"]
    assert (await app_env.client.post("/v1/auth/sign-out", headers={"Authorization": f"Bearer {token}"})).status_code == 204
    assert (await app_env.client.get("/v1/me", headers={"Authorization": f"Bearer {token}"})).status_code == 401


async def test_only_hashes_of_passwords_and_tokens_are_stored(app_env: AppEnv) -> None:
    from sqlalchemy import select

    from processor.api.models import credentials, tokens

    ada = await app_env.enroll("ada")

    def rows(conn):  # noqa: ANN001, ANN202
        return conn.execute(select(credentials.c.password_hash)).scalars().all(), conn.execute(select(tokens.c.token_hash)).scalars().all()

    hashes, token_hashes = await app_env.store.run_query(rows)
    assert all(h.startswith("$argon2id$") and PASSWORD not in h for h in hashes)
    assert ada.token not in token_hashes and ada.refresh_token not in token_hashes and len(token_hashes) >= 2


async def test_failed_sign_ins_are_throttled(app_env: AppEnv) -> None:
    await app_env.enroll("ada")
    answers = []
    for _ in range(6):
        r = await app_env.client.post("/v1/auth/sign-in", json={"handle": "ada", "password": "wrong password!"})
        answers.append(r.json()["error"]["code"])
    assert answers[:5] == ["invalid_credentials"] * 5 and answers[5] == "too_many_attempts"
    r = await app_env.client.post("/v1/auth/sign-in", json={"handle": "ada", "password": PASSWORD})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0  # even the right password waits
    r = await app_env.client.post("/v1/auth/sign-in", json={"handle": "nobody", "password": "wrong password!"})
    assert r.status_code == 429  # the same client address is throttled too


async def test_unauthenticated_and_wrong_role_are_refused(app_env: AppEnv) -> None:
    ada = await app_env.enroll("ada")
    for headers in ({}, {"Authorization": "Bearer at_forged"}, {"Authorization": "Basic YWRhOnB3"}, {"Authorization": "Bearer " + "x" * 500}):
        r = await app_env.client.get("/v1/accounts", headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated"
    r = await app_env.write("POST", "/v1/operator/cardholders", ada, {"name": "Eve", "handle": "eve", "password": PASSWORD})
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    r = await app_env.client.get("/v1/accounts", headers=app_env.op)
    assert r.status_code == 403


async def test_writes_need_an_idempotency_key_and_replay_the_first_answer(app_env: AppEnv) -> None:
    ada = await app_env.enroll("ada", 10_000)
    await app_env.enroll("bob")
    body = {"to": "@bob", "amount_minor": 700, "currency": "EUR", "note": "lunch"}
    r = await app_env.client.post("/v1/payments", json=body, headers=ada.auth)
    assert r.status_code == 400 and r.json()["error"]["code"] == "idempotency_key_required"

    first, again = await asyncio.gather(*(app_env.write("POST", "/v1/payments", ada, body, key="k-1") for _ in range(2)))
    assert {first.status_code, again.status_code} == {201}
    assert first.json()["id"] == again.json()["id"]
    later = await app_env.write("POST", "/v1/payments", ada, body, key="k-1")
    assert later.json()["id"] == first.json()["id"] and later.headers["Idempotent-Replayed"] == "true"
    assert await app_env.balance(ada) == 10_000 - 700

    other = await app_env.write("POST", "/v1/payments", ada, body | {"amount_minor": 1}, key="k-1")
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_key_reused"


async def test_errors_have_one_shape_and_never_echo_input(app_env: AppEnv) -> None:
    ada = await app_env.enroll("ada", 100)
    cases = [
        ("POST", "/v1/payments", {"to": "@nobody", "amount_minor": 1, "currency": "EUR"}, 404, "recipient_not_found"),
        ("POST", "/v1/payments", {"to": "@ada", "amount_minor": 1, "currency": "EUR"}, 422, "cannot_pay_yourself"),
        ("POST", "/v1/payments", {"to": "@bob", "amount_minor": "1", "currency": "EUR"}, 400, "invalid_request"),
        ("POST", "/v1/payments", {"to": "@bob", "amount_minor": -5, "currency": "EUR"}, 400, "invalid_request"),
        ("POST", "/v1/payments", {"to": "@bob", "amount_minor": 5, "currency": "EUR", "extra": 1}, 400, "invalid_request"),
        ("PUT", "/v1/cards/1/pin", {"pin": "12a4"}, 400, "invalid_request"),
    ]
    for method, path, body, status, code in cases:
        r = await app_env.write(method, path, ada, body)
        assert r.status_code == status, (path, body, r.text)
        error = r.json()["error"]
        assert error["code"] == code and isinstance(error["message"], str) and isinstance(error["details"], dict)
        assert "12a4" not in r.text
    r = await app_env.client.get("/v1/nowhere", headers=ada.auth)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = await app_env.client.get("/v1/accounts/1/transactions?cursor=garbage", headers=ada.auth)
    assert r.json()["error"]["code"] in ("invalid_cursor", "not_found")


async def test_openapi_document_is_published(app_env: AppEnv) -> None:
    r = await app_env.client.get("/openapi.json")
    doc = r.json()
    assert r.status_code == 200 and doc["openapi"].startswith("3.")
    assert {"/v1/payments", "/v1/events/stream", "/v1/cards/{card_id}/pin", "/v1/accounts/{account_id}/transactions"} <= set(doc["paths"])
    assert "ErrorBody" in doc["components"]["schemas"] and "HTTPValidationError" not in doc["components"]["schemas"]
    assert doc["info"]["x-error-codes"]["insufficient_funds"]["status"] == 422
