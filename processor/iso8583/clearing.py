"""Clearing files: an acquiring network's first presentments, as ISO 8583 1240 records (pyiso8583).

Layout `clearing-file/1`, a file of records, each a 4-digit ASCII length then that many bytes of one
ISO 8583 message under `CLEARING_SPEC` (`iso8583.specs.default_ascii`, hex-text bitmaps, with the changes
marked below), in this order:

| record | MTI | DE 24 | carries |
|---|---|---|---|
| header | 1644 | 697 | DE 32 network's acquirer id, DE 71 record number 1, DE 72 `file_id=...;date=YYYY-MM-DD` |
| presentment | 1240 | 200 (first presentment) | DE 2 PAN, 3 processing code (`00` purchase, `20` refund), 4 amount (minor units), 12 local date and time `YYMMDDhhmmss`, 18 MCC, 22 POS entry mode, 31 acquirer reference number, 32 acquirer id, 37 RRN, 38 approval code (absent when none), 41 terminal, 42 merchant, 43 name and location, 49 currency (ISO 4217 numeric), 71 record number |
| trailer | 1644 | 695 | DE 71 record number, DE 74 number of presentments, DE 86 sum of their DE 4 |

A file holds clear PANs: it is written 0600, through a temp file renamed into place. Its checksum of a
presentment (`record_checksum`) is the SHA-256 of the record's fields without its record number, so the
same presentment in two files has the same checksum.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import iso8583
from iso8583.specs import default_ascii as _default_ascii

FORMAT = "clearing-file/1"
FIRST_PRESENTMENT = "200"
HEADER, TRAILER = "697", "695"
MAX_RECORD = 2048

CLEARING_SPEC: dict[str, dict[str, Any]] = copy.deepcopy(dict(_default_ascii))
# changed: DE 12 is the 1993 local date and time YYMMDDhhmmss.
CLEARING_SPEC["12"] = {"data_enc": "ascii", "len_enc": "ascii", "len_type": 0, "max_len": 12, "desc": "Date and Time, Local Transaction"}
# changed: DE 24 is the 1993 function code (200 first presentment, 697 file header, 695 file trailer).
CLEARING_SPEC["24"] = {"data_enc": "ascii", "len_enc": "ascii", "len_type": 0, "max_len": 3, "desc": "Function Code"}
# changed: DE 31 is the acquirer reference data (the ARN, up to 23 characters).
CLEARING_SPEC["31"] = {"data_enc": "ascii", "len_enc": "ascii", "len_type": 2, "max_len": 23, "desc": "Acquirer Reference Data"}
# changed: DE 71 numbers the records of the file.
# changed: DE 72 is the 1993 data record (variable, up to 999): the file header's id and date.
CLEARING_SPEC["72"] = {"data_enc": "ascii", "len_enc": "ascii", "len_type": 3, "max_len": 999, "desc": "Data Record"}
CLEARING_SPEC["71"] = {"data_enc": "ascii", "len_enc": "ascii", "len_type": 0, "max_len": 8, "desc": "Message Number"}


class ClearingFileError(ValueError):
    """The file is not a well-formed clearing file; the message says where."""


@dataclass(frozen=True, slots=True)
class Presentment:
    """One first presentment as the acquirer sends it."""

    pan: str
    amount_minor: int
    currency_numeric: str
    local_time: dt.datetime
    mcc: str
    entry_mode: str
    acquirer_id: str
    rrn: str
    approval_code: str
    terminal_id: str
    merchant_id: str
    name_location: str
    arn: str
    processing_code: str = "000000"

    @property
    def is_credit(self) -> bool:
        return self.processing_code[:2] == "20"

    def fields(self, seq: int) -> dict[str, Any]:
        out = {
            "t": "1240", "2": self.pan, "3": self.processing_code, "4": f"{self.amount_minor:012d}",
            "12": self.local_time.strftime("%y%m%d%H%M%S"), "18": self.mcc, "22": self.entry_mode.ljust(3, "0")[:3],
            "24": FIRST_PRESENTMENT, "31": self.arn, "32": self.acquirer_id, "37": self.rrn.ljust(12)[:12],
            "41": self.terminal_id.ljust(8)[:8], "42": self.merchant_id.ljust(15)[:15],
            "43": self.name_location.ljust(40)[:40], "49": self.currency_numeric, "71": f"{seq:08d}",
        }
        if self.approval_code:
            out["38"] = self.approval_code.ljust(6)[:6]
        return out

    @classmethod
    def from_fields(cls, f: dict[str, Any]) -> "Presentment":
        try:
            return cls(
                pan=f["2"], amount_minor=int(f["4"]), currency_numeric=f["49"],
                local_time=_local_time(f["12"]), mcc=f["18"], entry_mode=f["22"][:2],
                acquirer_id=f["32"].lstrip("0") or "0", rrn=f["37"].strip(), approval_code=f.get("38", "").strip(),
                terminal_id=f["41"].strip(), merchant_id=f["42"].strip(), name_location=f["43"].strip(), arn=f["31"],
                processing_code=f["3"],
            )
        except (KeyError, ValueError) as exc:
            raise ClearingFileError(f"presentment record {f.get('71', '?')}: field {exc} missing or malformed") from None


def _local_time(text: str) -> dt.datetime:
    """DE 12 `YYMMDDhhmmss` as strptime's `%y%m%d%H%M%S` reads it (years 69-99 are 19xx), without its cost."""
    if len(text) != 12 or not text.isdigit():
        raise ValueError(f"local time {text!r} is not YYMMDDhhmmss")
    yy = int(text[:2])
    return dt.datetime(yy + (1900 if yy >= 69 else 2000), int(text[2:4]), int(text[4:6]), int(text[6:8]), int(text[8:10]), int(text[10:12]))


# (length digits, maximum length) of every plain ASCII field of CLEARING_SPEC: what `_decode` walks itself.
_ASCII_FIELDS: dict[int, tuple[int, int]] = {
    int(key): (spec["len_type"], spec["max_len"])
    for key, spec in CLEARING_SPEC.items()
    if key.isdigit() and key not in ("1", "65") and spec["data_enc"] == "ascii" and spec["len_enc"] == "ascii"
    and spec.get("len_count", "bytes") == "bytes"
}
_HEX = frozenset("0123456789abcdefABCDEF")


def _layout(bitmaps: str) -> tuple[tuple[str, int, int], ...] | None:
    """(field, length digits, maximum length) of each field the bitmaps name, or None when one is not plain ASCII."""
    numbers = [n for n in range(2, 65) if int(bitmaps[:16], 16) >> (64 - n) & 1]
    if len(bitmaps) > 16:
        numbers += [64 + n for n in range(1, 65) if int(bitmaps[16:], 16) >> (64 - n) & 1]
    layout = []
    for n in numbers:
        spec = _ASCII_FIELDS.get(n)
        if spec is None:
            return None
        layout.append((str(n), *spec))
    return tuple(layout)


# Records of one file share a handful of bitmaps: their layouts are worked out once (a bounded cache).
_LAYOUTS: dict[str, tuple[tuple[str, int, int], ...] | None] = {}
_LAYOUTS_MAX = 256


def _decode(raw: bytes) -> dict[str, Any]:
    """`iso8583.decode(raw, CLEARING_SPEC)`'s fields, by a direct walk of the spec's ASCII fields: a file of a
    million records is read twice, and pyiso8583's general decoder is most of that time. Whatever the walk
    does not expect (a non-ASCII byte, a bad length or bitmap, a field it does not know) goes to pyiso8583,
    which decodes it or says exactly what is wrong."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return _decode_slow(raw)
    bitmap = text[4:20]
    if len(bitmap) != 16 or not _HEX.issuperset(bitmap):
        return _decode_slow(raw)
    out: dict[str, Any] = {"t": text[:4], "p": bitmap}
    idx = 20
    if int(bitmap[0], 16) & 8:
        secondary = text[20:36]
        if len(secondary) != 16 or not _HEX.issuperset(secondary):
            return _decode_slow(raw)
        out["1"] = secondary
        bitmap += secondary
        idx = 36
    layout = _LAYOUTS.get(bitmap, ())
    if layout == ():
        layout = _layout(bitmap)
        if len(_LAYOUTS) >= _LAYOUTS_MAX:
            _LAYOUTS.clear()
        _LAYOUTS[bitmap] = layout
    if layout is None:
        return _decode_slow(raw)
    for key, len_type, max_len in layout:
        if len_type:
            prefix = text[idx : idx + len_type]
            if len(prefix) != len_type or not prefix.isdigit():
                return _decode_slow(raw)
            size = int(prefix)
            if size > max_len:
                return _decode_slow(raw)
            idx += len_type
        else:
            size = max_len
        value = text[idx : idx + size]
        if len(value) != size:
            return _decode_slow(raw)
        out[key] = value
        idx += size
    if idx != len(text):
        return _decode_slow(raw)
    return out


def _decode_slow(raw: bytes) -> dict[str, Any]:
    fields, _ = iso8583.decode(raw, CLEARING_SPEC)
    return fields


def _encode(fields: dict[str, Any]) -> bytes:
    raw = _encode_fast(fields)
    if raw is None:
        raw = bytes(iso8583.encode(dict(fields), CLEARING_SPEC)[0])
    return f"{len(raw):04d}".encode() + raw


def _encode_fast(fields: dict[str, Any]) -> bytes | None:
    """`iso8583.encode(fields, CLEARING_SPEC)` for records of plain ASCII fields that fit the spec (what a
    network writes a million of); None for anything else, which pyiso8583 encodes or refuses precisely."""
    mti = fields.get("t")
    if not isinstance(mti, str) or len(mti) != 4 or not mti.isascii():
        return None
    try:
        numbers = sorted(int(key) for key in fields if key not in ("t", "p", "1"))
    except ValueError:
        return None
    primary = secondary = 0
    parts = []
    for n in numbers:
        spec = _ASCII_FIELDS.get(n)
        value = fields[str(n)]
        if spec is None or not isinstance(value, str) or not value.isascii():
            return None
        len_type, max_len = spec
        if len_type:
            if len(value) > max_len:
                return None
            parts.append(f"{len(value):0{len_type}d}")
        elif len(value) != max_len:
            return None
        parts.append(value)
        if n <= 64:
            primary |= 1 << (64 - n)
        else:
            secondary |= 1 << (128 - n)
    if secondary:
        primary |= 1 << 63
        parts.insert(0, f"{secondary:016X}")
    return (mti + f"{primary:016X}" + "".join(parts)).encode("ascii")


def record_checksum(fields: dict[str, Any]) -> str:
    """SHA-256 of a record's fields without its record number (DE 71) and bitmaps."""
    canonical = "|".join(f"{k}={fields[k]}" for k in sorted(fields, key=lambda k: (len(k), k)) if k not in ("71", "p", "1"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class ClearingWriter:
    """Writes a clearing file: `with ClearingWriter(path, file_id, network, date) as w: w.add(p)`."""

    def __init__(self, path: Path, *, file_id: str, network: str, business_date: dt.date) -> None:
        if not file_id or ";" in file_id or "=" in file_id or len(file_id) > 64:
            raise ValueError(f"file id {file_id!r} must be 1-64 characters without ';' or '='")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        os.fchmod(fd, 0o600)
        self._tmp = Path(tmp)
        self._f: BinaryIO = os.fdopen(fd, "wb")
        self.count = 0
        self.control_sum = 0
        self._seq = 1
        self._f.write(_encode({"t": "1644", "24": HEADER, "32": network, "71": f"{self._seq:08d}",
                               "72": f"file_id={file_id};date={business_date.isoformat()}"}))

    def add(self, presentment: Presentment) -> None:
        self._seq += 1
        self._f.write(_encode(presentment.fields(self._seq)))
        self.count += 1
        self.control_sum += presentment.amount_minor

    def close(self) -> None:
        self._seq += 1
        self._f.write(_encode({"t": "1644", "24": TRAILER, "71": f"{self._seq:08d}", "74": f"{self.count:010d}",
                               "86": f"{self.control_sum:016d}"}))
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        self._f.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> "ClearingWriter":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


@dataclass(frozen=True, slots=True)
class ClearingHeader:
    file_id: str
    network: str
    business_date: dt.date
    count: int
    control_sum: int
    sha256: str


def _records(path: Path) -> Iterator[tuple[bytes, dict[str, Any]]]:
    with path.open("rb") as f:
        number = 0
        while True:
            head = f.read(4)
            if not head:
                return
            number += 1
            if len(head) < 4 or not head.isdigit():
                raise ClearingFileError(f"record {number}: length prefix {head!r} is not 4 digits")
            size = int(head)
            if size > MAX_RECORD:
                raise ClearingFileError(f"record {number}: length {size} is above {MAX_RECORD}")
            raw = f.read(size)
            if len(raw) < size:
                raise ClearingFileError(f"record {number}: truncated ({len(raw)} of {size} bytes)")
            try:
                fields = _decode(raw)
            except iso8583.DecodeError as exc:
                raise ClearingFileError(f"record {number}: {exc}") from None
            yield raw, fields


def scan_clearing_file(path: Path) -> ClearingHeader:
    """Check a whole file (header, record numbers, trailer count and control sum) without keeping it."""
    digest = hashlib.sha256()
    header: dict[str, Any] | None = None
    count = total = 0
    trailer: dict[str, Any] | None = None
    expected = 1
    for raw, fields in _records(path):
        digest.update(f"{len(raw):04d}".encode() + raw)
        if trailer is not None:
            raise ClearingFileError("records after the trailer")
        if fields.get("71") != f"{expected:08d}":
            raise ClearingFileError(f"record {expected}: record number is {fields.get('71')!r}")
        expected += 1
        mti, function = fields["t"], fields.get("24")
        if header is None:
            if mti != "1644" or function != HEADER:
                raise ClearingFileError("the file does not start with a header (1644, DE 24 697)")
            header = fields
        elif mti == "1644" and function == TRAILER:
            trailer = fields
        elif mti == "1240" and function == FIRST_PRESENTMENT:
            count += 1
            total += int(fields["4"])
        else:
            raise ClearingFileError(f"record {expected - 1}: MTI {mti} function {function} is not a first presentment")
    if header is None:
        raise ClearingFileError("the file is empty")
    if trailer is None:
        raise ClearingFileError("the file has no trailer (1644, DE 24 695): it is incomplete")
    if int(trailer.get("74", "-1")) != count or int(trailer.get("86", "-1")) != total:
        raise ClearingFileError(
            f"trailer says {trailer.get('74')} presentments summing to {trailer.get('86')}, the file has {count} summing to {total}"
        )
    meta = dict(part.split("=", 1) for part in header.get("72", "").split(";") if "=" in part)
    if not meta.get("file_id") or not meta.get("date"):
        raise ClearingFileError("the header has no file_id and date in DE 72")
    try:
        business_date = dt.date.fromisoformat(meta["date"])
    except ValueError:
        raise ClearingFileError(f"the header's date {meta['date']!r} is not YYYY-MM-DD") from None
    return ClearingHeader(meta["file_id"], header.get("32", "").lstrip("0") or "0", business_date, count, total, digest.hexdigest())


def read_presentments(path: Path) -> Iterator[tuple[int, Presentment, str]]:
    """(record number, presentment, record checksum) for each 1240 of a file `scan_clearing_file` accepted."""
    for _, fields in _records(path):
        if fields["t"] == "1240":
            yield int(fields["71"]), Presentment.from_fields(fields), record_checksum(fields)
