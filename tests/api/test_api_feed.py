"""The live feed: events written with their change, served as server-sent events that resume after Last-Event-ID."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from api_helpers import AppEnv, Person


async def _read_events(client: httpx.AsyncClient, who: Person, count: int, *, last_event_id: int | None = None,
                       ready: asyncio.Event | None = None) -> list[dict[str, Any]]:
    headers = who.auth | ({"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {})
    events: list[dict[str, Any]] = []
    async with client.stream("GET", "/v1/events/stream", headers=headers) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        if ready is not None:
            ready.set()
        frame: dict[str, str] = {}
        async for line in r.aiter_lines():
            if line == "":
                if "data" in frame:
                    event = json.loads(frame["data"])
                    assert str(event["id"]) == frame["id"] and event["type"] == frame["event"]
                    events.append(event)
                    if len(events) == count:
                        return events
                frame = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(": ")
                frame[name] = value
    return events


async def test_payments_reach_both_streams_and_a_stream_resumes(app_env: AppEnv) -> None:
    ada = await app_env.enroll("ada", 10_000)
    bob = await app_env.enroll("bob")
    ready = asyncio.Event()
    reader = asyncio.create_task(_read_events(app_env.client, bob, 3, ready=ready))
    await asyncio.wait_for(ready.wait(), 5)
    for amount in (100, 200, 300):
        r = await app_env.write("POST", "/v1/payments", ada, {"to": "bob", "amount_minor": amount, "currency": "EUR", "note": f"n{amount}"})
        assert r.status_code == 201
    live = await asyncio.wait_for(reader, 10)
    assert [(e["type"], e["data"]["amount_minor"]) for e in live] == [("payment.received", a) for a in (100, 200, 300)]
    assert all(e["schema_version"] == 1 and e["cardholder_id"] == bob.id for e in live)

    # Reconnecting with Last-Event-ID gets only what came after it, from the store.
    resumed = await asyncio.wait_for(_read_events(app_env.client, bob, 2, last_event_id=live[0]["id"]), 10)
    assert [e["id"] for e in resumed] == [e["id"] for e in live[1:]]
    page = (await app_env.client.get("/v1/events", params={"after": 0}, headers=ada.auth)).json()
    assert [e["type"] for e in page["items"]] == ["payment.sent"] * 3
    assert all(e["cardholder_id"] == ada.id for e in page["items"])


async def test_events_describe_only_committed_changes(app_env: AppEnv) -> None:
    ada = await app_env.enroll("ada", 100)
    await app_env.enroll("bob")
    r = await app_env.write("POST", "/v1/payments", ada, {"to": "bob", "amount_minor": 5_000, "currency": "EUR"})
    assert r.json()["error"]["code"] == "insufficient_funds"
    page = (await app_env.client.get("/v1/events", headers=ada.auth)).json()
    assert page["items"] == []


async def test_a_cardholder_cannot_read_another_ones_stream(app_env: AppEnv) -> None:
    ada = await app_env.enroll("ada", 10_000)
    bob = await app_env.enroll("bob")
    eve = await app_env.enroll("eve")
    await app_env.write("POST", "/v1/payments", ada, {"to": "bob", "amount_minor": 1, "currency": "EUR"})
    page = (await app_env.client.get("/v1/events", params={"after": 0}, headers=eve.auth)).json()
    assert page["items"] == []
    r = await app_env.client.get("/v1/events/stream", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
    assert bob  # bob's events are his alone; eve saw none above
