"""PAN fingerprint (HMAC-SHA-256) and AES-256-GCM sealing: round trips, context binding, bad input."""

import doctest
import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsm_sim.crypto import tokens

KEY = bytes(range(32))
PAN = "4761739001010010"
pans = st.text("0123456789", min_size=12, max_size=19)


def test_docstring_examples_run():
    assert doctest.testmod(tokens).failed == 0


def test_fingerprint_is_hmac_sha256_rfc4231_style():
    # RFC 4231 test case 2 shape: the fingerprint is plain HMAC-SHA-256 over the ASCII PAN.
    assert tokens.pan_fingerprint(KEY, PAN) == hmac.new(KEY, PAN.encode(), hashlib.sha256).hexdigest()
    assert tokens.pan_fingerprint(KEY, PAN) != tokens.pan_fingerprint(bytes(32), PAN)


@settings(max_examples=50, deadline=None)
@given(key=st.binary(min_size=32, max_size=32), pan=pans, aad=st.binary(max_size=20))
def test_seal_open_round_trip_and_randomised(key, pan, aad):
    sealed = tokens.seal_pan(key, pan, aad=aad)
    assert tokens.open_pan(key, sealed, aad=aad) == pan
    assert pan.encode() not in sealed
    assert tokens.seal_pan(key, pan, aad=aad) != sealed


def test_wrong_key_context_or_tampering_raise_without_the_pan():
    sealed = tokens.seal_pan(KEY, PAN, aad=b"pan:v1")
    for key, data, aad in [
        (bytes(32), sealed, b"pan:v1"),
        (KEY, sealed, b"pan:v2"),
        (KEY, sealed[:-1] + bytes([sealed[-1] ^ 1]), b"pan:v1"),
    ]:
        with pytest.raises(ValueError, match="does not open with this key and context") as info:
            tokens.open_pan(key, data, aad=aad)
        assert PAN not in str(info.value)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: tokens.pan_fingerprint(bytes(8), PAN), "fingerprint key must be at least 16 bytes, got 8"),
        (lambda: tokens.pan_fingerprint(KEY, "47617390"), "PAN must be 12 to 19 decimal digits"),
        (lambda: tokens.seal_pan(bytes(16), PAN, aad=b""), "must be 32 bytes \\(AES-256\\), got 16"),
        (lambda: tokens.seal_pan(KEY, "4761-7390-0101", aad=b""), "PAN must be 12 to 19 decimal digits"),
        (lambda: tokens.open_pan(KEY, bytes(20), aad=b""), "sealed PAN must be at least 40 bytes, got 20"),
    ],
)
def test_bad_inputs(call, message):
    with pytest.raises(ValueError, match=message):
        call()
