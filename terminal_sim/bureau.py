"""The card bureau's side of chip personalization: open a bureau record into a virtual card's profile.

`processor card issue --chip` (or `processor card personalize ID`) writes ``card-{id}.json``: public
data in clear, and the PAN with its iCVV and the card's ICC master key sealed (AES-GCM) under the
transport key the issuer and the bureau formed in a key ceremony (`processor bureau key`). The bureau
loads that key as the XOR of the ceremony's clear components, hex in ``TERMINAL_SIM_TRANSPORT_KEY``.

The clear ICC master key exists only in the returned :class:`CardProfile`, in memory; nothing here
writes it anywhere. The card's ATC lives next to the record in ``card-{id}.state.json``.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hsm_sim.crypto.des import kcv
from processor.iso8583 import build_track2
from terminal_sim.emv.card import CardProfile, mask_pan

__all__ = [
    "BUREAU_FORMAT",
    "TRANSPORT_KEY_ENV",
    "BureauError",
    "transport_key_from_components",
    "transport_key_from_env",
    "record_path",
    "state_path",
    "read_record",
    "open_record",
    "load_profile",
    "chip_track2",
]

BUREAU_FORMAT = "card-bureau 1"
TRANSPORT_KEY_ENV = "TERMINAL_SIM_TRANSPORT_KEY"
# Track 2 discretionary data of our chips: PVKI 1, PVV field zero (the chip is verified by its ARQC and
# online PIN, never by a PVV read from the card), then the iCVV where the engine reads a CVV.
_PVKI = "1"
_NO_PVV = "0000"
_ICVV_SERVICE_CODE = "999"
_AES_KEY_BYTES = (16, 24, 32)


class BureauError(ValueError):
    """A bureau record cannot be used: missing, another format, wrong transport key, or altered."""


def transport_key_from_components(components: list[str]) -> bytes:
    """The transport key the bureau loads: the XOR of the ceremony's clear components (hex)."""
    if len(components) < 2:
        raise BureauError("a transport key needs at least two components")
    parts = []
    for i, text in enumerate(components, 1):
        try:
            part = bytes.fromhex(text)
        except ValueError:
            raise BureauError(f"transport key component {i} is not hex") from None
        parts.append(part)
    if len({len(p) for p in parts}) != 1 or len(parts[0]) not in _AES_KEY_BYTES:
        raise BureauError("transport key components must all be 16, 24 or 32 bytes of hex")
    key = bytes(len(parts[0]))
    for part in parts:
        key = bytes(a ^ b for a, b in zip(key, part))
    return key


def transport_key_from_env(environ: Mapping[str, str] | None = None) -> bytes:
    """The transport key from TERMINAL_SIM_TRANSPORT_KEY (hex of an AES key)."""
    text = (environ if environ is not None else os.environ).get(TRANSPORT_KEY_ENV, "").strip()
    if not text:
        raise BureauError(f"no transport key: set {TRANSPORT_KEY_ENV} to the XOR of the ceremony's components (hex)")
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise BureauError(f"{TRANSPORT_KEY_ENV} is not hex") from None
    if len(key) not in _AES_KEY_BYTES:
        raise BureauError(f"{TRANSPORT_KEY_ENV} is {len(key)} bytes, expecting an AES key of 16, 24 or 32")
    return key


def record_path(directory: str | os.PathLike[str], card_id: int) -> Path:
    return Path(directory) / f"card-{card_id}.json"


def state_path(directory: str | os.PathLike[str], card_id: int) -> Path:
    """Where the virtual card keeps its ATC and PIN try counter, next to its record."""
    return Path(directory) / f"card-{card_id}.state.json"


def read_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The bureau record as JSON, checked for its format."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BureauError(f"no bureau record at {path}") from None
    except json.JSONDecodeError as exc:
        raise BureauError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(record, dict) or record.get("format") != BUREAU_FORMAT:
        raise BureauError(f"{path}: not a {BUREAU_FORMAT!r} record")
    return record


def chip_track2(pan: str, expiry: str, service_code: str, icvv: str) -> str:
    """Track 2 equivalent data (tag 57) with the iCVV, 'D' as separator, laid out as the engine reads it."""
    return build_track2(pan, expiry, service_code, icvv, discretionary=_PVKI + _NO_PVV).replace("=", "D")


def _open(sealed: str, key: bytes, aad: bytes, what: str, card_id: Any) -> bytes:
    try:
        raw = base64.b64decode(sealed, validate=True)
    except (ValueError, TypeError):
        raise BureauError(f"card {card_id}: {what} is not base64") from None
    if len(raw) < 12 + 16:
        raise BureauError(f"card {card_id}: {what} is {len(raw)} bytes, too short for nonce and tag")
    try:
        return AESGCM(key).decrypt(raw[:12], raw[12:], aad)
    except InvalidTag:
        raise BureauError(f"card {card_id}: {what} does not open with this transport key (altered record?)") from None


def open_record(record: Mapping[str, Any], transport_key: bytes, *, contactless: bool | None = None) -> CardProfile:
    """The card's profile from its bureau record; `contactless` picks the interface (default: the record's)."""
    card_id = record.get("card_id")
    expected = str(record.get("transport_key_kcv", "")).upper()
    actual = kcv(transport_key, "AES")
    if expected != actual:
        raise BureauError(f"card {card_id}: record sealed under transport key {expected or '?'}, this key is {actual}")
    try:
        psn = str(record["psn"])
        expiry = str(record["expiry"])
        service_code = str(record["service_code"])
        sealed_card, sealed_mk = str(record["sealed_card"]), str(record["sealed_icc_mk"])
    except KeyError as exc:
        raise BureauError(f"card {card_id}: the record lacks {exc.args[0]!r}") from None
    clear = json.loads(_open(sealed_card, transport_key, b"bureau:card", "sealed_card", card_id))
    pan, icvv = str(clear["pan"]), str(clear["icvv"])
    icc_mk = _open(sealed_mk, transport_key, b"bureau:icc_mk:" + psn.encode(), "sealed_icc_mk", card_id)
    if not pan.endswith(str(record.get("last4", pan[-4:]))):
        raise BureauError(f"card {card_id}: the sealed PAN {mask_pan(pan)} does not end in the record's last four digits")
    yy, mm = int(expiry[:2]), expiry[2:]
    profile = CardProfile(
        aid=str(record.get("aid", "A0000000031010")),
        label=str(record.get("label", "VISA DEBIT"))[:16],
        pan=pan,
        psn=psn,
        expiry=expiry,
        # Not in the record; our cards are valid four years, so the card became effective four years earlier.
        effective=f"{max(0, yy - 4):02d}{mm}",
        track2=chip_track2(pan, expiry, service_code, icvv),
        cardholder_name=str(record.get("cardholder_name", "CARDHOLDER"))[:26],
        cvn=int(record.get("cvn", 18)),
        icc_mk_ac=icc_mk,
        contactless=bool(record.get("contactless", False)),
    )
    if contactless is not None and contactless != profile.contactless:
        profile = replace(profile, contactless=contactless)
    return profile


def load_profile(
    directory: str | os.PathLike[str],
    card_id: int,
    transport_key: bytes | None = None,
    *,
    contactless: bool | None = None,
) -> CardProfile:
    """Read and open ``card-{card_id}.json`` in `directory` (transport key from the environment by default)."""
    key = transport_key if transport_key is not None else transport_key_from_env()
    return open_record(read_record(record_path(directory, card_id)), key, contactless=contactless)
