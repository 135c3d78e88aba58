"""Message authentication codes for ISO 8583 DE 64/128: retail MAC (ISO 9797-1 alg. 3) and AES-CMAC."""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.cmac import CMAC

from hsm_sim.crypto.des import des_ecb_decrypt, des_ecb_encrypt


def _pad(data: bytes, method: int) -> bytes:
    if method == 1:
        return data + b"\0" * (-len(data) % 8) if data else b"\0" * 8
    if method == 2:
        data = data + b"\x80"
        return data + b"\0" * (-len(data) % 8)
    raise ValueError(f"padding method {method} is not 1 or 2")


def retail_mac(key16: bytes, data: bytes, *, padding: int = 1) -> bytes:
    """8-byte MAC: single-DES CBC under K1, then the last block decrypted with K2 and encrypted with K1."""
    if len(key16) != 16:
        raise ValueError(f"retail MAC key must be 16 bytes, got {len(key16)}")
    k1, k2 = key16[:8], key16[8:]
    state = b"\0" * 8
    padded = _pad(data, padding)
    for i in range(0, len(padded), 8):
        state = des_ecb_encrypt(k1, bytes(a ^ b for a, b in zip(state, padded[i : i + 8])))
    return des_ecb_encrypt(k1, des_ecb_decrypt(k2, state))


def aes_cmac(key: bytes, data: bytes, *, length: int = 8) -> bytes:
    """AES-CMAC (NIST SP 800-38B), truncated to `length` bytes."""
    if len(key) not in (16, 24, 32):
        raise ValueError(f"AES key must be 16, 24 or 32 bytes, got {len(key)}")
    if not 4 <= length <= 16:
        raise ValueError("CMAC length must be 4 to 16 bytes")
    c = CMAC(algorithms.AES(key))
    c.update(data)
    return c.finalize()[:length]
