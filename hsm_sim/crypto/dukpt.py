"""ANSI X9.24-1 (2009) TDES DUKPT: IPEK from BDK and KSN, transaction keys, and their usage variants."""

from __future__ import annotations

from hsm_sim.crypto.des import des_ecb_encrypt, tdes_ecb_encrypt

_KEY_MASK = bytes.fromhex("C0C0C0C000000000C0C0C0C000000000")
_PIN_VARIANT = bytes.fromhex("00000000000000FF00000000000000FF")
_MAC_REQUEST_VARIANT = bytes.fromhex("000000000000FF00000000000000FF00")
_MAC_RESPONSE_VARIANT = bytes.fromhex("00000000FF00000000000000FF000000")
_DATA_REQUEST_VARIANT = bytes.fromhex("0000000000FF00000000000000FF0000")
_DATA_RESPONSE_VARIANT = bytes.fromhex("000000FF00000000000000FF00000000")
COUNTER_MASK = 0x1FFFFF


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b))


def _check(key: bytes, ksn: bytes) -> None:
    if len(key) != 16:
        raise ValueError(f"DUKPT key must be 16 bytes, got {len(key)}")
    if len(ksn) != 10:
        raise ValueError(f"KSN must be 10 bytes, got {len(ksn)}")


def derive_ipek(bdk: bytes, ksn: bytes) -> bytes:
    """Initial PIN encryption key of the device named by the KSN (its counter bits are ignored)."""
    _check(bdk, ksn)
    base = (int.from_bytes(ksn, "big") & ~COUNTER_MASK).to_bytes(10, "big")[:8]
    left = tdes_ecb_encrypt(bdk, base)
    right = tdes_ecb_encrypt(_xor(bdk, _KEY_MASK), base)
    return left + right


def _nrkgp(key: bytes, ksn_register: bytes) -> bytes:
    """Non-reversible key generation: a new 16-byte key from the current key and the KSN register."""
    def half(k: bytes) -> bytes:
        return _xor(des_ecb_encrypt(k[:8], _xor(ksn_register, k[8:])), k[8:])

    return half(_xor(key, _KEY_MASK)) + half(key)


def derive_transaction_key(ipek: bytes, ksn: bytes) -> bytes:
    """The future key for the KSN's counter, reached by one NRKGP step per counter bit (at most 21)."""
    _check(ipek, ksn)
    counter = int.from_bytes(ksn, "big") & COUNTER_MASK
    register = int.from_bytes(ksn[2:], "big") & ~COUNTER_MASK
    key = ipek
    bit = 1 << 20
    while bit:
        if counter & bit:
            register |= bit
            key = _nrkgp(key, register.to_bytes(8, "big"))
        bit >>= 1
    return key


def pin_encryption_key(transaction_key: bytes) -> bytes:
    return _xor(transaction_key, _PIN_VARIANT)


def mac_request_key(transaction_key: bytes) -> bytes:
    return _xor(transaction_key, _MAC_REQUEST_VARIANT)


def mac_response_key(transaction_key: bytes) -> bytes:
    return _xor(transaction_key, _MAC_RESPONSE_VARIANT)


def data_request_key(transaction_key: bytes) -> bytes:
    """Data encryption variant, then encrypted with itself (each half), as X9.24-1 prescribes."""
    variant = _xor(transaction_key, _DATA_REQUEST_VARIANT)
    return tdes_ecb_encrypt(variant, variant[:8]) + tdes_ecb_encrypt(variant, variant[8:])


def data_response_key(transaction_key: bytes) -> bytes:
    variant = _xor(transaction_key, _DATA_RESPONSE_VARIANT)
    return tdes_ecb_encrypt(variant, variant[:8]) + tdes_ecb_encrypt(variant, variant[8:])
