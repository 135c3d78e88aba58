"""Message authentication codes for ISO 8583 DE 64/128: retail MAC (ISO 9797-1 alg. 3) and AES-CMAC."""

from __future__ import annotations

import functools

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.cmac import CMAC

from hsm_sim.crypto.des import tdes_ecb_encrypt

_ZERO8 = bytes(8)


@functools.lru_cache(maxsize=1024)
def _des_cbc(key8: bytes) -> Cipher:
    # A Cipher is reusable: each encryptor() starts a fresh chain from the zero IV.
    return Cipher(TripleDES(key8 * 3), modes.CBC(_ZERO8))


def pad(data: bytes, method: int) -> bytes:
    """ISO 9797-1 padding to 8-byte blocks: 1 zeros (one zero block for empty data), 2 80 then zeros,
    3 the data's bit length as an 8-byte block in front, then zeros.

    >>> pad(bytes.fromhex("1234"), 2).hex().upper()
    '1234800000000000'
    """
    if method == 1:
        return bytes(data) + bytes(-len(data) % 8) if data else _ZERO8
    if method == 2:
        data = bytes(data) + b"\x80"
        return data + bytes(-len(data) % 8)
    if method == 3:
        return (len(data) * 8).to_bytes(8, "big") + bytes(data) + bytes(-len(data) % 8)
    raise ValueError(f"MAC padding method must be 1, 2 or 3, got {method}")


def retail_mac(key16: bytes, data: bytes, *, padding: int = 1, cache: bool = True) -> bytes:
    """8-byte ISO 9797-1 MAC algorithm 3 (ANSI X9.19 retail MAC) under a double-length key K1||K2.

    Single-DES CBC under K1 over the padded data, then the last block decrypted under K2 and
    encrypted under K1. `cache=False` for a key used once (a DUKPT transaction's): its key schedules are
    not kept. Raises ValueError for a key that is not 16 bytes or an unknown padding.

    ISO/IEC 9797-1 annex B (K = 0123456789ABCDEF, K' = FEDCBA9876543210, padding method 1):

    >>> retail_mac(bytes.fromhex("0123456789ABCDEFFEDCBA9876543210"), b"Now is the time for all ").hex().upper()
    'A1C72E74EA3FA9B6'
    """
    if len(key16) != 16:
        raise ValueError(f"retail MAC key must be 16 bytes, got {len(key16)}")
    return _retail_mac(bytes(key16), pad(data, padding), cache)


def _retail_mac(key16: bytes, padded: bytes, cache: bool) -> bytes:
    # E_K1(D_K2(C_n)) with C_n = E_K1(P_n ^ C_n-1) is TDES (K1, K2, K1) of P_n ^ C_n-1: two key schedules
    # (single-DES CBC under K1 for the blocks before the last, TDES for the last) instead of three.
    last = padded[-8:]
    if len(padded) > 8:
        factory = _des_cbc if cache else _des_cbc.__wrapped__
        chained = factory(key16[:8]).encryptor().update(padded[:-8])[-8:]
        last = (int.from_bytes(last, "big") ^ int.from_bytes(chained, "big")).to_bytes(8, "big")
    return tdes_ecb_encrypt(key16, last, cache=cache)


def aes_cmac(key: bytes, data: bytes, *, length: int = 8) -> bytes:
    """AES-CMAC (NIST SP 800-38B, RFC 4493) truncated to `length` bytes (4..16).

    RFC 4493 example 2:

    >>> aes_cmac(bytes.fromhex("2B7E151628AED2A6ABF7158809CF4F3C"),
    ...          bytes.fromhex("6BC1BEE22E409F96E93D7E117393172A"), length=16).hex()
    '070a16b46b4d4144f79bdd9dd04a287c'
    """
    if len(key) not in (16, 24, 32):
        raise ValueError(f"AES key must be 16, 24 or 32 bytes, got {len(key)}")
    if not 4 <= length <= 16:
        raise ValueError(f"CMAC length must be 4 to 16 bytes, got {length}")
    c = CMAC(algorithms.AES(bytes(key)))
    c.update(bytes(data))
    return c.finalize()[:length]
