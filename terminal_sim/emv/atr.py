"""Answers to reset (ISO/IEC 7816-3) as EMV Book 1 (section 8.3) asks a contact card to send them.

Two basic ATRs, one per transmission protocol:

- T=0, as most contact EMV cards: ``3B 6K 00 00`` + K historical bytes. TB1 = 00 (no programming
  voltage), TC1 = 00 (no extra guard time), no TD1 (T=0 only), and no TCK: ISO 7816-3 leaves the check
  byte out when T=0 is the only protocol indicated.
- T=1: ``3B EK 00 00 81 31 FE 45`` + K historical bytes + TCK. TD1 = 81 (T=1, TD2 follows), TD2 = 31
  (T=1, TA3 and TB3 follow), TA3 = FE (IFSC 254 bytes), TB3 = 45 (BWI 4, CWI 5, within EMV's limits), and
  TCK, the XOR of every byte from T0 to the last historical byte, as required whenever T=1 is indicated.

>>> build_atr("T=0").hex().upper()
'3B6500005643415244'
>>> build_atr("T=1").hex().upper()
'3BE500008131FE455643415244AC'
"""

from __future__ import annotations

from functools import reduce

PROTOCOLS = ("T=0", "T=1")
HISTORICAL_BYTES = b"VCARD"
_TS_DIRECT = 0x3B
_TB1_NO_VPP = 0x00
_TC1_NO_EXTRA_GUARD_TIME = 0x00
_TD1_T1_TD2_FOLLOWS = 0x81
_TD2_T1_TA3_TB3_FOLLOW = 0x31
_TA3_IFSC = 0xFE
_TB3_BWI_CWI = 0x45


def check_byte(atr_without_tck: bytes) -> int:
    """TCK: the XOR of every byte after TS."""
    return reduce(lambda a, b: a ^ b, atr_without_tck[1:], 0)


def build_atr(protocol: str, historical: bytes = HISTORICAL_BYTES) -> bytes:
    """The EMV basic ATR of a card that speaks `protocol` ("T=0" or "T=1"), with its historical bytes."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")
    if len(historical) > 15:
        raise ValueError(f"an ATR carries at most 15 historical bytes, not {len(historical)}")
    if protocol == "T=0":
        return bytes([_TS_DIRECT, 0x60 | len(historical), _TB1_NO_VPP, _TC1_NO_EXTRA_GUARD_TIME]) + historical
    body = bytes(
        [_TS_DIRECT, 0xE0 | len(historical), _TB1_NO_VPP, _TC1_NO_EXTRA_GUARD_TIME,
         _TD1_T1_TD2_FOLLOWS, _TD2_T1_TA3_TB3_FOLLOW, _TA3_IFSC, _TB3_BWI_CWI]
    ) + historical
    return body + bytes([check_byte(body)])
