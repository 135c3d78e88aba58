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
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from psec import tr31

from hsm_sim.crypto.des import adjust_odd_parity, kcv
from hsm_sim.errors import KEY_STORE_ERROR, KEY_TYPE_NOT_ALLOWED, UNKNOWN_KEY, HsmError

FILE_FORMAT = "hsm-sim key store 1"
PASSPHRASE_ENV = "HSM_LMK_PASSPHRASE"

# key type -> (TR-31 key usage, mode of use, allowed algorithms)
KEY_TYPES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "ZMK": ("K0", "B", ("TDES", "AES")),
    "KEK": ("K0", "B", ("TDES", "AES")),
    "ZPK": ("P0", "B", ("TDES", "AES")),
    "TPK": ("P0", "B", ("TDES", "AES")),
    "PVK": ("V2", "C", ("TDES",)),
    "CVK": ("C0", "C", ("TDES",)),
    "BDK": ("B0", "X", ("TDES", "AES")),
    "IMK-AC": ("E0", "X", ("TDES",)),
    "TAK": ("M3", "C", ("TDES", "AES")),
    "ZAK": ("M3", "C", ("TDES", "AES")),
    "DEK": ("D0", "B", ("AES",)),
    "FPK": ("M7", "C", ("HMAC",)),
}
_TR31_ALGORITHM = {"TDES": "T", "AES": "A", "HMAC": "H"}
_KEY_BYTES = {"TDES": 16, "AES": 32, "HMAC": 32}


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What may be known of a key outside the HSM."""

    kcv: str
    key_type: str
    algorithm: str
    version: int
    created_at: str


def key_length(algorithm: str) -> int:
    return _KEY_BYTES[algorithm]


def check_type(key_type: str, algorithm: str) -> None:
    """Refuse a key type we do not know, or an algorithm that type cannot have."""
    spec = KEY_TYPES.get(key_type)
    if spec is None:
        raise HsmError(KEY_TYPE_NOT_ALLOWED, f"unknown key type {key_type!r}; known: {', '.join(KEY_TYPES)}")
    if algorithm not in spec[2]:
        raise HsmError(KEY_TYPE_NOT_ALLOWED, f"a {key_type} cannot be {algorithm} (allowed: {', '.join(spec[2])})")


def new_key_bytes(algorithm: str) -> bytes:
    raw = os.urandom(_KEY_BYTES[algorithm])
    return adjust_odd_parity(raw) if algorithm == "TDES" else raw


def check_value(key: bytes, algorithm: str) -> str:
    return kcv(key, algorithm)


def wrap(kbpk: bytes, key: bytes, key_type: str, algorithm: str, *, exportable: bool = True) -> str:
    usage, mode, _ = KEY_TYPES[key_type]
    header = tr31.Header(
        version_id="D",
        key_usage=usage,
        algorithm=_TR31_ALGORITHM[algorithm],
        mode_of_use=mode,
        version_num="00",
        exportability="E" if exportable else "N",
    )
    return tr31.wrap(kbpk, header, key)


def unwrap(kbpk: bytes, block: str, key_type: str, algorithm: str) -> bytes:
    """The key inside a TR-31 block, after checking the block's header says what we expect of it."""
    try:
        header, key = tr31.unwrap(kbpk, block)
    except Exception as exc:  # psec raises several types for a bad MAC, length or header
        raise HsmError(KEY_STORE_ERROR, f"key block does not unwrap: {type(exc).__name__}") from None
    usage, mode, _ = KEY_TYPES[key_type]
    if header.key_usage != usage or header.algorithm != _TR31_ALGORITHM[algorithm]:
        raise HsmError(
            KEY_TYPE_NOT_ALLOWED,
            f"key block header says usage {header.key_usage}/{header.algorithm}, expected {key_type} ({usage}/{_TR31_ALGORITHM[algorithm]})",
        )
    return key


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
        _atomic_write(self.path, json.dumps(doc, indent=1).encode())

    # ------------------------------------------------------------ keys

    def add(self, key: bytes, key_type: str, algorithm: str) -> KeyInfo:
        """Store a key; a second key with the same KCV is refused (the KCV is its identity)."""
        check_type(key_type, algorithm)
        value = check_value(key, algorithm)
        if value in self.keys:
            raise HsmError(KEY_TYPE_NOT_ALLOWED, f"a key with KCV {value} is already in the key store")
        version = 1 + sum(1 for k in self.keys.values() if k.info.key_type == key_type)
        info = KeyInfo(value, key_type, algorithm, version, dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
        self.keys[value] = StoredKey(info, wrap(self._lmk, key, key_type, algorithm))
        self._versions.pop(key_type, None)
        if key_type in ("DEK", "FPK"):
            self.current[key_type] = value
        self.save()
        return info

    def info(self, kcv_value: str) -> KeyInfo:
        stored = self.keys.get(kcv_value.upper())
        if stored is None:
            raise HsmError(UNKNOWN_KEY, f"no key with KCV {kcv_value}")
        return stored.info

    def clear_key(self, kcv_value: str) -> bytes:
        """The key itself, for use inside the HSM only."""
        stored = self.keys.get(kcv_value.upper())
        if stored is None:
            raise HsmError(UNKNOWN_KEY, f"no key with KCV {kcv_value}")
        return unwrap(self._lmk, stored.block, stored.info.key_type, stored.info.algorithm)

    def versions(self, key_type: str) -> list[KeyInfo]:
        """Every key of a type, newest version first (cached: asked on every PAN look-up)."""
        found = self._versions.get(key_type)
        if found is None:
            found = sorted((k.info for k in self.keys.values() if k.info.key_type == key_type), key=lambda i: -i.version)
            self._versions[key_type] = found
        return list(found)


def _passphrase_key(passphrase: str, salt: bytes) -> bytes:
    return Scrypt(salt=salt, length=32, n=2**14, r=8, p=1).derive(passphrase.encode())


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
