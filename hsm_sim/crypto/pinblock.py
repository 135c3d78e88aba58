"""ISO 9564 PIN blocks: formats 0, 1 and 3 (8-byte, TDES) and format 4 (16-byte, AES)."""

from __future__ import annotations

import os

from psec import pinblock as _psec


class PinBlockError(ValueError):
    """A PIN block or PIN that does not follow ISO 9564; `reason` is one of format, pin_length, pin_digits, pad, pan."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _check_pin(pin: str) -> None:
    if not pin.isdigit():
        raise PinBlockError("pin_digits", "PIN must be digits only")
    if not 4 <= len(pin) <= 12:
        raise PinBlockError("pin_length", f"PIN must be 4 to 12 digits, got {len(pin)}")


def _pan_field(pan: str) -> bytes:
    if not pan.isdigit() or len(pan) < 13:
        raise PinBlockError("pan", "PAN must be at least 13 digits")
    return bytes.fromhex("0000" + pan[-13:-1])


def encode_pin_block(pin: str, pan: str, fmt: int, *, random_bytes: bytes | None = None) -> bytes:
    """Clear 8-byte PIN block of format 0 (PAN-bound, F fill), 1 (random fill) or 3 (PAN-bound, A-F fill)."""
    _check_pin(pin)
    if fmt == 0:
        field = f"0{len(pin):X}{pin}".ljust(16, "F")
        return bytes(a ^ b for a, b in zip(bytes.fromhex(field), _pan_field(pan)))
    rnd = random_bytes if random_bytes is not None else os.urandom(8)
    if fmt == 1:
        digits = "".join(f"{b:02X}" for b in rnd)
        field = f"1{len(pin):X}{pin}" + digits[: 14 - len(pin)]
        return bytes.fromhex(field)
    if fmt == 3:
        fill = "".join("ABCDEF"[b % 6] for b in rnd * 2)
        field = f"3{len(pin):X}{pin}" + fill[: 14 - len(pin)]
        return bytes(a ^ b for a, b in zip(bytes.fromhex(field), _pan_field(pan)))
    raise PinBlockError("format", f"PIN block format {fmt} is not 0, 1 or 3")


def decode_pin_block(block: bytes, pan: str, fmt: int) -> str:
    """The PIN from a clear format 0, 1 or 3 block; PinBlockError says what is wrong, never the PIN."""
    if len(block) != 8:
        raise PinBlockError("format", f"PIN block must be 8 bytes, got {len(block)}")
    field = (bytes(a ^ b for a, b in zip(block, _pan_field(pan))) if fmt in (0, 3) else block).hex().upper()
    if fmt not in (0, 1, 3):
        raise PinBlockError("format", f"PIN block format {fmt} is not 0, 1 or 3")
    if field[0] != str(fmt):
        raise PinBlockError("format", f"PIN block format nibble is {field[0]}, expected {fmt}")
    length = int(field[1], 16)
    if not 4 <= length <= 12:
        raise PinBlockError("pin_length", f"PIN length nibble {length} outside 4..12")
    pin = field[2 : 2 + length]
    if not pin.isdigit():
        raise PinBlockError("pin_digits", "PIN field holds non-decimal digits")
    pad = field[2 + length :]
    if fmt == 0 and pad != "F" * len(pad):
        raise PinBlockError("pad", "format 0 PIN block padding is not all F")
    if fmt == 3 and any(c not in "ABCDEF" for c in pad):
        raise PinBlockError("pad", "format 3 PIN block padding is not A to F")
    return pin


def encipher_pin_block_iso4(key: bytes, pin: str, pan: str, *, random_bytes: bytes | None = None) -> bytes:
    """Format 4: AES-encrypted 16-byte PIN block bound to the PAN (ISO 9564-1:2017)."""
    _check_pin(pin)
    if not pan.isdigit() or not 12 <= len(pan) <= 19:
        raise PinBlockError("pan", "PAN must be 12 to 19 digits")
    return _psec.encipher_pinblock_iso_4(key, pin, pan)


def decipher_pin_block_iso4(key: bytes, block: bytes, pan: str) -> str:
    if len(block) != 16:
        raise PinBlockError("format", f"format 4 PIN block must be 16 bytes, got {len(block)}")
    try:
        return _psec.decipher_pinblock_iso_4(key, block, pan)
    except ValueError as exc:
        raise PinBlockError("format", f"format 4 PIN block does not decode: {str(exc).split(':')[0]}") from None
