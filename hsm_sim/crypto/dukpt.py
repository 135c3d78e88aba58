"""ANSI X9.24-1 (2009) TDES DUKPT, host side: IPEK from BDK and KSN, transaction keys, usage variants.

KSN (10 bytes) = key set id and device id (59 bits) || transaction counter (21 bits). All keys are
16-byte double-length TDES keys.
"""

from __future__ import annotations

from hsm_sim.crypto.des import tdes_ecb_encrypt

COUNTER_MASK = 0x1FFFFF
MAX_COUNTER_ONE_BITS = 10
_KEY_MASK = 0xC0C0C0C000000000C0C0C0C000000000
_PIN_VARIANT = 0x00000000000000FF00000000000000FF
_MAC_REQUEST_VARIANT = 0x000000000000FF00000000000000FF00
_MAC_RESPONSE_VARIANT = 0x00000000FF00000000000000FF000000
_DATA_REQUEST_VARIANT = 0x0000000000FF00000000000000FF0000
_DATA_RESPONSE_VARIANT = 0x000000FF00000000000000FF00000000
_LOW64 = (1 << 64) - 1


def _check_key(key: bytes, name: str) -> None:
    if len(key) != 16:
        raise ValueError(f"DUKPT {name} must be 16 bytes, got {len(key)}")


def _check_ksn(ksn: bytes) -> None:
    if len(ksn) != 10:
        raise ValueError(f"KSN must be 10 bytes, got {len(ksn)}")


def ksn_counter(ksn: bytes) -> int:
    """The 21-bit transaction counter of a 10-byte KSN."""
    _check_ksn(ksn)
    return int.from_bytes(ksn, "big") & COUNTER_MASK


def derive_ipek(bdk: bytes, ksn: bytes) -> bytes:
    """Initial PIN encryption key (16 bytes) of the device the KSN names; its counter bits are ignored.

    bdk: 16 bytes. ksn: 10 bytes. Raises ValueError for wrong lengths.

    X9.24-1 annex A:

    >>> derive_ipek(bytes.fromhex("0123456789ABCDEFFEDCBA9876543210"),
    ...             bytes.fromhex("FFFF9876543210E00000")).hex().upper()
    '6AC292FAA1315B4D858AB3A3D7D5933A'
    """
    _check_key(bdk, "BDK")
    _check_ksn(ksn)
    base = ((int.from_bytes(ksn, "big") & ~COUNTER_MASK) >> 16).to_bytes(8, "big")
    right_key = (int.from_bytes(bdk, "big") ^ _KEY_MASK).to_bytes(16, "big")
    return tdes_ecb_encrypt(bdk, base) + tdes_ecb_encrypt(right_key, base, cache=False)


def _nrkgp(key: int, register: int) -> int:
    """Non-reversible key generation: the next 128-bit key from the current key and the 64-bit KSN register."""

    def half(k: int) -> int:
        k_left, k_right = (k >> 64).to_bytes(8, "big"), k & _LOW64
        # Intermediate keys are used once: cache=False keeps them out of the long-lived key-schedule cache.
        crypted = int.from_bytes(tdes_ecb_encrypt(k_left, (register ^ k_right).to_bytes(8, "big"), cache=False), "big")
        return crypted ^ k_right

    return (half(key ^ _KEY_MASK) << 64) | half(key)


def _split(ipek: bytes, ksn: bytes) -> tuple[int, int, int]:
    """(the KSN as an integer, its counter, the derivation register's starting value), after checking both."""
    _check_key(ipek, "IPEK")
    _check_ksn(ksn)
    value = int.from_bytes(ksn, "big")
    counter = value & COUNTER_MASK
    if bin(counter).count("1") > MAX_COUNTER_ONE_BITS:
        raise ValueError(f"KSN counter has more than {MAX_COUNTER_ONE_BITS} one-bits; no device uses it")
    return value, counter, value & _LOW64 & ~COUNTER_MASK


def derive_transaction_key(ipek: bytes, ksn: bytes) -> bytes:
    """The 16-byte future key for the KSN's counter: one NRKGP step per counter bit, most significant first.

    ipek: 16 bytes. ksn: 10 bytes whose counter has at most 10 one-bits (X9.24-1: originating devices
    skip the others). Apply pin_encryption_key() etc. to the result. Raises ValueError.

    X9.24-1 annex A, counter 1:

    >>> derive_transaction_key(bytes.fromhex("6AC292FAA1315B4D858AB3A3D7D5933A"),
    ...                        bytes.fromhex("FFFF9876543210E00001")).hex().upper()
    '042666B49184CFA368DE9628D0397BC9'
    """
    value, counter, register = _split(ipek, ksn)
    key = int.from_bytes(ipek, "big")
    bit = 1 << 20
    while bit:
        if counter & bit:
            register |= bit
            key = _nrkgp(key, register)
        bit >>= 1
    return key.to_bytes(16, "big")


def counter_path(counter: int) -> list[int]:
    """The counters on the way to `counter`, one more of its one-bits each, most significant first.

    The key of each is one NRKGP step from the key of the one before it (the IPEK before the first).

    >>> counter_path(0b10110)
    [16, 20, 22]
    """
    path: list[int] = []
    prefix = 0
    rest = counter
    while rest:
        prefix |= 1 << (rest.bit_length() - 1)
        rest = counter & ~prefix
        path.append(prefix)
    return path


class TransactionKeys:
    """Transaction keys of many devices, each derived from the nearest key on its counter's path.

    The key of counter c is one NRKGP step from the key of c without its lowest one-bit, so a device's
    counters in sequence cost about one step each instead of one per one-bit, and asking again for the
    same KSN (a request's MAC, then its answer's) costs none. Per device the keys on the path of its
    latest counter are kept (at most ten); at most `max_devices` devices, then it starts again.
    """

    def __init__(self, max_devices: int = 10_000) -> None:
        self.max_devices = max_devices
        self._paths: dict[tuple[object, int], dict[int, int]] = {}

    def get(self, owner: object, ipek: bytes, ksn: bytes) -> bytes:
        """derive_transaction_key(ipek, ksn) for the device `owner` names with that IPEK (e.g. BDK and KSN base)."""
        value, counter, register = _split(ipek, ksn)
        device = (owner, value & ~COUNTER_MASK)
        known = self._paths.get(device)
        if known is None:
            if len(self._paths) >= self.max_devices:
                self._paths.clear()
            known = {}
        key = int.from_bytes(ipek, "big")
        path: dict[int, int] = {}
        for prefix in counter_path(counter):
            cached = known.get(prefix)
            key = cached if cached is not None else _nrkgp(key, register | prefix)
            path[prefix] = key
        self._paths[device] = path
        return key.to_bytes(16, "big")


def _variant(transaction_key: bytes, variant: int) -> bytes:
    _check_key(transaction_key, "transaction key")
    return (int.from_bytes(transaction_key, "big") ^ variant).to_bytes(16, "big")


def pin_encryption_key(transaction_key: bytes) -> bytes:
    """PIN encryption key: transaction key XOR 00000000000000FF00000000000000FF.

    >>> pin_encryption_key(bytes.fromhex("042666B49184CFA368DE9628D0397BC9")).hex().upper()
    '042666B49184CF5C68DE9628D0397B36'
    """
    return _variant(transaction_key, _PIN_VARIANT)


def mac_request_key(transaction_key: bytes) -> bytes:
    """MAC key for requests: transaction key XOR 000000000000FF00000000000000FF00."""
    return _variant(transaction_key, _MAC_REQUEST_VARIANT)


def mac_response_key(transaction_key: bytes) -> bytes:
    """MAC key for responses: transaction key XOR 00000000FF00000000000000FF000000."""
    return _variant(transaction_key, _MAC_RESPONSE_VARIANT)


def _data_key(transaction_key: bytes, variant: int) -> bytes:
    v = _variant(transaction_key, variant)
    # X9.24-1 2009: the data variant is then encrypted with itself, each half, to make it one-way.
    return tdes_ecb_encrypt(v, v, cache=False)


def data_request_key(transaction_key: bytes) -> bytes:
    """Data encryption key for requests: the 0000000000FF0000... variant encrypted with itself (TDES ECB)."""
    return _data_key(transaction_key, _DATA_REQUEST_VARIANT)


def data_response_key(transaction_key: bytes) -> bytes:
    """Data encryption key for responses: the 000000FF00000000... variant encrypted with itself."""
    return _data_key(transaction_key, _DATA_RESPONSE_VARIANT)
