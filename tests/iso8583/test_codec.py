"""The wire format: round trips, precise errors that never quote the PAN, and garbage that never crashes."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processor.iso8583 import (
    Balance,
    FrameDecoder,
    FrameTimeout,
    FrameTooLarge,
    MessageFormatError,
    Request,
    build_response,
    build_track2,
    decode,
    decode_tlv,
    encode,
    encode_de48,
    encode_frame,
    encode_tlv,
    parse_de48,
    parse_track2,
    read_frame,
    rc,
)

digits = lambda n: st.text("0123456789", min_size=n, max_size=n)  # noqa: E731
pans = st.integers(min_value=13, max_value=19).flatmap(lambda n: st.text("0123456789", min_size=n, max_size=n))


@st.composite
def requests(draw) -> dict:
    mti = draw(st.sampled_from(["0100", "0120", "0200", "0220", "0400", "0420"]))
    fields = {
        "t": mti,
        "2": draw(pans),
        "3": draw(st.sampled_from(["000000", "010000", "200000", "310000", "001000"])),
        "4": draw(digits(12)),
        "7": draw(digits(10)),
        "11": draw(digits(6)),
        "22": draw(st.sampled_from(["011", "051", "071", "901", "801"])),
        "41": draw(st.text("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789", min_size=8, max_size=8)),
        "42": draw(st.text("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789 ", min_size=15, max_size=15)),
        "49": draw(st.sampled_from(["978", "840", "826"])),
    }
    if draw(st.booleans()):
        fields["52"] = draw(st.binary(min_size=8, max_size=8)).hex().upper()
        fields["53"] = draw(st.binary(min_size=10, max_size=10)).hex().upper()
    if draw(st.booleans()):
        fields["48"] = encode_de48({"C2": draw(digits(3)), "PA": "1"})
    if draw(st.booleans()):
        fields["55"] = encode_tlv({"9F26": draw(st.binary(min_size=8, max_size=8)), "9F36": b"\x00\x07"}).hex().upper()
    if mti in ("0220", "0400", "0420"):
        fields["90"] = draw(digits(42))
    return fields


@given(requests())
def test_encode_decode_round_trip(fields):
    decoded = decode(encode(fields))
    assert {k: v for k, v in decoded.items() if k not in ('p', '1')} == fields
    request = Request.from_fields(decoded)
    assert request.mti == fields["t"] and request.amount_minor == int(fields["4"])
    assert request.idempotency_key() == Request.from_fields(decode(encode(fields))).idempotency_key()


@given(requests(), st.data())
def test_errors_name_the_field_and_never_the_pan(fields, data):
    raw = bytearray(encode(fields))
    at = data.draw(st.integers(min_value=4, max_value=len(raw) - 1))
    raw[at] = data.draw(st.sampled_from(list(b"X:\xff")))
    try:
        decode(bytes(raw))
    except MessageFormatError as exc:
        assert fields["2"] not in str(exc)
        assert "field" in str(exc)


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_random_bytes_never_raise_anything_else(blob):
    try:
        fields = decode(blob)
    except MessageFormatError:
        return
    Request.from_fields(fields)


def test_specific_errors():
    good = {"t": "0200", "2": "4761739001010010", "3": "000000", "4": "000000001000", "11": "000001", "41": "SHOP0001"}
    raw = encode(good)
    with pytest.raises(MessageFormatError, match="field 4 must be numeric") as info:
        decode(raw.replace(b"000000001000", b"00000000X000"))
    assert info.value.partial.get("11") == "000001"
    with pytest.raises(MessageFormatError, match="field 2"):
        encode(dict(good, **{"2": "4" * 20}))
    with pytest.raises(MessageFormatError, match="unknown message type"):
        decode(b"0300" + raw[4:])
    with pytest.raises(MessageFormatError, match="field 41"):
        decode(raw[:-3])


def test_pin_fields_outside_the_interface_are_refused():
    good = {"t": "0200", "2": "4761739001010010", "3": "000000", "4": "000000001000", "11": "000001", "41": "SHOP0001"}
    # DE 110 once carried an AES PIN block the engine never verified: its presence is a format error now.
    with pytest.raises(MessageFormatError, match="field 110") as info:
        decode(encode(dict(good, **{"110": "44" * 16})))
    assert info.value.field == "110" and info.value.partial.get("11") == "000001"
    # DE 53 is the whole 10-byte KSN or nothing: a short one is not a key serial number of ours.
    with pytest.raises(MessageFormatError, match="key serial number must be 10 bytes: field 53"):
        decode(encode(dict(good, **{"52": "00" * 8, "53": "FF" * 8})))
    with pytest.raises(MessageFormatError, match="field 53"):
        encode(dict(good, **{"53": "FF" * 12}))
    assert decode(encode(dict(good, **{"53": "FF" * 10})))["53"] == "FF" * 10
    with pytest.raises(MessageFormatError, match="field 2 must be numeric"):
        decode(encode(dict(good, **{"2": "47617390010100A0"})))


@given(st.dictionaries(st.sampled_from(["C2", "PA", "IA", "TR", "WI", "ZZ"]), st.text("0123456789ABC", max_size=20)))
def test_de48_round_trip(elements):
    assert parse_de48(encode_de48(elements)) == elements


@pytest.mark.parametrize("bad", ["C2", "C2x03123", "C2009123"])
def test_de48_malformed(bad):
    with pytest.raises(ValueError):
        parse_de48(bad)


tags = st.sampled_from(["9F26", "9F27", "9F10", "9F37", "9F36", "95", "9A", "9C", "9F02", "5F2A", "82", "84", "5F34"])


@given(st.dictionaries(tags, st.binary(max_size=300)))
def test_tlv_round_trip(items):
    assert decode_tlv(encode_tlv(items)) == items


@given(st.binary(max_size=64))
def test_tlv_garbage_raises_value_error_only(blob):
    try:
        decode_tlv(blob)
    except ValueError:
        pass


@given(st.lists(st.tuples(st.sampled_from(["00", "10", "20"]), st.sampled_from(["01", "02", "57"]), st.integers(-10**11, 10**11))))
def test_balances_round_trip(items):
    balances = [Balance(a, t, "978", amount) for a, t, amount in items]
    assert Balance.parse_all("".join(b.encode() for b in balances)) == balances


@given(pans, digits(4), digits(3), digits(3))
def test_track2_round_trip(pan, expiry, service, cvv):
    track = parse_track2(build_track2(pan, expiry, service, cvv, discretionary="10000"))
    assert (track.pan, track.expiry, track.service_code, track.cvv) == (pan, expiry, service, cvv)


def test_response_echoes_matching_fields():
    request = {"t": "0100", "2": "4761739001010010", "3": "000000", "4": "000000001000", "7": "1125120000", "11": "000042", "37": "612345000042", "41": "SHOP0001", "49": "978"}
    answer = build_response(request, rc.PARTIAL_APPROVAL, approval_code="A1B2C3", amount_minor=500)
    assert answer["t"] == "0110" and answer["39"] == "10" and answer["4"] == "000000000500"
    assert (answer["11"], answer["37"], answer["41"]) == ("000042", "612345000042", "SHOP0001")
    assert decode(encode(answer))["38"] == "A1B2C3"


@given(st.lists(st.binary(max_size=600), max_size=8), st.data())
def test_frame_decoder_any_chunking(payloads, data):
    stream = b"".join(encode_frame(p) for p in payloads)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    decoder, out, last = FrameDecoder(), [], 0
    for cut in cuts + [len(stream)]:
        out.extend(decoder.feed(stream[last:cut]))
        last = cut
    assert out == payloads and decoder.pending == 0


def test_frame_decoder_refuses_oversized_header():
    with pytest.raises(FrameTooLarge):
        list(FrameDecoder(max_len=100).feed((101).to_bytes(2, "big")))


async def test_read_frame_half_frame_then_stall_times_out():
    reader = asyncio.StreamReader()
    reader.feed_data((50).to_bytes(2, "big") + b"0100")
    with pytest.raises(FrameTimeout):
        await read_frame(reader, timeout_s=0.2)


async def test_read_frame_oversized_and_clean_eof():
    reader = asyncio.StreamReader()
    reader.feed_data((9000).to_bytes(2, "big"))
    with pytest.raises(FrameTooLarge):
        await read_frame(reader, max_len=8192, timeout_s=1.0)
    reader = asyncio.StreamReader()
    reader.feed_eof()
    assert await read_frame(reader, timeout_s=1.0) is None


def test_response_code_table_is_documented():
    table = rc.markdown_table()
    for code in ("00", "10", "14", "30", "41", "43", "51", "54", "55", "62", "75", "82", "N7", "25", "13"):
        assert f"| {code} |" in table


counts = st.integers(min_value=0, max_value=9_999_999_999)
amounts_minor = st.integers(min_value=0, max_value=9_999_999_999_999_999)


@settings(max_examples=200)
@given(counts, amounts_minor, counts, amounts_minor, st.text("0123456789", min_size=0, max_size=6))
def test_batch_totals_round_trip_through_the_wire(cc: int, ca: int, dc: int, da: int, batch: str) -> None:
    from processor.iso8583 import BatchTotals, Reconciliation, parse_net_amount

    totals = BatchTotals(cc, ca, dc, da)
    fields = {"t": "0500", "3": "920000", "7": "1127120000", "11": "000042", "41": "T0000001", "50": "978", **totals.fields()}
    if batch:
        fields["60"] = batch
    close = Reconciliation.from_fields(decode(encode(fields)))
    assert close.totals == totals and close.currency_numeric == "978"
    assert close.batch_number == (batch.zfill(6) if batch else "")
    assert parse_net_amount(fields["97"]) == da - ca and fields["97"][0] == ("C" if da >= ca else "D")


def test_batch_totals_errors_name_the_field() -> None:
    from processor.iso8583 import BatchTotals, Reconciliation

    good = {"t": "0500", "11": "000001", "50": "978", **BatchTotals(1, 100, 2, 300).fields()}
    for de, value, message in (
        ("88", None, "field 88 is missing"),
        ("97", "C0000000000000201", "not debits less credits"),
        ("97", "X0000000000000200", "C or D"),
        ("60", "1234567", "up to 6 digits"),
        ("60", "12A", "up to 6 digits"),
        ("50", None, "settlement currency"),
    ):
        fields = {k: v for k, v in good.items() if k != de} | ({de: value} if value is not None else {})
        with pytest.raises(MessageFormatError, match=message):
            Reconciliation.from_fields(fields)
    with pytest.raises(MessageFormatError, match="field 74"):
        decode(encode({**good, "74": "00000000X1"}))
