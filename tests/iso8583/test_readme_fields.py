"""The README's field table is the host interface for other people's code: it must say what SPEC does.

Every row's format column is checked against `SPEC` (through `field_format`), and every field our
terminals send or the engine reads or answers must have a row, so the table cannot drift from the code.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from processor.iso8583 import SPEC, Balance, BatchTotals, Reconciliation, Request, build_response, encode_tlv
from processor.iso8583.spec import REFUSED_FIELDS, field_format
from terminal_sim.batch_close import reconciliation_request
from terminal_sim.pos import CardData, PosTerminal

README = Path(__file__).resolve().parents[2] / "README.md"
ROW = re.compile(r"^\| (\d+) \| ([^|]+) \| `([^`]+)` \| (.*) \|$")


def readme_fields() -> dict[str, str]:
    """{DE: format} from the table under '### Fields'."""
    text = README.read_text()
    section = text[text.index("### Fields\n") : text.index("### Response codes")]
    rows = {}
    for line in section.splitlines():
        match = ROW.match(line)
        if match:
            rows[match.group(1)] = match.group(3)
    return rows


class RecordingFields(dict):
    """A message whose reader leaves a trace of every field it looks at."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.read: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return super().__getitem__(key)


def fields_on_the_wire() -> set[str]:
    """Every field our terminals send, the engine's request view reads, and the engine's answers carry."""
    terminal = PosTerminal("SHOP0001", "SHOP00000000001", ipek="6AC292FAA1315B4D858AB3A3D7D5933A", initial_ksn="FFFF9876543210E00000")
    card = CardData(
        pan="4761739001010010", expiry="3012", track2="4761739001010010=30121011234567890000", cvv2="123",
        pin="1234", chip_track2="4761739001010010D30122011234567890000",
    )
    tlv = encode_tlv({"9F26": bytes(8)}).hex().upper()
    sent = [
        terminal.card_request(card, 1_00, entry="fallback", with_pin=True, partial_ok=True),
        terminal.card_request(card, 1_00, entry="manual", cvv2="123"),
        terminal.card_request(card, 1_00, entry="chip", icc=tlv),
    ]
    sent += [terminal.completion(sent[0], 50), terminal.incremental(sent[0], 50), terminal.reversal(sent[0], remaining_minor=50)]
    sent += [terminal.echo(), reconciliation_request(terminal)]
    on_the_wire = {de for message in sent for de in message if de != "t"}

    recording = RecordingFields({"t": "0200"})
    Request.from_fields(recording)
    batch = RecordingFields({"t": "0500", **BatchTotals().fields(), "50": "978"})
    Reconciliation.from_fields(batch)
    answer = build_response(
        {**sent[0], "70": "301"}, "00", approval_code="ABC123", amount_minor=1, balances=[Balance("00", "02", "978", 1)],
        icc_response={"91": bytes(10)}, extra={"15": "0101", "60": "000001"},
    )
    return (on_the_wire | recording.read | batch.read | set(answer)) - {"t"}


def test_every_documented_format_is_the_spec():
    rows = readme_fields()
    assert len(rows) > 30
    wrong = {de: (written, field_format(de)) for de, written in rows.items() if written != field_format(de)}
    assert wrong == {}, "README format column differs from SPEC (README, SPEC)"


def test_every_field_on_the_wire_is_documented():
    missing = fields_on_the_wire() - set(readme_fields())
    assert missing == set(), f"fields used on the wire without a row in the README's field table: {sorted(missing, key=int)}"


@pytest.mark.parametrize("de", sorted(REFUSED_FIELDS))
def test_refused_fields_are_named_in_the_readme_and_not_in_the_table(de):
    assert de not in readme_fields()
    assert f"DE {de}" in README.read_text()


def test_field_format_reads_the_spec_not_a_table():
    # The notation follows the spec entry itself: a change to SPEC changes what the README must say.
    assert field_format("52") == "b 8 bytes" and SPEC["52"]["max_len"] == 8
    assert field_format("53") == f"b ..{SPEC['53']['max_len']} bytes, LL"
    assert field_format("48") == "ans ..999, LLL"
    assert field_format("2") == "n ..19, LL"
