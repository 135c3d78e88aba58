"""The card and the issuer each build the ARQC input with their own code; both meet a published vector.

The vector is pyemv's documented Visa CVN 18 example (pyemv 1.5.0, module `pyemv.cvn`): issuer master key
AAAA..AA, PAN 1234567890123456, PSN 00, ATC 0FFF, the tags below, ARQC 769577B5ABE9FE62.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyemv import kd

from hsm_sim import Hsm
from processor.auth.cryptogram import arqc_transaction_data
from terminal_sim.emv import cryptogram

IMK_AC = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
PAN = "1234567890123456"
PSN = "00"
ATC = bytes.fromhex("0FFF")
TERMINAL = {
    "9F02": bytes.fromhex("000000009999"),
    "9F03": bytes.fromhex("000000000000"),
    "9F1A": bytes.fromhex("0840"),
    "95": bytes.fromhex("8000048000"),
    "5F2A": bytes.fromhex("0840"),
    "9A": bytes.fromhex("991231"),
    "9C": bytes.fromhex("01"),
    "9F37": bytes.fromhex("52BF4585"),
}
AIP = bytes.fromhex("1800")
IAD = bytes.fromhex("06011203A0B800")  # CVN 0x12 = 18
ARQC = "769577B5ABE9FE62"
DE55 = {**TERMINAL, "82": AIP, "9F36": ATC, "9F10": IAD}


def test_the_card_computes_the_published_arqc() -> None:
    icc_mk = kd.derive_icc_mk_a(bytes.fromhex(IMK_AC), PAN, PSN)
    data = cryptogram.mac_input(TERMINAL, AIP, ATC, IAD, 18)
    assert cryptogram.application_cryptogram(icc_mk, ATC, data, 18).hex().upper() == ARQC


async def _issuer_verifies(data: bytes, arqc: str) -> bool:
    hsm = Hsm.ephemeral()
    try:
        # The key ceremony forms the IMK from two clear components; their XOR is the published key.
        mask = "0123456789ABCDEFFEDCBA9876543210"
        other = f"{int(IMK_AC, 16) ^ int(mask, 16):032X}"
        imk = await hsm.form_key_from_components("IMK-AC", [mask, other], "TDES")
        ok, _ = await hsm.verify_arqc(imk.kcv, PAN, PSN, ATC.hex(), arqc, data.hex(), cvn=18, arc="3030")
        return ok
    finally:
        await hsm.close()


async def test_the_issuer_rebuilds_the_input_from_de55_and_the_hsm_verifies_the_published_arqc() -> None:
    data = arqc_transaction_data(DE55, 18)
    assert await _issuer_verifies(data, ARQC)
    assert not await _issuer_verifies(arqc_transaction_data({**DE55, "9F02": bytes.fromhex("000000009998")}, 18), ARQC)


tags = st.fixed_dictionaries(
    {tag: st.binary(min_size=len(value), max_size=len(value)) for tag, value in TERMINAL.items()}
)


@pytest.mark.parametrize("cvn", [10, 18])
@given(terminal=tags, aip=st.binary(min_size=2, max_size=2), atc=st.binary(min_size=2, max_size=2),
       cvr=st.binary(min_size=3, max_size=3))
def test_card_and_issuer_agree_on_the_bytes_of_any_transaction(cvn, terminal, aip, atc, cvr) -> None:
    iad = bytes([0x06, 0x01, cvn, 0x03]) + cvr
    card_side = cryptogram.mac_input(terminal, aip, atc, iad, cvn)
    issuer_side = arqc_transaction_data({**terminal, "82": aip, "9F36": atc, "9F10": iad}, cvn)
    assert card_side == issuer_side
