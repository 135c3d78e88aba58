"""The key store: keys wrapped under the LMK as TR-31 key blocks, identified by their KCV.

The file holds the LMK (AES-256; sealed under a passphrase from HSM_LMK_PASSPHRASE when that is set) and
one TR-31 block per key, whose header binds the key's usage, algorithm and mode of use. It is written
atomically (temporary file, fsync, rename) with permissions 0600. Unwrapped keys stay in memory only.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from hsm_sim import keyblock
from hsm_sim.crypto.des import adjust_odd_parity, kcv
from hsm_sim.errors import KEY_STORE_ERROR, KEY_TYPE_NOT_ALLOWED, UNKNOWN_KEY, HsmError
from hsm_sim.files import write_private

FILE_FORMAT = "hsm-sim key store 1"
PASSPHRASE_ENV = "HSM_LMK_PASSPHRASE"
LMK_ALGORITHM = "AES"


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What may be known of a key outside the HSM.

    `mode_of_use` and `exportability` are the TR-31 header's (see keyblock.py); `origin` is how the key
    came in: generated inside the HSM, formed from custodians' components, or imported under a ZMK/KEK.
    """

    kcv: str
    key_type: str
    algorithm: str
    version: int
    created_at: str
    key_bits: int = 0
    mode_of_use: str = ""
    exportability: str = "E"
    origin: str = "generated"


def new_key_bytes(algorithm: str, bits: int) -> bytes:
    raw = os.urandom(bits // 8)
    return adjust_odd_parity(raw) if algorithm == "TDES" else raw


@dataclass
class StoredKey:
    info: KeyInfo
    block: str


class KeyStore:
    """Keys by KCV, wrapped under the LMK; persisted to `path` unless ephemeral."""

    def __init__(self, lmk: bytes, path: Path | None, *, salt: bytes | None = None) -> None:
        self._lmk = lmk
        self.path = path
        self._salt = salt
        self.keys: dict[str, StoredKey] = {}
        self.current: dict[str, str] = {}  # "DEK"/"FPK" -> KCV of the version new data uses
        self._versions: dict[str, list[KeyInfo]] = {}

    # ------------------------------------------------------------ opening

    @classmethod
    def ephemeral(cls) -> "KeyStore":
        return cls(os.urandom(32), None)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> "KeyStore":
        """Read the key-store file, or create it (0600) with a new LMK when it does not exist."""
        path = Path(path)
        passphrase = os.environ.get(PASSPHRASE_ENV)
        if not path.exists():
            salt = os.urandom(16) if passphrase else None
            store = cls(os.urandom(32), path, salt=salt)
            store.save()
            return store
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise HsmError(KEY_STORE_ERROR, f"key store {path} cannot be read: {type(exc).__name__}") from None
        if doc.get("format") != FILE_FORMAT:
            raise HsmError(KEY_STORE_ERROR, f"{path} is not an hsm-sim key store")
        lmk_doc = doc["lmk"]
        raw = base64.b64decode(lmk_doc["value"])
        salt = None
        if lmk_doc.get("sealed"):
            if not passphrase:
                raise HsmError(KEY_STORE_ERROR, f"key store {path} is sealed: set {PASSPHRASE_ENV}")
            salt = base64.b64decode(lmk_doc["salt"])
            try:
                raw = AESGCM(_passphrase_key(passphrase, salt)).decrypt(raw[:12], raw[12:], b"hsm-sim lmk")
            except InvalidTag:
                raise HsmError(KEY_STORE_ERROR, f"wrong {PASSPHRASE_ENV} for key store {path}") from None
        store = cls(raw, path, salt=salt)
        for item in doc.get("keys", []):
            info = KeyInfo(**item["info"])
            store.keys[info.kcv] = StoredKey(info, item["block"])
        store.current = dict(doc.get("current", {}))
        return store

    def save(self) -> None:
        if self.path is None:
            return
        lmk_doc: dict[str, object]
        passphrase = os.environ.get(PASSPHRASE_ENV)
        if passphrase:
            salt = self._salt or os.urandom(16)
            self._salt = salt
            nonce = os.urandom(12)
            sealed = nonce + AESGCM(_passphrase_key(passphrase, salt)).encrypt(nonce, self._lmk, b"hsm-sim lmk")
            lmk_doc = {"sealed": True, "salt": base64.b64encode(salt).decode(), "value": base64.b64encode(sealed).decode()}
        else:
            lmk_doc = {"sealed": False, "value": base64.b64encode(self._lmk).decode()}
        doc = {
            "format": FILE_FORMAT,
            "lmk": lmk_doc,
            "keys": [{"info": asdict(k.info), "block": k.block} for k in self.keys.values()],
            "current": self.current,
        }
        write_private(self.path, json.dumps(doc, indent=1).encode())

    # ------------------------------------------------------------ keys

    def add(
        self,
        key: bytes,
        key_type: str,
        algorithm: str,
        *,
        origin: str,
        mode: str | None = None,
        exportability: str = "E",
    ) -> KeyInfo:
        """Store a key; a second key with the same KCV is refused (the KCV is its identity)."""
        bits = keyblock.check_type(key_type, algorithm, len(key) * 8)
        mode = mode or keyblock.KEY_TYPES[key_type].mode
        keyblock.check_mode(key_type, mode, "key store")
        value = kcv(key, algorithm)
        if value in self.keys:
            raise HsmError(KEY_TYPE_NOT_ALLOWED, f"a key with KCV {value} is already in the key store")
        version = 1 + sum(1 for k in self.keys.values() if k.info.key_type == key_type)
        created_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        info = KeyInfo(value, key_type, algorithm, version, created_at, bits, mode, exportability, origin)
        header = keyblock.header_for("D", key_type, algorithm, mode, exportability, origin=origin)
        self.keys[value] = StoredKey(info, keyblock.wrap(self._lmk, key, header))
        self._versions.pop(key_type, None)
        if key_type in ("DEK", "FPK"):
            self.current[key_type] = value
        self.save()
        return info

    def info(self, kcv_value: str) -> KeyInfo:
        stored = self.keys.get(str(kcv_value).upper())
        if stored is None:
            raise HsmError(UNKNOWN_KEY, f"no key with KCV {kcv_value}")
        return stored.info

    def clear_key(self, kcv_value: str) -> tuple[bytes, KeyInfo]:
        """The key itself, for use inside the HSM only, with what its LMK block's authenticated header says.

        An entry whose block was swapped or whose listed type, algorithm or KCV was edited is refused.
        """
        stored = self.keys.get(str(kcv_value).upper())
        if stored is None:
            raise HsmError(UNKNOWN_KEY, f"no key with KCV {kcv_value}")
        listed = stored.info
        try:
            header, key = keyblock.unwrap(self._lmk, LMK_ALGORITHM, stored.block, f"key {listed.kcv} in the key store")
        except HsmError as exc:
            raise HsmError(KEY_STORE_ERROR, exc.message) from None
        spec = keyblock.KEY_TYPES.get(listed.key_type)
        if (
            spec is None
            or header.key_usage != spec.usage
            or keyblock.ALGORITHM_OF.get(header.algorithm) != listed.algorithm
            or kcv(key, listed.algorithm) != listed.kcv
        ):
            raise HsmError(KEY_STORE_ERROR, f"key {listed.kcv} in the key store does not match its LMK block: refusing it")
        origin = header.blocks[keyblock.ORIGIN_BLOCK] if keyblock.ORIGIN_BLOCK in header.blocks else "generated"
        info = replace(listed, key_bits=len(key) * 8, mode_of_use=header.mode_of_use, exportability=header.exportability, origin=origin)
        return key, info

    def versions(self, key_type: str) -> list[KeyInfo]:
        """Every key of a type, newest version first (cached: asked on every PAN look-up)."""
        found = self._versions.get(key_type)
        if found is None:
            found = sorted((k.info for k in self.keys.values() if k.info.key_type == key_type), key=lambda i: -i.version)
            self._versions[key_type] = found
        return list(found)


def _passphrase_key(passphrase: str, salt: bytes) -> bytes:
    return Scrypt(salt=salt, length=32, n=2**14, r=8, p=1).derive(passphrase.encode())
