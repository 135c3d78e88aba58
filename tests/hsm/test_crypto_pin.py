"""IBM 3624 offsets and Visa PVV against psec and its published examples."""

import doctest

import psec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsm_sim.crypto import pin

pytestmark = pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")

PVK = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
digits = lambda lo, hi: st.text("0123456789", min_size=lo, max_size=hi)  # noqa: E731


def test_docstring_examples_run():
    assert doctest.testmod(pin).failed == 0


def test_published_examples():
    assert pin.visa_pvv(PVK, "1122334455667788", 3, "4524") == "4021"
    assert pin.ibm3624_natural_pin(PVK, "1122334455667788", 4, "1234567890123456") == "4524"
    assert pin.ibm3624_offset(PVK, "4524", "1122334455667788", "1234567890123456") == "0000"


@settings(max_examples=150, deadline=None)
@given(pvk=st.binary(min_size=16, max_size=16), pan=digits(12, 19), pvki=st.integers(0, 9), p=digits(4, 4))
def test_pvv_matches_psec(pvk, pan, pvki, p):
    assert pin.visa_pvv(pvk, pan, pvki, p) == psec.pin.generate_visa_pvv(pvk, str(pvki), p, pan)


@settings(max_examples=150, deadline=None)
@given(pvk=st.binary(min_size=16, max_size=16), pan=digits(16, 16), p=digits(4, 12), dectab=digits(16, 16))
def test_ibm3624_matches_psec_and_verifies(pvk, pan, p, dectab):
    expected = psec.pin.generate_ibm3624_offset(pvk, dectab, p, pan, 0, 16, "F")
    assert pin.ibm3624_offset(pvk, p, pan, dectab) == expected
    assert pin.ibm3624_verify(pvk, p, expected, pan, dectab)
    wrong = str((int(p[0]) + 1) % 10) + p[1:]
    assert not pin.ibm3624_verify(pvk, wrong, expected, pan, dectab)


def test_pin_check_length_keeps_rightmost_offset_digits():
    full = pin.ibm3624_offset(PVK, "123456", "1122334455667788")
    assert pin.ibm3624_offset(PVK, "123456", "1122334455667788", pin_check_length=4) == full[-4:]
    assert pin.ibm3624_verify(PVK, "123456", full[-4:], "1122334455667788", pin_check_length=4)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: pin.visa_pvv(PVK, "4123456789012345", 1, "12345"), "PIN of exactly 4 decimal digits"),
        (lambda: pin.visa_pvv(PVK, "4123456789012345", 1, "12a4"), "PIN of exactly 4 decimal digits"),
        (lambda: pin.visa_pvv(PVK, "41234567890", 1, "1234"), "PAN must be 12 to 19 digits, got 11"),
        (lambda: pin.visa_pvv(PVK, "4123456789012345", 10, "1234"), "PVKI must be a single digit 0-9"),
        (lambda: pin.visa_pvv(bytes(10), "4123456789012345", 1, "1234"), "PVK must be 8, 16 or 24 bytes, got 10"),
        (lambda: pin.ibm3624_offset(PVK, "123", "1122334455667788"), "PIN must be 4 to 12 digits, got 3"),
        (lambda: pin.ibm3624_offset(PVK, "1234567890123", "1122334455667788"), "PIN must be 4 to 12 digits, got 13"),
        (lambda: pin.ibm3624_offset(PVK, "12x4", "1122334455667788"), "PIN must be decimal digits only"),
        (lambda: pin.ibm3624_offset(PVK, "1234", "11223344556677"), "validation data must be 16 hex digits, got 14"),
        (lambda: pin.ibm3624_offset(PVK, "1234", "1122334455667788", "012345678901234A"), "decimalization table"),
        (lambda: pin.ibm3624_offset(PVK, "1234", "1122334455667788", pin_check_length=5), "PIN check length must be 4 to"),
        (lambda: pin.ibm3624_verify(PVK, "1234", "12a4", "1122334455667788"), "offset must be decimal digits only"),
    ],
)
def test_bad_inputs(call, message):
    with pytest.raises(ValueError, match=message):
        call()
