"""Retail MAC (ISO 9797-1 algorithm 3) and AES-CMAC: published vectors and psec / cryptography cross-checks."""

import doctest

import psec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsm_sim.crypto import mac

pytestmark = pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")

K = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
RFC4493_KEY = bytes.fromhex("2B7E151628AED2A6ABF7158809CF4F3C")
RFC4493_MSG = bytes.fromhex(
    "6BC1BEE22E409F96E93D7E117393172AAE2D8A571E03AC9C9EB76FAC45AF8E51"
    "30C81C46A35CE411E5FBC1191A0A52EFF69F2445DF4F9B17AD2B417BE66C3710"
)


def test_docstring_examples_run():
    assert doctest.testmod(mac).failed == 0


def test_iso9797_annex_b_retail_mac():
    assert mac.retail_mac(K, b"Now is the time for all ").hex().upper() == "A1C72E74EA3FA9B6"


@pytest.mark.parametrize(
    "length, expected",
    [
        (0, "BB1D6929E95937287FA37D129B756746"),
        (16, "070A16B46B4D4144F79BDD9DD04A287C"),
        (40, "DFA66747DE9AE63030CA32611497C827"),
        (64, "51F0BEBF7E3B9D92FC49741779363CFE"),
    ],
)
def test_rfc4493_cmac_vectors(length, expected):
    assert mac.aes_cmac(RFC4493_KEY, RFC4493_MSG[:length], length=16).hex().upper() == expected
    assert mac.aes_cmac(RFC4493_KEY, RFC4493_MSG[:length]).hex().upper() == expected[:16]


@settings(max_examples=100, deadline=None)
@given(key=st.binary(min_size=16, max_size=16), data=st.binary(min_size=1, max_size=200), padding=st.sampled_from([1, 2, 3]))
def test_retail_mac_matches_psec(key, data, padding):
    assert mac.retail_mac(key, data, padding=padding) == psec.mac.generate_retail_mac(key[:8], key[8:], data, padding)


def test_padding_methods():
    assert mac.pad(b"", 1) == bytes(8)
    assert mac.pad(bytes(8), 1) == bytes(8)
    assert mac.pad(bytes(8), 2) == bytes(8) + b"\x80" + bytes(7)
    assert mac.pad(bytes.fromhex("1234"), 3).hex() == "00000000000000101234000000000000"


def test_mac_changes_with_every_byte():
    data = bytearray(b"0200 message body for DE 64")
    base = mac.retail_mac(K, bytes(data))
    data[5] ^= 1
    assert mac.retail_mac(K, bytes(data)) != base


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: mac.retail_mac(K[:8], b"x"), "retail MAC key must be 16 bytes, got 8"),
        (lambda: mac.retail_mac(K, b"x", padding=4), "MAC padding method must be 1, 2 or 3, got 4"),
        (lambda: mac.aes_cmac(K[:10], b"x"), "AES key must be 16, 24 or 32 bytes, got 10"),
        (lambda: mac.aes_cmac(RFC4493_KEY, b"x", length=17), "CMAC length must be 4 to 16 bytes, got 17"),
    ],
)
def test_bad_inputs(call, message):
    with pytest.raises(ValueError, match=message):
        call()
