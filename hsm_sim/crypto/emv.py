"""EMV issuer cryptography: ICC master keys, AC session keys, ARQC and ARPC by cryptogram version.

This module fixes which algorithm applies to each cryptogram version number (CVN), validates inputs,
and leaves the choice of transaction data to the caller (the issuer builds it from DE 55 in the order
the card's CVN defines).

CVN    ICC master key (PAN > 16)   session key (AC)              ARQC padding   ARPC
10     option A                    none: the ICC master key      Visa (00..)    method 1 under the ICC MK
18/22  option B                    EMV common: ATC||000000000000 EMV (80 00..)  method 2 under the session key
16/17  option A                    Mastercard: ATC||0000||UN     EMV            method 1 under the ICC MK
20/21  option A                    EMV common: ATC||000000000000 EMV            method 1 under the session key

ICC master keys are derived here, independently of pyemv; session keys and MACs are pyemv's (kd, ac).
All are checked against pyemv's published examples and its CVN classes.
"""

from __future__ import annotations

import hashlib
import warnings

from cryptography.utils import CryptographyDeprecationWarning
from pyemv import ac as _ac
from pyemv import kd as _kd

from hsm_sim.crypto.des import adjust_odd_parity, tdes_ecb_encrypt

# pyemv hands 16-byte keys to cryptography's deprecated TripleDES location; the results are right and
# the warning would repeat on every HSM start, so it is silenced for pyemv's modules only.
warnings.filterwarnings("ignore", category=CryptographyDeprecationWarning, module=r"pyemv\.")

SUPPORTED_CVNS = (10, 16, 17, 18, 20, 21, 22)
_OPTION_B_CVNS = (18, 22)
_MASTERCARD_SKD = (16, 17)
_ARPC_UNDER_ICC_MK = (10, 16, 17)


def _check_cvn(cvn: int) -> None:
    if cvn not in SUPPORTED_CVNS:
        raise ValueError(f"cryptogram version {cvn} is not supported {SUPPORTED_CVNS}")


def _check_key(key: bytes, name: str) -> None:
    if len(key) != 16:
        raise ValueError(f"{name} must be 16 bytes, got {len(key)}")


def master_key_option(cvn: int, pan: str) -> str:
    """The EMV Book 2 A1.4 ICC master key derivation the cryptogram version uses for this PAN: "A" or "B".

    Option B (SHA-1 of PAN || PSN, decimalized) exists for PANs longer than 16 digits; Visa's CVN 18 and
    22 use it for those, while CVN 10 and Mastercard's 16, 17, 20 and 21 derive with option A (the
    rightmost 16 digits) whatever the PAN's length. For PANs of up to 16 digits both options agree.

    >>> master_key_option(18, "4761739001010010123"), master_key_option(10, "4761739001010010123")
    ('B', 'A')
    """
    _check_cvn(cvn)
    return "B" if cvn in _OPTION_B_CVNS and len(pan) > 16 else "A"


def derive_icc_master_key(imk: bytes, pan: str, psn: str, *, cvn: int | None = None, option: str | None = None) -> bytes:
    """16-byte ICC master key from the issuer master key (IMK-AC, 16 bytes), PAN and 2-digit PSN.

    Give the card's cryptogram version (`cvn`, which picks the option by master_key_option) or the
    `option` itself ("A" or "B"). Raises ValueError naming the bad input.

    Option A takes the rightmost 16 digits of PAN || PSN as block Y and returns TDES(IMK, Y) ||
    TDES(IMK, Y XOR FF..FF) with odd parity. Option B, for PANs longer than 16 digits, first replaces Y
    by 16 decimal digits of SHA-1(PAN || PSN): the hash's digits in order, then its letters A-F as 0-5.

    pyemv's published examples (IMK 0123456789ABCDEFFEDCBA9876543210, PAN 12345678901234567, PSN 01):

    >>> imk = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
    >>> derive_icc_master_key(imk, "12345678901234567", "01", option="A").hex().upper()
    '73AD54688CEF2934B0979857E3C719F1'
    >>> derive_icc_master_key(imk, "12345678901234567", "01", cvn=18).hex().upper()
    'AD406D7F6D7570916D75E5DCAB8CF737'
    """
    _check_key(imk, "IMK")
    if not isinstance(pan, str) or not pan.isascii() or not pan.isdigit() or not 12 <= len(pan) <= 19:
        raise ValueError("PAN must be 12 to 19 decimal digits")
    if not isinstance(psn, str) or len(psn) != 2 or not psn.isascii() or not psn.isdigit():
        raise ValueError("PAN sequence number must be 2 decimal digits")
    if option is None:
        if cvn is None:
            raise ValueError("ICC master key derivation needs the cryptogram version or the option")
        option = master_key_option(cvn, pan)
    if option == "A":
        y = (pan + psn)[-16:].rjust(16, "0")
    elif option == "B":
        y = _option_b_digits(pan, psn) if len(pan) > 16 else (pan + psn)[-16:].rjust(16, "0")
    else:
        raise ValueError(f"ICC master key derivation option must be 'A' or 'B', got {option!r}")
    block = bytes.fromhex(y)
    inverted = bytes(b ^ 0xFF for b in block)
    return adjust_odd_parity(tdes_ecb_encrypt(imk, block, cache=False) + tdes_ecb_encrypt(imk, inverted, cache=False))


def _option_b_digits(pan: str, psn: str) -> str:
    data = pan + psn
    digest = hashlib.sha1(bytes.fromhex(data.rjust(len(data) + len(data) % 2, "0"))).hexdigest()
    decimal = [d for d in digest if d.isdigit()]
    letters = [str(int(d, 16) - 10) for d in digest if not d.isdigit()]
    return "".join((decimal + letters)[:16])


def derive_session_key(icc_mk: bytes, atc: bytes, *, cvn: int, unpredictable_number: bytes | None = None) -> bytes:
    """16-byte AC session key for the cryptogram version (see the module table).

    icc_mk: 16 bytes. atc: 2 bytes (tag 9F36). unpredictable_number: 4 bytes (tag 9F37), required for
    the Mastercard session key of CVN 16/17. Raises ValueError.

    pyemv's common session key example (ATC 001C):

    >>> derive_session_key(bytes.fromhex("0123456789ABCDEFFEDCBA9876543210"), bytes.fromhex("001C"),
    ...                    cvn=18).hex().upper()
    'E9FB384AF807B940FEDCEA613461B0C4'
    """
    _check_cvn(cvn)
    _check_key(icc_mk, "ICC master key")
    if len(atc) != 2:
        raise ValueError(f"ATC must be 2 bytes, got {len(atc)}")
    if cvn == 10:
        return bytes(icc_mk)
    if cvn in _MASTERCARD_SKD:
        if unpredictable_number is None or len(unpredictable_number) != 4:
            got = "none" if unpredictable_number is None else f"{len(unpredictable_number)} bytes"
            raise ValueError(f"CVN {cvn} session key needs a 4-byte unpredictable number, got {got}")
        return _kd.derive_common_sk(icc_mk, bytes(atc) + b"\0\0" + bytes(unpredictable_number))
    return _kd.derive_common_sk(icc_mk, bytes(atc) + bytes(6))


def arpc_key(icc_mk: bytes, session_key: bytes, *, cvn: int) -> bytes:
    """The key the ARPC is computed under: the ICC master key for CVN 10/16/17, else the AC session key."""
    _check_cvn(cvn)
    return bytes(icc_mk) if cvn in _ARPC_UNDER_ICC_MK else bytes(session_key)


def generate_arqc(session_key: bytes, data: bytes, *, cvn: int) -> bytes:
    """8-byte application cryptogram (ARQC/TC/AAC): ISO 9797-1 MAC algorithm 3 over `data`.

    session_key: 16 bytes from derive_session_key. data: the CVN's transaction data (non-empty).
    Visa padding (zeros) for CVN 10, EMV padding (80 00..) for the others. Raises ValueError.

    pyemv's published example (EMV padding):

    >>> generate_arqc(bytes.fromhex("29B33180E567CE38EA4CBC9D753B0E61"),
    ...               bytes.fromhex("0123456789ABCDEF0123456789ABCDEF"), cvn=18).hex().upper()
    'FA624250B008B59A'
    """
    _check_cvn(cvn)
    _check_key(session_key, "AC session key")
    if not data:
        raise ValueError("ARQC transaction data is empty")
    padding = _ac.PaddingType.VISA if cvn == 10 else _ac.PaddingType.EMV
    return _ac.generate_ac(bytes(session_key), bytes(data), padding, 8)


def generate_arpc_method1(session_key: bytes, arqc: bytes, arc: bytes) -> bytes:
    """8-byte ARPC (EMV method 1) = TDES(key, ARQC XOR ARC||000000000000); key from arpc_key().

    >>> generate_arpc_method1(bytes.fromhex("AAAAAAAAAAAAAAAABBBBBBBBBBBBBBBB"),
    ...     bytes.fromhex("1234567890ABCDEF"), bytes.fromhex("0000")).hex().upper()
    'F5E6F44147E2F1B0'
    """
    _check_key(session_key, "ARPC key")
    if len(arqc) != 8:
        raise ValueError(f"ARQC must be 8 bytes, got {len(arqc)}")
    if len(arc) != 2:
        raise ValueError(f"ARPC response code must be 2 bytes, got {len(arc)}")
    return _ac.generate_arpc_1(bytes(session_key), bytes(arqc), bytes(arc))


def generate_arpc_method2(session_key: bytes, arqc: bytes, csu: bytes, prop_auth_data: bytes = b"") -> bytes:
    """4-byte ARPC (EMV method 2): MAC algorithm 3 over ARQC || CSU || proprietary data (0-8 bytes).

    >>> generate_arpc_method2(bytes.fromhex("AAAAAAAAAAAAAAAABBBBBBBBBBBBBBBB"),
    ...     bytes.fromhex("1234567890ABCDEF"), bytes.fromhex("00000000")).hex().upper()
    '9308BEBC'
    """
    _check_key(session_key, "ARPC key")
    if len(arqc) != 8:
        raise ValueError(f"ARQC must be 8 bytes, got {len(arqc)}")
    if len(csu) != 4:
        raise ValueError(f"CSU must be 4 bytes, got {len(csu)}")
    if len(prop_auth_data) > 8:
        raise ValueError(f"proprietary authentication data must be 0 to 8 bytes, got {len(prop_auth_data)}")
    return _ac.generate_arpc_2(bytes(session_key), bytes(arqc), bytes(csu), bytes(prop_auth_data) or None)
