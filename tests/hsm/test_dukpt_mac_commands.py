"""The DUKPT MAC commands: a terminal MACs with keys from its own IPEK, the HSM from the BDK and the KSN."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsm_sim import Hsm
from hsm_sim.crypto import dukpt, dukpt_aes, mac

# ANSI X9.24-1 annex A: the test BDK and the initial KSN of its vectors.
BDK = "0123456789ABCDEFFEDCBA9876543210"
KSN0 = "FFFF9876543210E00000"
AES_BDK = "FEDCBA9876543210F1F1F1F1F1F1F1F1" * 2  # X9.24-3 test vectors: the AES-256 BDK


def _ksn(counter: int) -> str:
    return f"{int(KSN0, 16) | counter:020X}"


async def _hsm_with(bdk_hex: str, algorithm: str) -> tuple[Hsm, str]:
    hsm = Hsm.ephemeral()
    other = bytes(len(bytes.fromhex(bdk_hex))).hex()
    info = await hsm.form_key_from_components("BDK", [bdk_hex, other], algorithm)
    return hsm, info.kcv


def _terminal_mac(counter: int, data: bytes, *, response: bool = False) -> str:
    """What the terminal computes from the IPEK a key-loading device gave it."""
    ipek = dukpt.derive_ipek(bytes.fromhex(BDK), bytes.fromhex(KSN0))
    key = dukpt.derive_transaction_key(ipek, bytes.fromhex(_ksn(counter)))
    variant = dukpt.mac_response_key(key) if response else dukpt.mac_request_key(key)
    return mac.retail_mac(variant, data).hex().upper()


async def test_tdes_request_mac_verifies_and_any_change_fails() -> None:
    hsm, bdk = await _hsm_with(BDK, "TDES")
    message = b"0200\x72\x00\x00\x00\x00\x00\x00\x01 a message"
    tag = _terminal_mac(1, message)
    assert await hsm.verify_dukpt_mac(bdk, _ksn(1), message, tag)
    assert not await hsm.verify_dukpt_mac(bdk, _ksn(1), message[:-1] + b"X", tag)
    assert not await hsm.verify_dukpt_mac(bdk, _ksn(2), message, tag), "another counter is another key"
    # A response MAC is not a request MAC: the two directions have their own variants.
    assert not await hsm.verify_dukpt_mac(bdk, _ksn(1), message, _terminal_mac(1, message, response=True))


async def test_tdes_response_mac_is_what_the_terminal_expects() -> None:
    hsm, bdk = await _hsm_with(BDK, "TDES")
    answer = b"0210 an answer"
    assert await hsm.generate_dukpt_mac(bdk, _ksn(3), answer) == _terminal_mac(3, answer, response=True)


@settings(max_examples=25, deadline=None)
@given(counter=st.integers(1, 2**21 - 1).filter(lambda c: bin(c).count("1") <= 10), data=st.binary(max_size=300))
async def test_tdes_round_trip(counter: int, data: bytes) -> None:
    hsm, bdk = await _hsm_with(BDK, "TDES")
    assert await hsm.verify_dukpt_mac(bdk, _ksn(counter), data, _terminal_mac(counter, data))


async def test_aes_dukpt_request_and_response_macs() -> None:
    hsm, bdk = await _hsm_with(AES_BDK, "AES")
    initial_key_id = "1234567890123456"
    initial = bytes.fromhex(await hsm.inject_aes_initial_key(bdk, initial_key_id))
    ksn = bytes.fromhex(initial_key_id + "00000005")
    message = b"0100 an AES DUKPT terminal's request"
    request_key = dukpt_aes.derive_working_key(initial, ksn, dukpt_aes.KeyUsage.MAC_GENERATION)
    tag = mac.aes_cmac(request_key, message).hex().upper()
    assert await hsm.verify_dukpt_mac(bdk, ksn.hex(), message, tag)
    assert not await hsm.verify_dukpt_mac(bdk, ksn.hex(), message + b"!", tag)
    response_key = dukpt_aes.derive_working_key(initial, ksn, dukpt_aes.KeyUsage.MAC_VERIFICATION)
    answer = b"0110 the answer"
    assert await hsm.generate_dukpt_mac(bdk, ksn.hex(), answer) == mac.aes_cmac(response_key, answer).hex().upper()


async def test_only_a_bdk_serves_and_directions_are_named() -> None:
    hsm, bdk = await _hsm_with(BDK, "TDES")
    cvk = await hsm.generate_key("CVK")
    from hsm_sim import HsmError

    with pytest.raises(HsmError):
        await hsm.verify_dukpt_mac(cvk.kcv, _ksn(1), b"data", "00" * 8)
    with pytest.raises(HsmError):
        await hsm.generate_dukpt_mac(bdk, _ksn(1), b"data", direction="sideways")
