"""The engine over MQTT v5 through our own Mosquitto with the shipped accounts and ACLs.

What a terminal sees: answers on its own response topic with its correlation data, the first answer again
for a retransmission, and its presence. What an attacker with a terminal's account cannot do: publish as
another terminal, read another terminal's answers, swallow the engines' requests, take over another
client, or read a cardholder's events. A forbidden publish is acknowledged by the broker all the same
(aiomqtt does not surface the refusal), so each test proves non-delivery: a message sent after the
forbidden one on the same path arrives, and the forbidden one never did.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from engine_helpers import build_issuer

from processor import ledger
from processor.config import Settings
from processor.iso8583 import Request, decode, encode
from processor.server import running_engine
from processor.transport.broker import BrokerAdmin
from processor.transport.mqtt import MqttLimits, mqtt_properties, read_presence
from terminal_sim.iso_client import ResponseTimeout
from terminal_sim.mqtt_client import MqttTerminalConnection
from terminal_sim.pos import CardData, PosTerminal

pytestmark = pytest.mark.mqtt


@dataclass
class MqttIssuer:
    """An issuer whose engine answers only through the broker; each terminal has its broker account."""

    broker: Any
    settings: Settings
    cards: dict[str, CardData]
    accounts: dict[str, int]
    terminals: dict[str, PosTerminal]
    passwords: dict[str, str]
    running: Any

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.broker.port}"

    async def connect(self, name: str, **options: Any) -> MqttTerminalConnection:
        terminal = self.terminals[name]
        conn = await MqttTerminalConnection.connect(self.url, terminal.terminal_id,
                                                    password=self.passwords[terminal.terminal_id], **options)
        conn.add_terminal(terminal)
        return conn

    def raw_client(self, name: str, *, identifier: str | None = None, password: str | None = None) -> aiomqtt.Client:
        """A bare broker client logged in with a terminal's account (an attacker's own code)."""
        terminal_id = self.terminals[name].terminal_id
        return aiomqtt.Client("127.0.0.1", self.broker.port, username=terminal_id,
                              password=password or self.passwords[terminal_id], identifier=identifier or terminal_id,
                              protocol=aiomqtt.ProtocolVersion.V5, timeout=5)

    async def account(self, name: str) -> Any:
        return await ledger.accounts.get(self.running.store, self.accounts[name])


@contextlib.asynccontextmanager
async def mqtt_engine(broker: Any, settings: Settings, **options: Any) -> AsyncIterator[Any]:
    async with running_engine(settings, tcp=False, **options) as running:
        yield running


@pytest.fixture
async def mqtt_issuer(broker: Any, sqlite_url: str, tmp_path: Path) -> AsyncIterator[MqttIssuer]:
    settings = Settings(db_url=sqlite_url, hsm_url=f"file:{tmp_path / 'hsm.json'}", mqtt_url=broker.url("engine"))
    cards, accounts, terminals = await build_issuer(settings)
    async with BrokerAdmin(broker.url("admin")) as admin:
        passwords = await admin.add_terminals([t.terminal_id for t in terminals.values()])
    async with mqtt_engine(broker, settings) as running:
        yield MqttIssuer(broker, settings, cards, accounts, terminals, passwords, running)


def _key(request: dict[str, Any]) -> str:
    return Request.from_fields(decode(encode(request))).idempotency_key()


async def _publish_raw(client: aiomqtt.Client, topic: str, request: dict[str, Any], response_topic: str,
                       correlation: bytes) -> None:
    props = mqtt_properties("PUBLISH", ResponseTopic=response_topic, CorrelationData=correlation)
    await client.publish(topic, encode(request), qos=1, properties=props)


async def _drain(client: aiomqtt.Client, seconds: float) -> list[aiomqtt.Message]:
    """What arrives for `client` within `seconds`."""
    got: list[aiomqtt.Message] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            async for message in client.messages:
                got.append(message)
    return got


# ------------------------------------------------------------------ the terminal's view


async def test_purchase_over_mqtt_and_retransmission_gets_the_first_answer(mqtt_issuer: MqttIssuer):
    shop, ivan = mqtt_issuer.terminals["shop"], mqtt_issuer.cards["ivan"]
    before = (await mqtt_issuer.account("ivan")).ledger_minor
    async with await mqtt_issuer.connect("shop") as conn:
        request = shop.card_request(ivan, 12_34, entry="magstripe")
        first = await conn.request(request)
        again = await conn.request(request)  # the same bytes: STAN, transmission time, terminal
    assert first["39"] == "00" and first["38"]
    assert (again["39"], again["38"]) == (first["39"], first["38"])
    assert (await mqtt_issuer.account("ivan")).ledger_minor == before - 12_34, "posted once"


async def test_two_copies_in_flight_at_once_are_posted_once(mqtt_issuer: MqttIssuer):
    """Both copies race through the engine; the store's idempotency key lets one through, the other gets its answer."""
    shop, ivan = mqtt_issuer.terminals["shop"], mqtt_issuer.cards["ivan"]
    before = (await mqtt_issuer.account("ivan")).ledger_minor
    async with await mqtt_issuer.connect("shop") as conn:
        request = shop.card_request(ivan, 5_00, entry="magstripe")
        answers = await asyncio.gather(*(conn.request(request) for _ in range(5)))
    assert {(a["39"], a["38"]) for a in answers} == {("00", answers[0]["38"])}
    assert (await mqtt_issuer.account("ivan")).ledger_minor == before - 5_00


async def test_unanswered_request_is_published_again_with_the_same_bytes(mqtt_issuer: MqttIssuer):
    """An answer slower than the terminal's patience: the same bytes go out again, both copies are
    answered alike, and the hold exists once."""
    shop, ivan = mqtt_issuer.terminals["shop"], mqtt_issuer.cards["ivan"]
    async with await mqtt_issuer.connect("shop", retry_after_s=0.2) as conn:
        request = shop.card_request(ivan, 3_00, mti="0100", entry="magstripe")
        answer = await conn.request(request)
        retries_before = conn.retries
        slow = asyncio.Event()
        original = mqtt_issuer.running.mqtt.handler

        async def slow_handler(payload: bytes, **kw: Any) -> bytes | None:
            await slow.wait()
            return await original(payload, **kw)

        mqtt_issuer.running.mqtt.handler = slow_handler
        second = shop.card_request(ivan, 2_00, mti="0100", entry="magstripe")
        copies_before = mqtt_issuer.running.mqtt.stats["copies"]
        pending = asyncio.create_task(conn.request(second, timeout_s=5.0))
        await asyncio.sleep(0.7)
        slow.set()
        answered = await pending
        mqtt_issuer.running.mqtt.handler = original
    assert answer["39"] == "00" and answered["39"] == "00"
    # Copies at 0.2 s and 0.6 s (the pause doubles), each dropped by the engine still answering the first.
    assert conn.retries - retries_before == 2, "the terminal published its unanswered request again, backing off"
    assert mqtt_issuer.running.mqtt.stats["copies"] - copies_before == 2, "the engine did the work once"
    holds = (await mqtt_issuer.account("ivan")).holds
    assert sorted(h.amount_minor for h in holds) == [2_00, 3_00], "one hold per request, whatever the copies"


async def test_close_batch_over_mqtt(mqtt_issuer: MqttIssuer):
    from terminal_sim.batch_close import close_batch

    market, ivan = mqtt_issuer.terminals["market"], mqtt_issuer.cards["ivan"]
    async with await mqtt_issuer.connect("market") as conn:
        for amount in (1_00, 2_50):
            request = market.card_request(ivan, amount, entry="magstripe")
            market.batch.record(request, await conn.request(request))
        report = await close_batch(conn, market, timeout_s=5.0)
    assert report.rc == "00" and report.in_balance


@pytest.mark.parametrize("templates", [False, True], ids=["full", "templates"])
async def test_load_generator_over_mqtt(mqtt_issuer: MqttIssuer, templates: bool):
    from terminal_sim.load import MqttTarget, run_load

    terminals = [mqtt_issuer.terminals["market"], mqtt_issuer.terminals["shop"]]
    result = await run_load("", 0, terminals, [mqtt_issuer.cards["ivan"]], connections=4, seconds=1.0,
                            mix={"purchase": 100}, close_batches=True, templates=templates,
                            mqtt=MqttTarget(mqtt_issuer.url, mqtt_issuer.passwords))
    summary = result.summary()
    assert summary["count"] > 10 and summary["timeouts"] == 0 and summary["errors"] == 0 and summary["unauthentic"] == 0
    assert set(summary["codes"]) <= {"00", "51"}
    assert summary["batches"]["in_balance"] == 2


async def _counting_engine(broker: Any, sqlite_url: str, tmp_path: Path, limits: MqttLimits, delay_s: float,
                           requests: int, retry_after_s: float) -> tuple[int, list[dict[str, Any]], Any, int]:
    """`requests` purchases at once through an engine with `limits` whose every answer takes `delay_s` more;
    (most requests ever in the engine at once, the answers, the account afterwards, the terminal's retries)."""
    settings = Settings(db_url=sqlite_url, hsm_url=f"file:{tmp_path / 'hsm.json'}", mqtt_url=broker.url("engine"))
    cards, accounts, terminals = await build_issuer(settings)
    shop = terminals["shop"]
    async with BrokerAdmin(broker.url("admin")) as admin:
        password = await admin.add_terminal(shop.terminal_id)
    async with mqtt_engine(broker, settings, mqtt_limits=limits) as running:
        busy, most = 0, 0
        original = running.mqtt.handler

        async def counting(payload: bytes, **kw: Any) -> bytes | None:
            nonlocal busy, most
            busy += 1
            most = max(most, busy)
            try:
                await asyncio.sleep(delay_s)
                return await original(payload, **kw)
            finally:
                busy -= 1

        running.mqtt.handler = counting
        async with await MqttTerminalConnection.connect(f"mqtt://127.0.0.1:{broker.port}", shop.terminal_id,
                                                        password=password, retry_after_s=retry_after_s,
                                                        timeout_s=20.0) as conn:
            conn.add_terminal(shop)
            answers = await asyncio.gather(*(conn.request(shop.card_request(cards["ivan"], 1_00, entry="magstripe"))
                                             for _ in range(requests)))
        account = await ledger.accounts.get(running.store, accounts["ivan"])
    return most, answers, account, conn.retries


async def test_requests_in_flight_are_bounded(broker: Any, sqlite_url: str, tmp_path: Path):
    most, answers, _, retries = await _counting_engine(broker, sqlite_url, tmp_path, MqttLimits(max_in_flight=3),
                                                       delay_s=0.05, requests=20, retry_after_s=10.0)
    # Twenty requests of one terminal at once: the ones whose DUKPT counter reaches the store after a
    # higher one are refused as replays (63); every request is answered either way.
    codes = [a["39"] for a in answers]
    assert len(codes) == 20 and set(codes) <= {"00", "63"} and "00" in codes
    assert most == 3 and retries == 0


async def test_overload_drops_requests_and_the_terminals_copies_are_served_once(broker: Any, sqlite_url: str, tmp_path: Path):
    """More requests than the engine holds: the excess is dropped, the terminal publishes it again, and
    every purchase is answered and posted exactly once."""
    from engine_helpers import CAST

    most, answers, account, retries = await _counting_engine(
        broker, sqlite_url, tmp_path, MqttLimits(max_in_flight=1, max_queued=2), delay_s=0.02, requests=12,
        retry_after_s=0.5)
    # A copy sent again after a higher DUKPT counter was used is refused as a replay (63): it moves nothing.
    codes = [a["39"] for a in answers]
    assert len(codes) == 12 and set(codes) <= {"00", "63"} and "00" in codes
    assert most == 1 and retries > 0, "some requests were dropped and sent again"
    approved = codes.count("00")
    assert account.ledger_minor == CAST["ivan"][0] - approved * 1_00, "every approved purchase posted once"


# ------------------------------------------------------------------ what an attacker cannot do


async def test_a_terminal_cannot_publish_as_another(mqtt_issuer: MqttIssuer):
    """On B's topic the broker drops A's publish; on A's own topic the engine refuses DE 41 = B, recording nothing."""
    shop, market, ivan = mqtt_issuer.terminals["shop"], mqtt_issuer.terminals["market"], mqtt_issuer.cards["ivan"]
    stats = mqtt_issuer.running.mqtt.stats
    forged = market.card_request(ivan, 9_99, entry="magstripe")  # a request of MRKT0001 ...
    async with mqtt_issuer.raw_client("shop") as attacker:  # ... sent with SHOP0001's account
        await attacker.subscribe(f"pos/{shop.terminal_id}/response", qos=1)
        received = stats["requests"]
        await _publish_raw(attacker, f"pos/{market.terminal_id}/request", forged, f"pos/{shop.terminal_id}/response", b"forged")
        fence = shop.card_request(ivan, 1_00, entry="magstripe")
        await _publish_raw(attacker, f"pos/{shop.terminal_id}/request", fence, f"pos/{shop.terminal_id}/response", b"fence")
        answers = await _drain(attacker, 1.5)
        assert [bytes(m.properties.CorrelationData) for m in answers] == [b"fence"], "only the fence was delivered"
        assert stats["requests"] == received + 1

        # The same forged request on the attacker's own topic reaches the engine, which refuses it.
        await _publish_raw(attacker, f"pos/{shop.terminal_id}/request", forged, f"pos/{shop.terminal_id}/response", b"own")
        [answer] = await _drain(attacker, 1.5)
        assert decode(bytes(answer.payload))["39"] == "03"
    assert await ledger.auths.find(mqtt_issuer.running.store, _key(forged)) is None, "nothing recorded under MRKT0001's key"
    async with await mqtt_issuer.connect("market") as genuine:
        assert (await genuine.request(forged))["39"] == "00", "the genuine terminal's request with that key is served"


async def test_a_terminal_cannot_read_another_terminals_answers(mqtt_issuer: MqttIssuer):
    shop, market, ivan = mqtt_issuer.terminals["shop"], mqtt_issuer.terminals["market"], mqtt_issuer.cards["ivan"]
    async with mqtt_issuer.raw_client("shop") as attacker:
        for topic in (f"pos/{market.terminal_id}/response", "pos/+/response", "#", f"pos/{market.terminal_id}/#"):
            granted = await attacker.subscribe(topic, qos=1)
            assert all(code.value >= 0x80 for code in granted), f"subscription to {topic} refused"
        await attacker.subscribe(f"pos/{shop.terminal_id}/response", qos=1)
        async with await mqtt_issuer.connect("market") as victim:
            assert (await victim.request(market.card_request(ivan, 1_00, entry="magstripe")))["39"] == "00"
        # And a response topic of another terminal is not honoured: the engine drops the request.
        refused = mqtt_issuer.running.mqtt.stats["refused"]
        await _publish_raw(attacker, f"pos/{shop.terminal_id}/request", shop.card_request(ivan, 1_00, entry="magstripe"),
                           f"pos/{market.terminal_id}/response", b"redirect")
        await _publish_raw(attacker, f"pos/{shop.terminal_id}/request", shop.card_request(ivan, 1_00, entry="magstripe"),
                           f"pos/{shop.terminal_id}/response", b"fence")
        got = await _drain(attacker, 1.5)
    assert [bytes(m.properties.CorrelationData) for m in got] == [b"fence"], "the market's answer never reached the shop"
    assert mqtt_issuer.running.mqtt.stats["refused"] == refused + 1


async def test_a_terminal_cannot_join_the_engines_shared_subscription(mqtt_issuer: MqttIssuer):
    """Were it allowed, the broker would hand it a share of every terminal's requests, which it could not read: lost."""
    market, ivan = mqtt_issuer.terminals["market"], mqtt_issuer.cards["ivan"]
    async with mqtt_issuer.raw_client("shop") as attacker:
        for topic in ("$share/engines/pos/+/request", "$share/engines/#", "pos/+/request"):
            granted = await attacker.subscribe(topic, qos=1)
            assert all(code.value >= 0x80 for code in granted), f"subscription to {topic} refused"
        async with await mqtt_issuer.connect("market") as victim:
            # One after another, as a terminal sends (its DUKPT counter must reach the engine in order).
            answers = [await victim.request(market.card_request(ivan, 1_00, entry="magstripe")) for _ in range(10)]
        assert [a["39"] for a in answers] == ["00"] * 10
        assert victim.retries == 0, "every request reached the engine the first time"
        assert await _drain(attacker, 0.3) == []


async def test_accounts_are_bound_to_their_client_id_and_password(mqtt_issuer: MqttIssuer):
    """A terminal cannot log in under another's client id (which would disconnect that terminal), nor guess."""
    async with await mqtt_issuer.connect("market") as victim:
        with pytest.raises(aiomqtt.MqttError):
            async with mqtt_issuer.raw_client("shop", identifier=mqtt_issuer.terminals["market"].terminal_id):
                pass
        with pytest.raises(aiomqtt.MqttError):
            async with mqtt_issuer.raw_client("shop", password="not-the-password"):
                pass
        anonymous = aiomqtt.Client("127.0.0.1", mqtt_issuer.broker.port, protocol=aiomqtt.ProtocolVersion.V5, timeout=5)
        with pytest.raises(aiomqtt.MqttError):
            async with anonymous:
                pass
        market = mqtt_issuer.terminals["market"]
        assert (await victim.request(market.card_request(mqtt_issuer.cards["ivan"], 1_00, entry="magstripe")))["39"] == "00"
        assert not victim.closed


async def test_a_terminal_cannot_read_a_cardholders_events(mqtt_issuer: MqttIssuer, broker: Any):
    async with BrokerAdmin(broker.url("admin")) as admin:
        own_password = await admin.add_cardholder(1)
    events = aiomqtt.Client("127.0.0.1", broker.port, username="events", password=broker.broker.password("events"),
                            protocol=aiomqtt.ProtocolVersion.V5, timeout=5)
    owner = aiomqtt.Client("127.0.0.1", broker.port, username="cardholder-1", password=own_password,
                           identifier="cardholder-1", protocol=aiomqtt.ProtocolVersion.V5, timeout=5)
    async with mqtt_issuer.raw_client("shop") as attacker, owner, events:
        for topic in ("events/cardholders/1/#", "events/#", "events/cardholders/+/transactions", "events/operators/#"):
            granted = await attacker.subscribe(topic, qos=1)
            assert all(code.value >= 0x80 for code in granted), f"subscription to {topic} refused"
        granted = await owner.subscribe("events/cardholders/2/#", qos=1)
        assert all(code.value >= 0x80 for code in granted), "a cardholder cannot read another's events"
        await owner.subscribe("events/cardholders/1/#", qos=1)
        await events.publish("events/cardholders/2/transactions", b'{"secret": 2}', qos=1)
        await events.publish("events/cardholders/1/transactions", b'{"event": 1}', qos=1)
        mine = await _drain(owner, 1.0)
        assert [m.payload for m in mine] == [b'{"event": 1}']
        assert await _drain(attacker, 0.2) == []
        # Terminals publish nothing but their requests and status: no forged events.
        await attacker.publish("events/cardholders/1/transactions", b'{"forged": true}', qos=1)
        assert await _drain(owner, 0.5) == []


async def test_dropped_engine_link_reconnects_and_answers(mqtt_issuer: MqttIssuer):
    """The engine's broker connection breaks (here: its account is logged out by a duplicate client id); it comes back."""
    server = mqtt_issuer.running.mqtt
    shop, ivan = mqtt_issuer.terminals["shop"], mqtt_issuer.cards["ivan"]
    thief = aiomqtt.Client("127.0.0.1", mqtt_issuer.broker.port, username="engine",
                           password=mqtt_issuer.broker.broker.password("engine"), identifier=server.client_id,
                           protocol=aiomqtt.ProtocolVersion.V5, timeout=5)
    async with thief:
        await asyncio.sleep(0.1)
    for _ in range(100):
        if server.stats["connects"] >= 2 and server.connected:
            break
        await asyncio.sleep(0.05)
    assert server.stats["connects"] >= 2
    async with await mqtt_issuer.connect("shop") as conn:
        assert (await conn.request(shop.card_request(ivan, 1_00, entry="magstripe")))["39"] == "00"


async def test_engine_refuses_an_unknown_account_in_its_url(broker: Any, sqlite_url: str, tmp_path: Path):
    from processor.transport.mqtt import MqttUnavailable

    settings = Settings(db_url=sqlite_url, hsm_url=f"file:{tmp_path / 'hsm.json'}",
                        mqtt_url=f"mqtt://engine:wrong@127.0.0.1:{broker.port}")
    await build_issuer(settings)
    with pytest.raises(MqttUnavailable, match="refused the credentials"):
        async with running_engine(settings, tcp=False):
            pass


# ------------------------------------------------------------------ presence


async def test_presence_online_then_offline_by_will_and_by_clean_close(mqtt_issuer: MqttIssuer, broker: Any):
    operator = broker.url("operator")
    shop, market = mqtt_issuer.terminals["shop"].terminal_id, mqtt_issuer.terminals["market"].terminal_id
    assert shop not in await read_presence(operator)
    conn = await mqtt_issuer.connect("shop")
    other = await mqtt_issuer.connect("market")
    assert (await read_presence(operator))[shop] == "online"
    await conn.close()  # clean: says offline itself
    # The market's link breaks without a DISCONNECT: the broker publishes its will.
    sock = other._client._client.socket()  # noqa: SLF001 - cutting the wire under the client
    sock.close()
    for _ in range(100):
        presence = await read_presence(operator)
        if presence.get(market) == "offline":
            break
        await asyncio.sleep(0.05)
    assert presence == {**presence, shop: "offline", market: "offline"}
    with contextlib.suppress(Exception):
        await other.close()


async def test_terminal_list_shows_who_is_online(mqtt_issuer: MqttIssuer, broker: Any, monkeypatch: Any, capsys: Any):
    import json

    from processor.cli import main

    monkeypatch.setenv("PROCESSOR_DB_URL", mqtt_issuer.settings.db_url)
    monkeypatch.setenv("PROCESSOR_HSM_URL", mqtt_issuer.settings.hsm_url)
    monkeypatch.setenv("PROCESSOR_MQTT_URL", broker.url("operator"))
    async with await mqtt_issuer.connect("hotel"):
        code = await asyncio.to_thread(main, ["terminal", "list", "--json"])
    assert code == 0
    listed = {t["terminal_id"]: t for t in json.loads(capsys.readouterr().out)["terminals"]}
    assert listed["HOTL0001"]["online"] is True and listed["HOTL0001"]["presence"] == "online"
    assert listed["SHOP0001"]["online"] is False and listed["SHOP0001"]["presence"] == "never connected"



async def test_engine_refuses_to_start_with_an_account_that_may_not_subscribe(broker: Any, sqlite_url: str, tmp_path: Path):
    from processor.transport.mqtt import MqttUnavailable

    settings = Settings(db_url=sqlite_url, hsm_url=f"file:{tmp_path / 'hsm.json'}", mqtt_url=broker.url("events"))
    await build_issuer(settings)
    with pytest.raises(MqttUnavailable, match="subscription to .* refused"):
        async with running_engine(settings, tcp=False):
            pass
