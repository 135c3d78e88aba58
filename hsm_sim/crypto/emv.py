"""EMV issuer cryptography: ICC master keys, session keys, ARQC and ARPC (Visa CVN 10 and 18).

The algorithms are pyemv's; this module fixes which applies to each cryptogram version.
"""

from __future__ import annotations

from pyemv import ac as _ac
from pyemv import kd as _kd

SUPPORTED_CVNS = (10, 18)


def _check_cvn(cvn: int) -> None:
    if cvn not in SUPPORTED_CVNS:
        raise ValueError(f"cryptogram version {cvn} is not supported (10, 18)")


def derive_icc_master_key(imk: bytes, pan: str, psn: str) -> bytes:
    """ICC master key from the issuer master key (EMV option A; option B for PANs over 16 digits)."""
    if len(imk) != 16:
        raise ValueError(f"IMK must be 16 bytes, got {len(imk)}")
    if not pan.isdigit() or not 12 <= len(pan) <= 19:
        raise ValueError("PAN must be 12 to 19 digits")
    if len(psn) != 2 or not psn.isdigit():
        raise ValueError("PAN sequence number must be 2 digits")
    if len(pan) <= 16:
        return _kd.derive_icc_mk_a(imk, pan, psn)
    return _kd.derive_icc_mk_b(imk, pan, psn)


def derive_session_key(icc_mk: bytes, atc: bytes, *, cvn: int, unpredictable_number: bytes | None = None) -> bytes:
    """AC session key: CVN 10 uses the ICC master key itself; CVN 18 the EMV common session key from the ATC."""
    _check_cvn(cvn)
    if len(atc) != 2:
        raise ValueError(f"ATC must be 2 bytes, got {len(atc)}")
    if cvn == 10:
        return icc_mk
    return _kd.derive_common_sk(icc_mk, atc + b"\0" * 6)


def generate_arqc(session_key: bytes, data: bytes, *, cvn: int) -> bytes:
    """8-byte application cryptogram: ISO 9797-1 algorithm 3; Visa padding (CVN 10), EMV padding (CVN 18)."""
    _check_cvn(cvn)
    padding = _ac.PaddingType.VISA if cvn == 10 else _ac.PaddingType.EMV
    return _ac.generate_ac(session_key, data, padding, 8)


def generate_arpc_method1(session_key: bytes, arqc: bytes, arc: bytes) -> bytes:
    """8-byte ARPC = TDES(session key, ARQC XOR ARC||000000000000)."""
    if len(arqc) != 8 or len(arc) != 2:
        raise ValueError("ARPC method 1 takes an 8-byte ARQC and a 2-byte ARC")
    return _ac.generate_arpc_1(session_key, arqc, arc)


def generate_arpc_method2(session_key: bytes, arqc: bytes, csu: bytes, prop_auth_data: bytes = b"") -> bytes:
    """4-byte ARPC over ARQC || CSU || proprietary authentication data."""
    if len(arqc) != 8 or len(csu) != 4:
        raise ValueError("ARPC method 2 takes an 8-byte ARQC and a 4-byte CSU")
    return _ac.generate_arpc_2(session_key, arqc, csu, prop_auth_data or None)
