"""Malformed frames and messages: a clear 30 answer or a clean close, and everyone else keeps being served."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import iso8583
import pytest

from processor import ledger
from processor.config import Settings
from processor.iso8583 import SPEC, encode, encode_frame
from processor.server import running_engine
from processor.transport.tcp import TcpLimits
from terminal_sim.iso_client import TerminalConnection

from engine_helpers import build_issuer


async def _raw(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout=5.0)


async def _read_answer(reader: asyncio.StreamReader) -> dict:
    header = await asyncio.wait_for(reader.readexactly(2), timeout=5.0)
    payload = await asyncio.wait_for(reader.readexactly(int.from_bytes(header, "big")), timeout=5.0)
    return iso8583.decode(payload, SPEC)[0]  # raw decode: the answer to an unknown MTI has an unknown MTI too


async def _closed(reader: asyncio.StreamReader, timeout_s: float = 5.0) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), timeout=timeout_s) == b""
    except ConnectionError:
        return True


@pytest.fixture
async def engine_with_short_limits(tmp_path: Path):
    settings = Settings(db_url=f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}", hsm_url=f"file:{tmp_path / 'hsm.json'}")
    cards, accounts, terminals = await build_issuer(settings)
    limits = TcpLimits(frame_timeout_s=0.5, idle_timeout_s=30.0, max_frame_bytes=2048)
    async with running_engine(settings, limits=limits) as running:
        yield running, cards, accounts, terminals


async def test_non_numeric_amount_gets_30_and_connection_keeps_serving(engine_with_short_limits):
    running, cards, accounts, terminals = engine_with_short_limits
    shop = terminals["shop"]
    good = shop.card_request(cards["ada"], 1_00, entry="magstripe")
    raw = encode(good)
    amount_at = raw.index(good["4"].encode())
    broken = raw[:amount_at] + b"00000000X100" + raw[amount_at + 12 :]
    reader, writer = await _raw(running.port)
    try:
        writer.write(encode_frame(broken))
        answer = await _read_answer(reader)
        assert answer["t"] == "0210" and answer["39"] == "30"
        assert answer.get("11") == good["11"]
        signed, _ = shop.sign(shop.card_request(cards["ada"], 1_00, entry="magstripe"))
        writer.write(encode_frame(signed))
        assert (await _read_answer(reader))["39"] == "00"
    finally:
        writer.close()


def _field_too_short(good: dict) -> bytes:
    """DE 42 one byte short: every field after it is misaligned and the message no longer parses."""
    raw = encode(good)
    return raw.replace(good["42"].encode(), good["42"].encode()[:-1])


def _missing_field(good: dict) -> bytes:
    """The bitmap announces fields the message does not carry."""
    return encode(good)[:-8]


def _pan_with_letters(good: dict) -> bytes:
    raw = encode(good)
    return raw.replace(good["2"].encode(), good["2"][:-4].encode() + b"ABCD")


def _pan_too_short(good: dict) -> dict:
    return dict(good, **{"2": good["2"][:10]})


@pytest.mark.parametrize("breaker", [_field_too_short, _missing_field, _pan_with_letters, _pan_too_short], ids=lambda f: f.__name__)
async def test_malformed_messages_answer_30(engine_with_short_limits, breaker):
    running, cards, accounts, terminals = engine_with_short_limits
    good = terminals["shop"].card_request(cards["ada"], 1_00, entry="manual", cvv2=cards["ada"].cvv2)
    broken = breaker(good)
    if isinstance(broken, dict):
        broken = iso8583.encode(broken, SPEC)[0]  # pyiso8583 itself: our encoder refuses such a PAN
    reader, writer = await _raw(running.port)
    try:
        writer.write(encode_frame(bytes(broken)))
        answer = await _read_answer(reader)
        assert answer["39"] == "30"
        assert answer.get("11") == good["11"]
    finally:
        writer.close()
    view = await ledger.accounts.get(running.store, accounts["ada"])
    assert (view.ledger_minor, view.available_minor) == (500_00, 500_00)


def _unknown_mti(good: dict) -> bytes:
    return b"0300" + encode(good)[4:]


def _letters_for_mti(good: dict) -> bytes:
    return b"01A0" + encode(good)[4:]


def _response_mti(good: dict) -> bytes:
    return b"0210" + encode(good)[4:]


@pytest.mark.parametrize(
    "breaker", [_unknown_mti, _letters_for_mti, _response_mti, lambda good: b""], ids=["unknown", "letters", "response", "empty"]
)
async def test_frames_that_cannot_be_answered_close_the_connection(engine_with_short_limits, breaker, caplog):
    """A terminal must not be left waiting on an open socket for an answer that will never come."""
    running, cards, accounts, terminals = engine_with_short_limits
    caplog.set_level(logging.WARNING)
    good = terminals["shop"].card_request(cards["ada"], 1_00, entry="magstripe")
    reader, writer = await _raw(running.port)
    try:
        writer.write(encode_frame(breaker(good)))
        await writer.drain()
        assert await _closed(reader)
        assert any("cannot be answered" in r.getMessage() for r in caplog.records)
    finally:
        writer.close()
    view = await ledger.accounts.get(running.store, accounts["ada"])
    assert view.ledger_minor == 500_00


async def test_a_pin_outside_de52_is_refused_not_ignored(engine_with_short_limits):
    """A request whose PIN sits in DE 110 (an AES block) gets 30: it is never approved as if no PIN were given."""
    running, cards, accounts, terminals = engine_with_short_limits
    request = terminals["shop"].card_request(cards["ada"], 1_00, entry="magstripe")
    request["110"] = "44" * 16
    reader, writer = await _raw(running.port)
    try:
        writer.write(encode_frame(encode(request)))
        answer = await _read_answer(reader)
        assert answer["39"] == "30" and answer.get("11") == request["11"] and "38" not in answer
    finally:
        writer.close()
    account = await ledger.accounts.get(running.store, cards["ada"].account_id)
    assert account.available_minor == account.ledger_minor == 500_00


async def test_oversized_length_header_closes_only_that_connection(engine_with_short_limits):
    running, cards, accounts, terminals = engine_with_short_limits
    bystander = await TerminalConnection.connect("127.0.0.1", running.port, timeout_s=5.0, terminals=[terminals["shop"]])
    reader, writer = await _raw(running.port)
    try:
        writer.write((60_000).to_bytes(2, "big") + b"0100")
        await writer.drain()
        assert await _closed(reader)
        answer = await bystander.request(terminals["shop"].card_request(cards["ada"], 1_00, entry="magstripe"))
        assert answer["39"] == "00"
    finally:
        writer.close()
        await bystander.close()


async def test_half_frame_then_stall_is_closed(engine_with_short_limits, caplog):
    running, cards, accounts, terminals = engine_with_short_limits
    caplog.set_level(logging.WARNING, logger="processor.transport.tcp")
    reader, writer = await _raw(running.port)
    try:
        writer.write((200).to_bytes(2, "big") + b"0100" + b"\x00" * 20)
        await writer.drain()
        assert await _closed(reader, timeout_s=3.0)
        assert any("incomplete frame" in r.getMessage() for r in caplog.records)
    finally:
        writer.close()


async def test_garbage_closes_only_that_connection(engine_with_short_limits):
    running, cards, accounts, terminals = engine_with_short_limits
    bystander = await TerminalConnection.connect("127.0.0.1", running.port, timeout_s=5.0, terminals=[terminals["shop"]])
    reader, writer = await _raw(running.port)
    try:
        writer.write(encode_frame(b"\xff\xfe garbage that is not ISO 8583"))
        await writer.drain()
        assert await _closed(reader)
        answer = await bystander.request(terminals["shop"].echo())
        assert (answer["t"], answer["39"]) == ("0810", "00")
    finally:
        writer.close()
        await bystander.close()
