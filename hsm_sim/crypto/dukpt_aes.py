"""ANSI X9.24-3 (2017) AES DUKPT, host side: initial key from BDK, working keys for a KSN.

KSN (12 bytes) = initial key ID (8 bytes: BDK ID 4 || derivation ID 4) || transaction counter (32 bits,
at most 16 one-bits). Every key is derived by AES-ECB of 16-byte derivation data under the parent key
(NIST SP 800-108 counter mode): version 01 || block counter || key usage (2) || algorithm (2) ||
key length in bits (2) || initial key ID (initial key) or derivation ID || counter (other keys).
"""

from __future__ import annotations

import enum

from hsm_sim.crypto.des import aes_ecb_encrypt

MAX_COUNTER_ONE_BITS = 16


class KeyType(enum.IntEnum):
    """Algorithm indicator of the derivation data; the value is what goes on the wire."""

    TDES2 = 0
    TDES3 = 1
    AES128 = 2
    AES192 = 3
    AES256 = 4

    @property
    def bits(self) -> int:
        return _BITS[self]


_BITS = {KeyType.TDES2: 128, KeyType.TDES3: 192, KeyType.AES128: 128, KeyType.AES192: 192, KeyType.AES256: 256}
# Security strength decides which working keys a derivation key may produce (a 3TDEA key, 192 bits
# long but 112 bits strong, may come from an AES-128 key; X9.24-3 publishes exactly that vector).
_STRENGTH = {KeyType.TDES2: 80, KeyType.TDES3: 112, KeyType.AES128: 128, KeyType.AES192: 192, KeyType.AES256: 256}
_AES_BY_LENGTH = {16: KeyType.AES128, 24: KeyType.AES192, 32: KeyType.AES256}


class KeyUsage(enum.IntEnum):
    """Key usage indicator of the derivation data (X9.24-3 table 2)."""

    KEY_ENCRYPTION_KEY = 0x0002
    PIN_ENCRYPTION = 0x1000
    MAC_GENERATION = 0x2000
    MAC_VERIFICATION = 0x2001
    MAC_BOTH_WAYS = 0x2002
    DATA_ENCRYPT = 0x3000
    DATA_DECRYPT = 0x3001
    DATA_BOTH_WAYS = 0x3002
    KEY_DERIVATION = 0x8000
    KEY_DERIVATION_INITIAL_KEY = 0x8001


def _enum(cls: type[enum.IntEnum], value: int, what: str):
    try:
        return cls(value)
    except ValueError:
        raise ValueError(f"unknown AES DUKPT {what} {value!r}; expected one of {[m.name for m in cls]}") from None


def _derivation_data(usage: int, key_type: KeyType, tail: bytes) -> bytearray:
    return bytearray(
        b"\x01\x01" + usage.to_bytes(2, "big") + int(key_type).to_bytes(2, "big") + key_type.bits.to_bytes(2, "big") + tail
    )


def _derive(parent: bytes, key_type: KeyType, data: bytearray) -> bytes:
    blocks = (key_type.bits + 127) // 128
    out = bytearray()
    for counter in range(1, blocks + 1):
        data[1] = counter
        out += aes_ecb_encrypt(parent, bytes(data), cache=False)
    return bytes(out[: key_type.bits // 8])


def _derivation_key_type(key: bytes, name: str) -> KeyType:
    key_type = _AES_BY_LENGTH.get(len(key))
    if key_type is None:
        raise ValueError(f"AES DUKPT {name} must be 16, 24 or 32 bytes, got {len(key)}")
    return key_type


def derive_initial_key(bdk: bytes, initial_key_id: bytes, key_type: KeyType = KeyType.AES128) -> bytes:
    """The initial key a terminal is loaded with, of the BDK's type (AES128/192/256).

    bdk: 16, 24 or 32 bytes matching key_type. initial_key_id: 8 bytes (the first 8 bytes of the KSN).
    Raises ValueError naming the bad input.

    X9.24-3:2017 annex B.1 (AES-128 BDK):

    >>> derive_initial_key(bytes.fromhex("FEDCBA9876543210F1F1F1F1F1F1F1F1"),
    ...                    bytes.fromhex("1234567890123456"), KeyType.AES128).hex().upper()
    '1273671EA26AC29AFA4D1084127652A1'
    """
    key_type = _enum(KeyType, key_type, "key type")
    if key_type not in (KeyType.AES128, KeyType.AES192, KeyType.AES256):
        raise ValueError(f"AES DUKPT BDK type must be AES128, AES192 or AES256, got {key_type.name}")
    if len(bdk) * 8 != key_type.bits:
        raise ValueError(f"{key_type.name} BDK must be {key_type.bits // 8} bytes, got {len(bdk)}")
    if len(initial_key_id) != 8:
        raise ValueError(f"initial key ID must be 8 bytes, got {len(initial_key_id)}")
    data = _derivation_data(KeyUsage.KEY_DERIVATION_INITIAL_KEY, key_type, bytes(initial_key_id))
    return _derive(bytes(bdk), key_type, data)


def _split_ksn(ksn: bytes) -> tuple[bytes, int]:
    if len(ksn) != 12:
        raise ValueError(f"AES DUKPT KSN must be 12 bytes, got {len(ksn)}")
    counter = int.from_bytes(ksn[8:], "big")
    if bin(counter).count("1") > MAX_COUNTER_ONE_BITS:
        raise ValueError(f"KSN counter has more than {MAX_COUNTER_ONE_BITS} one-bits; no device uses it")
    return bytes(ksn[4:8]), counter


def transaction_derivation_key(initial_key: bytes, ksn: bytes) -> bytes:
    """The intermediate derivation key for the KSN's counter: one derivation per counter bit, high bit first.

    This is the key the standard's tables list per KSN; working keys are derived from it.

    >>> transaction_derivation_key(bytes.fromhex("1273671EA26AC29AFA4D1084127652A1"),
    ...                            bytes.fromhex("123456789012345600000001")).hex().upper()
    '4F21B565BAD9835E112B6465635EAE44'
    """
    key_type = _derivation_key_type(initial_key, "initial key")
    derivation_id, counter = _split_ksn(ksn)
    key = bytes(initial_key)
    working = 0
    mask = 1 << 31
    while mask:
        if counter & mask:
            working |= mask
            data = _derivation_data(KeyUsage.KEY_DERIVATION, key_type, derivation_id + working.to_bytes(4, "big"))
            key = _derive(key, key_type, data)
        mask >>= 1
    return key


def derive_working_key(
    initial_key: bytes, ksn: bytes, key_usage: KeyUsage, key_type: KeyType = KeyType.AES128
) -> bytes:
    """The working key of one usage and type for the KSN (PIN, MAC, data or key encryption).

    initial_key: 16/24/32 bytes (from derive_initial_key). ksn: 12 bytes, counter with at most 16
    one-bits. key_usage: any KeyUsage but the two derivation usages. key_type: TDES2/TDES3/AES*; a
    working key may not be stronger than its derivation key (TDES3 from AES128 is allowed, AES256
    from AES128 is not). Raises ValueError.

    >>> ik = bytes.fromhex("1273671EA26AC29AFA4D1084127652A1")
    >>> len(derive_working_key(ik, bytes.fromhex("123456789012345600000001"), KeyUsage.PIN_ENCRYPTION))
    16
    """
    derivation_type = _derivation_key_type(initial_key, "initial key")
    key_usage = _enum(KeyUsage, key_usage, "key usage")
    key_type = _enum(KeyType, key_type, "key type")
    if key_usage in (KeyUsage.KEY_DERIVATION, KeyUsage.KEY_DERIVATION_INITIAL_KEY):
        raise ValueError(f"{key_usage.name} is not a working key usage")
    if _STRENGTH[key_type] > _STRENGTH[derivation_type]:
        raise ValueError(f"a {key_type.name} working key cannot be derived from a {derivation_type.name} key")
    derivation_id, counter = _split_ksn(ksn)
    parent = transaction_derivation_key(initial_key, ksn)
    data = _derivation_data(key_usage, key_type, derivation_id + counter.to_bytes(4, "big"))
    return _derive(parent, key_type, data)


def next_ksn(ksn: bytes) -> bytes:
    """The KSN of the device's next transaction: the smallest larger counter with at most 16 one-bits.

    Raises ValueError for a KSN that is not 12 bytes and when the counter space is exhausted.

    >>> next_ksn(bytes.fromhex("123456789012345600000001")).hex().upper()
    '123456789012345600000002'
    >>> next_ksn(bytes.fromhex("12345678901234560000FFFF")).hex().upper()
    '123456789012345600010000'
    """
    if len(ksn) != 12:
        raise ValueError(f"AES DUKPT KSN must be 12 bytes, got {len(ksn)}")
    counter = int.from_bytes(ksn[8:], "big") + 1
    # A counter with too many one-bits jumps by its lowest one-bit: that clears the run of low ones.
    while counter < 1 << 32 and bin(counter).count("1") > MAX_COUNTER_ONE_BITS:
        counter += counter & -counter
    if counter >= 1 << 32:
        raise ValueError("AES DUKPT transaction counter is exhausted; the device needs a new initial key")
    return bytes(ksn[:8]) + counter.to_bytes(4, "big")
