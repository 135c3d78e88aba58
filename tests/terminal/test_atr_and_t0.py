"""The virtual card's answer to reset and its T=0 transmission, checked without pcscd.

The ATRs are parsed by pyscard's `ATR` class, an independent ISO 7816-3 parser that also checks TCK;
T=0 is checked against the card's own APDU-level answers: carried over T=0 and fetched back the way a
T=0 reader does, every answer must be the same.
"""

from __future__ import annotations

import doctest
from functools import reduce

import pytest
from hypothesis import given
from hypothesis import strategies as st
from smartcard.ATR import ATR

from terminal_sim.emv import atr as atr_module
from terminal_sim.emv import tlv
from terminal_sim.emv.atr import build_atr
from terminal_sim.emv.card import VirtualCard
from terminal_sim.emv.kernel import complete, read_card
from terminal_sim.vpcd import T0Transmission, card_protocol

pytestmark = pytest.mark.filterwarnings("ignore:.*TripleDES.*")

SELECT_AID = bytes.fromhex("00A4040007A000000003101000")
GPO = bytes.fromhex("80A8000002830000")


def test_atr_examples():
    assert doctest.testmod(atr_module).failed == 0


def test_t0_atr_is_emv_basic_and_offers_t0_only():
    parsed = ATR(list(build_atr("T=0")))
    assert parsed.getSupportedProtocols() == {"T=0": True} and parsed.isT0Supported() and not parsed.isT1Supported()
    assert (parsed.TS, parsed.TB[0], parsed.TC[0], parsed.TD[0]) == (0x3B, 0x00, 0x00, None)
    # ISO 7816-3: no TCK when T=0 is the only protocol indicated.
    assert parsed.hasChecksum is False
    assert bytes(parsed.getHistoricalBytes()) == b"VCARD"


def test_t1_atr_has_emv_interface_bytes_and_a_valid_check_byte():
    raw = build_atr("T=1")
    parsed = ATR(list(raw))
    assert parsed.getSupportedProtocols() == {"T=1": True}
    assert (parsed.TB[0], parsed.TC[0], parsed.TD[0], parsed.TD[1]) == (0x00, 0x00, 0x81, 0x31)
    ifsc, bwi_cwi = parsed.TA[2], parsed.TB[2]
    # EMV Book 1: IFSC from 16 to 254, BWI at most 4, CWI at most 5.
    assert 0x10 <= ifsc <= 0xFE and bwi_cwi >> 4 <= 4 and bwi_cwi & 0x0F <= 5
    assert parsed.hasChecksum and parsed.checksumOK
    assert reduce(lambda a, b: a ^ b, raw[1:]) == 0
    assert ATR(list(raw[:-1] + bytes([raw[-1] ^ 1]))).checksumOK is False


@given(st.binary(max_size=15))
def test_any_historical_bytes_keep_the_atr_well_formed(historical):
    for protocol in ("T=0", "T=1"):
        parsed = ATR(list(build_atr(protocol, historical)))
        assert bytes(parsed.getHistoricalBytes()) == historical
        assert parsed.getSupportedProtocols() == {protocol: True}
        assert parsed.hasChecksum is (protocol == "T=1") and parsed.checksumOK is (True if protocol == "T=1" else None)


def test_atr_refuses_what_it_cannot_say():
    with pytest.raises(ValueError, match="protocol must be one of T=0, T=1"):
        build_atr("T=CL")
    with pytest.raises(ValueError, match="at most 15 historical bytes"):
        build_atr("T=1", bytes(16))


def test_the_protocol_follows_the_interface():
    assert (card_protocol(False), card_protocol(False, "T=1"), card_protocol(True)) == ("T=0", "T=1", "T=1")
    with pytest.raises(ValueError, match="contactless card speaks T=CL"):
        card_protocol(True, "T=0")
    with pytest.raises(ValueError, match="protocol must be one of"):
        card_protocol(False, "T=2")


def test_case_4_waits_for_get_response_in_chunks(emv):
    direct = VirtualCard(emv.build_profile(18)).process_apdu(SELECT_AID)
    t0 = T0Transmission(VirtualCard(emv.build_profile(18)))
    waiting = t0.process_apdu(SELECT_AID)
    assert waiting == bytes([0x61, len(direct) - 2])
    first = t0.process_apdu(bytes([0x00, 0xC0, 0x00, 0x00, 10]))
    assert first == direct[:10] + bytes([0x61, len(direct) - 2 - 10])
    assert t0.process_apdu(bytes([0x00, 0xC0, 0x00, 0x00, 0])) == bytes([0x6C, len(direct) - 2 - 10])  # 256 is too many
    assert t0.process_apdu(bytes([0x00, 0xC0, 0x00, 0x00, len(direct) - 2 - 10])) == direct[10:]
    assert t0.process_apdu(bytes([0x00, 0xC0, 0x00, 0x00, 1])) == b"\x69\x85"  # nothing waits any more


def test_case_2_with_the_wrong_le_gets_6cxx_and_anything_else_forgets_what_waits(emv):
    t0 = T0Transmission(VirtualCard(emv.build_profile(18)))
    assert t0.process_apdu(bytes.fromhex("80CA9F3600")) == b"\x6c\x05"
    assert t0.process_apdu(bytes.fromhex("80CA9F3605")) == bytes.fromhex("9F360200009000")
    assert t0.process_apdu(SELECT_AID)[0] == 0x61
    assert t0.process_apdu(bytes.fromhex("80CA9F3605"))[-2:] == b"\x90\x00"
    assert t0.process_apdu(bytes.fromhex("00C0000010")) == b"\x69\x85"
    assert t0.process_apdu(bytes.fromhex("00C0010010")) == b"\x6a\x86"
    assert t0.process_apdu(bytes.fromhex("00C00000")) == b"\x67\x00"
    assert t0.process_apdu(SELECT_AID)[0] == 0x61
    t0.reset()
    assert t0.process_apdu(bytes.fromhex("00C0000010")) == b"\x69\x85"
    # Status words without data pass as they are.
    assert t0.process_apdu(bytes.fromhex("0012000000")) == b"\x6d\x00"


def test_a_whole_transaction_over_t0_gives_the_same_answers(emv):
    """The kernel (a T=0-capable terminal) reads the same card at the APDU level and over T=0."""
    results = []
    for card in (VirtualCard(emv.build_profile(18)), T0Transmission(VirtualCard(emv.build_profile(18)))):
        read = read_card(card.process_apdu, contactless=False, amount_minor=4_200, currency_numeric="978",
                         country_numeric="250", unpredictable_number=emv.UN, date=emv.TXN_DATE)
        results.append((tlv.flatten(tlv.parse(read.de55())), complete(card.process_apdu, {}, False, read_result=read)))
    assert results[0] == results[1] and results[0][1] == "AAC"
