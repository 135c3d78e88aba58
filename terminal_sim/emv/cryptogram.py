"""The card's application cryptogram (Visa VIS, CVN 10 and 18): what the card MACs, and with which key.

Written from the card's side of the transaction, and on purpose apart from the issuer's code: the card
and the issuer (`processor.auth.cryptogram`, from DE 55) each build the MAC input their own way, so a
mistake in either shows as an ARQC that does not verify. Both are checked against pyemv's published
Visa CVN 18 example in the tests.

MAC input, in the order Visa VIS lists it (EMV Book 2 8.1.1's recommended minimum):

    from the terminal (CDOL1 or PDOL data):  9F02 9F03 9F1A 95 5F2A 9A 9C 9F37
    from the card:                            82 (AIP), 9F36 (ATC), then
        CVN 10: the CVR, the 4 bytes of the IAD after its length, DKI and CVN
        CVN 18: the whole Issuer Application Data (9F10)

Keys: CVN 10 MACs with the ICC master key itself (ISO 9797-1 algorithm 3, zero padding); CVN 18 with the
EMV common session key derived from it and the ATC (padding 80 00..).
"""

from __future__ import annotations

from collections.abc import Mapping

from pyemv import ac, kd

TERMINAL_ELEMENTS = ("9F02", "9F03", "9F1A", "95", "5F2A", "9A", "9C", "9F37")
CVNS = (10, 18)


def mac_input(terminal: Mapping[str, bytes], aip: bytes, atc: bytes, iad: bytes, cvn: int) -> bytes:
    """The bytes the card MACs: the terminal's values in VIS order, then its own AIP, ATC and IAD part."""
    if cvn not in CVNS:
        raise ValueError(f"the card computes CVN 10 or 18, not {cvn}")
    card_part = iad[3:7] if cvn == 10 else iad
    return b"".join(terminal[tag] for tag in TERMINAL_ELEMENTS) + aip + atc + card_part


def session_key(icc_mk_ac: bytes, atc: bytes) -> bytes:
    """The EMV common session key of one transaction (R = ATC || 00 00 00 00 00 00)."""
    return kd.derive_common_sk(icc_mk_ac, atc + bytes(6))


def ac_key(icc_mk_ac: bytes, atc: bytes, cvn: int) -> bytes:
    """The key the card MACs (and checks the ARPC) with: the ICC master key for CVN 10, else the session key."""
    return icc_mk_ac if cvn == 10 else session_key(icc_mk_ac, atc)


def application_cryptogram(icc_mk_ac: bytes, atc: bytes, data: bytes, cvn: int) -> bytes:
    """The 8-byte ARQC, TC or AAC over `data` (from `mac_input`)."""
    padding = ac.PaddingType.VISA if cvn == 10 else ac.PaddingType.EMV
    return ac.generate_ac(ac_key(icc_mk_ac, atc, cvn), data, padding, 8)
