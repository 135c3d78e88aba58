"""A client that never saw our code: another ISO 8583 library, set up from the README alone, against the engine.

The client is starkbank-iso8583 (not pyiso8583), its field layout built by reading the README's field
table (the format column), never `processor.iso8583.SPEC`. PIN blocks come from pydukpt, framing is written
here from the README's one sentence. If the README and the engine disagree on any byte, this fails.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydukpt
import pytest
from psec.mac import generate_retail_mac
from starkbank.iso8583 import parse, unparse
from starkbank.iso8583.template.base import Template
from starkbank.iso8583.utils.enum import Encoding
from starkbank.iso8583.utils.field import Field
from starkbank.iso8583.utils.header import NoHeaderRule
from starkbank.iso8583.utils.length import FixedLengthRule, VariableLengthRule
from starkbank.iso8583.utils.parser import ParseBitmap, ParseHexadecimal, ParseString
from starkbank.iso8583.version import IsoVersion

from engine_helpers import build_issuer
from processor import ledger
from processor.config import Settings
from processor.server import running_engine
from terminal_sim.pos import CardData, PosTerminal

README = Path(__file__).resolve().parents[2] / "README.md"
FORMAT = re.compile(r"^(n|ans|b) (\.\.)?(\d+)( bytes)?(, (LL|LLL))?$")


def template_from_readme(*extra: Field) -> dict[str, Template]:
    """starkbank-iso8583 fields for every row of the README's field table, by its format column only."""
    text = README.read_text()
    section = text[text.index("### Fields\n") : text.index("### Response codes")]
    fields = [
        Field("MTI", ParseString(Encoding.ascii), FixedLengthRule(4)),
        Field("DE000", ParseBitmap(offset=0), FixedLengthRule(8)),
        Field("DE001", ParseBitmap(offset=64), FixedLengthRule(8)),
    ]
    for line in section.splitlines():
        row = re.match(r"^\| (\d+) \| [^|]+ \| `([^`]+)` \|", line)
        if not row:
            continue
        match = FORMAT.match(row.group(2))
        assert match, f"README format of DE {row.group(1)} is not in the documented notation: {row.group(2)}"
        kind, variable, size, prefix = match.group(1), match.group(2), int(match.group(3)), match.group(6)
        parser = ParseHexadecimal() if kind == "b" else ParseString(Encoding.ascii)
        length = VariableLengthRule(size, len(prefix), Encoding.ascii) if variable else FixedLengthRule(size)
        fields.append(Field(f"DE{int(row.group(1)):03d}", parser, length))
    fields.extend(extra)
    return {IsoVersion._1987: Template(headerRule=NoHeaderRule(), fields=fields)}


TEMPLATE = template_from_readme()


@dataclass
class IndependentTerminal:
    """A terminal built on the README: its identity and injected DUKPT key, nothing of ours."""

    terminal_id: str
    merchant_id: str
    ipek: bytes
    initial_ksn: bytes
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    stan: int = 0
    dukpt_counter: int = 0

    async def exchange(self, message: dict[str, Any], template: dict[str, Template] = TEMPLATE) -> dict[str, Any]:
        """Send one message (2-byte big-endian length, then the payload) MACed as the README says, and
        decode the answer after checking its MAC."""
        ksn = bytes.fromhex(message["DE053"]) if "DE053" in message else self.next_ksn()
        # The MAC is the last field: DE 128 when a field above 64 is present, otherwise DE 64.
        mac_field = "DE128" if any(k.startswith("DE") and 64 < int(k[2:]) < 128 for k in message) else "DE064"
        payload = unparse({**message, "DE053": ksn.hex(), mac_field: "00" * 8}, template=template)
        if len(ksn) == 10:  # a malformed KSN (a test of the format check) cannot key a MAC: zeros stay
            key = pydukpt.mac_request_key(pydukpt.derive_key(self.ipek, ksn))
            payload = payload[:-8] + generate_retail_mac(key[:8], key[8:], payload[:-8], padding=1)
        self.writer.write(len(payload).to_bytes(2, "big") + payload)
        await self.writer.drain()
        length = int.from_bytes(await asyncio.wait_for(self.reader.readexactly(2), 5.0), "big")
        raw = await asyncio.wait_for(self.reader.readexactly(length), 5.0)
        answer = parse(raw, template=TEMPLATE)
        assert answer["Length"] == length, "the answer has bytes the README's layout does not account for"
        if len(ksn) == 10:
            answer_key = pydukpt.mac_response_key(pydukpt.derive_key(self.ipek, ksn))
            answer["mac_ok"] = raw[-8:] == generate_retail_mac(answer_key[:8], answer_key[8:], raw[:-8], padding=1)
        return answer

    def next_ksn(self) -> bytes:
        self.dukpt_counter += 1
        return pydukpt.ksn_with_counter(self.initial_ksn, self.dukpt_counter)

    def base(self, mti: str, processing_code: str, amount_minor: int) -> dict[str, Any]:
        self.stan += 1
        now = dt.datetime.now(dt.UTC)
        return {
            "MTI": mti,
            "DE003": processing_code,
            "DE004": f"{amount_minor:012d}",
            "DE007": now.strftime("%m%d%H%M%S"),
            "DE011": f"{self.stan:06d}",
            "DE012": now.strftime("%H%M%S"),
            "DE013": now.strftime("%m%d"),
            "DE018": "5411",
            "DE032": "424242",
            "DE037": f"{secrets.randbelow(10**12):012d}",
            "DE041": self.terminal_id.ljust(8),
            "DE042": self.merchant_id.ljust(15),
            "DE043": "Independent Grocer       Lisbon       PT",
            "DE049": "978",
        }

    def swipe(self, card: CardData, amount_minor: int, *, processing_code: str = "000000") -> dict[str, Any]:
        return {**self.base("0200", processing_code, amount_minor), "DE022": "901", "DE035": card.track2}

    def with_pin(self, message: dict[str, Any], pin: str, pan: str) -> dict[str, Any]:
        """DE 52: ISO 9564 format 0 under this transaction's DUKPT PIN key; DE 53: its 10-byte KSN."""
        ksn = self.next_ksn()
        block = pydukpt.encrypt_pin(pydukpt.derive_key(self.ipek, ksn), pin, pan)
        return {**message, "DE052": block.hex(), "DE053": ksn.hex()}


@pytest.fixture
async def engine_and_client(tmp_path: Path) -> AsyncIterator[tuple[Any, dict[str, CardData], IndependentTerminal]]:
    settings = Settings(db_url=f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}", hsm_url=f"file:{tmp_path / 'hsm.json'}")
    cards, accounts, terminals = await build_issuer(settings)
    shop: PosTerminal = terminals["shop"]
    async with running_engine(settings) as running:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", running.port), 5.0)
        client = IndependentTerminal(
            shop.terminal_id, shop.merchant_id, bytes.fromhex(shop.ipek or ""), bytes.fromhex(shop.initial_ksn or ""), reader, writer
        )
        try:
            yield running, cards, client
        finally:
            writer.close()


def test_the_readme_layout_covers_secondary_bitmap_fields():
    names = set(TEMPLATE[IsoVersion._1987].fieldByName)
    assert {"DE002", "DE052", "DE053", "DE055", "DE064", "DE070", "DE090", "DE097", "DE128"} <= names


async def test_network_management_echo(engine_and_client):
    _, _, client = engine_and_client
    echo = {"MTI": "0800", "DE007": "0101120000", "DE011": "000901", "DE041": client.terminal_id.ljust(8), "DE070": "301"}
    answer = await client.exchange(echo)
    assert (answer["MTI"], answer["DE039"], answer["DE070"], answer["DE011"]) == ("0810", "00", "301", "000901")
    assert answer["mac_ok"] and "DE128" in answer


async def test_purchase_pin_balance_reversal_and_batch_close(engine_and_client):
    running, cards, client = engine_and_client
    ada = cards["ada"]

    purchase = client.swipe(ada, 12_34)
    answer = await client.exchange(purchase)
    assert (answer["MTI"], answer["DE039"], answer["DE011"], answer["DE037"]) == ("0210", "00", purchase["DE011"], purchase["DE037"])
    assert len(answer["DE038"]) == 6 and answer["DE004"] == "000000001234"
    assert answer["mac_ok"] and "DE064" in answer

    wrong = await client.exchange(client.with_pin(client.swipe(ada, 5_00), "9999", ada.pan))
    assert wrong["DE039"] == "55"
    with_pin = await client.exchange(client.with_pin(client.swipe(ada, 20_00), "1234", ada.pan))
    assert with_pin["DE039"] == "00"

    balance = await client.exchange(client.swipe(ada, 0, processing_code="310000"))
    assert balance["DE039"] == "00"
    amounts = [balance["DE054"][i : i + 20] for i in range(0, len(balance["DE054"]), 20)]
    by_type = {a[2:4]: (a[4:7], a[7], int(a[8:])) for a in amounts}
    assert by_type["02"] == ("978", "C", 500_00 - 12_34 - 20_00)

    reversal = {
        **client.base("0400", "000000", 12_34),
        "DE022": "901",
        "DE035": ada.track2,
        "DE090": f"0200{purchase['DE011']}{purchase['DE007']}{purchase['DE032'].rjust(11, '0')}{'0' * 11}",
    }
    reversed_ = await client.exchange(reversal)
    assert (reversed_["MTI"], reversed_["DE039"]) == ("0410", "00")
    assert (await ledger.accounts.get(running.store, ada.account_id)).ledger_minor == 500_00 - 20_00

    close = {
        **{k: v for k, v in client.base("0500", "920000", 0).items() if k not in ("DE004", "DE012", "DE013", "DE018", "DE037", "DE043", "DE049")},
        "DE050": "978",
        "DE060": "000001",
        "DE074": f"{0:010d}",
        "DE076": f"{1:010d}",
        "DE086": f"{0:016d}",
        "DE088": f"{20_00:016d}",
        "DE097": f"C{20_00:016d}",
    }
    closed = await client.exchange(close)
    assert (closed["MTI"], closed["DE039"], closed["DE060"]) == ("0510", "00", "000001")
    assert (closed["DE076"], closed["DE088"], closed["DE097"]) == (f"{1:010d}", f"{20_00:016d}", f"C{20_00:016d}")


async def test_chip_data_is_read_as_documented(engine_and_client):
    """DE 55 as LLL + raw BER-TLV bytes reaches the cryptogram check (82), not the format check (30)."""
    _, cards, client = engine_and_client
    ada = cards["ada"]
    today = dt.date.today().strftime("%y%m%d")
    tlv = bytes.fromhex(
        "9F2608" + secrets.token_hex(8)  # ARQC: random, so the issuer cannot verify it
        + "9F360200019F270180" + "9F100706010A03A00000"  # ATC, CID, Visa CVN 10 issuer application data
        + "9F0206000000000300" + "9F0306000000000000" + "9F1A020620" + "5F2A020978"
        + f"950500000000009A03{today}9C01009F3704{secrets.token_hex(4)}82021980"
    )
    chip = {**client.base("0200", "000000", 3_00), "DE022": "051", "DE023": "001", "DE035": ada.chip_track2, "DE055": tlv.hex()}
    answer = await client.exchange(chip)
    assert answer["DE039"] == "82"


async def test_refused_and_malformed_fields(engine_and_client):
    _, cards, client = engine_and_client
    ada = cards["ada"]
    # An AES PIN block where some specs put one (DE 110, LLL binary): refused, never approved without a PIN check.
    with_de110 = template_from_readme(Field("DE110", ParseHexadecimal(), VariableLengthRule(999, 3, Encoding.ascii)))
    answer = await client.exchange({**client.swipe(ada, 1_00), "DE110": "44" * 16}, with_de110)
    assert answer["DE039"] == "30" and "DE038" not in answer
    # A DE 53 shorter than a KSN is a format error, not a wrong PIN.
    short_ksn = {**client.swipe(ada, 1_00), "DE052": "00" * 8, "DE053": "FF" * 8}
    assert (await client.exchange(short_ksn))["DE039"] == "30"
