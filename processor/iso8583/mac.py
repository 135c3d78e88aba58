"""Where a message's MAC sits and what it covers: the same rule for terminals and the engine.

The MAC is the message's last field: DE 64, or DE 128 when the message has a secondary bitmap (a field
above 64). It covers every byte before it (MTI, bitmaps and fields, as encoded) and is 8 bytes. Which key
computes it is the parties' business: terminals use the DUKPT MAC key of the message's own KSN (DE 53),
the X9.24 request-MAC key for their requests and the response-MAC key for the host's answers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .codec import encode

MAC_BYTES = 8
MAC_FIELDS = ("64", "128")


def mac_field(fields: Mapping[str, Any]) -> str:
    """"128" when the message has a field above 64 (and so a secondary bitmap), otherwise "64"."""
    return "128" if any(key.isdigit() and 64 < int(key) < 128 for key in fields) else "64"


def unsigned(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The message with a zero MAC in its MAC field, ready to encode: the MAC then replaces the last 8 bytes."""
    out = {key: value for key, value in fields.items() if key not in MAC_FIELDS}
    out[mac_field(out)] = "00" * MAC_BYTES
    return out


def encode_for_mac(fields: Mapping[str, Any]) -> bytes:
    """The encoded message whose first len-8 bytes are what the MAC covers (its last 8 are zero)."""
    return encode(unsigned(fields))


def signed_parts(payload: bytes, fields: Mapping[str, Any]) -> tuple[bytes, str] | None:
    """(the bytes the MAC covers, the MAC in hex) of a decoded message, or None when its MAC is missing or
    misplaced (in DE 64 of a message with a secondary bitmap, in both fields, or not its last field)."""
    field = mac_field(fields)
    other = "128" if field == "64" else "64"
    value = fields.get(field)
    if not value or other in fields or len(payload) <= MAC_BYTES:
        return None
    try:
        tag = bytes.fromhex(value)
    except ValueError:
        return None
    if len(tag) != MAC_BYTES or payload[-MAC_BYTES:] != tag:
        return None
    return payload[:-MAC_BYTES], tag.hex().upper()
