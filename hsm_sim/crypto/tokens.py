"""Tokenization primitives: a keyed PAN fingerprint for look-up and AEAD sealing of the PAN for storage."""

from __future__ import annotations

import hashlib
import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE_BYTES = 12


def _check_pan(pan: str) -> None:
    if not pan.isdigit() or not 12 <= len(pan) <= 19:
        raise ValueError("PAN must be 12 to 19 digits")


def pan_fingerprint(key: bytes, pan: str) -> str:
    """HMAC-SHA-256 of the PAN, hex: equal PANs give equal fingerprints; without the key it reveals nothing."""
    _check_pan(pan)
    if len(key) < 16:
        raise ValueError("fingerprint key must be at least 16 bytes")
    return hmac.new(key, pan.encode("ascii"), hashlib.sha256).hexdigest()


def seal_pan(key: bytes, pan: str, *, aad: bytes) -> bytes:
    """AES-GCM: nonce (12) || ciphertext || tag (16); `aad` binds the sealed PAN to its context (key version)."""
    _check_pan(pan)
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, pan.encode("ascii"), aad)


def open_pan(key: bytes, sealed: bytes, *, aad: bytes) -> str:
    """The PAN; ValueError when the key, the context or the data is wrong."""
    if len(sealed) < NONCE_BYTES + 16 + 12:
        raise ValueError("sealed PAN too short")
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], aad).decode("ascii")
    except InvalidTag:
        raise ValueError("sealed PAN does not open with this key and context") from None
