"""Tokenization primitives: a keyed PAN fingerprint for look-up and AEAD sealing of the PAN at rest."""

from __future__ import annotations

import functools
import hashlib
import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE_BYTES = 12
TAG_BYTES = 16


def _check_pan(pan: str) -> None:
    if not isinstance(pan, str) or not pan.isascii() or not pan.isdigit() or not 12 <= len(pan) <= 19:
        raise ValueError("PAN must be 12 to 19 decimal digits")


def _check_aes256(key: bytes) -> None:
    if len(key) != 32:
        raise ValueError(f"PAN sealing key must be 32 bytes (AES-256), got {len(key)}")


@functools.lru_cache(maxsize=64)
def _aead(key: bytes) -> AESGCM:
    return AESGCM(key)


def pan_fingerprint(key: bytes, pan: str) -> str:
    """HMAC-SHA-256 of the ASCII PAN, 64 lower-case hex digits; key at least 16 bytes.

    Equal PANs give equal fingerprints under one key; without the key it reveals nothing about the PAN.
    Raises ValueError naming the bad input.

    >>> fp = pan_fingerprint(bytes(32), "4761739001010010")
    >>> len(fp), fp == pan_fingerprint(bytes(32), "4761739001010010"), fp == pan_fingerprint(bytes(32), "4761739001010028")
    (64, True, False)
    """
    _check_pan(pan)
    if len(key) < 16:
        raise ValueError(f"fingerprint key must be at least 16 bytes, got {len(key)}")
    return hmac.new(bytes(key), pan.encode("ascii"), hashlib.sha256).hexdigest()


def seal_pan(key: bytes, pan: str, *, aad: bytes) -> bytes:
    """AES-256-GCM: nonce (12) || ciphertext || tag (16); `aad` binds the sealed PAN to its context (key version).

    >>> key = bytes(32)
    >>> open_pan(key, seal_pan(key, "4761739001010010", aad=b"pan:v1"), aad=b"pan:v1")
    '4761739001010010'
    """
    _check_pan(pan)
    _check_aes256(key)
    nonce = os.urandom(NONCE_BYTES)
    return nonce + _aead(bytes(key)).encrypt(nonce, pan.encode("ascii"), bytes(aad))


def open_pan(key: bytes, sealed: bytes, *, aad: bytes) -> str:
    """The PAN from seal_pan's output. Raises ValueError when the key, the context (aad) or the data is wrong."""
    _check_aes256(key)
    if len(sealed) < NONCE_BYTES + 12 + TAG_BYTES:
        raise ValueError(f"sealed PAN must be at least {NONCE_BYTES + 12 + TAG_BYTES} bytes, got {len(sealed)}")
    try:
        plain = _aead(bytes(key)).decrypt(bytes(sealed[:NONCE_BYTES]), bytes(sealed[NONCE_BYTES:]), bytes(aad))
    except InvalidTag:
        raise ValueError("sealed PAN does not open with this key and context") from None
    pan = plain.decode("ascii", errors="replace")
    _check_pan(pan)
    return pan
