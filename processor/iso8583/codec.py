"""Decode and encode ISO 8583 messages with `SPEC`, with errors that name the field and never its value."""

from __future__ import annotations

from typing import Any

import iso8583

from .compiled import CompiledCodec
from .spec import KSN_BYTES, NUMERIC_FIELDS, REFUSED_FIELDS, SPEC
from .tlv import TlvError, decode_tlv

# A repeat is a request sent again by a terminal that got no answer: answered as the request it repeats.
REPEAT_MTIS = frozenset({"0101", "0121", "0201", "0221", "0401", "0421"})
REQUEST_MTIS = frozenset({"0100", "0120", "0200", "0220", "0400", "0420", "0500", "0800"}) | REPEAT_MTIS
RESPONSE_MTIS = frozenset({"0110", "0130", "0210", "0230", "0410", "0430", "0510", "0810"})
KNOWN_MTIS = REQUEST_MTIS | RESPONSE_MTIS
PAN_DIGITS_MIN = 12
PAN_DIGITS_MAX = 19
# The fast path compiled from SPEC; pyiso8583 decides whatever it declines (and words every error).
COMPILED = CompiledCodec(SPEC)


class MessageFormatError(ValueError):
    """A message that does not follow the host interface; `field` names where, `partial` holds what decoded."""

    def __init__(self, message: str, field: str | None = None, partial: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.partial = partial or {}


def _describe(exc: iso8583.DecodeError | iso8583.EncodeError) -> str:
    # pyiso8583 can quote the offending data (a PAN, say) in its message; keep only its wording up to
    # the first quote, followed by the field name it reports.
    text = exc.msg if hasattr(exc, "msg") else str(exc)
    cut = min((i for i in (text.find("'"), text.find('"')) if i >= 0), default=len(text))
    return text[:cut].rstrip(" :")


def decode(raw: bytes) -> dict[str, Any]:
    """The message as {field: value}; raises MessageFormatError on anything that is not ours."""
    fields = COMPILED.decode(raw)
    if fields is None:
        fields = reference_decode(raw)
    validate(fields)
    return fields


def reference_decode(raw: bytes) -> dict[str, Any]:
    """pyiso8583's decode of `raw`, its error worded as a MessageFormatError (no validation of our own)."""
    try:
        fields, _ = iso8583.decode(raw, SPEC)
    except iso8583.DecodeError as exc:
        partial = {k: v for k, v in exc.doc_dec.items() if k in ("t", "3", "4", "7", "11", "12", "13", "32", "37", "41", "42", "49")}
        raise MessageFormatError(f"{_describe(exc)}: field {exc.field}", exc.field, partial) from None
    return fields


def validate(fields: dict[str, Any]) -> None:
    """Checks pyiso8583 leaves to us: a known MTI, no refused field, digits where digits belong, a whole KSN,
    well-formed DE 48 and DE 55."""
    mti = fields.get("t", "")
    if mti not in KNOWN_MTIS:
        raise MessageFormatError("unknown message type: field t", "t", fields)
    for de, why in REFUSED_FIELDS.items():
        if de in fields:
            raise MessageFormatError(why, de, _without(fields, de))
    for de in NUMERIC_FIELDS:
        value = fields.get(de)
        if value is not None and not value.isdigit():
            raise MessageFormatError(f"field {de} must be numeric", de, _without(fields, de))
    pan = fields.get("2")
    if pan is not None and not (pan.isdigit() and PAN_DIGITS_MIN <= len(pan) <= PAN_DIGITS_MAX):
        raise MessageFormatError(
            f"PAN must be {PAN_DIGITS_MIN} to {PAN_DIGITS_MAX} digits: field 2", "2", _without(fields, "2")
        )
    if "53" in fields and len(fields["53"]) != 2 * KSN_BYTES:
        raise MessageFormatError(f"key serial number must be {KSN_BYTES} bytes: field 53", "53", _without(fields, "53"))
    if "48" in fields:
        try:
            parse_de48(fields["48"])
        except ValueError as exc:
            raise MessageFormatError(f"{exc}: field 48", "48", _without(fields, "48")) from None
    if "55" in fields:
        try:
            decode_tlv(bytes.fromhex(fields["55"]))
        except TlvError as exc:
            raise MessageFormatError(f"ICC data: {exc}: field 55", "55", _without(fields, "55")) from None


def _without(fields: dict[str, Any], de: str) -> dict[str, Any]:
    safe = {"t", "3", "4", "7", "11", "12", "13", "32", "37", "41", "42", "49"} - {de}
    return {k: v for k, v in fields.items() if k in safe}


def encode(fields: dict[str, Any]) -> bytes:
    """The message bytes; raises MessageFormatError naming the field that does not fit SPEC."""
    raw = COMPILED.encode(fields)
    if raw is not None:
        return raw
    return reference_encode(fields)


def reference_encode(fields: dict[str, Any]) -> bytes:
    """pyiso8583's encoding of `fields`, its error worded as a MessageFormatError."""
    try:
        raw, _ = iso8583.encode(dict(fields), SPEC)
    except iso8583.EncodeError as exc:
        raise MessageFormatError(f"{_describe(exc)}: field {exc.field}", exc.field) from None
    return bytes(raw)


DE48_TAGS = {"C2": "cvv2", "PA": "partial_ok", "IA": "incremental", "TR": "token_requestor", "WI": "wallet_id"}


def parse_de48(text: str) -> dict[str, str]:
    """DE 48 sub-elements: tag (2) + length (3 digits) + value, repeated. Unknown tags are kept as is."""
    out: dict[str, str] = {}
    i = 0
    while i < len(text):
        if i + 5 > len(text):
            raise ValueError(f"sub-element header truncated at offset {i}")
        tag, length = text[i : i + 2], text[i + 2 : i + 5]
        if not length.isdigit():
            raise ValueError(f"sub-element {tag} has a non-numeric length")
        end = i + 5 + int(length)
        if end > len(text):
            raise ValueError(f"sub-element {tag} longer than the field")
        out[tag] = text[i + 5 : end]
        i = end
    return out


def encode_de48(elements: dict[str, str]) -> str:
    """Inverse of parse_de48."""
    return "".join(f"{tag}{len(value):03d}{value}" for tag, value in elements.items())
