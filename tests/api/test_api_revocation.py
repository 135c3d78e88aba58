"""Sign-out and revocation count at once in every API process: a second `processor api` refuses the token
on the very next request, for payments (whose token check runs in the payment's own transaction) and reads."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from api_helpers import PASSWORD, AppEnv, Person


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def second_api(app_env_both: AppEnv, tmp_path: Path) -> Iterator[httpx.AsyncClient]:
    """Another `processor api` process on the same database and HSM as `app_env_both`."""
    port = _free_port()
    env = {**os.environ, "PROCESSOR_DB_URL": app_env_both.settings.db_url, "PROCESSOR_HSM_URL": app_env_both.settings.hsm_url}
    server = subprocess.Popen([sys.executable, "-m", "processor.cli", "api", "--http", f"127.0.0.1:{port}"], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=2)
                break
            except httpx.TransportError:
                assert server.poll() is None, server.stderr.read() if server.stderr else "the second API stopped"
                assert time.monotonic() < deadline, "the second API did not start within 60 s"
                time.sleep(0.2)
        yield httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=15)
    finally:
        server.terminate()
        server.wait(timeout=15)


async def _pay(client: httpx.AsyncClient, payer_token: str, to: Person) -> httpx.Response:
    return await client.post("/v1/payments", json={"to": f"@{to.handle}", "amount_minor": 100, "currency": "EUR"},
                             headers={"Authorization": f"Bearer {payer_token}", "Idempotency-Key": secrets.token_hex(8)})


async def test_sign_out_on_one_process_refuses_the_token_on_another_at_once(app_env_both: AppEnv, second_api: httpx.AsyncClient) -> None:
    ada, bob = await app_env_both.enroll("ada", 10_000), await app_env_both.enroll("bob")
    # The second process has seen (and remembers) Ada's token: she pays and reads there.
    for _ in range(3):
        assert (await _pay(second_api, ada.token, bob)).status_code == 201
    assert (await second_api.get("/v1/me", headers=ada.auth)).status_code == 200

    signed_out = await app_env_both.client.post("/v1/auth/sign-out", headers=ada.auth)
    assert signed_out.status_code == 204
    refused = await _pay(second_api, ada.token, bob)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthenticated"
    assert "invalid_token" in refused.headers["WWW-Authenticate"]
    me = await second_api.get("/v1/me", headers=ada.auth)
    assert me.status_code == 401 and me.json()["error"]["code"] == "unauthenticated"
    assert await app_env_both.balance(bob) == 300  # the refused payment moved nothing

    # The same Idempotency-Key after a fresh sign-in is still unused: the refusal was not recorded as its answer.
    r = await app_env_both.client.post("/v1/auth/sign-in", json={"handle": "ada", "password": PASSWORD})
    fresh = r.json()["access_token"]
    key = secrets.token_hex(8)
    body = {"to": "@bob", "amount_minor": 50, "currency": "EUR"}
    assert (await second_api.post("/v1/payments", json=body, headers=ada.auth | {"Idempotency-Key": key})).status_code == 401
    paid = await second_api.post("/v1/payments", json=body, headers={"Authorization": f"Bearer {fresh}", "Idempotency-Key": key})
    assert paid.status_code == 201 and "Idempotent-Replayed" not in paid.headers


async def test_a_reused_refresh_token_revokes_the_sign_in_on_every_process(app_env_both: AppEnv, second_api: httpx.AsyncClient) -> None:
    ada, bob = await app_env_both.enroll("ada", 10_000), await app_env_both.enroll("bob")
    r = await app_env_both.client.post("/v1/auth/refresh", json={"refresh_token": ada.refresh_token})
    pair = r.json()
    assert (await _pay(second_api, pair["access_token"], bob)).status_code == 201
    # The spent refresh token again, on the first process: the whole family is revoked ...
    again = await app_env_both.client.post("/v1/auth/refresh", json={"refresh_token": ada.refresh_token})
    assert again.status_code == 401
    # ... and the second process refuses its access token on the next payment.
    assert (await _pay(second_api, pair["access_token"], bob)).status_code == 401
    assert (await _pay(app_env_both.client, pair["access_token"], bob)).status_code == 401


async def _stream_until_closed(client: httpx.AsyncClient, token: str, opened: asyncio.Event, events: list[str]) -> None:
    """Hold an event stream open, noting each event's type, until the server ends it."""
    async with client.stream("GET", "/v1/events/stream", headers={"Authorization": f"Bearer {token}"}) as r:
        assert r.status_code == 200
        opened.set()
        async for line in r.aiter_lines():
            if line.startswith("event: "):
                events.append(line[7:])


async def test_open_streams_end_when_their_token_is_revoked_in_any_process(app_env_both: AppEnv, second_api: httpx.AsyncClient) -> None:
    ada, bob = await app_env_both.enroll("ada", 10_000), await app_env_both.enroll("bob", 10_000)
    local_open, remote_open, bob_open = asyncio.Event(), asyncio.Event(), asyncio.Event()
    local_events: list[str] = []
    remote_events: list[str] = []
    bob_events: list[str] = []
    local = asyncio.create_task(_stream_until_closed(app_env_both.client, ada.token, local_open, local_events))
    remote = asyncio.create_task(_stream_until_closed(second_api, ada.token, remote_open, remote_events))
    bobs = asyncio.create_task(_stream_until_closed(second_api, bob.token, bob_open, bob_events))
    await asyncio.wait_for(asyncio.gather(local_open.wait(), remote_open.wait(), bob_open.wait()), 10)
    assert (await _pay(app_env_both.client, bob.token, ada)).status_code == 201
    await _until(lambda: local_events == remote_events == ["payment.received"], lambda: f"{local_events} {remote_events}")
    assert (await app_env_both.client.post("/v1/auth/sign-out", headers=ada.auth)).status_code == 204

    # Signed out on the first process: its own stream ends at once, the second process's within its check interval.
    await asyncio.wait_for(local, 2)
    await asyncio.wait_for(remote, 5)
    assert local_events == remote_events == ["payment.received"]
    # Bob's stream, on the same process and token table, is untouched and still live.
    assert not bobs.done()
    assert (await _pay(app_env_both.client, await _fresh_token(app_env_both, "ada"), bob)).status_code == 201
    await _until(lambda: bob_events == ["payment.sent", "payment.received"], lambda: str(bob_events))
    bobs.cancel()
    # The revoked token cannot open a stream again.
    r = await second_api.get("/v1/events/stream", headers=ada.auth)
    assert r.status_code == 401


async def _fresh_token(env: AppEnv, handle: str) -> str:
    r = await env.client.post("/v1/auth/sign-in", json={"handle": handle, "password": PASSWORD})
    assert r.status_code == 200
    return str(r.json()["access_token"])


async def _until(condition: Callable[[], bool], seen: Callable[[], str] = lambda: "", timeout_s: float = 5) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {seen()}"
        await asyncio.sleep(0.02)
