"""BER-TLV for DE 55 (ICC data): tags as upper-case hex strings, values as bytes."""

from __future__ import annotations

MAX_DEPTH = 4


class TlvError(ValueError):
    """DE 55 is not well-formed BER-TLV; the message names the offset and the tag."""


def decode_tlv(data: bytes, *, max_items: int = 64) -> dict[str, bytes]:
    """Flat {tag: value} of the primitive data objects in `data` (constructed ones are opened)."""
    out: dict[str, bytes] = {}
    _decode_into(data, out, 0, max_items)
    return out


def _decode_into(data: bytes, out: dict[str, bytes], depth: int, max_items: int) -> None:
    if depth > MAX_DEPTH:
        raise TlvError("ICC data nested too deeply")
    i, n = 0, len(data)
    while i < n:
        if data[i] in (0x00, 0xFF):  # padding between objects is allowed by EMV
            i += 1
            continue
        start = i
        first = data[i]
        i += 1
        if first & 0x1F == 0x1F:
            while True:
                if i >= n:
                    raise TlvError(f"tag truncated at offset {start}")
                i += 1
                if not data[i - 1] & 0x80:
                    break
                if i - start > 3:
                    raise TlvError(f"tag longer than 3 bytes at offset {start}")
        tag = data[start:i].hex().upper()
        if i >= n:
            raise TlvError(f"length of tag {tag} missing at offset {i}")
        length = data[i]
        i += 1
        if length & 0x80:
            count = length & 0x7F
            if count == 0 or count > 2 or i + count > n:
                raise TlvError(f"bad length of tag {tag} at offset {i - 1}")
            length = int.from_bytes(data[i : i + count], "big")
            i += count
        if i + length > n:
            raise TlvError(f"tag {tag} announces {length} bytes, {n - i} left")
        value = data[i : i + length]
        i += length
        if first & 0x20:
            _decode_into(value, out, depth + 1, max_items)
        else:
            out[tag] = value
        if len(out) > max_items:
            raise TlvError(f"more than {max_items} data objects")


def encode_tlv(items: dict[str, bytes]) -> bytes:
    """Concatenated primitive TLVs, in the order given."""
    out = bytearray()
    for tag, value in items.items():
        out += bytes.fromhex(tag)
        length = len(value)
        if length < 0x80:
            out.append(length)
        elif length <= 0xFF:
            out += bytes((0x81, length))
        else:
            out += b"\x82" + length.to_bytes(2, "big")
        out += value
    return bytes(out)
