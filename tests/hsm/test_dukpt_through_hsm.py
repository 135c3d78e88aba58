"""DUKPT through the HSM on the standards' vectors: AES-128 and AES-256 BDKs (X9.24-3) and the TDES BDK
(X9.24-1) loaded as custodians would load them, the initial keys a key-loading device gets, PIN blocks
and request/response MACs under the published working keys, and EMV cryptograms on long PANs."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyemv import cvn as pyemv_cvn

from hsm_sim import Hsm
from hsm_sim.crypto import dukpt, mac

# Supplement to ANSI X9.24-3-2017 Test Vectors: BDKs, initial key ID, initial keys and, for counter 1,
# the working keys of each usage (tests/hsm/test_dukpt_aes.py checks the whole derivation on them).
BDK128 = "FEDCBA9876543210F1F1F1F1F1F1F1F1"
BDK256 = BDK128 * 2
IKID = "1234567890123456"
KSN1 = IKID + "00000001"
VECTORS = {
    BDK128: {
        "initial": "1273671EA26AC29AFA4D1084127652A1",
        "mac_generation": "A2DC23DE6FDE0824A2BC321E08E4B8B7",
        "mac_verification": "DBB463945B286C07CD3AD82EE96FD9C9",
    },
    BDK256: {
        "initial": "CE9CE0C101D1138F97FB6CAD4DF045A7083D4EAE2D35A31789D01CCF0949550F",
        "mac_generation": "61DABDF4B340CF461EE860B1D1AB55357142BD2D6977306859CF49AEFE8F1549",
    },
}
# X9.24-1 annex A: BDK, KSN of the first transaction and its transaction key.
TDES_BDK = "0123456789ABCDEFFEDCBA9876543210"
TDES_KSN1 = "FFFF9876543210E00001"
TDES_KEY1 = bytes.fromhex("042666B49184CFA368DE9628D0397BC9")
MESSAGE = b"0200\x70\x24\x04\x80\x00\xc0\x00\x00 an ISO 8583 request"


@pytest.fixture
async def hsm():
    h = Hsm.ephemeral()
    yield h
    await h.close()


async def _bdk(hsm: Hsm, clear: str, algorithm: str) -> str:
    other = "5A" * (len(clear) // 2)
    first = bytes(a ^ b for a, b in zip(bytes.fromhex(clear), bytes.fromhex(other))).hex()
    return (await hsm.form_key_from_components("BDK", [first, other], algorithm)).kcv


@pytest.mark.parametrize("clear", [BDK128, BDK256], ids=["AES-128 BDK", "AES-256 BDK"])
async def test_aes_dukpt_initial_key_and_request_mac(hsm, clear):
    bdk = await _bdk(hsm, clear, "AES")
    assert (await hsm.key_info(bdk)).key_bits == len(clear) * 4
    assert await hsm.inject_aes_initial_key(bdk, IKID) == VECTORS[clear]["initial"]
    request_mac = mac.aes_cmac(bytes.fromhex(VECTORS[clear]["mac_generation"]), MESSAGE).hex()
    assert await hsm.verify_mac(bdk, MESSAGE, request_mac, ksn=KSN1) is True
    assert await hsm.verify_mac(bdk, MESSAGE + b"!", request_mac, ksn=KSN1) is False
    assert await hsm.verify_mac(bdk, MESSAGE, request_mac, ksn=IKID + "00000002") is False


async def test_aes_dukpt_response_mac_and_published_pin_block(hsm):
    bdk = await _bdk(hsm, BDK128, "AES")
    response = await hsm.generate_mac(bdk, MESSAGE, ksn=KSN1)
    assert response == mac.aes_cmac(bytes.fromhex(VECTORS[BDK128]["mac_verification"]), MESSAGE).hex().upper()
    # The supplement's format 4 PIN block for PIN 1234 and PAN 4111111111111111 under the counter 1 PIN key.
    pvk = (await hsm.generate_key("PVK")).kcv
    pvv = await hsm.generate_pin_verification("1234", "4111111111111111", pvk, "pvv")
    block = "A912150391AB65A67E52883D81CE2D15"
    assert await hsm.verify_pin(block, "4111111111111111", bdk, 4, pvk, method="pvv", verification_value=pvv, ksn=KSN1)


async def test_tdes_dukpt_request_and_response_macs(hsm):
    bdk = await _bdk(hsm, TDES_BDK, "TDES")
    assert await hsm.inject_ipek(bdk, "FFFF9876543210E00000") == "6AC292FAA1315B4D858AB3A3D7D5933A"
    request_key = bytes(a ^ b for a, b in zip(TDES_KEY1, bytes.fromhex("000000000000FF00000000000000FF00")))
    response_key = bytes(a ^ b for a, b in zip(TDES_KEY1, bytes.fromhex("00000000FF00000000000000FF000000")))
    assert request_key == dukpt.mac_request_key(TDES_KEY1) and response_key == dukpt.mac_response_key(TDES_KEY1)
    assert await hsm.verify_mac(bdk, MESSAGE, mac.retail_mac(request_key, MESSAGE).hex(), ksn=TDES_KSN1) is True
    assert await hsm.verify_mac(bdk, MESSAGE, mac.retail_mac(response_key, MESSAGE).hex(), ksn=TDES_KSN1) is False
    assert await hsm.generate_mac(bdk, MESSAGE, ksn=TDES_KSN1) == mac.retail_mac(response_key, MESSAGE).hex().upper()


async def test_mac_commands_refuse_what_does_not_fit(hsm):
    bdk = await _bdk(hsm, TDES_BDK, "TDES")
    tak = (await hsm.generate_key("TAK", "AES")).kcv
    cvk = (await hsm.generate_key("CVK")).kcv
    cases = [
        (lambda: hsm.verify_mac(bdk, MESSAGE, "00" * 8), "15", "needs the KSN"),
        (lambda: hsm.verify_mac(tak, MESSAGE, "00" * 8, ksn=TDES_KSN1), "15", "a KSN goes with a BDK"),
        (lambda: hsm.generate_mac(tak, MESSAGE, algorithm="retail"), "12", "makes cmac MACs"),
        (lambda: hsm.generate_mac(cvk, MESSAGE), "11", "CVK"),
    ]
    from hsm_sim import HsmError

    for call, status, words in cases:
        with pytest.raises(HsmError) as info:
            await call()
        assert info.value.code == status and words in info.value.message, info.value


CARDS = {10: pyemv_cvn.VisaCVN10, 18: pyemv_cvn.VisaCVN18, 22: pyemv_cvn.VisaCVN22}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    cvn=st.sampled_from(sorted(CARDS)),
    pan=st.text("0123456789", min_size=17, max_size=19),
    atc=st.binary(min_size=2, max_size=2),
    tags=st.binary(min_size=29, max_size=29),
)
async def test_arqc_of_long_pans_verifies_with_the_cryptogram_versions_derivation(hsm, cvn, pan, atc, tags):
    """A 17-19 digit PAN's card, as pyemv computes it, is verified by the HSM for CVN 10 (option A) and 18/22 (B)."""
    imk_clear = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
    imk = next((k.kcv for k in await hsm.list_keys() if k.key_type == "IMK-AC"), None)
    if imk is None:
        imk = (await hsm.form_key_from_components("IMK-AC", [imk_clear.hex(), "00" * 16])).kcv
    card = CARDS[cvn](imk_clear, imk_clear, imk_clear, pan, "01")
    fields = [tags[0:6], tags[6:12], tags[12:14], tags[14:19], tags[19:21], tags[21:24], tags[24:25], tags[25:29]]
    if cvn == 10:
        extra = [bytes.fromhex("1800"), atc, bytes.fromhex("03A00000")]
    else:
        extra = [bytes.fromhex("1800"), atc, bytes.fromhex("06011203A00000")]
    arqc = card.generate_ac(*fields, *extra)
    ok, _ = await hsm.verify_arqc(imk, pan, "01", atc.hex(), arqc.hex(), b"".join(fields + extra).hex(), cvn=cvn, arc="3030")
    assert ok is True
