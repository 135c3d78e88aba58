"""ISO 9564-1 PIN blocks: formats 0, 1 and 3 (8-byte, clear, for TDES) and format 4 (16-byte, AES).

Errors are PinBlockError with a `reason` the HSM maps to its error codes; messages never hold the PIN.
"""

from __future__ import annotations

import os

from hsm_sim.crypto.des import aes_ecb_decrypt, aes_ecb_encrypt

_FILL3 = "ABCDEF"


class PinBlockError(ValueError):
    """A PIN block or PIN that does not follow ISO 9564; `reason` is one of format, pin_length, pin_digits, pad, pan."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _check_pin(pin: str) -> None:
    if not isinstance(pin, str) or not pin.isascii() or not pin.isdigit():
        raise PinBlockError("pin_digits", "PIN must be decimal digits only")
    if not 4 <= len(pin) <= 12:
        raise PinBlockError("pin_length", f"PIN must be 4 to 12 digits, got {len(pin)}")


def _check_pan(pan: str, minimum: int) -> None:
    if not isinstance(pan, str) or not pan.isascii() or not pan.isdigit():
        raise PinBlockError("pan", "PAN must be decimal digits only")
    if not minimum <= len(pan) <= 19:
        raise PinBlockError("pan", f"PAN must be {minimum} to 19 digits, got {len(pan)}")


def _pan_field(pan: str) -> int:
    """0000 || the 12 rightmost PAN digits before the check digit, as a 64-bit integer."""
    _check_pan(pan, 13)
    return int(pan[-13:-1], 16)


def _random(random_bytes: bytes | None, size: int) -> bytes:
    if random_bytes is None:
        return os.urandom(size)
    if len(random_bytes) != size:
        raise ValueError(f"random_bytes must be {size} bytes, got {len(random_bytes)}")
    return bytes(random_bytes)


def encode_pin_block(pin: str, pan: str, fmt: int, *, random_bytes: bytes | None = None) -> bytes:
    """Clear 8-byte PIN block of format 0, 1 or 3.

    pin: 4-12 decimal digits. pan: 13-19 digits (formats 0 and 3 bind the block to the 12 rightmost
    digits before the check digit; format 1 ignores it). random_bytes: 8 bytes for the fill of formats
    1 and 3 (os.urandom when None). Raises PinBlockError (reason pin_digits, pin_length, pan, format).

    Format 0 (ISO 9564-1), PIN 1234, PAN 5544332211009966:

    >>> encode_pin_block("1234", "5544332211009966", 0).hex().upper()
    '041277CDDEEFF669'
    """
    _check_pin(pin)
    if fmt == 0:
        field = int(f"0{len(pin):X}{pin}".ljust(16, "F"), 16)
        return (field ^ _pan_field(pan)).to_bytes(8, "big")
    if fmt == 1:
        rnd = _random(random_bytes, 8).hex().upper()
        return bytes.fromhex(f"1{len(pin):X}{pin}" + rnd[: 14 - len(pin)])
    if fmt == 3:
        pan_field = _pan_field(pan)
        fill = "".join(_FILL3[b % 6] for b in _random(random_bytes, 8))
        fill = (fill + fill)[: 14 - len(pin)]
        return (int(f"3{len(pin):X}{pin}{fill}", 16) ^ pan_field).to_bytes(8, "big")
    raise PinBlockError("format", f"PIN block format {fmt} is not 0, 1 or 3")


def decode_pin_block(block: bytes, pan: str, fmt: int) -> str:
    """The PIN from a clear 8-byte format 0, 1 or 3 block.

    Raises PinBlockError: format (wrong length, unknown format, format nibble differs), pin_length
    (length nibble outside 4..12), pin_digits (non-decimal PIN digits), pad (format 0 fill not all F,
    format 3 fill not A-F), pan (formats 0 and 3: PAN not 13-19 digits).

    >>> decode_pin_block(bytes.fromhex("041277CDDEEFF669"), "5544332211009966", 0)
    '1234'
    """
    if fmt not in (0, 1, 3):
        raise PinBlockError("format", f"PIN block format {fmt} is not 0, 1 or 3")
    if len(block) != 8:
        raise PinBlockError("format", f"PIN block must be 8 bytes, got {len(block)}")
    value = int.from_bytes(block, "big")
    if fmt != 1:
        value ^= _pan_field(pan)
    pin, pad = _split_pin_field(f"{value:016X}", fmt)
    if fmt == 0 and pad.strip("F"):
        raise PinBlockError("pad", "format 0 PIN block fill is not all F")
    if fmt == 3 and pad.strip(_FILL3):
        raise PinBlockError("pad", "format 3 PIN block fill is not A to F")
    return pin


def _split_pin_field(field: str, fmt: int) -> tuple[str, str]:
    """(PIN, fill) of a clear PIN field in hex: format nibble, length nibble, digits, fill."""
    if field[0] != str(fmt):
        raise PinBlockError("format", f"PIN block format nibble is {field[0]}, expected {fmt}")
    length = int(field[1], 16)
    if not 4 <= length <= 12:
        raise PinBlockError("pin_length", f"PIN length nibble {length} is outside 4..12")
    pin = field[2 : 2 + length]
    if not pin.isdigit():
        raise PinBlockError("pin_digits", "PIN field holds non-decimal digits")
    return pin, field[2 + length :]


def _pin_field_iso4(pin: str, random_bytes: bytes | None) -> bytes:
    return bytes.fromhex(f"4{len(pin):X}{pin}".ljust(16, "A")) + _random(random_bytes, 8)


def _pan_field_iso4(pan: str) -> int:
    _check_pan(pan, 12)
    return int(f"{len(pan) - 12:X}{pan}".ljust(32, "0"), 16)


def encipher_pin_block_iso4(
    key: bytes, pin: str, pan: str, *, random_bytes: bytes | None = None, cache: bool = True
) -> bytes:
    """Format 4 enciphered PIN block, 16 bytes: E(K, E(K, PIN field) XOR PAN field) (ISO 9564-1:2017).

    key: AES key (16, 24 or 32 bytes). pin: 4-12 digits. pan: 12-19 digits. random_bytes: the 8 random
    bytes of the PIN field (os.urandom when None). Raises PinBlockError (pin_digits, pin_length, pan),
    ValueError for a bad key or random_bytes length.

    >>> key = bytes.fromhex("00112233445566778899AABBCCDDEEFF")
    >>> block = encipher_pin_block_iso4(key, "1234", "1234567890123456", random_bytes=bytes(8))
    >>> decipher_pin_block_iso4(key, block, "1234567890123456")
    '1234'
    """
    _check_pin(pin)
    pan_field = _pan_field_iso4(pan)
    first = int.from_bytes(aes_ecb_encrypt(key, _pin_field_iso4(pin, random_bytes), cache=cache), "big")
    return aes_ecb_encrypt(key, (first ^ pan_field).to_bytes(16, "big"), cache=cache)


def decipher_pin_block_iso4(key: bytes, block: bytes, pan: str, *, cache: bool = True) -> str:
    """The PIN from a 16-byte format 4 enciphered block (see encipher_pin_block_iso4).

    Raises PinBlockError: format (length, format nibble), pin_length, pin_digits, pad (fill not all A), pan.
    A wrong key or PAN almost always shows as a format or pad error.

    psec's published example (key 00112233445566778899AABBCCDDEEFF, PAN 1234567890123456):

    >>> decipher_pin_block_iso4(bytes.fromhex("00112233445566778899AABBCCDDEEFF"),
    ...     bytes.fromhex("E4BE5B623AF7E006AC319E5B93544564"), "1234567890123456")
    '1234'
    """
    if len(block) != 16:
        raise PinBlockError("format", f"format 4 PIN block must be 16 bytes, got {len(block)}")
    pan_field = _pan_field_iso4(pan)
    middle = int.from_bytes(aes_ecb_decrypt(key, bytes(block), cache=cache), "big") ^ pan_field
    field = aes_ecb_decrypt(key, middle.to_bytes(16, "big"), cache=cache)[:8].hex().upper()
    pin, pad = _split_pin_field(field, 4)
    if pad.strip("A"):
        raise PinBlockError("pad", "format 4 PIN field fill is not all A")
    return pin
