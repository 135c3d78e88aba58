"""ISO 9564 PIN blocks 0, 1, 3 and 4: published examples, psec cross-checks, round trips, bad input."""

import doctest

import psec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsm_sim.crypto import pinblock
from hsm_sim.crypto.pinblock import PinBlockError, decode_pin_block, encode_pin_block

pytestmark = pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")

PAN = "5544332211009966"
AES_KEY = bytes.fromhex("00112233445566778899AABBCCDDEEFF")

pins = st.text("0123456789", min_size=4, max_size=12)
pans = st.text("0123456789", min_size=13, max_size=19)


def test_docstring_examples_run():
    assert doctest.testmod(pinblock).failed == 0


def test_format0_published_example():
    # ISO 9564-1 / psec: PIN 1234, PAN 5544332211009966 -> 041277CDDEEFF669
    assert encode_pin_block("1234", PAN, 0).hex().upper() == "041277CDDEEFF669"
    assert decode_pin_block(bytes.fromhex("041277CDDEEFF669"), PAN, 0) == "1234"


def test_format1_layout_with_given_random_fill():
    block = encode_pin_block("1234", PAN, 1, random_bytes=bytes.fromhex("0123456789ABCDEF"))
    assert block.hex().upper() == "1412340123456789"


def test_format3_fill_is_a_to_f_and_pan_bound():
    block = encode_pin_block("1234", PAN, 3, random_bytes=bytes(range(8)))
    clear = (int.from_bytes(block, "big") ^ int("0000" + PAN[-13:-1], 16)).to_bytes(8, "big").hex().upper()
    assert clear.startswith("341234") and set(clear[6:]) <= set("ABCDEF")


def test_format4_psec_published_example():
    block = bytes.fromhex("E4BE5B623AF7E006AC319E5B93544564")
    assert pinblock.decipher_pin_block_iso4(AES_KEY, block, "1234567890123456") == "1234"


@settings(max_examples=100, deadline=None)
@given(pin=pins, pan=pans)
def test_format0_matches_psec(pin, pan):
    ours = encode_pin_block(pin, pan, 0)
    assert ours == psec.pinblock.encode_pinblock_iso_0(pin, pan)
    assert psec.pinblock.decode_pinblock_iso_0(ours, pan) == pin


@settings(max_examples=100, deadline=None)
@given(pin=pins, pan=pans)
def test_format3_both_ways_with_psec(pin, pan):
    assert psec.pinblock.decode_pinblock_iso_3(encode_pin_block(pin, pan, 3), pan) == pin
    assert decode_pin_block(psec.pinblock.encode_pinblock_iso_3(pin, pan), pan, 3) == pin


@settings(max_examples=60, deadline=None)
@given(key=st.sampled_from([16, 24, 32]).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
       pin=pins, pan=st.text("0123456789", min_size=12, max_size=19), rnd=st.binary(min_size=8, max_size=8))
def test_format4_both_ways_with_psec(key, pin, pan, rnd):
    ours = pinblock.encipher_pin_block_iso4(key, pin, pan, random_bytes=rnd)
    assert psec.pinblock.decipher_pinblock_iso_4(key, ours, pan) == pin
    assert pinblock.decipher_pin_block_iso4(key, ours, pan) == pin
    assert pinblock.decipher_pin_block_iso4(key, psec.pinblock.encipher_pinblock_iso_4(key, pin, pan), pan) == pin


@settings(max_examples=100, deadline=None)
@given(pin=pins, pan=pans, fmt=st.sampled_from([0, 1, 3]), rnd=st.binary(min_size=8, max_size=8))
def test_round_trip_all_8_byte_formats(pin, pan, fmt, rnd):
    assert decode_pin_block(encode_pin_block(pin, pan, fmt, random_bytes=rnd), pan, fmt) == pin


def test_format4_is_randomised_and_bound_to_the_pan():
    a = pinblock.encipher_pin_block_iso4(AES_KEY, "1234", "1234567890123456")
    b = pinblock.encipher_pin_block_iso4(AES_KEY, "1234", "1234567890123456")
    assert a != b
    with pytest.raises(PinBlockError):
        pinblock.decipher_pin_block_iso4(AES_KEY, a, "1234567890123457")


@pytest.mark.parametrize(
    "pin, pan, fmt, reason, message",
    [
        ("12a4", PAN, 0, "pin_digits", "PIN must be decimal digits only"),
        ("123", PAN, 0, "pin_length", "PIN must be 4 to 12 digits, got 3"),
        ("1234567890123", PAN, 3, "pin_length", "PIN must be 4 to 12 digits, got 13"),
        ("1234", PAN, 2, "format", "PIN block format 2 is not 0, 1 or 3"),
        ("1234", "554433221100", 0, "pan", "PAN must be 13 to 19 digits, got 12"),
        ("1234", "55443322110099X6", 3, "pan", "PAN must be decimal digits only"),
    ],
)
def test_encode_bad_input(pin, pan, fmt, reason, message):
    with pytest.raises(PinBlockError, match=message) as info:
        encode_pin_block(pin, pan, fmt)
    assert info.value.reason == reason
    assert pin not in str(info.value) or len(pin) < 4


def test_random_bytes_length_checked():
    with pytest.raises(ValueError, match="random_bytes must be 8 bytes, got 4"):
        encode_pin_block("1234", PAN, 1, random_bytes=bytes(4))


def _clear0(field: str) -> bytes:
    return (int(field, 16) ^ int("0000" + PAN[-13:-1], 16)).to_bytes(8, "big")


@pytest.mark.parametrize(
    "block, fmt, reason, message",
    [
        (bytes(7), 0, "format", "PIN block must be 8 bytes, got 7"),
        (_clear0("041234FFFFFFFFFF"), 3, "format", "PIN block format nibble is 0, expected 3"),
        (_clear0("141234FFFFFFFFFF"), 0, "format", "PIN block format nibble is 1, expected 0"),
        (_clear0("031234FFFFFFFFFF"), 0, "pin_length", "PIN length nibble 3 is outside 4..12"),
        (_clear0("0D1234567890123F"), 0, "pin_length", "PIN length nibble 13 is outside 4..12"),
        (_clear0("04123AFFFFFFFFFF"), 0, "pin_digits", "PIN field holds non-decimal digits"),
        (_clear0("041234FFFFFFFFFE"), 0, "pad", "format 0 PIN block fill is not all F"),
        (_clear0("3412341ABCDEFABC"), 3, "pad", "format 3 PIN block fill is not A to F"),
        (bytes(8), 5, "format", "PIN block format 5 is not 0, 1 or 3"),
    ],
)
def test_decode_bad_blocks(block, fmt, reason, message):
    with pytest.raises(PinBlockError, match=message) as info:
        decode_pin_block(block, PAN, fmt)
    assert info.value.reason == reason


def test_format4_bad_inputs():
    with pytest.raises(PinBlockError, match="format 4 PIN block must be 16 bytes, got 8") as info:
        pinblock.decipher_pin_block_iso4(AES_KEY, bytes(8), "1234567890123456")
    assert info.value.reason == "format"
    with pytest.raises(PinBlockError, match="PAN must be 12 to 19 digits, got 11"):
        pinblock.encipher_pin_block_iso4(AES_KEY, "1234", "12345678901")
    with pytest.raises(ValueError, match="AES key must be 16, 24 or 32 bytes, got 8"):
        pinblock.encipher_pin_block_iso4(bytes(8), "1234", "1234567890123456")


@settings(max_examples=200, deadline=None)
@given(block=st.binary(min_size=8, max_size=8), fmt=st.sampled_from([0, 1, 3]))
def test_random_8_byte_blocks_decode_or_raise_pin_block_error(block, fmt):
    try:
        result = decode_pin_block(block, PAN, fmt)
    except PinBlockError as exc:
        assert exc.reason in {"format", "pin_length", "pin_digits", "pad"}
    else:
        assert result.isdigit() and 4 <= len(result) <= 12


@settings(max_examples=100, deadline=None)
@given(block=st.binary(min_size=16, max_size=16))
def test_random_16_byte_blocks_decipher_or_raise_pin_block_error(block):
    try:
        result = pinblock.decipher_pin_block_iso4(AES_KEY, block, "1234567890123456")
    except PinBlockError as exc:
        assert exc.reason in {"format", "pin_length", "pin_digits", "pad"}
    else:
        assert result.isdigit() and 4 <= len(result) <= 12
