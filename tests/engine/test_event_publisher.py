"""Events on the broker: what a cardholder's app and an operator's console receive, and that nothing is lost.

The publisher reads the outbox after commit and publishes to `events/cardholders/{id}/...` and
`events/operators/...`. Consumers log in with their own broker accounts and keep their sessions across a
restart of the broker (QoS 1, clean start off, a session expiry), and drop a copy by its event id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
import pytest
from sqlalchemy import select

from processor import issuing
from processor.events import advance_consumer, cardholder_event, last_id, operator_event, read_after, write_events
from processor.ledger import Store
from processor.ledger.models import accounts, utcnow
from processor.transport.broker import BrokerAdmin, start_broker
from processor.transport.mqtt import mqtt_properties
from processor.transport.publisher import OPERATOR_COPIES, EventPublisher, PublisherLimits, publisher_status, topics
from terminal_sim.pos import CardData

pytestmark = pytest.mark.mqtt


@dataclass
class Consumer:
    """A broker client that keeps its session, reconnects, and records every event it receives."""

    port: int
    username: str
    password: str
    client_id: str
    filters: list[str]
    received: list[dict[str, Any]] = field(default_factory=list)
    topics: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    connects: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    def ids(self) -> list[int]:
        """Event ids in arrival order, copies dropped (what a consumer does with a redelivery)."""
        seen: set[int] = set()
        out = []
        for event in self.received:
            if event["id"] not in seen:
                seen.add(event["id"])
                out.append(event["id"])
        return out

    async def run(self) -> None:
        while True:
            try:
                client = aiomqtt.Client(
                    "127.0.0.1", self.port, username=self.username, password=self.password,
                    identifier=self.client_id, protocol=aiomqtt.ProtocolVersion.V5, timeout=5, keepalive=5,
                    clean_start=False if self.connects else True,
                    properties=mqtt_properties("CONNECT", SessionExpiryInterval=600),
                )
                async with client:
                    self.connects += 1
                    for topic in self.filters:
                        granted = await client.subscribe(topic, qos=1)
                        if any(code.value >= 0x80 for code in granted):
                            self.refused.append(topic)
                    self.ready.set()
                    async for message in client.messages:
                        self.topics.append(str(message.topic))
                        self.received.append(json.loads(message.payload))
            except aiomqtt.MqttError:
                await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def consuming(*consumers: Consumer) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(c.run()) for c in consumers]
    try:
        async with asyncio.timeout(10):
            for c in consumers:
                await c.ready.wait()
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def eventually(predicate: Any, timeout_s: float, what: str) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            while not await predicate():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"{what} within {timeout_s:g} s") from None


def test_topics_put_each_event_where_its_readers_are():
    from processor.events import Event

    now = utcnow()
    event = lambda audience, cid, type_: Event(1, audience, cid, type_, {}, now)  # noqa: E731
    assert topics(event("cardholder", 7, "payment.received")) == ["events/cardholders/7/payment/received"]
    assert topics(event("cardholder", 7, "card.authorization")) == [
        "events/cardholders/7/card/authorization", "events/operators/card/authorization"]
    assert topics(event("operator", None, "settlement.finished")) == ["events/operators/settlement/finished"]
    assert topics(event("someone", 3, "card.status")) == [], "an audience nobody knows goes nowhere"


async def test_card_traffic_reaches_the_cardholders_app_and_the_operators(issuer, broker: Any):
    """A purchase: its holder's app gets it (and no other holder's app), operators get a copy; a card we do
    not know: operators hear of the decline."""
    store = issuer.running.store
    holder_of = {}
    for name in ("ada", "bob"):
        account_id = issuer.accounts[name]
        holder_of[name] = await store.run_query(
            lambda conn, a=account_id: conn.execute(select(accounts.c.cardholder_id).where(accounts.c.id == a)).scalar_one())
    async with BrokerAdmin(broker.url("admin")) as admin:
        passwords = {name: await admin.add_cardholder(cid) for name, cid in holder_of.items()}
    ada = Consumer(broker.port, f"cardholder-{holder_of['ada']}", passwords["ada"], f"cardholder-{holder_of['ada']}",
                   [f"events/cardholders/{holder_of['ada']}/#"])
    # Bob's app asks for Ada's events: refused, and nothing of hers reaches it.
    bob = Consumer(broker.port, f"cardholder-{holder_of['bob']}", passwords["bob"], f"cardholder-{holder_of['bob']}",
                   [f"events/cardholders/{holder_of['ada']}/#", "events/#", f"events/cardholders/{holder_of['bob']}/#"])
    ops = Consumer(broker.port, "operator", broker.broker.password("operator"), "ops-console", ["events/operators/#"])
    publisher = EventPublisher(store, broker.url("events"), limits=PublisherLimits(poll_interval_s=0.02))
    await store.run_write(advance_consumer, "mqtt", await store.run_query(last_id))  # the issuer's set-up is old news
    async with consuming(ada, bob, ops):
        running = asyncio.create_task(publisher.run())
        try:
            shop = issuer.terminals["shop"]
            assert (await issuer.send(shop.card_request(issuer.cards["ada"], 12_34, entry="magstripe")))["39"] == "00"
            stranger = CardData(pan="4000000000000002", expiry="3012", track2="4000000000000002=30122010000000000", cvv2="123")
            assert (await issuer.send(shop.card_request(stranger, 5_00, entry="magstripe")))["39"] == "14"
            newest = await store.run_query(last_id)

            async def all_in() -> bool:
                return publisher.stats.position >= newest and len(ops.ids()) >= 2 and len(ada.ids()) >= 1

            await eventually(all_in, 10, "the operators and Ada's app have their events")
            await asyncio.sleep(0.3)  # anything that should not come would have come by now
        finally:
            publisher.stop()
            await running
    assert bob.refused == [f"events/cardholders/{holder_of['ada']}/#", "events/#"]
    assert bob.received == [], "Bob's app got nothing of Ada's"
    [mine] = ada.received
    assert mine["schema_version"] == 1 and mine["type"] == "card.authorization"
    assert mine["cardholder_id"] == holder_of["ada"] and mine["data"]["amount_minor"] == 12_34
    assert mine["data"]["last4"] == issuer.cards["ada"].pan[-4:] and "4000000000000002" not in json.dumps(ops.received)
    assert ada.topics == [f"events/cardholders/{holder_of['ada']}/card/authorization"]
    assert [m["type"] for m in ops.received] == ["card.authorization", "authorization.unmatched"]
    assert ops.topics == ["events/operators/card/authorization", "events/operators/authorization/unmatched"]
    assert ops.received[0]["id"] == mine["id"]
    assert ops.received[1]["data"]["approved"] is False and ops.received[1]["data"]["terminal_id"] == "SHOP0001"
    assert await publisher_status(store) == {"consumer": "mqtt", "position": newest, "newest_event_id": newest, "backlog": 0}


@pytest.mark.postgres
@pytest.mark.slow
async def test_no_event_is_lost_or_doubled_while_the_broker_restarts(pg_url: str, broker: Any):
    """Writers commit events while the broker is stopped and started again: afterwards each consumer holds
    every event meant for it, once by event id, in id order."""
    store = await Store.open(pg_url)
    restarted = None
    try:
        holders = [await issuing.cardholders.create(store, f"Holder {i}", f"holder-{i}-{id(store) % 100000}")
                   for i in range(3)]
        async with BrokerAdmin(broker.url("admin")) as admin:
            password = await admin.add_cardholder(holders[0])
        mine = Consumer(broker.port, f"cardholder-{holders[0]}", password, f"cardholder-{holders[0]}",
                        [f"events/cardholders/{holders[0]}/#"])
        ops = Consumer(broker.port, "operator", broker.broker.password("operator"), "ops-console", ["events/operators/#"])
        start_id = await store.run_query(last_id)
        publisher = EventPublisher(store, broker.url("events"), name="restart-test",
                                   limits=PublisherLimits(batch=50, in_flight=16, publish_timeout_s=3.0,
                                                          backoff_min_s=0.1, backoff_max_s=0.5))
        await store.run_write(advance_consumer, "restart-test", start_id)
        rng = random.Random(14)
        committed_while_down = 0
        down = asyncio.Event()

        async def writer(n: int) -> None:
            nonlocal committed_while_down
            kinds = ("payment.received", "card.authorization", "card.status", "message.received")
            for i in range(150):
                now = utcnow()
                rows = [cardholder_event(rng.choice(holders), rng.choice(kinds), {"writer": n, "i": i}, now)]
                if i % 5 == 0:
                    rows.append(operator_event("settlement.finished", {"writer": n, "i": i}, now))
                await store.run_write(write_events, rows)
                if down.is_set():
                    committed_while_down += 1
                await asyncio.sleep(0.01)

        async def restart() -> None:
            nonlocal restarted
            await asyncio.sleep(1.0)
            await asyncio.to_thread(broker.stop)
            down.set()
            await asyncio.sleep(1.5)
            restarted = await asyncio.to_thread(start_broker, broker.broker, port=broker.port)
            down.clear()

        async with consuming(mine, ops):
            running = asyncio.create_task(publisher.run())
            try:
                await asyncio.gather(restart(), *(writer(n) for n in range(4)))
                newest = await store.run_query(last_id)
                everything = []
                after = start_id
                while batch := await store.run_query(read_after, after, 1000):
                    everything += batch
                    after = batch[-1].id
                for_me = [e.id for e in everything if e.cardholder_id == holders[0]]
                for_ops = [e.id for e in everything if e.audience == "operator" or e.type in OPERATOR_COPIES]

                async def all_in() -> bool:
                    return (publisher.stats.position >= newest and len(mine.ids()) >= len(for_me)
                            and len(ops.ids()) >= len(for_ops))

                await eventually(all_in, 60, "every committed event reached its consumers")
                await asyncio.sleep(0.5)
            finally:
                publisher.stop()
                await running
        assert committed_while_down > 0 and publisher.stats.failures > 0, "events were committed while the broker was away"
        assert mine.connects > 1 and ops.connects > 1, "the consumers reconnected to the restarted broker"
        assert len(everything) > 600
        assert mine.ids() == for_me, "the cardholder's app has each of its events once, in order"
        assert ops.ids() == for_ops, "the operators have each of theirs once, in order"
        assert {e["cardholder_id"] for e in mine.received} == {holders[0]}, "nobody else's events"
        assert await publisher_status(store, "restart-test") == {
            "consumer": "restart-test", "position": newest, "newest_event_id": newest, "backlog": 0}
    finally:
        if restarted is not None:
            restarted.stop()
        await store.close()


async def test_the_publish_command_runs_until_stopped_and_refuses_a_wrong_account(tmp_path, broker: Any):
    """`processor events publish`: a committed event reaches the operators; SIGTERM stops it cleanly (exit 0)
    with its position recorded; a wrong password is one line and exit 2."""
    import os
    import signal
    import subprocess
    import sys

    db_url = f"sqlite+aiosqlite:///{tmp_path / 'p.db'}"
    store = await Store.open(db_url)
    try:
        await store.run_write(write_events, [operator_event("settlement.finished", {"business_date": "2026-11-28"}, utcnow())])
    finally:
        await store.close()
    env = {**os.environ, "PROCESSOR_DB_URL": db_url, "PROCESSOR_HSM_URL": f"file:{tmp_path / 'hsm.json'}"}
    cli = [sys.executable, "-m", "processor.cli"]
    refused = subprocess.run([*cli, "events", "publish", "--mqtt", broker.url("operator").replace("operator:", "events:", 1)],
                             env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "refused the credentials" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    ops = Consumer(broker.port, "operator", broker.broker.password("operator"), "ops-cli", ["events/operators/#"])
    async with consuming(ops):
        process = subprocess.Popen([*cli, "events", "publish", "--mqtt", broker.url("events"), "--progress-s", "0"],
                                   env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            async def arrived() -> bool:
                return len(ops.received) >= 1

            await eventually(arrived, 30, "the operators got the settlement event")
        finally:
            process.send_signal(signal.SIGTERM)
            _, err = await asyncio.to_thread(process.communicate, timeout=30)
    assert process.returncode == 0, err
    assert ops.topics == ["events/operators/settlement/finished"]
    assert ops.received[0]["data"] == {"business_date": "2026-11-28"} and ops.received[0]["schema_version"] == 1
    assert "stopped at event 1" in err
    status = subprocess.run([*cli, "events", "status", "--json"], env=env, capture_output=True, text=True, timeout=60)
    assert json.loads(status.stdout) == {"consumer": "mqtt", "position": 1, "newest_event_id": 1, "backlog": 0}


@pytest.mark.postgres
@pytest.mark.slow
async def test_serve_publishes_events_one_engine_at_a_time_and_a_stand_by_takes_over(pg_url: str, broker: Any, tmp_path):
    """`processor serve --events-mqtt URL` on two engines: one publishes, the other stands by; each decision
    reaches the operators once by event id. The publishing engine is stopped (SIGTERM): the other takes
    over from the recorded position, and the decisions made after still arrive, none lost, none doubled."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from engine_helpers import build_issuer
    from test_killed_engine import _free_port

    from processor.config import Settings
    from processor.iso8583 import Request, decode, encode
    from terminal_sim.iso_client import TerminalConnection

    settings = Settings(db_url=pg_url, hsm_url=f"file:{tmp_path / 'hsm.json'}")
    cards, _, terminals = await build_issuer(settings)
    shop = terminals["shop"]
    store = await Store.open(pg_url)
    try:
        start_id = await store.run_query(last_id)
        await store.run_write(advance_consumer, "mqtt", start_id)  # the issuer's set-up is old news
    finally:
        await store.close()

    ports = [_free_port(), _free_port()]
    logs = [tmp_path / "engine-0.log", tmp_path / "engine-1.log"]

    def start(i: int) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PROCESSOR_DB_URL": pg_url, "PROCESSOR_HSM_URL": settings.hsm_url,
               "PROCESSOR_LOG_FILE": str(logs[i])}
        process = subprocess.Popen([sys.executable, "-m", "processor.cli", "serve", "--tcp", f"127.0.0.1:{ports[i]}",
                                    "--events-mqtt", broker.url("events")], env=env, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while "publish" not in (logs[i].read_text() if logs[i].exists() else ""):
            assert process.poll() is None and time.monotonic() < deadline, "engine did not start"
            time.sleep(0.1)
        return process

    approvals: dict[str, int] = {}

    async def purchases(port: int, count: int) -> None:
        async with await TerminalConnection.connect("127.0.0.1", port, terminals=[shop]) as conn:
            for _ in range(count):
                request = shop.card_request(cards["ada"], 1_00, entry="magstripe")
                assert (await conn.request(request))["39"] == "00"
                approvals[Request.from_fields(decode(encode(request))).idempotency_key()] = 1

    ops = Consumer(broker.port, "operator", broker.broker.password("operator"), "ops-serve", ["events/operators/#"])
    engines = [start(0)]
    async with consuming(ops):
        try:
            engines.append(start(1))
            await purchases(ports[0], 10)
            await purchases(ports[1], 10)

            async def first_twenty() -> bool:
                return len(ops.ids()) >= 20

            await eventually(first_twenty, 30, "the operators got the first twenty decisions")
            publishing = [i for i in (0, 1) if "this process publishes" in logs[i].read_text()]
            assert len(publishing) == 1, "one engine publishes, the other stands by"
            standing_by = 1 - publishing[0]
            assert "standing by" in logs[standing_by].read_text()
            engines[publishing[0]].send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(engines[publishing[0]].wait, 30) == 0
            await purchases(ports[standing_by], 10)

            async def all_thirty() -> bool:
                return len(ops.ids()) >= 30

            await eventually(all_thirty, 30, "the stand-by engine published the decisions made after")
            assert "this process publishes" in logs[standing_by].read_text()
            await asyncio.sleep(0.5)  # a copy that should not come would have come by now
        finally:
            for process in engines:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            for process in engines:
                await asyncio.to_thread(process.wait, 30)
    store = await Store.open(pg_url)
    try:
        committed = []
        after = start_id
        while batch := await store.run_query(read_after, after, 1000):
            committed += [e.id for e in batch if e.type in OPERATOR_COPIES or e.audience == "operator"]
            after = batch[-1].id
        status = await publisher_status(store)
    finally:
        await store.close()
    assert len(approvals) == 30 and len(committed) == 30
    assert ops.ids() == committed, "every committed decision reached the operators, in order"
    assert len(ops.received) == len(committed), "and each once: no engine published what another had"
    assert status["backlog"] == 0
