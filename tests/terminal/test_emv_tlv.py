"""BER-TLV and DOL codec: round trips and precise errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from terminal_sim.emv import tlv

# Primitive tags of 1 and 2 bytes (EMV Book 3 Annex B), never the 00/FF padding bytes.
one_byte_tags = st.integers(0x01, 0xFE).filter(lambda b: b & 0x1F != 0x1F and not b & 0x20)
two_byte_tags = st.tuples(st.sampled_from([0x5F, 0x9F, 0xDF]), st.integers(0x01, 0x7F))
tags = st.one_of(
    one_byte_tags.map(lambda b: f"{b:02X}"),
    two_byte_tags.map(lambda t: f"{t[0]:02X}{t[1]:02X}"),
)
objects = st.lists(st.tuples(tags, st.binary(max_size=300)), max_size=8)


@given(objects)
def test_encode_then_parse_gives_back_every_object_in_order(objs):
    encoded = b"".join(tlv.encode(t, v) for t, v in objs)
    parsed = tlv.parse(encoded)
    assert [(o.tag, o.value) for o in parsed] == objs


@given(objects)
def test_constructed_template_keeps_repeated_children(objs):
    encoded = tlv.encode("70", [tlv.encode(t, v) for t, v in objs])
    (template,) = tlv.parse(encoded)
    assert [(c.tag, c.value) for c in template.children] == objs


@given(st.lists(st.tuples(tags, st.integers(1, 32)), max_size=10), st.data())
def test_dol_data_splits_back_into_the_values_it_was_built_from(dol_entries, data):
    entries = dict(dol_entries)  # a DOL names each tag once
    dol = b"".join(bytes.fromhex(t) + bytes([n]) for t, n in entries.items())
    values = {t: data.draw(st.binary(min_size=n, max_size=n)) for t, n in entries.items()}
    built = tlv.build_dol_data(dol, values)
    assert len(built) == sum(entries.values())
    assert tlv.split_dol_data(dol, built) == values


def test_dol_pads_numeric_left_and_binary_right_and_zero_fills_unknown():
    dol = bytes.fromhex("9F0206" "9F4E04" "9F4C02")
    built = tlv.build_dol_data(dol, {"9F02": bytes.fromhex("1250"), "9F4E": b"AB"})
    assert built.hex().upper() == "000000001250" "41420000" "0000"


def test_repeated_directory_entries_are_all_found():
    entry = lambda aid: tlv.encode("61", [tlv.encode("4F", bytes.fromhex(aid))])  # noqa: E731
    data = tlv.encode("BF0C", [entry("A0000000031010"), entry("A0000000032010")])
    assert [o.value.hex().upper() for o in tlv.find_all(tlv.parse(data), "4F")] == [
        "A0000000031010",
        "A0000000032010",
    ]


@pytest.mark.parametrize(
    "data, message",
    [
        (bytes.fromhex("9F0206000000"), "tag 9F02: value is 3 bytes, length says 6 (offset 3)"),
        (bytes.fromhex("9F"), "tag at offset 0 is truncated"),
        (bytes.fromhex("5A85"), "tag 5A: length byte 85 at offset 1 is not a valid BER length"),
        (bytes.fromhex("7002" "5A05"), "inside 70: tag 5A: value is 0 bytes, length says 5 (offset 2)"),
    ],
)
def test_malformed_tlv_names_the_tag_and_offset(data, message):
    with pytest.raises(tlv.TlvError) as e:
        tlv.parse(data)
    assert str(e.value) == message


def test_dol_data_of_the_wrong_length_is_refused():
    with pytest.raises(tlv.TlvError, match="DOL data is 3 bytes, the DOL asks for 6"):
        tlv.split_dol_data(bytes.fromhex("9F0206"), b"\x00\x00\x00")
