"""DES/TDES/AES primitives and key check values against published vectors and `cryptography` itself."""

import doctest

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsm_sim.crypto import des

K2 = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")


def test_docstring_examples_run():
    assert doctest.testmod(des).failed == 0


def test_tdes_kcv_of_the_ansi_test_key():
    assert des.kcv(K2, "TDES") == "08D7B4"
    assert des.kcv(K2 + K2[:8], "TDES") == "08D7B4"


def test_aes_kcv_is_cmac_of_zero_block():
    # RFC 4493 key; CMAC(0^16) first 3 bytes, as TR-31 / X9.24-3 define the AES KCV.
    from cryptography.hazmat.primitives.cmac import CMAC
    from cryptography.hazmat.primitives.ciphers import algorithms

    key = bytes.fromhex("2B7E151628AED2A6ABF7158809CF4F3C")
    c = CMAC(algorithms.AES(key))
    c.update(bytes(16))
    assert des.kcv(key, "AES") == c.finalize()[:3].hex().upper()
    assert len(des.kcv(key, "AES")) == 6


def test_single_des_fips_vector():
    assert des.des_ecb_encrypt(bytes.fromhex("133457799BBCDFF1"), bytes.fromhex("0123456789ABCDEF")).hex().upper() == "85E813540F0AB405"


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: des.tdes_ecb_encrypt(bytes(15), bytes(8)), "TDES key must be 8, 16 or 24 bytes, got 15"),
        (lambda: des.tdes_ecb_encrypt(K2, bytes(7)), "TDES data must be a non-empty multiple of 8 bytes, got 7"),
        (lambda: des.tdes_ecb_encrypt(K2, b""), "non-empty multiple of 8 bytes, got 0"),
        (lambda: des.des_ecb_encrypt(K2, bytes(8)), "DES key must be 8 bytes, got 16"),
        (lambda: des.aes_ecb_encrypt(bytes(20), bytes(16)), "AES key must be 16, 24 or 32 bytes, got 20"),
        (lambda: des.aes_ecb_encrypt(bytes(16), bytes(8)), "AES data must be a non-empty multiple of 16 bytes, got 8"),
        (lambda: des.tdes_cbc_encrypt(K2, bytes(8), iv=bytes(4)), "IV must be 8 bytes, got 4"),
        (lambda: des.kcv(K2, "RSA"), "TDES, AES or HMAC, got 'RSA'"),
        (lambda: des.kcv(bytes(8), "AES"), "AES key must be 16, 24 or 32 bytes, got 8"),
    ],
)
def test_bad_inputs_raise_precise_errors(call, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call()


@settings(max_examples=50, deadline=None)
@given(key=st.binary(min_size=16, max_size=16), data=st.binary(min_size=1, max_size=5).map(lambda b: b * 8))
def test_tdes_ecb_and_cbc_round_trip_and_double_length_is_k1k2k1(key, data):
    assert des.tdes_ecb_decrypt(key, des.tdes_ecb_encrypt(key, data)) == data
    assert des.tdes_ecb_encrypt(key, data) == des.tdes_ecb_encrypt(key + key[:8], data)
    iv = key[:8]
    assert des.tdes_cbc_decrypt(key, des.tdes_cbc_encrypt(key, data, iv), iv) == data
    # CBC of the first block is ECB of block XOR IV
    first = bytes(a ^ b for a, b in zip(data[:8], iv))
    assert des.tdes_cbc_encrypt(key, data, iv)[:8] == des.tdes_ecb_encrypt(key, first)


@settings(max_examples=50, deadline=None)
@given(key=st.binary(min_size=8, max_size=24))
def test_odd_parity(key):
    fixed = des.adjust_odd_parity(key)
    assert all(bin(b).count("1") % 2 == 1 for b in fixed)
    assert bytes(b & 0xFE for b in fixed) == bytes(b & 0xFE for b in key)


def test_one_time_keys_stay_out_of_the_schedule_cache():
    import os

    from hsm_sim.crypto import dukpt, dukpt_aes

    tdes_before, aes_before = des._tdes_ecb.cache_info().currsize, des._aes_ecb.cache_info().currsize
    key = os.urandom(16)
    uncached = des.tdes_ecb_encrypt(key, bytes(8), cache=False)
    assert des.aes_ecb_decrypt(key, des.aes_ecb_encrypt(key, bytes(16), cache=False), cache=False) == bytes(16)
    ipek = dukpt.derive_ipek(os.urandom(16), os.urandom(10))
    dukpt.data_request_key(dukpt.derive_transaction_key(ipek, bytes(9) + b"\x7f"))
    dukpt_aes.derive_working_key(os.urandom(16), bytes(11) + b"\x7f", dukpt_aes.KeyUsage.PIN_ENCRYPTION)
    assert des._tdes_ecb.cache_info().currsize - tdes_before <= 1  # only the BDK itself
    assert des._aes_ecb.cache_info().currsize == aes_before
    assert des.tdes_ecb_encrypt(key, bytes(8)) == uncached
