"""CVV / CVV2 / iCVV against psec and published examples."""

import doctest

import psec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsm_sim.crypto import cvv

pytestmark = pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")

CVK = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")


def test_docstring_examples_run():
    assert doctest.testmod(cvv).failed == 0


def test_psec_published_example():
    assert cvv.generate_cvv(CVK, "1234567890123456", "9912", "220") == "170"


def test_cvv2_and_icvv_are_service_codes_000_and_999():
    pan = "4123456789012345"
    assert cvv.generate_cvv(CVK, pan, "8701", "000") == psec.cvv.generate_cvv(CVK, pan, "8701", "000")
    assert cvv.generate_cvv(CVK, pan, "8701", "999") == psec.cvv.generate_cvv(CVK, pan, "8701", "999")


digits = lambda lo, hi: st.text("0123456789", min_size=lo, max_size=hi)  # noqa: E731


@settings(max_examples=200, deadline=None)
@given(cvk=st.binary(min_size=16, max_size=16), pan=digits(12, 19), exp=digits(4, 4), sc=digits(3, 3))
def test_matches_psec(cvk, pan, exp, sc):
    assert cvv.generate_cvv(cvk, pan, exp, sc) == psec.cvv.generate_cvv(cvk, pan, exp, sc)


@pytest.mark.parametrize(
    "args, message",
    [
        ((bytes(8), "4123456789012345", "2512", "101"), "CVK must be 16 bytes, got 8"),
        ((CVK, "41234567890", "2512", "101"), "PAN must be 12 to 19 digits, got 11"),
        ((CVK, "4123456789O12345", "2512", "101"), "PAN must be decimal digits only"),
        ((CVK, "4123456789012345", "251", "101"), "expiry YYMM must be 4 digits, got 3"),
        ((CVK, "4123456789012345", "2512", "1O1"), "service code must be decimal digits only"),
    ],
)
def test_bad_inputs(args, message):
    with pytest.raises(ValueError, match=message) as info:
        cvv.generate_cvv(*args)
    assert args[1] not in str(info.value)
