"""The LMK, kept apart from the keys it protects: in an LMK file of its own or derived from a passphrase.

A key-store file holds key blocks and the LMK's check value, never the LMK: a copy of it alone
decrypts nothing. Where the LMK comes from, in this order:

- HSM_LMK_PASSPHRASE: the LMK is derived from the passphrase (scrypt, with the key store's salt);
- HSM_LMK_FILE: an LMK file (created 0600 in a 0700 folder when it does not exist yet);
- otherwise the user's LMK file, $XDG_DATA_HOME/hsm-sim/lmk.json (~/.local/share/hsm-sim/lmk.json).

An LMK file must be readable by its owner only and may not lie in the key store's folder. A key store
remembers which kind of LMK it was made with and refuses the other.
"""

from __future__ import annotations

import base64
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from hsm_sim.crypto.des import kcv
from hsm_sim.errors import KEY_STORE_ERROR, HsmError
from hsm_sim.files import private_dir, write_private

PASSPHRASE_ENV = "HSM_LMK_PASSPHRASE"
FILE_ENV = "HSM_LMK_FILE"
LMK_FORMAT = "hsm-sim LMK 1"
MIN_PASSPHRASE_CHARS = 12
SCRYPT = {"n": 2**15, "r": 8, "p": 1}


@dataclass(frozen=True, slots=True)
class Lmk:
    """The LMK (AES-256) and where it came from ("file" or "passphrase"), for the key store to record."""

    key: bytes
    source: str
    origin: str  # the file's path, or "HSM_LMK_PASSPHRASE"

    @property
    def kcv(self) -> str:
        return kcv(self.key, "AES")


def file_path() -> Path:
    """HSM_LMK_FILE, or the user's LMK file $XDG_DATA_HOME/hsm-sim/lmk.json (~/.local/share/hsm-sim/lmk.json)."""
    if os.environ.get(FILE_ENV):
        return Path(os.environ[FILE_ENV]).expanduser().resolve()
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "hsm-sim" / "lmk.json"


def source_from_env() -> str:
    """'passphrase' or 'file', refusing both at once."""
    if os.environ.get(PASSPHRASE_ENV) and os.environ.get(FILE_ENV):
        raise HsmError(KEY_STORE_ERROR, f"set {PASSPHRASE_ENV} or {FILE_ENV}, not both")
    return "passphrase" if os.environ.get(PASSPHRASE_ENV) else "file"


def from_passphrase(salt: bytes, params: dict[str, int]) -> Lmk:
    passphrase = os.environ.get(PASSPHRASE_ENV, "")
    if len(passphrase) < MIN_PASSPHRASE_CHARS:
        raise HsmError(KEY_STORE_ERROR, f"{PASSPHRASE_ENV} must be at least {MIN_PASSPHRASE_CHARS} characters")
    key = Scrypt(salt=salt, length=32, **params).derive(passphrase.encode())
    return Lmk(key, "passphrase", PASSPHRASE_ENV)


def from_file(keystore: Path, *, create: bool) -> Lmk:
    """The LMK in HSM_LMK_FILE (or the user's LMK file), created when `create` and missing."""
    path = file_path()
    if path.parent == keystore.resolve().parent:
        raise HsmError(
            KEY_STORE_ERROR,
            f"the LMK file {path} lies beside the key store {keystore}: keep it in another folder ({FILE_ENV})",
        )
    if not path.exists():
        if not create:
            raise HsmError(KEY_STORE_ERROR, f"no LMK file at {path}: the key store {keystore} cannot be opened without its LMK")
        _create(path)
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise HsmError(KEY_STORE_ERROR, f"the LMK file {path} is readable by others (mode {mode & 0o777:o}): chmod 600 {path}")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        key = base64.b64decode(doc["lmk"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise HsmError(KEY_STORE_ERROR, f"{path} is not an hsm-sim LMK file ({type(exc).__name__})") from None
    if doc.get("format") != LMK_FORMAT or len(key) != 32 or kcv(key, "AES") != doc.get("kcv"):
        raise HsmError(KEY_STORE_ERROR, f"{path} is not an intact hsm-sim LMK file")
    return Lmk(key, "file", str(path))


def _create(path: Path) -> None:
    """A new random LMK, written whole or not at all; if another process made the file first, theirs stands."""
    key = os.urandom(32)
    doc = {"format": LMK_FORMAT, "kcv": kcv(key, "AES"), "lmk": base64.b64encode(key).decode()}
    private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    write_private(tmp, json.dumps(doc).encode())
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
