"""ANSI X9.24-1 TDES DUKPT: the standard's annex A vectors and a property cross-check with pydukpt."""

import doctest

import pydukpt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsm_sim.crypto import dukpt
from hsm_sim.crypto.des import tdes_ecb_encrypt
from hsm_sim.crypto.pinblock import encode_pin_block

BDK = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
KSN0 = bytes.fromhex("FFFF9876543210E00000")
IPEK = bytes.fromhex("6AC292FAA1315B4D858AB3A3D7D5933A")

# X9.24-1:2009 annex A.4: PIN encryption keys (transaction key XOR the PIN variant) by counter.
ANSI_PIN_KEYS = {
    0x000001: "042666B49184CF5C68DE9628D0397B36",
    0x000002: "C46551CEF9FD244FAA9AD834130D3B38",
    0x000003: "0DF3D9422ACA561A47676D07AD6BAD05",
    0x000004: "279C0F6AEED0BE9A2B2C733E1383AE6E",
    0x000005: "5F8DC6D2C845C1DA508DDC048093B8C0",
    0x000008: "27F66D5244FF621EAA6F6120EDEB427F",
    0x000010: "59598DCBD9BD943F94165CE453585FA8",
    0x0FF800: "F9CDFEBF4F5B1D61B3EC12454527E189",
}


def _ksn(counter: int) -> bytes:
    return (int.from_bytes(KSN0, "big") | counter).to_bytes(10, "big")


def test_docstring_examples_run():
    assert doctest.testmod(dukpt).failed == 0


def test_ipek_from_ansi_bdk_and_ksn():
    assert dukpt.derive_ipek(BDK, KSN0) == IPEK
    # the counter bits of the KSN do not change the IPEK
    assert dukpt.derive_ipek(BDK, _ksn(0x1234)) == IPEK


@pytest.mark.parametrize("counter, expected", sorted(ANSI_PIN_KEYS.items()))
def test_ansi_pin_keys(counter, expected):
    key = dukpt.pin_encryption_key(dukpt.derive_transaction_key(IPEK, _ksn(counter)))
    assert key.hex().upper() == expected


def test_ansi_encrypted_pin_block_example():
    # X9.24-1 annex A: PIN 1234, PAN 4012345678909, KSN ...E00001 -> 1B9C1845EB993A7A
    key = dukpt.pin_encryption_key(dukpt.derive_transaction_key(IPEK, _ksn(1)))
    assert tdes_ecb_encrypt(key, encode_pin_block("1234", "4012345678909", 0)).hex().upper() == "1B9C1845EB993A7A"


counters = st.integers(0, dukpt.COUNTER_MASK).filter(lambda c: bin(c).count("1") <= 10)


@settings(max_examples=60, deadline=None)
@given(bdk=st.binary(min_size=16, max_size=16), ksn_base=st.binary(min_size=10, max_size=10), counter=counters)
def test_matches_pydukpt(bdk, ksn_base, counter):
    ksn = ((int.from_bytes(ksn_base, "big") & ~dukpt.COUNTER_MASK) | counter).to_bytes(10, "big")
    ipek = dukpt.derive_ipek(bdk, ksn)
    assert ipek == pydukpt.derive_ipek(bdk, ksn)
    tk = dukpt.derive_transaction_key(ipek, ksn)
    assert tk == pydukpt.derive_key(ipek, ksn)
    assert dukpt.pin_encryption_key(tk) == pydukpt.pin_key(tk)
    assert dukpt.mac_request_key(tk) == pydukpt.mac_request_key(tk)
    assert dukpt.mac_response_key(tk) == pydukpt.mac_response_key(tk)
    assert dukpt.data_request_key(tk) == pydukpt.data_request_key(tk)
    assert dukpt.data_response_key(tk) == pydukpt.data_response_key(tk)


def test_counter_helper():
    assert dukpt.ksn_counter(_ksn(0x1F0001)) == 0x1F0001


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: dukpt.derive_ipek(BDK[:8], KSN0), "DUKPT BDK must be 16 bytes, got 8"),
        (lambda: dukpt.derive_ipek(BDK, KSN0[:8]), "KSN must be 10 bytes, got 8"),
        (lambda: dukpt.derive_transaction_key(IPEK + IPEK[:8], KSN0), "DUKPT IPEK must be 16 bytes, got 24"),
        (lambda: dukpt.derive_transaction_key(IPEK, _ksn(0x7FF)), "more than 10 one-bits"),
        (lambda: dukpt.pin_encryption_key(IPEK[:8]), "DUKPT transaction key must be 16 bytes, got 8"),
    ],
)
def test_bad_inputs(call, message):
    with pytest.raises(ValueError, match=message):
        call()
