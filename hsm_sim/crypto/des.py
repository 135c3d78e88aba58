"""DES, TDES and AES block operations and key check values.

Cipher objects are cached per key: payment keys are few and used millions of times, and building the
key schedule is most of the cost of a single-block operation.
"""

from __future__ import annotations

import functools

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.cmac import CMAC
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES

_CACHE_SIZE = 4096


def expand_tdes_key(key: bytes) -> bytes:
    """24-byte TDES key: K1K2 -> K1K2K1, K -> KKK (single DES as TDES), K1K2K3 unchanged."""
    if len(key) == 16:
        return key + key[:8]
    if len(key) == 8:
        return key * 3
    if len(key) == 24:
        return key
    raise ValueError(f"TDES key must be 8, 16 or 24 bytes, got {len(key)}")


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _tdes_ecb(key: bytes) -> Cipher:
    return Cipher(TripleDES(expand_tdes_key(key)), modes.ECB())


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _aes_ecb(key: bytes) -> Cipher:
    if len(key) not in (16, 24, 32):
        raise ValueError(f"AES key must be 16, 24 or 32 bytes, got {len(key)}")
    return Cipher(algorithms.AES(key), modes.ECB())


def _blocks(data: bytes, size: int, what: str) -> None:
    if not data or len(data) % size:
        raise ValueError(f"{what} data must be a non-empty multiple of {size} bytes, got {len(data)}")


def tdes_ecb_encrypt(key: bytes, data: bytes) -> bytes:
    """TDES ECB over whole 8-byte blocks."""
    _blocks(data, 8, "TDES")
    enc = _tdes_ecb(bytes(key)).encryptor()
    return enc.update(data) + enc.finalize()


def tdes_ecb_decrypt(key: bytes, data: bytes) -> bytes:
    _blocks(data, 8, "TDES")
    dec = _tdes_ecb(bytes(key)).decryptor()
    return dec.update(data) + dec.finalize()


def tdes_cbc_encrypt(key: bytes, data: bytes, iv: bytes = b"\0" * 8) -> bytes:
    _blocks(data, 8, "TDES")
    enc = Cipher(TripleDES(expand_tdes_key(key)), modes.CBC(iv)).encryptor()
    return enc.update(data) + enc.finalize()


def tdes_cbc_decrypt(key: bytes, data: bytes, iv: bytes = b"\0" * 8) -> bytes:
    _blocks(data, 8, "TDES")
    dec = Cipher(TripleDES(expand_tdes_key(key)), modes.CBC(iv)).decryptor()
    return dec.update(data) + dec.finalize()


def des_ecb_encrypt(key: bytes, data: bytes) -> bytes:
    """Single DES (as TDES with K1=K2=K3), used inside retail MAC and DUKPT."""
    if len(key) != 8:
        raise ValueError(f"DES key must be 8 bytes, got {len(key)}")
    return tdes_ecb_encrypt(key, data)


def des_ecb_decrypt(key: bytes, data: bytes) -> bytes:
    if len(key) != 8:
        raise ValueError(f"DES key must be 8 bytes, got {len(key)}")
    return tdes_ecb_decrypt(key, data)


def aes_ecb_encrypt(key: bytes, data: bytes) -> bytes:
    _blocks(data, 16, "AES")
    enc = _aes_ecb(bytes(key)).encryptor()
    return enc.update(data) + enc.finalize()


def aes_ecb_decrypt(key: bytes, data: bytes) -> bytes:
    _blocks(data, 16, "AES")
    dec = _aes_ecb(bytes(key)).decryptor()
    return dec.update(data) + dec.finalize()


def kcv(key: bytes, algorithm: str = "TDES") -> str:
    """Key check value, 6 hex digits: TDES encrypts zeros; AES takes CMAC of zeros (X9.24-3, TR-31)."""
    if algorithm == "TDES":
        return tdes_ecb_encrypt(key, b"\0" * 8)[:3].hex().upper()
    if algorithm == "AES":
        c = CMAC(algorithms.AES(key))
        c.update(b"\0" * 16)
        return c.finalize()[:3].hex().upper()
    if algorithm == "HMAC":
        import hashlib
        import hmac

        return hmac.new(key, b"\0" * 16, hashlib.sha256).digest()[:3].hex().upper()
    raise ValueError(f"unknown algorithm {algorithm!r}")


def adjust_odd_parity(key: bytes) -> bytes:
    """Set each byte's low bit so the byte has an odd number of one-bits (DES key parity)."""
    return bytes((b & 0xFE) | ((bin(b & 0xFE).count("1") + 1) % 2) for b in key)
