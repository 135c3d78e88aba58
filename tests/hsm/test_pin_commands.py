"""PIN commands through the HSM with terminal keys as terminals really hold them (TDES and AES DUKPT)."""

from __future__ import annotations

import pytest

from hsm_sim import Hsm, HsmError
from hsm_sim.crypto import dukpt, dukpt_aes, pinblock
from hsm_sim.crypto.des import tdes_ecb_encrypt

PAN = "4761739001010010"


@pytest.fixture
async def hsm():
    h = Hsm.ephemeral()
    yield h
    await h.close()


async def test_aes_dukpt_format_4_pin_verifies(hsm):
    bdk = (await hsm.generate_key("BDK", "AES")).kcv
    pvk = (await hsm.generate_key("PVK")).kcv
    pvv = await hsm.generate_pin_verification("1234", PAN, pvk, "pvv")
    initial = bytes.fromhex(await hsm.inject_aes_initial_key(bdk, "1234567890123456"))
    ksn = bytes.fromhex("123456789012345600000003")
    key = dukpt_aes.derive_working_key(initial, ksn, dukpt_aes.KeyUsage.PIN_ENCRYPTION)
    for pin, expected in (("1234", True), ("4321", False)):
        block = pinblock.encipher_pin_block_iso4(key, pin, PAN).hex()
        assert await hsm.verify_pin(block, PAN, bdk, 4, pvk, method="pvv", verification_value=pvv, ksn=ksn.hex()) is expected


async def test_tdes_dukpt_pin_from_another_key_is_refused_not_counted(hsm):
    bdk = (await hsm.generate_key("BDK")).kcv
    other = (await hsm.generate_key("BDK")).kcv
    pvk = (await hsm.generate_key("PVK")).kcv
    pvv = await hsm.generate_pin_verification("1234", PAN, pvk, "pvv")
    ksn = "FFFF9876543210E00001"
    ipek = bytes.fromhex(await hsm.inject_ipek(other, ksn))
    key = dukpt.pin_encryption_key(dukpt.derive_transaction_key(ipek, bytes.fromhex(ksn)))
    block = tdes_ecb_encrypt(key, pinblock.encode_pin_block("1234", PAN, 0)).hex()
    try:
        ok = await hsm.verify_pin(block, PAN, bdk, 0, pvk, method="pvv", verification_value=pvv, ksn=ksn)
    except HsmError as exc:
        assert exc.code in ("20", "23")
    else:
        assert ok is False


async def test_wrong_key_types_are_refused_with_status_11(hsm):
    cvk = (await hsm.generate_key("CVK")).kcv
    pvk = (await hsm.generate_key("PVK")).kcv
    with pytest.raises(HsmError) as info:
        await hsm.verify_pin("00" * 8, PAN, cvk, 0, pvk, method="pvv", verification_value="1234")
    assert info.value.code == "11" and "CVK" in info.value.message
    with pytest.raises(HsmError) as info:
        await hsm.generate_cvv(pvk, PAN, "3012", "000")
    assert info.value.code == "11"
