"""BER-TLV (EMV Book 3 Annex B) and Data Object List handling.

Unlike a dict-based decoder this keeps repeated tags (a PSE or PPSE directory holds
one ``61`` entry per application) and names the offset of every malformed byte.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

__all__ = [
    "TlvError",
    "Tlv",
    "parse",
    "encode",
    "encode_many",
    "find",
    "find_all",
    "flatten",
    "parse_dol",
    "build_dol_data",
    "split_dol_data",
]

# A card response is at most 256 bytes of data; anything deeper than this is garbage.
_MAX_DEPTH = 8


class TlvError(ValueError):
    """Malformed BER-TLV or DOL data."""


@dataclass(frozen=True, slots=True)
class Tlv:
    """One data object: upper-case hex tag, raw value, parsed children if constructed."""

    tag: str
    value: bytes
    children: tuple["Tlv", ...] = ()

    @property
    def constructed(self) -> bool:
        return bool(int(self.tag[:2], 16) & 0x20)


def _read_tag(data: bytes, pos: int) -> tuple[str, int]:
    start = pos
    if pos >= len(data):
        raise TlvError(f"tag expected at offset {pos}, data ends")
    first = data[pos]
    pos += 1
    if first & 0x1F == 0x1F:
        while True:
            if pos >= len(data):
                raise TlvError(f"tag at offset {start} is truncated")
            b = data[pos]
            pos += 1
            if not b & 0x80:
                break
            if pos - start > 4:
                raise TlvError(f"tag at offset {start} is longer than 4 bytes")
    return data[start:pos].hex().upper(), pos


def _read_length(data: bytes, pos: int, tag: str) -> tuple[int, int]:
    if pos >= len(data):
        raise TlvError(f"tag {tag}: length expected at offset {pos}, data ends")
    first = data[pos]
    pos += 1
    if first < 0x80:
        return first, pos
    count = first & 0x7F
    if count == 0 or count > 3:
        raise TlvError(f"tag {tag}: length byte {first:02X} at offset {pos - 1} is not a valid BER length")
    if pos + count > len(data):
        raise TlvError(f"tag {tag}: length at offset {pos - 1} is truncated")
    return int.from_bytes(data[pos : pos + count], "big"), pos + count


def _parse(data: bytes, depth: int) -> list[Tlv]:
    if depth > _MAX_DEPTH:
        raise TlvError(f"TLV nesting deeper than {_MAX_DEPTH}")
    out: list[Tlv] = []
    pos = 0
    while pos < len(data):
        # 00 and FF between objects are padding (EMV Book 3 Annex B).
        if data[pos] in (0x00, 0xFF):
            pos += 1
            continue
        tag, pos = _read_tag(data, pos)
        length, pos = _read_length(data, pos, tag)
        if pos + length > len(data):
            raise TlvError(
                f"tag {tag}: value is {len(data) - pos} bytes, length says {length} (offset {pos})"
            )
        value = bytes(data[pos : pos + length])
        pos += length
        children: tuple[Tlv, ...] = ()
        if int(tag[:2], 16) & 0x20:
            try:
                children = tuple(_parse(value, depth + 1))
            except TlvError as e:
                raise TlvError(f"inside {tag}: {e}") from None
        out.append(Tlv(tag, value, children))
    return out


def parse(data: bytes) -> list[Tlv]:
    """Parse BER-TLV into a list of objects, constructed ones with their children."""
    return _parse(bytes(data), 0)


def _walk(objs: Iterable[Tlv]) -> Iterator[Tlv]:
    for o in objs:
        yield o
        yield from _walk(o.children)


def find_all(objs: Iterable[Tlv], tag: str) -> list[Tlv]:
    """Every object with this tag, depth first."""
    tag = tag.upper()
    return [o for o in _walk(objs) if o.tag == tag]


def find(objs: Iterable[Tlv], tag: str) -> bytes | None:
    """Value of the first object with this tag, or None."""
    hits = find_all(objs, tag)
    return hits[0].value if hits else None


def flatten(objs: Iterable[Tlv]) -> dict[str, bytes]:
    """All primitive objects as {tag: value}; the first occurrence of a tag wins."""
    out: dict[str, bytes] = {}
    for o in _walk(objs):
        if not o.constructed and o.tag not in out:
            out[o.tag] = o.value
    return out


def _encode_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    if n <= 0xFF:
        return b"\x81" + bytes([n])
    if n <= 0xFFFF:
        return b"\x82" + n.to_bytes(2, "big")
    raise TlvError(f"value of {n} bytes is too long for a card data object")


def encode(tag: str, value: bytes | Iterable[bytes]) -> bytes:
    """Encode one object; a constructed tag may be given the concatenated children."""
    if not isinstance(value, (bytes, bytearray)):
        value = b"".join(value)
    tag_bytes = bytes.fromhex(tag)
    return tag_bytes + _encode_length(len(value)) + bytes(value)


def encode_many(items: Mapping[str, bytes]) -> bytes:
    """Encode primitive objects in mapping order."""
    return b"".join(encode(t, v) for t, v in items.items())


def parse_dol(dol: bytes) -> list[tuple[str, int]]:
    """Parse a Data Object List (PDOL, CDOL1, CDOL2): [(tag, length), ...]."""
    out: list[tuple[str, int]] = []
    pos = 0
    dol = bytes(dol)
    while pos < len(dol):
        tag, pos = _read_tag(dol, pos)
        if pos >= len(dol):
            raise TlvError(f"DOL entry {tag}: length missing at offset {pos}")
        out.append((tag, dol[pos]))
        pos += 1
    return out


def _fit(tag: str, value: bytes, length: int) -> bytes:
    # EMV Book 3 5.4: numeric (n) values are right-justified and left-padded with
    # zeros, everything else is left-justified and right-padded. The tags whose
    # format is n among those a terminal supplies:
    numeric = {"9F02", "9F03", "5F2A", "9F1A", "9A", "9C", "9F21", "5F36", "9F41", "9F42"}
    if len(value) == length:
        return value
    if tag in numeric:
        if len(value) > length:
            return value[-length:]
        return b"\x00" * (length - len(value)) + value
    if len(value) > length:
        return value[:length]
    return value + b"\x00" * (length - len(value))


def build_dol_data(dol: bytes, values: Mapping[str, bytes]) -> bytes:
    """Concatenate the values a DOL asks for; unknown tags are zero-filled (Book 3 5.4)."""
    return b"".join(_fit(tag, values.get(tag, b""), n) for tag, n in parse_dol(dol))


def split_dol_data(dol: bytes, data: bytes) -> dict[str, bytes]:
    """Inverse of build_dol_data: cut DOL-related data into {tag: value}."""
    out: dict[str, bytes] = {}
    pos = 0
    entries = parse_dol(dol)
    expected = sum(n for _, n in entries)
    if len(data) != expected:
        raise TlvError(f"DOL data is {len(data)} bytes, the DOL asks for {expected}")
    for tag, n in entries:
        out[tag] = bytes(data[pos : pos + n])
        pos += n
    return out
