"""The clearing file's own record decoder reads exactly what pyiso8583 reads, and refuses what it refuses."""

from __future__ import annotations

import datetime as dt

import iso8583
from hypothesis import given, settings
from hypothesis import strategies as st

from processor.iso8583.clearing import CLEARING_SPEC, Presentment, _decode, _encode, _local_time

text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
presentments = st.builds(
    Presentment,
    pan=st.from_regex(r"[0-9]{12,19}", fullmatch=True),
    amount_minor=st.integers(0, 10**12 - 1),
    currency_numeric=st.from_regex(r"[0-9]{3}", fullmatch=True),
    local_time=st.datetimes(dt.datetime(1970, 1, 1), dt.datetime(2068, 12, 31)).map(lambda t: t.replace(microsecond=0)),
    mcc=st.from_regex(r"[0-9]{4}", fullmatch=True),
    entry_mode=st.from_regex(r"[0-9]{2}", fullmatch=True),
    acquirer_id=st.from_regex(r"[0-9]{1,11}", fullmatch=True),
    rrn=st.from_regex(r"[0-9A-Z]{1,12}", fullmatch=True),
    approval_code=st.one_of(st.just(""), st.from_regex(r"[0-9A-Z]{6}", fullmatch=True)),
    terminal_id=text.map(lambda t: t[:8]),
    merchant_id=text.map(lambda t: t[:15]),
    name_location=text,
    arn=st.from_regex(r"[0-9A-Z]{1,23}", fullmatch=True),
    processing_code=st.sampled_from(["000000", "200000"]),
)


def _pyiso(raw: bytes) -> dict | str:
    try:
        return iso8583.decode(raw, CLEARING_SPEC)[0]
    except iso8583.DecodeError as exc:
        return f"refused: {exc}"


def _ours(raw: bytes) -> dict | str:
    try:
        return _decode(raw)
    except iso8583.DecodeError as exc:
        return f"refused: {exc}"


@settings(max_examples=100, deadline=None)
@given(presentments, st.integers(1, 99_999_999))
def test_a_presentment_record_decodes_as_pyiso8583_decodes_it(p: Presentment, seq: int) -> None:
    raw = _encode(p.fields(seq))[4:]
    assert _ours(raw) == _pyiso(raw)
    assert Presentment.from_fields(_decode(raw)).local_time == p.local_time


@settings(max_examples=200, deadline=None)
@given(presentments, st.data())
def test_a_damaged_record_is_read_or_refused_as_pyiso8583_would(p: Presentment, data: st.DataObject) -> None:
    raw = bytearray(_encode(p.fields(2))[4:])
    for _ in range(data.draw(st.integers(1, 3))):
        kind = data.draw(st.sampled_from(["flip", "cut", "grow"]))
        at = data.draw(st.integers(0, len(raw) - 1))
        if kind == "flip":
            raw[at] = data.draw(st.integers(0, 255))
        elif kind == "cut":
            del raw[at:]
            if not raw:
                raw = bytearray(b"1")
        else:
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=4))
    assert _ours(bytes(raw)) == _pyiso(bytes(raw))


@given(st.datetimes(dt.datetime(1969, 1, 1), dt.datetime(2068, 12, 31)))
def test_local_times_read_as_strptime_reads_them(t: dt.datetime) -> None:
    t = t.replace(microsecond=0)
    stamp = t.strftime("%y%m%d%H%M%S")
    assert _local_time(stamp) == dt.datetime.strptime(stamp, "%y%m%d%H%M%S")


@settings(max_examples=100, deadline=None)
@given(presentments, st.integers(1, 99_999_999))
def test_records_are_written_as_pyiso8583_writes_them(p: Presentment, seq: int) -> None:
    for fields in (p.fields(seq), {"t": "1644", "24": "695", "71": f"{seq:08d}", "74": "0000000001", "86": "0" * 16},
                   {"t": "1644", "24": "697", "32": p.acquirer_id, "71": "00000001", "72": "file_id=F;date=2026-03-10"}):
        assert _encode(fields) == _pyiso_encode(fields)


def _pyiso_encode(fields: dict) -> bytes:
    raw, _ = iso8583.encode(dict(fields), CLEARING_SPEC)
    return f"{len(raw):04d}".encode() + bytes(raw)
