"""PIN verification values: IBM 3624 natural PIN and offset, Visa PVV.

Results are cross-checked against psec (tests/hsm/test_crypto_pin.py); this module computes them
without psec's hex round trips because the HSM verifies tens of thousands of PINs a second.
"""

from __future__ import annotations

import hmac

from hsm_sim.crypto.des import tdes_ecb_encrypt

DEFAULT_DECIMALIZATION = "0123456789012345"
_HEX = frozenset("0123456789ABCDEFabcdef")


def _check_key(pvk: bytes) -> None:
    if len(pvk) not in (8, 16, 24):
        raise ValueError(f"PVK must be 8, 16 or 24 bytes, got {len(pvk)}")


def _check_pin(pin: str) -> None:
    if not isinstance(pin, str) or not pin.isascii() or not pin.isdigit():
        raise ValueError("PIN must be decimal digits only")
    if not 4 <= len(pin) <= 12:
        raise ValueError(f"PIN must be 4 to 12 digits, got {len(pin)}")


def _check_ibm(validation_data: str, dectab: str) -> None:
    if len(validation_data) != 16 or not _HEX.issuperset(validation_data):
        raise ValueError(f"IBM 3624 validation data must be 16 hex digits, got {len(validation_data)} characters")
    if len(dectab) != 16 or not dectab.isascii() or not dectab.isdigit():
        raise ValueError("decimalization table must be 16 decimal digits")


def ibm3624_natural_pin(pvk: bytes, validation_data: str, length: int, dectab: str = DEFAULT_DECIMALIZATION) -> str:
    """The natural PIN: validation data (16 hex) TDES-encrypted under the PVK, decimalized, first `length` digits.

    >>> ibm3624_natural_pin(bytes.fromhex("0123456789ABCDEFFEDCBA9876543210"), "1122334455667788", 4,
    ...                     "1234567890123456")
    '4524'
    """
    _check_key(pvk)
    _check_ibm(validation_data, dectab)
    if not 4 <= length <= 16:
        raise ValueError(f"natural PIN length must be 4 to 16, got {length}")
    enciphered = tdes_ecb_encrypt(pvk, bytes.fromhex(validation_data)).hex().upper()
    return enciphered[:length].translate(_dectab_table(dectab))


def _dectab_table(dectab: str) -> dict[int, str]:
    return {ord("0123456789ABCDEF"[i]): dectab[i] for i in range(16)}


def _offset(pvk: bytes, pin: str, validation_data: str, dectab: str) -> str:
    natural = ibm3624_natural_pin(pvk, validation_data, len(pin), dectab)
    return "".join(str((int(p) - int(n)) % 10) for p, n in zip(pin, natural))


def ibm3624_offset(
    pvk: bytes, pin: str, validation_data: str, dectab: str = DEFAULT_DECIMALIZATION, pin_check_length: int | None = None
) -> str:
    """IBM 3624 offset: customer PIN minus natural PIN, digit by digit modulo 10.

    pvk: 8/16/24 bytes. pin: 4-12 digits. validation_data: 16 hex digits (usually from the PAN).
    dectab: 16 decimal digits. pin_check_length: keep only the rightmost N offset digits (4..len(pin)).
    Raises ValueError naming the bad input.

    psec's example (offset 0000 because the PIN is the natural PIN):

    >>> ibm3624_offset(bytes.fromhex("0123456789ABCDEFFEDCBA9876543210"), "4524", "1122334455667788",
    ...                "1234567890123456")
    '0000'
    """
    _check_pin(pin)
    offset = _offset(pvk, pin, validation_data, dectab)
    if pin_check_length is None:
        return offset
    if not 4 <= pin_check_length <= len(pin):
        raise ValueError(f"PIN check length must be 4 to the PIN length {len(pin)}, got {pin_check_length}")
    return offset[-pin_check_length:]


def ibm3624_verify(
    pvk: bytes,
    pin: str,
    offset: str,
    validation_data: str,
    dectab: str = DEFAULT_DECIMALIZATION,
    pin_check_length: int | None = None,
) -> bool:
    """True when the PIN and the stored offset agree (constant-time compare); a wrong PIN is False, not an error.

    Raises ValueError for malformed inputs (PIN, offset not decimal, validation data, dectab).

    >>> ibm3624_verify(bytes.fromhex("0123456789ABCDEFFEDCBA9876543210"), "4524", "0000", "1122334455667788",
    ...                "1234567890123456")
    True
    """
    if not isinstance(offset, str) or not offset.isascii() or not offset.isdigit():
        raise ValueError("IBM 3624 offset must be decimal digits only")
    expected = ibm3624_offset(pvk, pin, validation_data, dectab, pin_check_length)
    return hmac.compare_digest(expected, offset)


def visa_pvv(pvk: bytes, pan: str, pvki: int, pin: str) -> str:
    """Visa PIN verification value, 4 digits.

    TSP = 11 rightmost PAN digits before the check digit || PVKI (0-9) || 4 PIN digits, TDES-encrypted
    under the PVK (16 bytes, or 8/24); decimal digits of the result left to right, then hex letters
    A-F as 0-5, first four. Visa PVV takes 4-digit PINs only. Raises ValueError naming the bad input.

    psec's example:

    >>> visa_pvv(bytes.fromhex("0123456789ABCDEFFEDCBA9876543210"), "1122334455667788", 3, "4524")
    '4021'
    """
    _check_key(pvk)
    if not isinstance(pin, str) or not pin.isascii() or not pin.isdigit() or len(pin) != 4:
        raise ValueError("Visa PVV takes a PIN of exactly 4 decimal digits")
    if not isinstance(pan, str) or not pan.isascii() or not pan.isdigit():
        raise ValueError("PAN must be decimal digits only")
    if not 12 <= len(pan) <= 19:
        raise ValueError(f"PAN must be 12 to 19 digits, got {len(pan)}")
    if not isinstance(pvki, int) or not 0 <= pvki <= 9:
        raise ValueError("PVKI must be a single digit 0-9")
    result = tdes_ecb_encrypt(pvk, bytes.fromhex(f"{pan[-12:-1]}{pvki}{pin}")).hex().upper()
    return _first_digits(result, 4)


def _first_digits(result_hex: str, count: int) -> str:
    """Decimal digits of the hex string in order, then its letters A-F as 0-5, first `count` (Visa CVV/PVV)."""
    digits = "".join(c for c in result_hex if c <= "9")
    if len(digits) < count:
        digits += "".join(str(ord(c) - 65) for c in result_hex if c > "9")
    return digits[:count]
