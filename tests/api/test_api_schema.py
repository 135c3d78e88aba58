"""The API against its own OpenAPI document (schemathesis), with a real `processor api` process.

Every operation gets generated requests, valid and not, signed as a cardholder (or as an operator on
operator routes). Whatever comes in, the answer must be no server error, of a documented status and
content type, and match its documented schema; and no cardholder's money may move because of another's.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

PASSWORD = "schema password 1"
EXAMPLES = int(os.environ.get("SCHEMA_EXAMPLES", "15"))


def _processor(workdir: Path, *args: str, stdin: str | None = None) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "processor.cli", *args, "--json"], cwd=workdir, input=stdin, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PROCESSOR_DB_URL": "", "PROCESSOR_HSM_URL": ""}, check=True)
    return json.loads(proc.stdout)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def live_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    workdir = tmp_path_factory.mktemp("schema")
    _processor(workdir, "init")
    key = _processor(workdir, "app", "operator-key", "--name", "schema")["key"]
    _processor(workdir, "savings", "product", "--code", "SAVE", "--rate", "2")
    people = {}
    for handle in ("ada", "bob"):
        holder = _processor(workdir, "cardholder", "create", "--name", handle.title(), "--handle", handle)
        account = _processor(workdir, "account", "open", "--cardholder", str(holder["id"]), "--deposit", "1000.00")
        _processor(workdir, "card", "issue", "--account", str(account["id"]), "--pin", "1234")
        _processor(workdir, "app", "password", handle, stdin=PASSWORD + "\n")
        people[handle] = account["id"]
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "processor.cli", "api", "--http", f"127.0.0.1:{port}"], cwd=workdir,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PROCESSOR_DB_URL": "", "PROCESSOR_HSM_URL": ""})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}/openapi.json", timeout=2)
                break
            except httpx.TransportError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"processor api did not start: {server.stderr.read() if server.poll() is not None else 'timeout'}")
                time.sleep(0.2)
        tokens = {h: httpx.post(f"{url}/v1/auth/sign-in", json={"handle": h, "password": PASSWORD}).json()["access_token"] for h in people}
        # Ada and Bob talk and ask each other for money, so that ids exist for the generated requests to find.
        ada = {"Authorization": f"Bearer {tokens['ada']}"}
        httpx.post(f"{url}/v1/payments", json={"to": "bob", "amount_minor": 100, "currency": "EUR"}, headers=ada | {"Idempotency-Key": "seed-1"})
        httpx.post(f"{url}/v1/payment-requests", json={"from": "bob", "amount_minor": 100, "currency": "EUR"}, headers=ada | {"Idempotency-Key": "seed-2"})
        yield {"url": url, "operator_key": key, "tokens": tokens, "accounts": people, "server": server, "workdir": workdir}
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()


def test_every_operation_answers_as_documented(live_api: dict[str, Any]) -> None:
    from hypothesis import given

    loaded = schemathesis.openapi.from_url(f"{live_api['url']}/openapi.json")
    failures: list[str] = []
    operations = 0
    for result in loaded.get_all_operations():
        operation = result.ok()
        if operation.path == "/v1/events/stream":
            continue  # an endless stream: its own tests read it
        operations += 1
        # Bob's token: whatever ids are generated, Ada's money must not move. Operator routes take the key.
        token = live_api["operator_key"] if operation.path.startswith("/v1/operator") else live_api["tokens"]["bob"]

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
        def check(case: Any) -> None:
            # Business rules (funds, limits, taken handles) may refuse a request whose shape is valid.
            case.call_and_validate(headers={"Authorization": f"Bearer {token}"},
                                   excluded_checks=[schemathesis.checks.positive_data_acceptance])

        try:
            check()
        except Exception as exc:  # noqa: BLE001 - every operation is tried, then all failures are reported
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}"[:3000])
    assert operations >= 25
    assert not failures, "\n\n".join(failures)


def test_generated_requests_moved_nothing_of_adas_but_what_bob_sent(live_api: dict[str, Any]) -> None:
    """Run after the generated requests: Ada's account lost only the payment she made herself, and the ledger holds."""
    import asyncio

    from sqlalchemy import select

    from processor.ledger import Store, invariants
    from processor.ledger.models import postings

    async def outgoing() -> tuple[list[int], list[str]]:
        store = await Store.open(f"sqlite+aiosqlite:///{live_api['workdir'] / 'processor.db'}")
        try:
            rows = await store.run_query(lambda conn: conn.execute(
                select(postings.c.amount_minor).where(postings.c.account_id == live_api["accounts"]["ada"], postings.c.amount_minor < 0)
            ).scalars().all())
            return list(rows), await invariants.check(store)
        finally:
            await store.close()

    sent, failures = asyncio.run(outgoing())
    assert sent == [-100]  # only the seed payment Ada made herself
    assert failures == []
