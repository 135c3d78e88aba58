"""A load run's DUKPT keys and retail MACs at about a microsecond per DES key, through libcrypto's DES API.

Every request of a load run has a KSN of its own, so its transaction key (one NRKGP step, two single-DES
keys), its request-MAC key and its answer's response-MAC key (two DES keys each) are each used once. With
`cryptography` each of those six keys costs a new cipher context, 8 to 17 µs on these machines (OpenSSL 3
fetches the algorithm and builds a context every time): most of a template request's cost. OpenSSL's
low-level DES API (DES_set_key_unchecked, DES_ecb_encrypt, DES_cbc_cksum) writes a key schedule into a
128-byte buffer the caller keeps, for about a microsecond through ctypes.

Where the system's libcrypto does not export that API, the same functions run on hsm_sim.crypto (slower,
the same results); tests/terminal/test_fastmac.py checks both against hsm_sim's DUKPT and retail MAC.
One `DesBlocks` reuses its buffers: use it from one thread (a load run is one event loop).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

from hsm_sim.crypto.des import tdes_ecb_encrypt
from hsm_sim.crypto.dukpt import COUNTER_MASK, counter_path
from hsm_sim.crypto.mac import retail_mac

# ANSI X9.24-1: the mask that makes the right half's key in an NRKGP step, and the variants of a
# transaction key for the request and response MAC keys (hsm_sim.crypto.dukpt applies the same).
KEY_MASK = 0xC0C0C0C000000000C0C0C0C000000000
MAC_REQUEST_VARIANT = 0x000000000000FF00000000000000FF00
MAC_RESPONSE_VARIANT = 0x00000000FF00000000000000FF000000
_LOW64 = (1 << 64) - 1
_KEY_SCHEDULE_BYTES = 128  # sizeof(DES_key_schedule)
_ZERO8 = bytes(8)
# Keys kept per terminal before all but the latest counter's path are let go.
MAX_KEPT_KEYS = 64


def _libcrypto() -> Any | None:
    """libcrypto with the low-level DES functions typed, or None when there is none that has them."""
    name = ctypes.util.find_library("crypto")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)
        set_key, ecb, cksum = lib.DES_set_key_unchecked, lib.DES_ecb_encrypt, lib.DES_cbc_cksum
    except (OSError, AttributeError):
        return None
    set_key.argtypes, set_key.restype = [ctypes.c_char_p, ctypes.c_void_p], None
    ecb.argtypes, ecb.restype = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int], None
    cksum.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_long, ctypes.c_void_p, ctypes.c_char_p]
    cksum.restype = ctypes.c_ulong
    return lib


_LIB = _libcrypto()


class DesBlocks:
    """Single-DES block encryption and the ISO 9797-1 algorithm 3 retail MAC, each under a key used once."""

    def __init__(self, *, native: bool = True) -> None:
        self.native = native and _LIB is not None
        if self.native:
            assert _LIB is not None
            self._set_key, self._ecb, self._cksum = _LIB.DES_set_key_unchecked, _LIB.DES_ecb_encrypt, _LIB.DES_cbc_cksum
            self._ks1 = ctypes.create_string_buffer(_KEY_SCHEDULE_BYTES)
            self._ks2 = ctypes.create_string_buffer(_KEY_SCHEDULE_BYTES)
            self._block = ctypes.create_string_buffer(8)

    def encrypt(self, key8: bytes, block: bytes) -> bytes:
        """DES ECB of one 8-byte block under an 8-byte key (parity ignored)."""
        if not self.native:
            return tdes_ecb_encrypt(key8, block, cache=False)
        self._set_key(key8, self._ks1)
        self._ecb(block, self._block, self._ks1, 1)
        return self._block.raw

    def retail_mac(self, key16: bytes, data: bytes) -> bytes:
        """hsm_sim.crypto.mac.retail_mac(key16, data) with padding method 1, for non-empty data."""
        if not self.native:
            return retail_mac(key16, data, cache=False)
        length = len(data)
        if length % 8:
            data = bytes(data) + _ZERO8[: -length % 8]
            length = len(data)
        ks1, out = self._ks1, self._block
        self._set_key(key16[:8], ks1)
        self._set_key(key16[8:], self._ks2)
        # CBC-MAC under K1, then the last block decrypted under K2 and encrypted under K1.
        self._cksum(data, out, length, ks1, _ZERO8)
        self._ecb(out, out, self._ks2, 0)
        self._ecb(out, out, ks1, 1)
        return out.raw


class DukptPath:
    """One terminal's DUKPT transaction keys by counter, each one NRKGP step from the key of its counter
    without the lowest one-bit (the keys on the path of the latest counter are kept, as
    hsm_sim.crypto.dukpt.TransactionKeys keeps them)."""

    def __init__(self, ipek: bytes, initial_ksn: bytes, des: DesBlocks) -> None:
        if len(ipek) != 16 or len(initial_ksn) != 10:
            raise ValueError("a DUKPT path needs a 16-byte IPEK and a 10-byte KSN")
        self._ipek = int.from_bytes(ipek, "big")
        self._register = int.from_bytes(initial_ksn, "big") & _LOW64 & ~COUNTER_MASK
        self._des = des
        self._path: dict[int, int] = {}

    def _nrkgp(self, key: int, register: int) -> int:
        encrypt = self._des.encrypt

        def half(k: int) -> int:
            k_right = k & _LOW64
            crypted = encrypt((k >> 64).to_bytes(8, "big"), (register ^ k_right).to_bytes(8, "big"))
            return int.from_bytes(crypted, "big") ^ k_right

        return (half(key ^ KEY_MASK) << 64) | half(key)

    def transaction_key(self, counter: int) -> int:
        """The 128-bit transaction key of the counter, as an integer."""
        known = self._path
        parent = counter & (counter - 1)  # the counter without its lowest one-bit
        key = known.get(parent) if parent else self._ipek
        if key is not None:
            # Counters in sequence: the parent is on the path just walked, one step away.
            key = known[counter] = self._nrkgp(key, self._register | counter)
            if len(known) > MAX_KEPT_KEYS:
                self._keep_path(counter)
            return key
        path: dict[int, int] = {}
        key = self._ipek
        for prefix in counter_path(counter):
            cached = known.get(prefix)
            key = cached if cached is not None else self._nrkgp(key, self._register | prefix)
            path[prefix] = key
        self._path = path
        return key

    def _keep_path(self, counter: int) -> None:
        known = self._path
        self._path = {prefix: known[prefix] for prefix in counter_path(counter)}

    def mac_keys(self, counter: int) -> tuple[bytes, bytes]:
        """(request-MAC key, response-MAC key) of the counter's transaction key, 16 bytes each."""
        key = self.transaction_key(counter)
        return (key ^ MAC_REQUEST_VARIANT).to_bytes(16, "big"), (key ^ MAC_RESPONSE_VARIANT).to_bytes(16, "big")
