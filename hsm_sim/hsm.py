"""The HSM: key management and every payment-security command, with access control and an audit log.

Each public coroutine is one host command (its code is in COMMANDS). Keys are named by KCV and used
only inside this object; a command checks that each key's type may serve it before using the key.
Wrong PINs, CVVs and cryptograms are answers (False), not errors; malformed input is an HsmError with
a specific status.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import datetime as dt
import functools
import hmac
import json
import logging
import os
import threading
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hsm_sim import errors as st
from hsm_sim.crypto import cvv as cvv_alg
from hsm_sim.crypto import dukpt, dukpt_aes, emv, mac, pin, pinblock, tokens
from hsm_sim.crypto.des import tdes_ecb_decrypt, tdes_ecb_encrypt
from hsm_sim.errors import HsmError
from hsm_sim.keystore import KeyInfo, KeyStore, check_type, key_length, new_key_bytes, unwrap, wrap
from hsm_sim.crypto.des import kcv as compute_kcv

log = logging.getLogger("hsm_sim.audit")
P = ParamSpec("P")
T = TypeVar("T")

AUDIT_MEMORY_LINES = 10_000
TRANSACTION_KEYS_KEPT = 4096
PIN_KEY_TYPES = ("TPK", "ZPK")


@dataclass(frozen=True, slots=True)
class TokenizedPan:
    """A PAN as the vault keeps it: keyed fingerprint for look-up and the sealed PAN, with key versions."""

    fingerprint: str
    fingerprint_version: int
    sealed_pan: str
    data_key_version: int


# command code -> method name; answers use the code with its second character advanced (A0 -> A1).
COMMANDS: dict[str, str] = {
    "A0": "generate_key",
    "A6": "import_key",
    "A8": "export_key",
    "GC": "form_key_from_components",
    "KI": "key_info",
    "KL": "list_keys",
    "DG": "generate_pin_verification",
    "CA": "translate_pin",
    "DA": "verify_pin",
    "CW": "generate_cvv",
    "CY": "verify_cvv",
    "GI": "inject_ipek",
    "GK": "inject_aes_initial_key",
    "KQ": "verify_arqc",
    "KW": "icc_master_key_for_personalization",
    "KY": "personalization_data",
    "M6": "generate_mac",
    "M8": "verify_mac",
    "T0": "tokenize_pan",
    "T2": "fingerprint_pan",
    "T4": "reveal_pan",
    "T6": "reseal_pan",
    "T8": "rotate_tokenization_keys",
    "NC": "diagnostics",
    # Terminal message MACs under the DUKPT key of the message's own KSN (X9.24 MAC request/response keys).
    "MC": "generate_dukpt_mac",
    "ME": "verify_dukpt_mac",
}
CODE_OF = {name: code for code, name in COMMANDS.items()}


def answer_code(command: str) -> str:
    return command[0] + chr(ord(command[1]) + 1)


def _hex(value: str, what: str, *, length: int | None = None) -> bytes:
    try:
        raw = bytes.fromhex(value)
    except (ValueError, TypeError):
        raise HsmError(st.INVALID_INPUT, f"{what} is not hex") from None
    if length is not None and len(raw) != length:
        raise HsmError(st.INVALID_INPUT, f"{what} must be {length} bytes, got {len(raw)}")
    return raw


def _digits(value: str, what: str, lo: int, hi: int) -> str:
    if not isinstance(value, str) or not value.isdigit() or not lo <= len(value) <= hi:
        raise HsmError(st.INVALID_INPUT, f"{what} must be {lo} to {hi} digits")
    return value


class AuditLog:
    """One JSON line per command: time, command, KCVs, status. Never a key, PIN, PAN or CVV.

    Lines are buffered and flushed within FLUSH_INTERVAL_S (and at close): a system call per command
    would cost more than the command itself.
    """

    FLUSH_INTERVAL_S = 0.05

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.memory: collections.deque[str] = collections.deque(maxlen=AUDIT_MEMORY_LINES)
        self._fh = open(path, "a", encoding="utf-8") if path else None
        if path:
            os.chmod(path, 0o600)
        self._lock = threading.Lock()
        self._flush_pending = False

    def flush(self) -> None:
        self._flush_pending = False
        if self._fh is not None:
            with self._lock:
                self._fh.flush()

    def _schedule_flush(self) -> None:
        if self._flush_pending:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._flush_pending = True
        loop.call_later(self.FLUSH_INTERVAL_S, self.flush)

    def write(self, command: str, status: str, kcvs: tuple[str, ...], **extra: Any) -> None:
        now = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
        if extra or not all(k.isalnum() and k.isascii() for k in kcvs):
            record = {"t": now, "cmd": command, "status": status, **({"keys": kcvs} if kcvs else {}), **extra}
            line = json.dumps(record, separators=(",", ":"))
        else:
            # Command names and statuses are ours and KCVs were just checked to be alphanumeric ASCII: no
            # escaping needed on the hot path.
            keys = ',"keys":[' + ",".join(f'"{k}"' for k in kcvs) + "]" if kcvs else ""
            line = f'{{"t":"{now}","cmd":"{command}","status":"{status}"{keys}}}'
        if self._fh is not None:
            with self._lock:
                self._fh.write(line + "\n")
            self._schedule_flush()
        else:
            self.memory.append(line)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            self._fh.close()
            self._fh = None


def command(*key_params: str) -> Callable[[Callable[..., T]], Callable[..., Awaitable[T]]]:
    """Turn a synchronous operation into an audited host command; `key_params` name the KCV arguments."""

    def decorate(fn: Callable[..., T]) -> Callable[..., Awaitable[T]]:
        name = fn.__name__

        @functools.wraps(fn)
        async def run(self: "Hsm", *args: Any, **kwargs: Any) -> T:
            return self._execute(fn, name, key_params, args, kwargs)

        run.sync = fn  # type: ignore[attr-defined]
        return run

    return decorate


class Hsm:
    """A software HSM in this process. Open with `Hsm.open(path)` or `Hsm.ephemeral()`."""

    def __init__(self, store: KeyStore, audit: AuditLog) -> None:
        self.store = store
        self.audit = audit
        self._keys: dict[str, bytes] = {}
        self._ipek_cache: dict[tuple[str, bytes], bytes] = {}
        # Transaction keys of the last DUKPT messages (bounded, oldest dropped first): a request's MAC and
        # its answer's MAC use the same one.
        self._transaction_keys: dict[tuple[str, bytes], bytes] = {}

    @classmethod
    def ephemeral(cls) -> "Hsm":
        """An HSM whose LMK and keys live only in memory (tests)."""
        return cls(KeyStore.ephemeral(), AuditLog(None))

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, audit_path: str | os.PathLike[str] | None = None) -> "Hsm":
        """An HSM on a key-store file (created 0600 on first start); audit log beside it by default."""
        path = Path(path)
        store = KeyStore.open(path)
        return cls(store, AuditLog(Path(audit_path) if audit_path else path.with_name(path.name + ".audit.jsonl")))

    async def close(self) -> None:
        self.audit.close()
        self._keys.clear()

    async def __aenter__(self) -> "Hsm":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------ plumbing

    def _execute(self, fn: Callable[..., T], name: str, key_params: tuple[str, ...], args: tuple, kwargs: dict) -> T:
        kcvs = tuple(str(kwargs.get(p) if p in kwargs else _positional(fn, p, args)) for p in key_params)
        kcvs = tuple(k for k in kcvs if k and k != "None")
        try:
            result = fn(self, *args, **kwargs)
        except HsmError as exc:
            self.audit.write(name, exc.code, kcvs)
            raise
        except pinblock.PinBlockError as exc:
            code = st.INVALID_PIN if exc.reason in ("pin_length", "pin_digits") else st.PIN_BLOCK_ERROR
            self.audit.write(name, code, kcvs)
            raise HsmError(code, f"{name}: {exc}") from None
        except (ValueError, TypeError, KeyError) as exc:
            self.audit.write(name, st.INVALID_INPUT, kcvs)
            raise HsmError(st.INVALID_INPUT, f"{name}: {_safe(exc)}") from None
        status = st.VERIFICATION_FAILED if result is False or (isinstance(result, tuple) and result and result[0] is False) else st.OK
        self.audit.write(name, status, kcvs)
        return result

    def _key(self, kcv: str, allowed: tuple[str, ...], command_name: str, *, algorithm: str | None = None) -> tuple[bytes, KeyInfo]:
        info = self.store.info(kcv)
        if info.key_type not in allowed:
            raise HsmError(
                st.KEY_TYPE_NOT_ALLOWED,
                f"{command_name}: key {info.kcv} is a {info.key_type}; this command takes {' or '.join(allowed)}",
            )
        if algorithm is not None and info.algorithm != algorithm:
            raise HsmError(st.KEY_ALGORITHM_MISMATCH, f"{command_name}: key {info.kcv} is {info.algorithm}, expected {algorithm}")
        key = self._keys.get(info.kcv)
        if key is None:
            key = self.store.clear_key(info.kcv)
            self._keys[info.kcv] = key
        return key, info

    # ------------------------------------------------------------ key management

    @command()
    def generate_key(self, key_type: str, algorithm: str = "TDES") -> KeyInfo:
        """A new random key of this type, stored under the LMK."""
        if key_type == "FPK":
            algorithm = "HMAC"
        check_type(key_type, algorithm)
        return self.store.add(new_key_bytes(algorithm), key_type, algorithm)

    @command("zmk")
    def import_key(self, key_type: str, key_block: str, zmk: str) -> KeyInfo:
        """A key received as a TR-31 block under a ZMK."""
        kbpk, info = self._key(zmk, ("ZMK", "KEK"), "import_key", algorithm="AES")
        algorithm = {"T": "TDES", "A": "AES", "H": "HMAC"}.get(key_block[5:6] if len(key_block) > 6 else "", "")
        if not algorithm:
            raise HsmError(st.INVALID_INPUT, "import_key: key block header has no known algorithm")
        check_type(key_type, algorithm)
        key = unwrap(kbpk, key_block, key_type, algorithm)
        return self.store.add(key, key_type, algorithm)

    @command("kcv", "zmk")
    def export_key(self, kcv: str, zmk: str) -> str:
        """The key as a TR-31 block under a ZMK (AES); never in clear."""
        kbpk, _ = self._key(zmk, ("ZMK", "KEK"), "export_key", algorithm="AES")
        info = self.store.info(kcv)
        if info.key_type in ("ZMK", "KEK") and info.kcv == self.store.info(zmk).kcv:
            raise HsmError(st.EXPORT_REFUSED, "export_key: a key cannot be exported under itself")
        key, _ = self._key(kcv, tuple(KEY_TYPES_ALL), "export_key")
        return wrap(kbpk, key, info.key_type, info.algorithm)

    @command()
    def form_key_from_components(self, key_type: str, components: list[str], algorithm: str = "TDES") -> KeyInfo:
        """Key ceremony: the key is the XOR of clear components held by different custodians."""
        if len(components) < 2:
            raise HsmError(st.INVALID_INPUT, "form_key_from_components: at least two components are needed")
        length = key_length("HMAC" if key_type == "FPK" else algorithm)
        parts = [_hex(c, "component", length=length) for c in components]
        key = bytes(length)
        for part in parts:
            key = bytes(a ^ b for a, b in zip(key, part))
        return self.store.add(key, key_type, "HMAC" if key_type == "FPK" else algorithm)

    @command("kcv")
    def key_info(self, kcv: str) -> KeyInfo:
        return self.store.info(kcv)

    @command()
    def list_keys(self) -> list[KeyInfo]:
        return [k.info for k in self.store.keys.values()]

    # ------------------------------------------------------------ PIN

    @command("pvk")
    def generate_pin_verification(
        self,
        pin_value: str,
        pan: str,
        pvk: str,
        method: str = "pvv",
        *,
        pvki: int = 1,
        validation_data: str | None = None,
        dectab: str = pin.DEFAULT_DECIMALIZATION,
    ) -> str:
        """PVV or IBM 3624 offset of a PIN being set; the PIN itself goes no further."""
        key, _ = self._key(pvk, ("PVK",), "generate_pin_verification", algorithm="TDES")
        if not isinstance(pin_value, str) or not pin_value.isdigit() or not 4 <= len(pin_value) <= 12:
            raise HsmError(st.INVALID_PIN, "generate_pin_verification: PIN must be 4 to 12 digits")
        _digits(pan, "PAN", 12, 19)
        if method == "pvv":
            if len(pin_value) != 4:
                raise HsmError(st.INVALID_PIN, "generate_pin_verification: Visa PVV takes 4-digit PINs")
            return pin.visa_pvv(key, pan, pvki, pin_value)
        if method == "ibm3624":
            if validation_data is None:
                raise HsmError(st.INVALID_INPUT, "generate_pin_verification: IBM 3624 needs validation data")
            return pin.ibm3624_offset(key, pin_value, validation_data, dectab)
        raise HsmError(st.INVALID_INPUT, f"generate_pin_verification: unknown method {method!r}")

    def _pin_key(self, kcv: str, ksn: str | None, command_name: str) -> tuple[bytes, str]:
        """The key a PIN block is encrypted under: a TPK/ZPK, or the DUKPT PIN key of a BDK and KSN."""
        key, info = self._key(kcv, PIN_KEY_TYPES + ("BDK",), command_name)
        if info.key_type != "BDK":
            return key, info.algorithm
        if ksn is None:
            raise HsmError(st.INVALID_INPUT, f"{command_name}: a BDK needs the KSN of the PIN block")
        if info.algorithm == "AES":
            raw_ksn = _hex(ksn, "KSN", length=12)
            initial = self._ipek_cache.get((info.kcv, raw_ksn[:8]))
            if initial is None:
                initial = dukpt_aes.derive_initial_key(key, raw_ksn[:8], _aes_key_type(key))
                self._remember_ipek((info.kcv, raw_ksn[:8]), initial)
            return dukpt_aes.derive_working_key(initial, raw_ksn, dukpt_aes.KeyUsage.PIN_ENCRYPTION), "AES"
        raw_ksn = _hex(ksn, "KSN", length=10)
        base = (int.from_bytes(raw_ksn, "big") & ~dukpt.COUNTER_MASK).to_bytes(10, "big")
        ipek = self._ipek_cache.get((info.kcv, base))
        if ipek is None:
            ipek = dukpt.derive_ipek(key, raw_ksn)
            self._remember_ipek((info.kcv, base), ipek)
        return dukpt.pin_encryption_key(dukpt.derive_transaction_key(ipek, raw_ksn)), "TDES"

    def _remember_ipek(self, key: tuple[str, bytes], value: bytes) -> None:
        """Initial keys per terminal, kept in HSM memory (bounded) so each PIN costs one derivation."""
        if len(self._ipek_cache) > 10_000:
            self._ipek_cache.clear()
        self._ipek_cache[key] = value

    def _clear_pin(self, pin_block: str, pan: str, pin_key: str, pin_format: int, ksn: str | None, command_name: str) -> str:
        key, algorithm = self._pin_key(pin_key, ksn, command_name)
        # A DUKPT key serves one transaction: keep it out of the key-schedule cache.
        cache = ksn is None
        _digits(pan, "PAN", 12, 19)
        if pin_format == 4:
            if algorithm != "AES":
                raise HsmError(st.KEY_ALGORITHM_MISMATCH, f"{command_name}: format 4 PIN blocks need an AES key")
            return pinblock.decipher_pin_block_iso4(key, _hex(pin_block, "PIN block", length=16), pan, cache=cache)
        if algorithm != "TDES":
            raise HsmError(st.KEY_ALGORITHM_MISMATCH, f"{command_name}: format {pin_format} PIN blocks need a TDES key")
        clear = tdes_ecb_decrypt(key, _hex(pin_block, "PIN block", length=8), cache=cache)
        return pinblock.decode_pin_block(clear, pan, pin_format)

    @command("source_key", "dest_key")
    def translate_pin(
        self, pin_block: str, pan: str, source_key: str, source_format: int, dest_key: str, dest_format: int, *, ksn: str | None = None
    ) -> str:
        """Re-encrypt a PIN block from a terminal key (or DUKPT) to a zone key, possibly changing format."""
        clear_pin = self._clear_pin(pin_block, pan, source_key, source_format, ksn, "translate_pin")
        key, info = self._key(dest_key, PIN_KEY_TYPES, "translate_pin")
        if dest_format == 4:
            if info.algorithm != "AES":
                raise HsmError(st.KEY_ALGORITHM_MISMATCH, "translate_pin: format 4 needs an AES destination key")
            return pinblock.encipher_pin_block_iso4(key, clear_pin, pan).hex().upper()
        if info.algorithm != "TDES":
            raise HsmError(st.KEY_ALGORITHM_MISMATCH, f"translate_pin: format {dest_format} needs a TDES destination key")
        return tdes_ecb_encrypt(key, pinblock.encode_pin_block(clear_pin, pan, dest_format)).hex().upper()

    @command("pin_key", "pvk")
    def verify_pin(
        self,
        pin_block: str,
        pan: str,
        pin_key: str,
        pin_format: int,
        pvk: str,
        *,
        method: str,
        verification_value: str,
        ksn: str | None = None,
        pvki: int = 1,
        validation_data: str | None = None,
        dectab: str = pin.DEFAULT_DECIMALIZATION,
    ) -> bool:
        """True when the PIN in the block matches the stored PVV or IBM 3624 offset."""
        clear_pin = self._clear_pin(pin_block, pan, pin_key, pin_format, ksn, "verify_pin")
        key, _ = self._key(pvk, ("PVK",), "verify_pin", algorithm="TDES")
        if method == "pvv":
            if len(clear_pin) != 4:
                return False
            return hmac.compare_digest(pin.visa_pvv(key, pan, pvki, clear_pin), verification_value)
        if method == "ibm3624":
            if validation_data is None:
                raise HsmError(st.INVALID_INPUT, "verify_pin: IBM 3624 needs validation data")
            if len(verification_value) != len(clear_pin):
                return False
            return pin.ibm3624_verify(key, clear_pin, verification_value, validation_data, dectab)
        raise HsmError(st.INVALID_INPUT, f"verify_pin: unknown method {method!r}")

    # ------------------------------------------------------------ card verification

    def _cvv(self, cvk: str, pan: str, expiry_yymm: str, service_code: str, command_name: str) -> str:
        key, _ = self._key(cvk, ("CVK",), command_name, algorithm="TDES")
        return cvv_alg.generate_cvv(key, pan, expiry_yymm, service_code)

    @command("cvk")
    def generate_cvv(self, cvk: str, pan: str, expiry_yymm: str, service_code: str) -> str:
        """CVV/CVC (service code of the track), CVV2 (000) or iCVV (999)."""
        return self._cvv(cvk, pan, expiry_yymm, service_code, "generate_cvv")

    @command("cvk")
    def verify_cvv(self, cvk: str, pan: str, expiry_yymm: str, service_code: str, cvv: str) -> bool:
        if not isinstance(cvv, str) or len(cvv) != 3 or not cvv.isdigit():
            return False
        return hmac.compare_digest(self._cvv(cvk, pan, expiry_yymm, service_code, "verify_cvv"), cvv)

    # ------------------------------------------------------------ DUKPT

    @command("bdk")
    def inject_ipek(self, bdk: str, ksn: str) -> str:
        """The IPEK for a terminal's initial KSN, for the key-loading device that injects it (audited)."""
        key, _ = self._key(bdk, ("BDK",), "inject_ipek", algorithm="TDES")
        return dukpt.derive_ipek(key, _hex(ksn, "KSN", length=10)).hex().upper()

    @command("bdk")
    def inject_aes_initial_key(self, bdk: str, initial_key_id: str) -> str:
        """AES DUKPT (X9.24-3) initial key of a terminal's 8-byte initial key ID, for its key-loading device."""
        key, _ = self._key(bdk, ("BDK",), "inject_aes_initial_key", algorithm="AES")
        initial_key_id_raw = _hex(initial_key_id, "initial key ID", length=8)
        return dukpt_aes.derive_initial_key(key, initial_key_id_raw, _aes_key_type(key)).hex().upper()

    # ------------------------------------------------------------ EMV

    @command("imk")
    def verify_arqc(
        self,
        imk: str,
        pan: str,
        psn: str,
        atc: str,
        arqc: str,
        transaction_data: str,
        *,
        cvn: int,
        unpredictable_number: str | None = None,
        arc: str | None = None,
        csu: str | None = None,
    ) -> tuple[bool, str | None]:
        """(ARQC verifies, ARPC): method 1 over `arc`, or method 2 over `csu`; no ARPC for a bad ARQC."""
        key, _ = self._key(imk, ("IMK-AC",), "verify_arqc", algorithm="TDES")
        icc_mk = emv.derive_icc_master_key(key, pan, psn)
        un = _hex(unpredictable_number, "unpredictable number", length=4) if unpredictable_number else None
        session = emv.derive_session_key(icc_mk, _hex(atc, "ATC", length=2), cvn=cvn, unpredictable_number=un)
        arqc_raw = _hex(arqc, "ARQC", length=8)
        expected = emv.generate_arqc(session, _hex(transaction_data, "transaction data"), cvn=cvn)
        if not hmac.compare_digest(expected, arqc_raw):
            return False, None
        response_key = emv.arpc_key(icc_mk, session, cvn=cvn)
        if arc is not None:
            return True, emv.generate_arpc_method1(response_key, arqc_raw, _hex(arc, "ARC", length=2)).hex().upper()
        if csu is not None:
            return True, emv.generate_arpc_method2(response_key, arqc_raw, _hex(csu, "CSU", length=4)).hex().upper()
        return True, None

    @command("imk", "transport_key")
    def icc_master_key_for_personalization(self, imk: str, pan: str, psn: str, transport_key: str) -> str:
        """The card's ICC master key, encrypted (TDES ECB) under a transport key for the card bureau."""
        key, _ = self._key(imk, ("IMK-AC",), "icc_master_key_for_personalization", algorithm="TDES")
        kek, info = self._key(transport_key, ("KEK", "ZMK"), "icc_master_key_for_personalization")
        icc_mk = emv.derive_icc_master_key(key, pan, psn)
        if info.algorithm == "AES":
            from hsm_sim.crypto.des import aes_ecb_encrypt

            return aes_ecb_encrypt(kek, icc_mk).hex().upper()
        return tdes_ecb_encrypt(kek, icc_mk).hex().upper()

    @command("imk", "cvk", "transport_key")
    def personalization_data(
        self,
        imk: str,
        cvk: str,
        sealed_pan: str,
        data_key_version: int,
        psn: str,
        expiry_yymm: str,
        transport_key: str,
    ) -> dict[str, str]:
        """What a card bureau needs to personalize a chip, sealed under the bureau's AES transport key.

        The PAN is opened from the vault inside the HSM and leaves it only sealed (AES-GCM) under the
        transport key, together with the chip's iCVV, and so does the card's ICC master key. Values are
        base64 of nonce (12) || ciphertext || tag; associated data b"bureau:card" for the JSON
        {"pan", "icvv"} and b"bureau:icc_mk:" + PSN for the key.
        """
        key, _ = self._key(imk, ("IMK-AC",), "personalization_data", algorithm="TDES")
        kek, _ = self._key(transport_key, ("KEK", "ZMK"), "personalization_data", algorithm="AES")
        pan = self._open(sealed_pan, data_key_version, "personalization_data")
        icvv = self._cvv(cvk, pan, expiry_yymm, "999", "personalization_data")
        icc_mk = emv.derive_icc_master_key(key, pan, psn)
        gcm = AESGCM(kek)
        n1, n2 = os.urandom(12), os.urandom(12)
        card = json.dumps({"pan": pan, "icvv": icvv}).encode()
        return {
            "card": base64.b64encode(n1 + gcm.encrypt(n1, card, b"bureau:card")).decode(),
            "icc_mk": base64.b64encode(n2 + gcm.encrypt(n2, icc_mk, b"bureau:icc_mk:" + psn.encode())).decode(),
            "transport_key": self.store.info(transport_key).kcv,
        }

    # ------------------------------------------------------------ MAC

    def _mac(self, key_kcv: str, data: bytes, algorithm: str, command_name: str) -> bytes:
        key, info = self._key(key_kcv, ("TAK", "ZAK"), command_name)
        if algorithm == "retail":
            if info.algorithm != "TDES":
                raise HsmError(st.KEY_ALGORITHM_MISMATCH, f"{command_name}: retail MAC needs a TDES key")
            return mac.retail_mac(key, bytes(data))
        if algorithm == "cmac":
            if info.algorithm != "AES":
                raise HsmError(st.KEY_ALGORITHM_MISMATCH, f"{command_name}: CMAC needs an AES key")
            return mac.aes_cmac(key, bytes(data))
        raise HsmError(st.INVALID_INPUT, f"{command_name}: unknown MAC algorithm {algorithm!r}")

    @command("key")
    def generate_mac(self, key: str, data: bytes, *, algorithm: str = "retail") -> str:
        return self._mac(key, data, algorithm, "generate_mac").hex().upper()

    @command("key")
    def verify_mac(self, key: str, data: bytes, mac_value: str, *, algorithm: str = "retail") -> bool:
        return hmac.compare_digest(self._mac(key, data, algorithm, "verify_mac").hex().upper(), mac_value.upper())

    # ------------------------------------------------------------ DUKPT MACs of terminal messages

    def _dukpt_mac(self, bdk: str, ksn: str, data: bytes, direction: str, command_name: str) -> bytes:
        """The MAC of one terminal message under its KSN's DUKPT MAC key, request or response.

        TDES DUKPT (10-byte KSN): ISO 9797-1 algorithm 3 under the X9.24-1 MAC request or response variant
        of the transaction key. AES DUKPT (12-byte KSN): AES-CMAC (8 bytes) under the X9.24-3 working key
        for MAC generation (request) or verification (response).
        """
        if direction not in ("request", "response"):
            raise HsmError(st.INVALID_INPUT, f"{command_name}: direction must be 'request' or 'response'")
        key, info = self._key(bdk, ("BDK",), command_name)
        if info.algorithm == "AES":
            raw_ksn = _hex(ksn, "KSN", length=12)
            initial = self._ipek_cache.get((info.kcv, raw_ksn[:8]))
            if initial is None:
                initial = dukpt_aes.derive_initial_key(key, raw_ksn[:8], _aes_key_type(key))
                self._remember_ipek((info.kcv, raw_ksn[:8]), initial)
            usage = dukpt_aes.KeyUsage.MAC_GENERATION if direction == "request" else dukpt_aes.KeyUsage.MAC_VERIFICATION
            return mac.aes_cmac(dukpt_aes.derive_working_key(initial, raw_ksn, usage), bytes(data))
        raw_ksn = _hex(ksn, "KSN", length=10)
        # The request's MAC, its PIN block and the answer's MAC share one transaction key: derived once.
        transaction_key = self._transaction_keys.get((info.kcv, raw_ksn))
        if transaction_key is None:
            base = (int.from_bytes(raw_ksn, "big") & ~dukpt.COUNTER_MASK).to_bytes(10, "big")
            ipek = self._ipek_cache.get((info.kcv, base))
            if ipek is None:
                ipek = dukpt.derive_ipek(key, raw_ksn)
                self._remember_ipek((info.kcv, base), ipek)
            transaction_key = dukpt.derive_transaction_key(ipek, raw_ksn)
            if len(self._transaction_keys) >= TRANSACTION_KEYS_KEPT:
                self._transaction_keys.pop(next(iter(self._transaction_keys)))
            self._transaction_keys[(info.kcv, raw_ksn)] = transaction_key
        variant = dukpt.mac_request_key if direction == "request" else dukpt.mac_response_key
        return mac.retail_mac(variant(transaction_key), bytes(data))

    @command("bdk")
    def generate_dukpt_mac(self, bdk: str, ksn: str, data: bytes, *, direction: str = "response") -> str:
        """8-byte MAC (hex) of a terminal message under the DUKPT key of `ksn` (usually the answer's)."""
        return self._dukpt_mac(bdk, ksn, data, direction, "generate_dukpt_mac").hex().upper()

    @command("bdk")
    def verify_dukpt_mac(self, bdk: str, ksn: str, data: bytes, mac_value: str, *, direction: str = "request") -> bool:
        """True when `mac_value` (hex) is the MAC of a terminal message under the DUKPT key of `ksn`."""
        expected = self._dukpt_mac(bdk, ksn, data, direction, "verify_dukpt_mac").hex().upper()
        return hmac.compare_digest(expected, str(mac_value).upper())

    # ------------------------------------------------------------ tokenization

    def _current(self, key_type: str, command_name: str) -> tuple[bytes, KeyInfo]:
        kcv = self.store.current.get(key_type)
        if kcv is None:
            raise HsmError(st.UNKNOWN_KEY, f"{command_name}: no {key_type} has been generated")
        return self._key(kcv, (key_type,), command_name)

    def _dek_version(self, version: int, command_name: str) -> bytes:
        for info in self.store.versions("DEK"):
            if info.version == version:
                return self._key(info.kcv, ("DEK",), command_name)[0]
        raise HsmError(st.UNKNOWN_KEY, f"{command_name}: no data key version {version}")

    def _tokenize(self, pan: str, command_name: str) -> TokenizedPan:
        fpk, fpk_info = self._current("FPK", command_name)
        dek, dek_info = self._current("DEK", command_name)
        sealed = tokens.seal_pan(dek, pan, aad=f"pan:v{dek_info.version}".encode())
        return TokenizedPan(
            fingerprint=tokens.pan_fingerprint(fpk, pan),
            fingerprint_version=fpk_info.version,
            sealed_pan=base64.b64encode(sealed).decode(),
            data_key_version=dek_info.version,
        )

    @command()
    def tokenize_pan(self, pan: str) -> TokenizedPan:
        """Keyed fingerprint and sealed PAN under the current key versions: one call at issuance."""
        return self._tokenize(pan, "tokenize_pan")

    @command()
    def fingerprint_pan(self, pan: str) -> list[tuple[int, str]]:
        """The PAN's fingerprint under every fingerprint-key version, newest first (one look-up query)."""
        out = []
        for info in self.store.versions("FPK"):
            key, _ = self._key(info.kcv, ("FPK",), "fingerprint_pan")
            out.append((info.version, tokens.pan_fingerprint(key, pan)))
        if not out:
            raise HsmError(st.UNKNOWN_KEY, "fingerprint_pan: no FPK has been generated")
        return out

    def _open(self, sealed_pan: str, data_key_version: int, command_name: str) -> str:
        dek = self._dek_version(int(data_key_version), command_name)
        try:
            raw = base64.b64decode(sealed_pan, validate=True)
        except ValueError:
            raise HsmError(st.INVALID_INPUT, f"{command_name}: sealed PAN is not base64") from None
        return tokens.open_pan(dek, raw, aad=f"pan:v{data_key_version}".encode())

    @command()
    def reveal_pan(self, sealed_pan: str, data_key_version: int, *, operator: str, reason: str) -> str:
        """Detokenize for an operator; the audit line records who and why."""
        if not operator.strip() or not reason.strip():
            raise HsmError(st.INVALID_INPUT, "reveal_pan: operator and reason are required")
        pan = self._open(sealed_pan, data_key_version, "reveal_pan")
        self.audit.write("reveal_pan.by", st.OK, (), operator=operator[:64], reason=reason[:200])
        return pan

    @command()
    def reseal_pan(self, sealed_pan: str, data_key_version: int) -> TokenizedPan:
        """Re-encrypt and re-fingerprint under the current versions; the PAN never leaves the HSM."""
        return self._tokenize(self._open(sealed_pan, data_key_version, "reseal_pan"), "reseal_pan")

    @command()
    def rotate_tokenization_keys(self) -> tuple[int, int]:
        """New DEK and FPK versions become current; older versions stay for opening and look-up."""
        dek = self.store.add(new_key_bytes("AES"), "DEK", "AES")
        fpk = self.store.add(new_key_bytes("HMAC"), "FPK", "HMAC")
        return dek.version, fpk.version

    @command()
    def diagnostics(self) -> dict[str, Any]:
        """LMK check value and key count: what an operator checks first."""
        return {"lmk_kcv": compute_kcv(self.store._lmk, "AES"), "keys": len(self.store.keys)}


KEY_TYPES_ALL = ("ZMK", "KEK", "ZPK", "TPK", "PVK", "CVK", "BDK", "IMK-AC", "TAK", "ZAK", "DEK", "FPK")


def _aes_key_type(key: bytes) -> "dukpt_aes.KeyType":
    """The X9.24-3 key type of an AES BDK (and so of the initial keys derived from it)."""
    return {16: dukpt_aes.KeyType.AES128, 24: dukpt_aes.KeyType.AES192, 32: dukpt_aes.KeyType.AES256}[len(key)]


def _positional(fn: Callable[..., Any], name: str, args: tuple) -> Any:
    names = fn.__code__.co_varnames[1 : fn.__code__.co_argcount]
    try:
        return args[names.index(name)]
    except (ValueError, IndexError):
        return None


def _safe(exc: BaseException) -> str:
    """An exception message without digits runs long enough to be a PAN or a key."""
    import re

    return re.sub(r"[0-9A-Fa-f]{12,}", "…", str(exc))[:200]


def to_jsonable(value: Any) -> Any:
    """Results as JSON for the host-command protocol."""
    if isinstance(value, (KeyInfo, TokenizedPan)):
        return asdict(value)
    if isinstance(value, tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, list):
        return [to_jsonable(v) for v in value]
    return value
