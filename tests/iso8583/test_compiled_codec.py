"""The compiled codec against pyiso8583: the same dict, or the same error, on random and corrupted messages."""

from __future__ import annotations

import iso8583
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processor.iso8583 import SPEC, MessageFormatError, decode, encode
from processor.iso8583.codec import COMPILED, reference_decode, reference_encode
from processor.iso8583.compiled import CompiledCodec
from processor.iso8583.spec import NUMERIC_FIELDS

# Every field the spec defines, with a value drawn to its own format: fixed, variable, text and binary.
FIELD_NUMBERS = [n for n in range(2, 129) if n != 65]


def _value(draw, number: int) -> str:
    spec = SPEC[str(number)]
    size = spec["max_len"] if spec["len_type"] == 0 else draw(st.integers(0, min(spec["max_len"], 40)))
    if spec["data_enc"] == "b":
        return draw(st.binary(min_size=size, max_size=size)).hex().upper()
    alphabet = "0123456789" if str(number) in NUMERIC_FIELDS else "ABCXYZ 0189=-/"
    return draw(st.text(alphabet, min_size=size, max_size=size))


@st.composite
def messages(draw) -> dict:
    fields = {"t": draw(st.sampled_from(["0100", "0110", "0200", "0210", "0400", "0800", "9999"]))}
    for number in draw(st.lists(st.sampled_from(FIELD_NUMBERS), max_size=12, unique=True)):
        fields[str(number)] = _value(draw, number)
    return fields


def _pyiso(raw: bytes):
    """pyiso8583's answer: the dict, or the error's type, message and field."""
    try:
        return iso8583.decode(raw, SPEC)[0]
    except iso8583.DecodeError as exc:
        return ("error", exc.msg, exc.field)


def _ours(raw: bytes):
    """What decode does before its own checks: the compiled path, pyiso8583 where it declines."""
    fields = COMPILED.decode(raw)
    if fields is not None:
        return fields
    return _pyiso(raw)


@settings(max_examples=400)
@given(messages())
def test_encode_gives_pyiso8583s_bytes(fields):
    assert COMPILED.encode(fields) == bytes(iso8583.encode(dict(fields), SPEC)[0])


@settings(max_examples=400)
@given(messages())
def test_decode_gives_pyiso8583s_dict(fields):
    raw = bytes(iso8583.encode(dict(fields), SPEC)[0])
    assert COMPILED.decode(raw) == _pyiso(raw)


@settings(max_examples=600)
@given(messages(), st.data())
def test_corrupted_messages_give_the_same_dict_or_the_same_error(fields, data):
    raw = bytearray(iso8583.encode(dict(fields), SPEC)[0])
    for _ in range(data.draw(st.integers(1, 3))):
        how = data.draw(st.sampled_from(["flip", "cut", "insert", "digit"]))
        at = data.draw(st.integers(0, max(0, len(raw) - 1)))
        if how == "flip" and raw:
            raw[at] = data.draw(st.integers(0, 255))
        elif how == "cut":
            del raw[at:]
        elif how == "insert":
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=4))
        elif raw:
            raw[at] = data.draw(st.sampled_from(list(b"0123456789 +_-")))
    assert _ours(bytes(raw)) == _pyiso(bytes(raw))


@settings(max_examples=400)
@given(st.binary(max_size=200))
def test_random_bytes_give_the_same_dict_or_the_same_error(blob):
    assert _ours(blob) == _pyiso(blob)


@settings(max_examples=300)
@given(
    st.dictionaries(
        st.one_of(st.sampled_from(["t", "p", "1", "65", "0", "129", "064", "2", "4", "35", "52", "55", "128"]), st.text(max_size=3)),
        st.one_of(st.text(max_size=30), st.integers(), st.binary(max_size=4)),
        max_size=6,
    )
)
def test_encode_of_odd_dicts_is_pyiso8583s_or_declined(fields):
    mine = COMPILED.encode(fields)
    if mine is None:
        return  # pyiso8583 decides, error included
    assert mine == bytes(iso8583.encode(dict(fields), SPEC)[0])


def test_the_codec_uses_the_compiled_path_and_words_errors_as_pyiso8583():
    good = {"t": "0200", "2": "4761739001010010", "3": "000000", "4": "000000001000", "11": "000001", "41": "SHOP0001"}
    raw = encode(good)
    assert raw == reference_encode(good)
    assert decode(raw) == reference_decode(raw)
    short = raw[:-3]
    assert COMPILED.decode(short) is None
    with pytest.raises(MessageFormatError, match="field 41") as info:
        decode(short)
    assert "4761739001010010" not in str(info.value)


def test_a_spec_it_cannot_compile_is_refused():
    spec = {**SPEC, "t": {**SPEC["t"], "data_enc": "b"}}
    with pytest.raises(ValueError, match="ASCII MTI"):
        CompiledCodec(spec)


def test_spans_point_at_each_fields_data():
    fields = {"t": "0200", "2": "4761739001010010", "11": "000001", "53": "FFFF9876543210E00001", "64": "00" * 8}
    raw = encode(fields)
    spans = COMPILED.spans(raw)
    assert raw[slice(*spans["11"])] == b"000001"
    assert raw[slice(*spans["53"])].hex().upper() == fields["53"]
    assert spans["64"][1] == len(raw)
