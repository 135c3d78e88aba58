"""The key store: keys wrapped under the LMK as TR-31 key blocks, identified by their KCV.

The file holds one TR-31 block per key, whose header binds the key's usage, algorithm, mode of use,
exportability and origin, and of the LMK only where it comes from and its check value: the LMK itself
is kept apart (lmk.py), so the file alone decrypts nothing. It is written atomically (temporary file,
fsync, rename) with permissions 0600. Unwrapped keys stay in memory only.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from hsm_sim import keyblock, lmk
from hsm_sim.crypto.des import adjust_odd_parity, kcv
from hsm_sim.errors import KEY_STORE_ERROR, KEY_TYPE_NOT_ALLOWED, UNKNOWN_KEY, HsmError
from hsm_sim.files import write_private

FILE_FORMAT = "hsm-sim key store 2"
OLD_FORMAT = "hsm-sim key store 1"  # kept its LMK inside; `hsm-sim lmk migrate` moves it
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
    """Keys by KCV, wrapped under the LMK; persisted to `path` unless ephemeral. The LMK is never in the file."""

    def __init__(self, lmk_key: bytes, path: Path | None, lmk_record: dict[str, Any] | None = None) -> None:
        self._lmk = lmk_key
        self.path = path
        self._lmk_record = lmk_record or {}  # where the LMK comes from and its check value, as the file keeps it
        self.keys: dict[str, StoredKey] = {}
        self.current: dict[str, str] = {}  # "DEK"/"FPK" -> KCV of the version new data uses
        self._versions: dict[str, list[KeyInfo]] = {}

    @property
    def lmk_kcv(self) -> str:
        return kcv(self._lmk, LMK_ALGORITHM)

    @property
    def lmk_source(self) -> str:
        """"file" or "passphrase"; "memory" for an ephemeral store."""
        return str(self._lmk_record.get("source", "memory"))

    # ------------------------------------------------------------ opening

    @classmethod
    def ephemeral(cls) -> "KeyStore":
        return cls(os.urandom(32), None)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> "KeyStore":
        """Read the key-store file with its LMK (see lmk.py), or create it (0600) when it does not exist."""
        path = Path(path)
        if not path.exists():
            store = cls(*_new_lmk(path))
            store.save()
            return store
        doc = _read(path)
        store = cls(_lmk_of(path, doc["lmk"]).key, path, doc["lmk"])
        for item in doc.get("keys", []):
            info = KeyInfo(**item["info"])
            store.keys[info.kcv] = StoredKey(info, item["block"])
        store.current = dict(doc.get("current", {}))
        return store

    def save(self) -> None:
        if self.path is None:
            return
        doc = {
            "format": FILE_FORMAT,
            "lmk": self._lmk_record,
            "keys": [{"info": asdict(k.info), "block": k.block} for k in self.keys.values()],
            "current": self.current,
        }
        write_private(self.path, json.dumps(doc, indent=1).encode())

    @classmethod
    def migrate(cls, path: str | os.PathLike[str]) -> "KeyStore":
        """Move a key store that keeps its LMK inside (format 1) under the LMK of lmk.py: every key is
        re-wrapped, keeps its KCV, version and origin, and the old LMK is dropped from the file."""
        path = Path(path)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise HsmError(KEY_STORE_ERROR, f"key store {path} cannot be read: {type(exc).__name__}") from None
        if doc.get("format") != OLD_FORMAT:
            raise HsmError(KEY_STORE_ERROR, f"{path} is not a key store that keeps its LMK inside; nothing to migrate")
        old = cls(_old_lmk(path, doc["lmk"]), None)
        new = cls(*_new_lmk(path))
        for item in doc.get("keys", []):
            old.keys[item["info"]["kcv"]] = StoredKey(KeyInfo(**item["info"]), item["block"])
        for value in old.keys:
            key, info = old.clear_key(value)
            header = keyblock.header_for("D", info.key_type, info.algorithm, info.mode_of_use, info.exportability, origin=info.origin)
            new.keys[value] = StoredKey(info, keyblock.wrap(new._lmk, key, header))
        new.current = dict(doc.get("current", {}))
        new.path = path
        new.save()
        return new

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


def _read(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise HsmError(KEY_STORE_ERROR, f"key store {path} cannot be read: {type(exc).__name__}") from None
    if doc.get("format") == OLD_FORMAT:
        raise HsmError(
            KEY_STORE_ERROR,
            f"{path} keeps its LMK inside it (an older key store): `hsm-sim lmk migrate {path}` moves its keys under an LMK kept apart",
        )
    if doc.get("format") != FILE_FORMAT or not isinstance(doc.get("lmk"), dict):
        raise HsmError(KEY_STORE_ERROR, f"{path} is not an hsm-sim key store")
    return doc


def _new_lmk(path: Path) -> tuple[bytes, Path, dict[str, Any]]:
    """The LMK a new key store at `path` gets from the environment, and what the file records of it."""
    if lmk.source_from_env() == "passphrase":
        salt = os.urandom(16)
        the_lmk = lmk.from_passphrase(salt, lmk.SCRYPT)
        record: dict[str, Any] = {"source": "passphrase", "salt": base64.b64encode(salt).decode(), "scrypt": lmk.SCRYPT}
    else:
        the_lmk = lmk.from_file(path, create=True)
        record = {"source": "file"}
    return the_lmk.key, path, {**record, "kcv": the_lmk.kcv}


def _lmk_of(path: Path, record: dict[str, Any]) -> lmk.Lmk:
    """The LMK of an existing key store, from the source it was made with; refused if it is not the one."""
    wanted = lmk.source_from_env()
    if record.get("source") == "passphrase":
        if wanted != "passphrase":
            raise HsmError(KEY_STORE_ERROR, f"key store {path} is sealed under a passphrase: set {lmk.PASSPHRASE_ENV}")
        the_lmk = lmk.from_passphrase(base64.b64decode(record["salt"]), dict(record["scrypt"]))
        if the_lmk.kcv != record.get("kcv"):
            raise HsmError(KEY_STORE_ERROR, f"wrong {lmk.PASSPHRASE_ENV} for key store {path}")
        return the_lmk
    if wanted == "passphrase":
        raise HsmError(
            KEY_STORE_ERROR, f"key store {path} keeps its LMK in a file, not under a passphrase: unset {lmk.PASSPHRASE_ENV}"
        )
    the_lmk = lmk.from_file(path, create=False)
    if the_lmk.kcv != record.get("kcv"):
        raise HsmError(
            KEY_STORE_ERROR,
            f"the LMK in {the_lmk.origin} (KCV {the_lmk.kcv}) is not the LMK of key store {path} (KCV {record.get('kcv')}): "
            f"set {lmk.FILE_ENV} to the key store's LMK file",
        )
    return the_lmk


def _old_lmk(path: Path, record: dict[str, Any]) -> bytes:
    """The LMK a format-1 key store kept inside, opened with HSM_LMK_PASSPHRASE when it was sealed."""
    raw = base64.b64decode(record["value"])
    if not record.get("sealed"):
        return raw
    passphrase = os.environ.get(lmk.PASSPHRASE_ENV)
    if not passphrase:
        raise HsmError(KEY_STORE_ERROR, f"key store {path} is sealed: set {lmk.PASSPHRASE_ENV} to migrate it")
    key = Scrypt(salt=base64.b64decode(record["salt"]), length=32, n=2**14, r=8, p=1).derive(passphrase.encode())
    try:
        return AESGCM(key).decrypt(raw[:12], raw[12:], b"hsm-sim lmk")
    except InvalidTag:
        raise HsmError(KEY_STORE_ERROR, f"wrong {lmk.PASSPHRASE_ENV} for key store {path}") from None
