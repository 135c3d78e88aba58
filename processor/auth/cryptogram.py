"""The application cryptogram input both the card and the issuer build.

Pure and dependency free on purpose: the issuer and the terminal simulators import this same
function. The issuer takes the DE 55 tags of an authorization request and recomputes the ARQC
over exactly the bytes the card MACed.

Input data, in this order (Visa VIS, EMV Book 2 8.1.1 recommended minimum set):

    9F02 Amount, Authorised            6
    9F03 Amount, Other                 6
    9F1A Terminal Country Code         2
    95   Terminal Verification Results 5
    5F2A Transaction Currency Code     2
    9A   Transaction Date              3
    9C   Transaction Type              1
    9F37 Unpredictable Number          4
    82   Application Interchange Prof. 2
    9F36 Application Transaction Ctr.  2
    then CVN 10: CVR, 4 bytes = 9F10[3:7] (IAD bytes 4-7: CVR length 03 and CVR)
         CVN 18: the whole 9F10 Issuer Application Data

MAC: ISO/IEC 9797-1 algorithm 3, 8 bytes; padding method 1 ("Visa", zeros) for CVN 10,
method 2 ("EMV", 80 then zeros) for CVN 18. Key: CVN 10 the ICC master key itself;
CVN 18 the EMV common session key derived from the ICC master key and 9F36.
``pyemv.ac.generate_ac(key, data, PaddingType.VISA | EMV, 8)`` computes it.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["SUPPORTED_CVNS", "CVN_PADDING", "arqc_transaction_data", "cvn_from_iad"]

SUPPORTED_CVNS = (10, 18)
# Name of the pyemv.ac.PaddingType member for each CVN.
CVN_PADDING = {10: "VISA", 18: "EMV"}

_FIXED = (
    ("9F02", 6),
    ("9F03", 6),
    ("9F1A", 2),
    ("95", 5),
    ("5F2A", 2),
    ("9A", 3),
    ("9C", 1),
    ("9F37", 4),
    ("82", 2),
    ("9F36", 2),
)


def cvn_from_iad(iad: bytes) -> int:
    """CVN carried in Visa Issuer Application Data (9F10 byte 3)."""
    if len(iad) < 7:
        raise ValueError(f"tag 9F10 is {len(iad)} bytes, expecting at least 7")
    return iad[2]


def arqc_transaction_data(icc_tags: Mapping[str, bytes], cvn: int) -> bytes:
    """Concatenate the cryptogram input for CVN 10 or 18 from {tag: value} (hex tags)."""
    if cvn not in SUPPORTED_CVNS:
        raise ValueError(f"CVN {cvn} is not supported, expecting one of {SUPPORTED_CVNS}")
    tags = {k.upper(): bytes(v) for k, v in icc_tags.items()}
    parts: list[bytes] = []
    for tag, length in _FIXED:
        value = tags.get(tag)
        if value is None:
            raise ValueError(f"tag {tag} is missing from the cryptogram data")
        if len(value) != length:
            raise ValueError(f"tag {tag} is {len(value)} bytes, expecting {length}")
        parts.append(value)
    iad = tags.get("9F10")
    if iad is None:
        raise ValueError("tag 9F10 is missing from the cryptogram data")
    if len(iad) < 7 or len(iad) > 32:
        raise ValueError(f"tag 9F10 is {len(iad)} bytes, expecting 7 to 32")
    if iad[2] != cvn:
        raise ValueError(f"tag 9F10 carries CVN {iad[2]}, expecting {cvn}")
    parts.append(iad[3:7] if cvn == 10 else iad)
    return b"".join(parts)
