"""ANSI X9.24-3 AES DUKPT against the standard's test vectors (annex B.1 and the supplement)."""

import doctest

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from hsm_sim.crypto import dukpt_aes
from hsm_sim.crypto.dukpt_aes import KeyType, KeyUsage, derive_initial_key, derive_working_key, transaction_derivation_key
from hsm_sim.crypto.mac import aes_cmac
from hsm_sim.crypto.pinblock import decipher_pin_block_iso4, encipher_pin_block_iso4

BDK128 = bytes.fromhex("FEDCBA9876543210F1F1F1F1F1F1F1F1")
BDK256 = BDK128 * 2
IKID = bytes.fromhex("1234567890123456")
IK128 = bytes.fromhex("1273671EA26AC29AFA4D1084127652A1")

# X9.24-3:2017 supplement, AES-128 BDK: intermediate derivation key per transaction counter.
DERIVATION_KEYS = {
    0x00000001: "4F21B565BAD9835E112B6465635EAE44",
    0x00000002: "2F34D68DE10F68D38091A73B9E7C437C",
    0x00000003: "031504E530365CF81264238540518318",
    0x00000004: "0EEFC7ADA628BA68878DA9165A8A1887",
    0x00000005: "C2A7AC328A5DA2D6002D62465BFC028B",
    0x00000006: "D30F7D9351DA58448A2F5E92B4EE3B7D",
    0x00000007: "A8253CEED9AC042C54F75D35C8352278",
    0x00000008: "718EE6CF0B27E53D5F7AF99C4D8146A2",
    0x0001FFFE: "E21E8C8D347F8561A2BE752DAA85A111",
    0x00020000: "F7AE9025468A25D37B7249CFFED224C8",
    0x00020001: "692C8EA4013645135B36497131DF9D2C",
    0xFFFE2000: "48E585B694EB0B18D5C35443E163C0BA",
    0xFFFE4000: "396C2C7CA1EA701C03B86B7D41F0C562",
    0xFFFE8000: "0387625F189B58AE03EF0E8CCA41105E",
    0xFFFF0000: "F6BA59389BD14A9855BE9727E7C52E3C",
}

# Working keys checked through what they compute: CMAC and AES-CBC (zero IV, zero fill) of the ASCII
# data "4012345678909D987" under the MAC and data keys, as published alongside the same vectors.
MAC_DATA = b"4012345678909D987"
WORKING = {
    1: ("A2EB5C1C35809E58404E873C3C411E31", "DD4E1895FD9BF53D8DAF25568ABF551D",
        "E5AFA5B408A3310E3D779C8A9A2AE29448BD5B4232582090DB703AF647205A79",
        "84904DFC6B5201A4F1FE2EAA49E70B8C01838EF53030790FF785D630AB3916B4"),
    8: ("85C7CA68F55F51E7DCAC969B8C111130", "B45399DB90C0BA75DB4B86605758695A",
        "304EC254A7B528D9892E47F7C1315D498C0D88EA8CD71CA52D38F362721AEA67",
        "8CD1A54538B9DC79A5DF4544ADE8D1F1A085AC1F89AA59BFF49351A68957DE1B"),
}


def _ksn(counter: int) -> bytes:
    return IKID + counter.to_bytes(4, "big")


def _cbc(key: bytes, data: bytes) -> str:
    enc = Cipher(algorithms.AES(key), modes.CBC(bytes(16))).encryptor()
    return (enc.update(data.ljust(32, b"\0")) + enc.finalize()).hex().upper()


def test_docstring_examples_run():
    assert doctest.testmod(dukpt_aes).failed == 0


def test_initial_keys():
    assert derive_initial_key(BDK128, IKID, KeyType.AES128) == IK128
    assert derive_initial_key(BDK256, IKID, KeyType.AES256).hex().upper() == (
        "CE9CE0C101D1138F97FB6CAD4DF045A7083D4EAE2D35A31789D01CCF0949550F"
    )


@pytest.mark.parametrize("counter, expected", sorted(DERIVATION_KEYS.items()))
def test_derivation_keys(counter, expected):
    assert transaction_derivation_key(IK128, _ksn(counter)).hex().upper() == expected


@pytest.mark.parametrize("counter", sorted(WORKING))
def test_working_keys_through_published_mac_and_data_results(counter):
    mac_req, mac_resp, data_req, data_resp = WORKING[counter]
    ksn = _ksn(counter)
    assert aes_cmac(derive_working_key(IK128, ksn, KeyUsage.MAC_GENERATION), MAC_DATA, length=16).hex().upper() == mac_req
    assert aes_cmac(derive_working_key(IK128, ksn, KeyUsage.MAC_VERIFICATION), MAC_DATA, length=16).hex().upper() == mac_resp
    assert _cbc(derive_working_key(IK128, ksn, KeyUsage.DATA_ENCRYPT), MAC_DATA) == data_req
    assert _cbc(derive_working_key(IK128, ksn, KeyUsage.DATA_DECRYPT), MAC_DATA) == data_resp


def test_working_key_lengths_and_distinct_usages():
    ksn = _ksn(5)
    keys = {u: derive_working_key(IK128, ksn, u) for u in KeyUsage if u < KeyUsage.KEY_DERIVATION}
    assert len(set(keys.values())) == len(keys)
    assert len(derive_working_key(IK128, ksn, KeyUsage.PIN_ENCRYPTION, KeyType.TDES2)) == 16
    ik256 = derive_initial_key(BDK256, IKID, KeyType.AES256)
    assert len(derive_working_key(ik256, ksn, KeyUsage.PIN_ENCRYPTION, KeyType.AES256)) == 32
    assert len(derive_working_key(ik256, ksn, KeyUsage.PIN_ENCRYPTION, KeyType.TDES3)) == 24


counters = st.integers(0, 2**32 - 1).filter(lambda c: bin(c).count("1") <= 16)


@settings(max_examples=40, deadline=None)
@given(counter=counters.filter(lambda c: c > 0))
def test_each_counter_extends_the_key_of_its_prefix(counter):
    # The derivation key of a counter is one step from the key of the counter without its lowest bit.
    parent = transaction_derivation_key(IK128, _ksn(counter & (counter - 1)))
    data = bytearray(bytes.fromhex("0101800000020080") + IKID[4:] + counter.to_bytes(4, "big"))
    step = Cipher(algorithms.AES(parent), modes.ECB()).encryptor().update(bytes(data))
    assert transaction_derivation_key(IK128, _ksn(counter)) == step


@settings(max_examples=30, deadline=None)
@given(counter=counters, pin=st.text("0123456789", min_size=4, max_size=12), pan=st.text("0123456789", min_size=12, max_size=19))
def test_format4_pin_block_round_trip_under_a_dukpt_pin_key(counter, pin, pan):
    key = derive_working_key(IK128, _ksn(counter), KeyUsage.PIN_ENCRYPTION)
    assert decipher_pin_block_iso4(key, encipher_pin_block_iso4(key, pin, pan), pan) == pin


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: derive_initial_key(BDK128[:8], IKID), "AES128 BDK must be 16 bytes, got 8"),
        (lambda: derive_initial_key(BDK128, IKID, KeyType.AES256), "AES256 BDK must be 32 bytes, got 16"),
        (lambda: derive_initial_key(BDK128, IKID, KeyType.TDES2), "BDK type must be AES128, AES192 or AES256, got TDES2"),
        (lambda: derive_initial_key(BDK128, IKID[:4]), "initial key ID must be 8 bytes, got 4"),
        (lambda: derive_working_key(IK128[:10], _ksn(1), KeyUsage.PIN_ENCRYPTION), "initial key must be 16, 24 or 32 bytes, got 10"),
        (lambda: derive_working_key(IK128, _ksn(1)[:10], KeyUsage.PIN_ENCRYPTION), "KSN must be 12 bytes, got 10"),
        (lambda: derive_working_key(IK128, _ksn(0x1FFFF), KeyUsage.PIN_ENCRYPTION), "more than 16 one-bits"),
        (lambda: derive_working_key(IK128, _ksn(1), KeyUsage.KEY_DERIVATION), "KEY_DERIVATION is not a working key usage"),
        (lambda: derive_working_key(IK128, _ksn(1), KeyUsage.PIN_ENCRYPTION, KeyType.AES256), "AES256 working key cannot be derived from a AES128"),
        (lambda: derive_working_key(IK128, _ksn(1), 0x4444), "unknown AES DUKPT key usage 17476"),
        (lambda: derive_initial_key(BDK128, IKID, 9), "unknown AES DUKPT key type 9"),
    ],
)
def test_bad_inputs(call, message):
    with pytest.raises(ValueError, match=message):
        call()
