"""DES, TDES and AES block operations, key check values and DES key parity.

Cipher objects are cached per key: payment keys are few and used millions of times, and building the
key schedule is most of the cost of a single-block operation. Keys used once (DUKPT transaction keys,
session keys) pass cache=False so they do not push the long-lived ones out.

`cryptography` deprecates 16-byte TDES keys, so double-length keys are expanded to K1||K2||K1 here
before they reach it.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import threading
from typing import Any

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.cmac import CMAC

_CACHE_SIZE = 4096
_ZERO8 = bytes(8)
_ZERO16 = bytes(16)


def expand_tdes_key(key: bytes) -> bytes:
    """The 24-byte TDES key: K1K2 -> K1K2K1, K -> KKK (single DES as TDES), K1K2K3 unchanged.

    Raises ValueError for any other length.

    >>> expand_tdes_key(bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")).hex().upper()
    '0123456789ABCDEFFEDCBA98765432100123456789ABCDEF'
    """
    n = len(key)
    if n == 16:
        return bytes(key) + bytes(key[:8])
    if n == 8:
        return bytes(key) * 3
    if n == 24:
        return bytes(key)
    raise ValueError(f"TDES key must be 8, 16 or 24 bytes, got {n}")


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _tdes_ecb(key: bytes) -> Cipher:
    return Cipher(TripleDES(expand_tdes_key(key)), modes.ECB())


_contexts = threading.local()


def _ecb_context(key: bytes, encrypt: bool) -> Any:
    """One TDES ECB context per key and direction, kept open (per thread: a context is not thread-safe).

    ECB carries nothing from one block to the next and the data is always whole blocks without padding, so
    an open context's update() gives what a fresh context would: the key schedule is built once per key
    instead of once per operation.
    """
    cache: dict[tuple[bytes, bool], Any] | None = getattr(_contexts, "cache", None)
    if cache is None:
        cache = _contexts.cache = {}
    context = cache.get((key, encrypt))
    if context is None:
        if len(cache) >= _CACHE_SIZE:
            cache.clear()
        cipher = _tdes_ecb(key)
        context = cache[(key, encrypt)] = cipher.encryptor() if encrypt else cipher.decryptor()
    return context


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _aes_ecb(key: bytes) -> Cipher:
    if len(key) not in (16, 24, 32):
        raise ValueError(f"AES key must be 16, 24 or 32 bytes, got {len(key)}")
    return Cipher(algorithms.AES(key), modes.ECB())


def _blocks(data: bytes, size: int, what: str) -> None:
    if not data or len(data) % size:
        raise ValueError(f"{what} data must be a non-empty multiple of {size} bytes, got {len(data)}")


def tdes_ecb_encrypt(key: bytes, data: bytes, *, cache: bool = True) -> bytes:
    """TDES ECB over whole 8-byte blocks; key 8, 16 or 24 bytes.

    Raises ValueError for a bad key length or data that is not a non-empty multiple of 8 bytes.

    >>> tdes_ecb_encrypt(bytes.fromhex("0123456789ABCDEFFEDCBA9876543210"), bytes(8)).hex().upper()
    '08D7B4FB629D0885'
    """
    _blocks(data, 8, "TDES")
    if cache:
        return _ecb_context(bytes(key), True).update(data)
    enc = _tdes_ecb.__wrapped__(bytes(key)).encryptor()
    return enc.update(data) + enc.finalize()


def tdes_ecb_decrypt(key: bytes, data: bytes, *, cache: bool = True) -> bytes:
    """Inverse of tdes_ecb_encrypt.

    >>> tdes_ecb_decrypt(bytes.fromhex("0123456789ABCDEFFEDCBA9876543210"),
    ...                  bytes.fromhex("08D7B4FB629D0885")).hex()
    '0000000000000000'
    """
    _blocks(data, 8, "TDES")
    if cache:
        return _ecb_context(bytes(key), False).update(data)
    dec = _tdes_ecb.__wrapped__(bytes(key)).decryptor()
    return dec.update(data) + dec.finalize()


def _iv(iv: bytes, size: int) -> bytes:
    if len(iv) != size:
        raise ValueError(f"IV must be {size} bytes, got {len(iv)}")
    return bytes(iv)


def tdes_cbc_encrypt(key: bytes, data: bytes, iv: bytes = _ZERO8) -> bytes:
    """TDES CBC over whole 8-byte blocks (no padding); iv 8 bytes, zeros by default."""
    _blocks(data, 8, "TDES")
    enc = Cipher(TripleDES(expand_tdes_key(key)), modes.CBC(_iv(iv, 8))).encryptor()
    return enc.update(data) + enc.finalize()


def tdes_cbc_decrypt(key: bytes, data: bytes, iv: bytes = _ZERO8) -> bytes:
    """Inverse of tdes_cbc_encrypt."""
    _blocks(data, 8, "TDES")
    dec = Cipher(TripleDES(expand_tdes_key(key)), modes.CBC(_iv(iv, 8))).decryptor()
    return dec.update(data) + dec.finalize()


def _des_key(key: bytes) -> bytes:
    if len(key) != 8:
        raise ValueError(f"DES key must be 8 bytes, got {len(key)}")
    return bytes(key)


def des_ecb_encrypt(key: bytes, data: bytes) -> bytes:
    """Single DES ECB (TDES with K1=K2=K3); key 8 bytes. Used inside retail MAC and DUKPT.

    >>> des_ecb_encrypt(bytes.fromhex("133457799BBCDFF1"), bytes.fromhex("0123456789ABCDEF")).hex().upper()
    '85E813540F0AB405'
    """
    return tdes_ecb_encrypt(_des_key(key), data)


def des_ecb_decrypt(key: bytes, data: bytes) -> bytes:
    """Inverse of des_ecb_encrypt."""
    return tdes_ecb_decrypt(_des_key(key), data)


def aes_ecb_encrypt(key: bytes, data: bytes, *, cache: bool = True) -> bytes:
    """AES ECB over whole 16-byte blocks; key 16, 24 or 32 bytes.

    FIPS-197 appendix C.1:

    >>> aes_ecb_encrypt(bytes.fromhex("000102030405060708090A0B0C0D0E0F"),
    ...                 bytes.fromhex("00112233445566778899AABBCCDDEEFF")).hex().upper()
    '69C4E0D86A7B0430D8CDB78070B4C55A'
    """
    _blocks(data, 16, "AES")
    enc = (_aes_ecb if cache else _aes_ecb.__wrapped__)(bytes(key)).encryptor()
    return enc.update(data) + enc.finalize()


def aes_ecb_decrypt(key: bytes, data: bytes, *, cache: bool = True) -> bytes:
    """Inverse of aes_ecb_encrypt."""
    _blocks(data, 16, "AES")
    dec = (_aes_ecb if cache else _aes_ecb.__wrapped__)(bytes(key)).decryptor()
    return dec.update(data) + dec.finalize()


def kcv(key: bytes, algorithm: str = "TDES") -> str:
    """Key check value, 6 upper-case hex digits.

    TDES: first 3 bytes of E(key, 0^8). AES: first 3 bytes of AES-CMAC(key, 0^16) (X9.24-3, TR-31).
    HMAC keys (any length >= 16): first 3 bytes of HMAC-SHA-256(key, 0^16).
    Raises ValueError for an unknown algorithm or a key length the algorithm does not take.

    >>> kcv(bytes.fromhex("0123456789ABCDEFFEDCBA9876543210"), "TDES")
    '08D7B4'
    """
    if algorithm == "TDES":
        return tdes_ecb_encrypt(key, _ZERO8)[:3].hex().upper()
    if algorithm == "AES":
        if len(key) not in (16, 24, 32):
            raise ValueError(f"AES key must be 16, 24 or 32 bytes, got {len(key)}")
        c = CMAC(algorithms.AES(bytes(key)))
        c.update(_ZERO16)
        return c.finalize()[:3].hex().upper()
    if algorithm == "HMAC":
        if len(key) < 16:
            raise ValueError(f"HMAC key must be at least 16 bytes, got {len(key)}")
        return hmac.new(bytes(key), _ZERO16, hashlib.sha256).digest()[:3].hex().upper()
    raise ValueError(f"key check value algorithm must be TDES, AES or HMAC, got {algorithm!r}")


# One-bit count parity of each byte with its low bit cleared, so the table gives the byte with odd parity.
_ODD_PARITY = bytes((b & 0xFE) | ((bin(b & 0xFE).count("1") + 1) & 1) for b in range(256))


def adjust_odd_parity(key: bytes) -> bytes:
    """Each byte's low bit set so the byte has an odd number of one-bits (DES key parity).

    >>> adjust_odd_parity(bytes.fromhex("0000FEFF")).hex().upper()
    '0101FEFE'
    """
    return bytes(key).translate(_ODD_PARITY)
