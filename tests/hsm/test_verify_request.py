"""`verify_request`: an authorization request's MAC, its PAN's fingerprints and its CVVs in one command and
one audit line, answering exactly what `verify_mac`, `fingerprint_pan` and `verify_cvv` answer one by one,
and nothing of a message whose MAC does not verify."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsm_sim import Hsm, HsmError
from hsm_sim.crypto import dukpt, mac

PAN = "4761739001010010"
TDES_BDK_PARTS = ["01" * 16, "F2" * 16]
KSN = "FFFF9876543210E00003"
MESSAGE = b"0200\x70\x24\x04\x80\x00\xc0\x00\x00 an ISO 8583 request"


def request_mac(message: bytes, ksn: str = KSN) -> str:
    clear = bytes(a ^ b for a, b in zip(*(bytes.fromhex(p) for p in TDES_BDK_PARTS)))
    transaction_key = dukpt.derive_transaction_key(dukpt.derive_ipek(clear, bytes.fromhex(ksn)), bytes.fromhex(ksn))
    return mac.retail_mac(dukpt.mac_request_key(transaction_key), message).hex().upper()


async def _keys(hsm) -> tuple[str, str]:
    bdk = (await hsm.form_key_from_components("BDK", TDES_BDK_PARTS)).kcv
    cvk = (await hsm.generate_key("CVK")).kcv
    await hsm.generate_key("DEK", "AES")
    await hsm.generate_key("FPK")
    return bdk, cvk


@pytest.fixture
async def hsm():
    h = Hsm.ephemeral()
    yield h
    await h.close()


@settings(max_examples=25, deadline=None)
@given(
    cvv=st.text("0123456789", min_size=3, max_size=3),
    expiry=st.sampled_from(["3012", "2901", "2712"]),
    service_code=st.sampled_from(["101", "201", "000"]),
    tamper=st.booleans(),
)
async def test_it_answers_what_the_three_commands_answer(cvv, expiry, service_code, tamper):
    async with Hsm.ephemeral() as hsm:
        bdk, cvk = await _keys(hsm)
        good = await hsm.generate_cvv(cvk, PAN, expiry, service_code)
        message = MESSAGE + b"!" if tamper else MESSAGE
        asked = [[expiry, service_code, cvv], [expiry, service_code, good]]
        found = await hsm.verify_request(bdk, message, request_mac(MESSAGE), ksn=KSN, pan=PAN, cvk=cvk, cvvs=asked)
        assert found.mac_ok is await hsm.verify_mac(bdk, message, request_mac(MESSAGE), ksn=KSN) is (not tamper)
        if tamper:
            assert found.fingerprints == [] and found.cvvs == []
        else:
            assert found.fingerprints == await hsm.fingerprint_pan(PAN)
            assert found.cvvs == [await hsm.verify_cvv(cvk, PAN, *one) for one in asked] and found.cvvs[1] is True


async def test_one_audit_line_says_what_each_part_answered(hsm):
    bdk, cvk = await _keys(hsm)
    cvv2 = await hsm.generate_cvv(cvk, PAN, "3012", "000")
    before = len(hsm.audit.memory)
    await hsm.verify_request(bdk, MESSAGE, request_mac(MESSAGE), ksn=KSN, pan=PAN, cvk=cvk, cvvs=[["3012", "000", cvv2], ["3012", "101", "000"]])
    await hsm.verify_request(bdk, MESSAGE, "00" * 8, ksn=KSN, pan=PAN, cvk=cvk, cvvs=[["3012", "000", cvv2]])
    lines = list(hsm.audit.memory)[before:]
    assert len(lines) == 2
    assert '"cmd":"verify_request","status":"00"' in lines[0] and f'"keys":["{bdk}","{cvk}"]' in lines[0]
    assert '"mac":"00","cvv":"00,01"' in lines[0]
    assert '"cmd":"verify_request","status":"01"' in lines[1] and '"mac":"01"' in lines[1] and "cvv" not in lines[1]
    assert PAN not in "".join(lines) and cvv2 not in "".join(lines).replace(bdk, "").replace(cvk, "")


async def test_its_bounds(hsm):
    bdk, cvk = await _keys(hsm)
    signed = request_mac(MESSAGE)
    for kwargs, why in (
        ({"pan": PAN, "cvk": cvk, "cvvs": [["3012", "000", "123"]] * 3}, "up to 2"),
        ({"pan": PAN, "cvvs": [["3012", "000", "123"]]}, "need the cvk and the pan"),
        ({"cvk": cvk, "cvvs": [["3012", "000", "123"]]}, "need the cvk and the pan"),
        ({"pan": PAN, "cvk": cvk, "cvvs": [["3012", "000"]]}, "up to 2"),
    ):
        with pytest.raises(HsmError) as info:
            await hsm.verify_request(bdk, MESSAGE, signed, ksn=KSN, **kwargs)
        assert info.value.code == "15" and why in info.value.message
    # A CVK that is not one is refused as verify_cvv refuses it.
    with pytest.raises(HsmError) as info:
        await hsm.verify_request(bdk, MESSAGE, signed, ksn=KSN, pan=PAN, cvk=bdk, cvvs=[["3012", "000", "123"]])
    assert info.value.code == "11" and "takes CVK" in info.value.message


async def test_over_the_network_the_engine_runs_it_and_other_roles_are_refused(served, client):
    bdk, cvk = await _keys(served.hsm)
    engine, issuer = await client("engine-1"), await client("issuer-1")
    cvv2 = await issuer.generate_cvv(cvk, PAN, "3012", "000")
    found = await engine.verify_request(bdk, MESSAGE, request_mac(MESSAGE), ksn=KSN, pan=PAN, cvk=cvk, cvvs=[["3012", "000", cvv2]])
    assert found.mac_ok and found.cvvs == [True] and found.fingerprints == await engine.fingerprint_pan(PAN)
    bad = await engine.verify_request(bdk, MESSAGE, "00" * 8, ksn=KSN, pan=PAN, cvk=cvk, cvvs=[["3012", "000", cvv2]])
    assert not bad.mac_ok and bad.fingerprints == [] and bad.cvvs == []
    with pytest.raises(HsmError) as info:
        await issuer.verify_request(bdk, MESSAGE, request_mac(MESSAGE), ksn=KSN, pan=PAN)
    assert info.value.code == "17" and "may not run verify_request" in info.value.message
    assert served.refusals()[-1]["by"] == "issuer-1"
