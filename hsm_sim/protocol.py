"""The host-command protocol of `hsm-sim serve` (see PROTOCOL.md).

Request frame:  length (2 bytes, big-endian) | header (4 ASCII) | command (2 ASCII) | JSON body
Answer frame:   length (2 bytes, big-endian) | header (4 ASCII) | answer code (2 ASCII) | status (2 digits) | JSON body
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hsm_sim.framing import FrameTooLarge, encode_frame

MAX_FRAME_BYTES = 16 * 1024  # a request's or an answer's payload; list_keys pages to stay under it
HEADER_BYTES = 4


class ProtocolError(ValueError):
    """A frame that is not a host command; `status` is the error status to answer with."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Command:
    header: str
    code: str
    args: list[Any]
    kwargs: dict[str, Any]


def to_wire(value: Any) -> Any:
    """Bytes travel as {"$hex": "..."}; everything else as JSON."""
    if isinstance(value, (bytes, bytearray)):
        return {"$hex": bytes(value).hex()}
    if isinstance(value, (list, tuple)):
        return [to_wire(v) for v in value]
    return value


def from_wire(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"$hex"}:
        return bytes.fromhex(value["$hex"])
    if isinstance(value, list):
        return [from_wire(v) for v in value]
    return value


def encode_request(header: str, code: str, args: list[Any], kwargs: dict[str, Any]) -> bytes:
    body = json.dumps(
        {"args": [to_wire(a) for a in args], "kwargs": {k: to_wire(v) for k, v in kwargs.items()}}, separators=(",", ":")
    ).encode()
    payload = header.encode("ascii") + code.encode("ascii") + body
    try:
        return encode_frame(payload, MAX_FRAME_BYTES)
    except FrameTooLarge:
        raise ProtocolError("80", f"command {code} is {len(payload)} bytes, the limit is {MAX_FRAME_BYTES}") from None


def decode_request(payload: bytes) -> Command:
    """Parse a request payload; ProtocolError carries the status to answer with."""
    if len(payload) < HEADER_BYTES + 2:
        raise ProtocolError("80", "frame shorter than header and command code")
    try:
        header = payload[:HEADER_BYTES].decode("ascii")
        code = payload[HEADER_BYTES : HEADER_BYTES + 2].decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError("80", "header or command code is not ASCII") from None
    body = payload[HEADER_BYTES + 2 :]
    try:
        doc = json.loads(body) if body else {}
    except (UnicodeDecodeError, ValueError):
        raise CommandError(header, code, "15", "command body is not JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("args", []), list) or not isinstance(doc.get("kwargs", {}), dict):
        raise CommandError(header, code, "15", "command body must be {\"args\": [...], \"kwargs\": {...}}")
    try:
        args = [from_wire(a) for a in doc.get("args", [])]
        kwargs = {str(k): from_wire(v) for k, v in doc.get("kwargs", {}).items()}
    except ValueError:
        raise CommandError(header, code, "15", "a $hex argument is not hex") from None
    return Command(header, code, args, kwargs)


class CommandError(ProtocolError):
    """A readable frame whose body is wrong: answered under its own header and code."""

    def __init__(self, header: str, code: str, status: str, message: str) -> None:
        super().__init__(status, message)
        self.header = header
        self.code = code


def answer_code(code: str) -> str:
    """A0 -> A1, CY -> CZ: the answer to a command is its code with the second character advanced."""
    return code[0] + chr(ord(code[1]) + 1) if len(code) == 2 else "ZZ"


def encode_answer(header: str, code: str, status: str, body: dict[str, Any], max_len: int = MAX_FRAME_BYTES) -> bytes:
    """The answer frame; FrameTooLarge when it would be over `max_len`."""
    raw = json.dumps(body, separators=(",", ":")).encode()
    payload = header.encode("ascii", "replace")[:HEADER_BYTES].ljust(HEADER_BYTES, b" ") + answer_code(code).encode("ascii", "replace") + status.encode() + raw
    return encode_frame(payload, max_len)


def decode_answer(payload: bytes) -> tuple[str, str, str, dict[str, Any]]:
    """(header, answer code, status, body)."""
    if len(payload) < HEADER_BYTES + 4:
        raise ProtocolError("80", "answer shorter than header, code and status")
    header = payload[:HEADER_BYTES].decode("ascii", "replace")
    code = payload[HEADER_BYTES : HEADER_BYTES + 2].decode("ascii", "replace")
    status = payload[HEADER_BYTES + 2 : HEADER_BYTES + 4].decode("ascii", "replace")
    try:
        body = json.loads(payload[HEADER_BYTES + 4 :] or b"{}")
    except ValueError:
        raise ProtocolError("80", "answer body is not JSON") from None
    return header, code, status, body
