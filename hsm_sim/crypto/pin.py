"""PIN verification values: IBM 3624 offsets and Visa PVV."""

from __future__ import annotations

from hsm_sim.crypto.des import tdes_ecb_encrypt

DEFAULT_DECIMALIZATION = "0123456789012345"


def _decimalize(hex_digits: str, dectab: str) -> str:
    return "".join(dectab[int(c, 16)] for c in hex_digits)


def _check(pin: str, validation_data: str, dectab: str) -> None:
    if not pin.isdigit() or not 4 <= len(pin) <= 12:
        raise ValueError("PIN must be 4 to 12 digits")
    if len(validation_data) != 16 or any(c not in "0123456789ABCDEFabcdef" for c in validation_data):
        raise ValueError("validation data must be 16 hex digits")
    if len(dectab) != 16 or not dectab.isdigit():
        raise ValueError("decimalization table must be 16 decimal digits")


def ibm3624_natural_pin(pvk: bytes, validation_data: str, length: int, dectab: str = DEFAULT_DECIMALIZATION) -> str:
    """The 'natural PIN': validation data encrypted under the PVK, decimalized, first `length` digits."""
    enciphered = tdes_ecb_encrypt(pvk, bytes.fromhex(validation_data)).hex().upper()
    return _decimalize(enciphered, dectab)[:length]


def ibm3624_offset(
    pvk: bytes, pin: str, validation_data: str, dectab: str = DEFAULT_DECIMALIZATION, pin_check_length: int | None = None
) -> str:
    """Offset = customer PIN - natural PIN, digit by digit modulo 10 (IBM 3624)."""
    _check(pin, validation_data, dectab)
    natural = ibm3624_natural_pin(pvk, validation_data, len(pin), dectab)
    offset = "".join(str((int(p) - int(n)) % 10) for p, n in zip(pin, natural))
    return offset[-pin_check_length:] if pin_check_length else offset


def ibm3624_verify(
    pvk: bytes,
    pin: str,
    offset: str,
    validation_data: str,
    dectab: str = DEFAULT_DECIMALIZATION,
    pin_check_length: int | None = None,
) -> bool:
    """True when the PIN and the stored offset agree."""
    expected = ibm3624_offset(pvk, pin, validation_data, dectab, pin_check_length)
    return expected == offset


def visa_pvv(pvk: bytes, pan: str, pvki: int, pin: str) -> str:
    """Visa PVV: TSP = 11 rightmost PAN digits before the check digit + PVKI + 4 PIN digits, TDES, 4 digits."""
    if not pin.isdigit() or len(pin) != 4:
        raise ValueError("Visa PVV takes a 4-digit PIN")
    if not pan.isdigit() or len(pan) < 12:
        raise ValueError("PAN must be at least 12 digits")
    if not 0 <= pvki <= 9:
        raise ValueError("PVKI must be a single digit")
    tsp = f"{pan[-12:-1]}{pvki}{pin}"
    result = tdes_ecb_encrypt(pvk, bytes.fromhex(tsp)).hex().upper()
    digits = [c for c in result if c.isdigit()]
    if len(digits) < 4:
        digits += [str(int(c, 16) - 10) for c in result if not c.isdigit()]
    return "".join(digits[:4])
