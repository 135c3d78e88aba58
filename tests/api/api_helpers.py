"""People enrolled through the operator API, and writes with an Idempotency-Key, for the API tests."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from processor.api.security import create_operator
from processor.api.server import RunningApi, running_api
from processor.config import Settings

PASSWORD = "correct horse battery staple"


@dataclass
class Person:
    handle: str
    id: int
    account_id: int
    token: str
    refresh_token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class AppEnv:
    settings: Settings
    running: RunningApi
    client: httpx.AsyncClient
    operator_key: str
    people: list[Person] = field(default_factory=list)

    @property
    def store(self) -> Any:
        return self.running.service.store

    @property
    def op(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.operator_key}"}

    async def write(self, method: str, path: str, who: Person | dict[str, str] | None, json: Any = None, *, key: str | None = None) -> httpx.Response:
        headers = who.auth if isinstance(who, Person) else dict(who or {})
        headers["Idempotency-Key"] = key or secrets.token_hex(8)
        return await self.client.request(method, path, json=json, headers=headers)

    async def enroll(self, handle: str | None = None, deposit_minor: int = 0, currency: str = "EUR") -> Person:
        handle = handle or f"p{secrets.token_hex(4)}"
        r = await self.write("POST", "/v1/operator/cardholders", self.op,
                             {"name": handle.title(), "handle": handle, "password": PASSWORD, "currency": currency})
        assert r.status_code == 201, r.text
        enrolled = r.json()
        if deposit_minor:
            r = await self.write("POST", f"/v1/operator/accounts/{enrolled['account_id']}/deposits", self.op, {"amount_minor": deposit_minor})
            assert r.status_code == 201, r.text
        r = await self.client.post("/v1/auth/sign-in", json={"handle": handle, "password": PASSWORD})
        assert r.status_code == 200, r.text
        tokens = r.json()
        person = Person(handle, enrolled["id"], enrolled["account_id"], tokens["access_token"], tokens["refresh_token"])
        self.people.append(person)
        return person

    async def balance(self, person: Person, account_id: int | None = None) -> int:
        r = await self.client.get(f"/v1/accounts/{account_id or person.account_id}", headers=person.auth)
        assert r.status_code == 200, r.text
        return r.json()["available_minor"]


async def init_issuer(settings: Settings) -> str:
    """Issuer keys in the HSM and an operator key; returns the operator key."""
    from hsm_sim import connect
    from processor.issuing import ensure_issuer_keys
    from processor.ledger import Store

    store = await Store.open(settings.db_url)
    try:
        hsm = await connect(settings.hsm_url)
        try:
            await ensure_issuer_keys(store, hsm)
        finally:
            await hsm.close()
        _, key = await store.run_write(create_operator, "tests")
        return key
    finally:
        await store.close()


