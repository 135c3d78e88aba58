"""The HSM: key management and every payment-security command, with access control and an audit log.

Each public coroutine is one host command (its code is in COMMANDS). Keys are named by KCV and used
only inside this object; a command checks that each key's type may serve it before using the key.
Wrong PINs, CVVs and cryptograms are answers (False), not errors; malformed input is an HsmError with
a specific status.
"""

from __future__ import annotations

import base64
import functools
import itertools
import hmac
import json
import logging
import os
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hsm_sim import errors as st
from hsm_sim import keyblock
from hsm_sim.access import CALLER, LOCAL
from hsm_sim.audit import AuditLog
from hsm_sim.crypto import cvv as cvv_alg
from hsm_sim.crypto import dukpt, dukpt_aes, emv, mac, pin, pinblock, tokens
from hsm_sim.crypto.des import tdes_ecb_decrypt, tdes_ecb_encrypt
from hsm_sim.crypto.des import kcv as compute_kcv
from hsm_sim.errors import HsmError
from hsm_sim.keyblock import DECRYPT, DERIVE, ENCRYPT, GENERATE, VERIFY
from hsm_sim.keystore import KeyInfo, KeyStore, new_key_bytes

log = logging.getLogger("hsm_sim.audit")
P = ParamSpec("P")
T = TypeVar("T")

PIN_KEY_TYPES = ("TPK", "ZPK")


@dataclass(frozen=True, slots=True)
class TokenizedPan:
    """A PAN as the vault keeps it: keyed fingerprint for look-up and the sealed PAN, with key versions."""

    fingerprint: str
    fingerprint_version: int
    sealed_pan: str
    data_key_version: int


@dataclass(frozen=True, slots=True)
class RequestChecks:
    """What `verify_request` found: the request's MAC, then (only when it verifies) the PAN's fingerprints
    as `fingerprint_pan` gives them and one answer per card verification value, in the order asked."""

    mac_ok: bool
    fingerprints: list[tuple[int, str]]
    cvvs: list[bool]


@dataclass(frozen=True, slots=True)
class KeyCeremony:
    """A key being formed from custodians' components: who gave one (and its KCV), and the key once formed."""

    ceremony: str
    key_type: str
    algorithm: str
    custodians: list[str]
    component_kcvs: list[str]
    key: KeyInfo | None = None


CEREMONY_TIMEOUT_S = 900
KEY_PAGE = 50  # keys in one list_keys answer: about 10 KiB of JSON, under the protocol's frame limit
FINGERPRINT_VERSIONS = 32  # fingerprint-key versions a look-up tries: a bounded answer however often keys rotate
MAX_CEREMONIES = 16
# Fingerprints (PANs times key versions) per fingerprint_pans answer: 64 hex digits each, inside one frame.
MAX_PAN_FINGERPRINTS = 96
# Card verification values one verify_request checks: a track's CVV and a CVV2.
MAX_REQUEST_CVVS = 2
COMPONENTS_NEEDED = 2


@dataclass
class _Ceremony:
    ceremony: str
    key_type: str
    algorithm: str
    started: float
    parts: list[tuple[str, bytes]]

    def view(self, key: KeyInfo | None = None) -> KeyCeremony:
        return KeyCeremony(
            self.ceremony, self.key_type, self.algorithm, [name for name, _ in self.parts],
            [compute_kcv(part, self.algorithm) for _, part in self.parts], key,
        )


# command code -> method name; answers use the code with its second character advanced (A0 -> A1).
COMMANDS: dict[str, str] = {
    "A0": "generate_key",
    "A6": "import_key",
    "A8": "export_key",
    "GC": "form_key_from_components",
    "FK": "add_key_component",
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
    "KY": "personalization_data",
    "M6": "generate_mac",
    "M8": "verify_mac",
    "VR": "verify_request",
    "T0": "tokenize_pan",
    "T2": "fingerprint_pan",
    "TA": "fingerprint_pans",
    "T4": "reveal_pan",
    "T6": "reseal_pan",
    "T8": "rotate_tokenization_keys",
    "NC": "diagnostics",
    "ID": "who_am_i",
}
CODE_OF = {name: code for code, name in COMMANDS.items()}


def verification_failed(result: Any) -> bool:
    """Whether a command's answer is a refusal of what it checked (status 01): False, (False, ...), or a
    request whose MAC does not verify."""
    return result is False or (isinstance(result, tuple) and bool(result) and result[0] is False) or (
        isinstance(result, RequestChecks) and not result.mac_ok
    )


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


def command(
    *key_params: str,
) -> Callable[[Callable[Concatenate[Hsm, P], T]], Callable[Concatenate[Hsm, P], Coroutine[Any, Any, T]]]:
    """Turn a synchronous operation into an audited host command; `key_params` name the KCV arguments.

    The coroutine keeps the operation's signature, so `Hsm` meets `HsmApi` for a type checker too.
    """

    def decorate(fn: Callable[Concatenate[Hsm, P], T]) -> Callable[Concatenate[Hsm, P], Coroutine[Any, Any, T]]:
        name = fn.__name__
        names = fn.__code__.co_varnames[1 : fn.__code__.co_argcount]
        # (name, position) of each KCV argument, worked out once rather than on every call
        keys = tuple((p, names.index(p) if p in names else -1) for p in key_params)

        @functools.wraps(fn)
        async def run(self: Hsm, *args: P.args, **kwargs: P.kwargs) -> T:
            return self._execute(fn, name, keys, args, kwargs)

        return run

    return decorate


class Hsm:
    """A software HSM in this process. Open with `Hsm.open(path)` or `Hsm.ephemeral()`."""

    def __init__(self, store: KeyStore, audit: AuditLog) -> None:
        self.store = store
        self.audit = audit
        self._keys: dict[str, tuple[bytes, KeyInfo]] = {}  # KCV -> key and its authenticated header
        self._ipek_cache: dict[tuple[str, bytes], bytes] = {}
        # A request's MAC, its PIN block and its answer's MAC share one transaction key, derived once.
        self._transaction_keys = dukpt.TransactionKeys()
        self._ceremonies: dict[str, _Ceremony] = {}
        self._audit_extra: dict[str, str] = {}  # what the running command adds to its audit line

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

    def _execute(self, fn: Callable[..., T], name: str, keys: tuple[tuple[str, int], ...], args: tuple, kwargs: dict) -> T:
        caller = CALLER.get()
        if not caller.may(name):
            why = f"role {caller.role} may not run {name}"
            self.audit.refusal(caller.name, caller.role, name, why)
            raise HsmError(st.NOT_PERMITTED, f"{name}: {caller.name} is refused: {why}")
        kcvs = tuple(
            str(value)
            for value in (kwargs.get(p) if p in kwargs else (args[i] if 0 <= i < len(args) else None) for p, i in keys)
            if value
        )
        try:
            result = fn(self, *args, **kwargs)
        except HsmError as exc:
            if exc.code == st.NOT_PERMITTED:
                self.audit.refusal(caller.name, caller.role, name, exc.message)
            else:
                self.audit.write(caller.name, caller.role, name, exc.code, kcvs)
            raise
        except pinblock.PinBlockError as exc:
            code = st.INVALID_PIN if exc.reason in ("pin_length", "pin_digits") else st.PIN_BLOCK_ERROR
            self.audit.write(caller.name, caller.role, name, code, kcvs)
            raise HsmError(code, f"{name}: {exc}") from None
        except (ValueError, TypeError, KeyError) as exc:
            self.audit.write(caller.name, caller.role, name, st.INVALID_INPUT, kcvs)
            raise HsmError(st.INVALID_INPUT, f"{name}: {_safe(exc)}") from None
        status = st.VERIFICATION_FAILED if verification_failed(result) else st.OK
        extra, self._audit_extra = self._audit_extra, {}
        self.audit.write(caller.name, caller.role, name, status, kcvs, **extra)
        return result

    def _key(
        self, kcv: str, allowed: tuple[str, ...], command_name: str, *, use: str | None, algorithm: str | None = None
    ) -> tuple[bytes, KeyInfo]:
        """A key for one use by one command, after checking its type, algorithm and TR-31 mode of use.

        `use` is E, D, G, V or X (see keyblock.MODE_USES); None only for export, which carries the key
        without using it.
        """
        cached = self._keys.get(str(kcv).upper())
        if cached is None:
            cached = self.store.clear_key(kcv)
            self._keys[cached[1].kcv] = cached
        key, info = cached
        if info.key_type not in allowed:
            raise HsmError(
                st.KEY_TYPE_NOT_ALLOWED,
                f"{command_name}: key {info.kcv} is a {info.key_type}; this command takes {' or '.join(allowed)}",
            )
        if algorithm is not None and info.algorithm != algorithm:
            raise HsmError(st.KEY_ALGORITHM_MISMATCH, f"{command_name}: key {info.kcv} is {info.algorithm}, expected {algorithm}")
        if use is not None:
            _check_use(info, use, command_name)
        return key, info

    def _trusted_kbpk(self, kcv: str, command_name: str, use: str) -> tuple[bytes, KeyInfo]:
        """A ZMK or KEK that custodians formed under dual control or imported: the only keys keys travel under."""
        key, info = self._key(kcv, ("ZMK", "KEK"), command_name, use=use)
        if info.origin not in ("components", "imported"):
            raise HsmError(
                st.EXPORT_REFUSED,
                f"{command_name}: {info.key_type} {info.kcv} was generated inside the HSM; keys travel only under a "
                "ZMK or KEK formed by custodians from components (dual control) or imported under one",
            )
        return key, info

    # ------------------------------------------------------------ key management

    @command()
    def generate_key(self, key_type: str, algorithm: str = "TDES", *, key_bits: int | None = None) -> KeyInfo:
        """A new random key of this type, stored under the LMK (default length: see keyblock.KEY_TYPES)."""
        if key_type == "FPK":
            algorithm = "HMAC"
        bits = keyblock.check_type(key_type, algorithm, key_bits)
        return self.store.add(new_key_bytes(algorithm, bits), key_type, algorithm, origin="generated")

    @command("zmk")
    def import_key(self, key_type: str, key_block: str, zmk: str) -> KeyInfo:
        """A key received as a TR-31 block (version D under an AES ZMK/KEK, B or C under a TDES one)."""
        kbpk, kbpk_info = self._trusted_kbpk(zmk, "import_key", DECRYPT)
        header, key = keyblock.unwrap(kbpk, kbpk_info.algorithm, key_block, "import_key")
        algorithm = keyblock.algorithm_of(header)
        spec = keyblock.key_type_spec(key_type)
        if header.key_usage != spec.usage:
            raise HsmError(
                st.KEY_TYPE_NOT_ALLOWED,
                f"import_key: the block holds a key of usage {header.key_usage}; a {key_type} is {spec.usage}",
            )
        bits = keyblock.check_type(key_type, algorithm, len(key) * 8)
        keyblock.check_mode(key_type, header.mode_of_use, "import_key")
        if header.exportability not in keyblock.EXPORTABILITY:
            raise HsmError(st.INVALID_INPUT, f"import_key: exportability {header.exportability!r} is not E, S or N")
        keyblock.check_protection(algorithm, bits, kbpk_info.algorithm, kbpk_info.key_bits, "import_key")
        return self.store.add(
            key, key_type, algorithm, origin="imported", mode=header.mode_of_use, exportability=header.exportability
        )

    @command("kcv", "zmk")
    def export_key(self, kcv: str, zmk: str, *, version: str | None = None) -> str:
        """The key as a TR-31 block under a ZMK/KEK formed under dual control or imported; never in clear.

        Version D under an AES ZMK, B (or C when asked) under a TDES one; the block keeps the key's
        usage, mode of use and exportability.
        """
        kbpk, kbpk_info = self._trusted_kbpk(zmk, "export_key", ENCRYPT)
        key, info = self._key(kcv, keyblock.KEY_TYPE_NAMES, "export_key", use=None)
        if info.kcv == kbpk_info.kcv:
            raise HsmError(st.EXPORT_REFUSED, "export_key: a key cannot be exported under itself")
        if info.exportability == "N":
            raise HsmError(st.EXPORT_REFUSED, f"export_key: key {info.kcv} is marked non-exportable")
        keyblock.check_protection(info.algorithm, info.key_bits, kbpk_info.algorithm, kbpk_info.key_bits, "export_key")
        header = keyblock.header_for(
            keyblock.version_for(kbpk_info.algorithm, version, "export_key"), info.key_type, info.algorithm, info.mode_of_use, info.exportability
        )
        return keyblock.wrap(kbpk, key, header)

    @command()
    def form_key_from_components(self, key_type: str, components: list[str], algorithm: str = "TDES") -> KeyInfo:
        """Key ceremony in one call: the key is the XOR of two or more clear components of equal length."""
        if key_type == "FPK":
            algorithm = "HMAC"
        if not isinstance(components, list) or len(components) < 2:
            raise HsmError(st.INVALID_INPUT, "form_key_from_components: at least two components are needed")
        parts = [_hex(c, "component") for c in components]
        if len({len(p) for p in parts}) != 1:
            raise HsmError(st.INVALID_INPUT, "form_key_from_components: components must all have the same length")
        keyblock.check_type(key_type, algorithm, len(parts[0]) * 8)
        key = functools.reduce(lambda a, b: bytes(x ^ y for x, y in zip(a, b)), parts)
        return self.store.add(key, key_type, algorithm, origin="components")

    @command()
    def add_key_component(self, key_type: str, component: str, algorithm: str = "TDES", *, ceremony: str | None = None) -> KeyCeremony:
        """Key ceremony under dual control: the first custodian's clear component opens a ceremony, a second
        custodian's component (naming the ceremony) completes the key, their XOR.

        The same client cannot give both components; a ceremony left open expires after CEREMONY_TIMEOUT_S.
        """
        caller = CALLER.get()
        if key_type == "FPK":
            algorithm = "HMAC"
        part = _hex(component, "component")
        keyblock.check_type(key_type, algorithm, len(part) * 8)
        now = time.monotonic()
        for expired in [c for c in self._ceremonies.values() if now - c.started > CEREMONY_TIMEOUT_S]:
            del self._ceremonies[expired.ceremony]
        if ceremony is None:
            if len(self._ceremonies) >= MAX_CEREMONIES:
                raise HsmError(st.INVALID_INPUT, f"add_key_component: {MAX_CEREMONIES} ceremonies are open; complete one first")
            opened = _Ceremony(os.urandom(4).hex().upper(), key_type, algorithm, now, [(caller.name, part)])
            self._ceremonies[opened.ceremony] = opened
            return opened.view()
        held = self._ceremonies.get(str(ceremony).upper())
        if held is None:
            raise HsmError(st.INVALID_INPUT, f"add_key_component: no open ceremony {ceremony!r} (they expire after {CEREMONY_TIMEOUT_S // 60} minutes)")
        if (key_type, algorithm, len(part)) != (held.key_type, held.algorithm, len(held.parts[0][1])):
            raise HsmError(
                st.INVALID_INPUT,
                f"add_key_component: ceremony {held.ceremony} forms a {len(held.parts[0][1]) * 8}-bit {held.algorithm} {held.key_type}",
            )
        if any(name == caller.name for name, _ in held.parts):
            raise HsmError(
                st.NOT_PERMITTED,
                f"add_key_component: {caller.name} already gave a component to ceremony {held.ceremony}; dual control needs another custodian",
            )
        held.parts.append((caller.name, part))
        if len(held.parts) < COMPONENTS_NEEDED:
            return held.view()
        del self._ceremonies[held.ceremony]
        key = functools.reduce(lambda a, b: bytes(x ^ y for x, y in zip(a, b)), (p for _, p in held.parts))
        return held.view(self.store.add(key, key_type, algorithm, origin="components"))

    @command()
    def who_am_i(self) -> dict[str, Any]:
        """The caller as the HSM knows it: name, role and the commands it may run."""
        caller = CALLER.get()
        return {"name": caller.name, "role": caller.role, "commands": [name for name in COMMANDS.values() if caller.may(name)]}

    @command("kcv")
    def key_info(self, kcv: str) -> KeyInfo:
        return self.store.info(kcv)

    @command()
    def list_keys(self, key_type: str | None = None, *, offset: int = 0, limit: int = KEY_PAGE) -> list[KeyInfo]:
        """One page of key information (of one type, or all), in the order the keys were made.

        A page is at most KEY_PAGE keys, so an answer fits a frame however many keys the store holds;
        `all_keys` pages through them.
        """
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            raise HsmError(st.INVALID_INPUT, "list_keys: offset must be a whole number from 0")
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= KEY_PAGE:
            raise HsmError(st.INVALID_INPUT, f"list_keys: limit must be 1 to {KEY_PAGE} (page with offset)")
        infos = (k.info for k in self.store.keys.values())
        if key_type is not None:
            infos = (i for i in infos if i.key_type == key_type)
        return list(itertools.islice(infos, offset, offset + limit))

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
        key, _ = self._key(pvk, ("PVK",), "generate_pin_verification", use=GENERATE, algorithm="TDES")
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
        key, info = self._key(kcv, PIN_KEY_TYPES + ("BDK",), command_name, use=None)
        if info.key_type != "BDK":
            _check_use(info, DECRYPT, command_name)
            return key, info.algorithm
        return self._dukpt_key(key, info, ksn, "pin", command_name), info.algorithm

    def _dukpt_key(self, bdk: bytes, info: KeyInfo, ksn: str | None, usage: str, command_name: str) -> bytes:
        """The working key of a terminal's transaction: `usage` is "pin", "mac-request" or "mac-response".

        TDES DUKPT (X9.24-1): the transaction key's PIN or MAC variant. AES DUKPT (X9.24-3): the working
        key, as long as the BDK, of usage PIN encryption, MAC generation (the terminal's requests) or MAC
        verification (the host's responses).
        """
        _check_use(info, DERIVE, command_name)
        if ksn is None:
            raise HsmError(st.INVALID_INPUT, f"{command_name}: a BDK needs the KSN of the transaction")
        if info.algorithm == "AES":
            raw_ksn = _hex(ksn, "KSN", length=12)
            initial = self._ipek_cache.get((info.kcv, raw_ksn[:8]))
            if initial is None:
                initial = dukpt_aes.derive_initial_key(bdk, raw_ksn[:8], _aes_key_type(bdk))
                self._remember_ipek((info.kcv, raw_ksn[:8]), initial)
            return dukpt_aes.derive_working_key(initial, raw_ksn, _AES_DUKPT_USAGE[usage], _aes_key_type(bdk))
        raw_ksn = _hex(ksn, "KSN", length=10)
        base = (int.from_bytes(raw_ksn, "big") & ~dukpt.COUNTER_MASK).to_bytes(10, "big")
        ipek = self._ipek_cache.get((info.kcv, base))
        if ipek is None:
            ipek = dukpt.derive_ipek(bdk, raw_ksn)
            self._remember_ipek((info.kcv, base), ipek)
        return _TDES_DUKPT_VARIANT[usage](self._transaction_keys.get(info.kcv, ipek, raw_ksn))

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
        key, info = self._key(dest_key, PIN_KEY_TYPES, "translate_pin", use=ENCRYPT)
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
        key, _ = self._key(pvk, ("PVK",), "verify_pin", use=VERIFY, algorithm="TDES")
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

    def _cvv(self, cvk: str, pan: str, expiry_yymm: str, service_code: str, command_name: str, use: str) -> str:
        key, _ = self._key(cvk, ("CVK",), command_name, use=use, algorithm="TDES")
        return cvv_alg.generate_cvv(key, pan, expiry_yymm, service_code)

    @command("cvk")
    def generate_cvv(self, cvk: str, pan: str, expiry_yymm: str, service_code: str) -> str:
        """CVV/CVC (service code of the track), CVV2 (000) or iCVV (999)."""
        return self._cvv(cvk, pan, expiry_yymm, service_code, "generate_cvv", GENERATE)

    @command("cvk")
    def verify_cvv(self, cvk: str, pan: str, expiry_yymm: str, service_code: str, cvv: str) -> bool:
        return self._verify_cvv(cvk, pan, expiry_yymm, service_code, cvv, "verify_cvv")

    def _verify_cvv(self, cvk: str, pan: str, expiry_yymm: str, service_code: str, cvv: str, command_name: str) -> bool:
        if not isinstance(cvv, str) or len(cvv) != 3 or not cvv.isdigit():
            return False
        return hmac.compare_digest(self._cvv(cvk, pan, expiry_yymm, service_code, command_name, VERIFY), cvv)

    # ------------------------------------------------------------ DUKPT

    @command("bdk")
    def inject_ipek(self, bdk: str, ksn: str) -> str:
        """The IPEK for a terminal's initial KSN, for the key-loading device that injects it (audited)."""
        key, _ = self._key(bdk, ("BDK",), "inject_ipek", use=DERIVE, algorithm="TDES")
        return dukpt.derive_ipek(key, _hex(ksn, "KSN", length=10)).hex().upper()

    @command("bdk")
    def inject_aes_initial_key(self, bdk: str, initial_key_id: str) -> str:
        """AES DUKPT (X9.24-3) initial key of a terminal's 8-byte initial key ID, for its key-loading device."""
        key, _ = self._key(bdk, ("BDK",), "inject_aes_initial_key", use=DERIVE, algorithm="AES")
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
        key, _ = self._key(imk, ("IMK-AC",), "verify_arqc", use=DERIVE, algorithm="TDES")
        icc_mk = emv.derive_icc_master_key(key, pan, psn, cvn=cvn)
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
        *,
        cvn: int,
    ) -> dict[str, str]:
        """What a card bureau needs to personalize a chip, sealed under the bureau's AES transport key.

        The PAN is opened from the vault inside the HSM and leaves it only sealed (AES-GCM) under the
        transport key, together with the chip's iCVV, and so does the card's ICC master key (derived as
        the card's cryptogram version `cvn` requires). Values are base64 of nonce (12) || ciphertext ||
        tag; associated data b"bureau:card" for the JSON {"pan", "icvv"} and b"bureau:icc_mk:" + PSN for
        the key. The transport key must have been formed by custodians or imported (see export_key).
        """
        key, _ = self._key(imk, ("IMK-AC",), "personalization_data", use=DERIVE, algorithm="TDES")
        kek, kek_info = self._trusted_kbpk(transport_key, "personalization_data", ENCRYPT)
        if kek_info.algorithm != "AES":
            raise HsmError(st.KEY_ALGORITHM_MISMATCH, f"personalization_data: transport key {kek_info.kcv} must be AES")
        pan = self._open(sealed_pan, data_key_version, "personalization_data")
        icvv = self._cvv(cvk, pan, expiry_yymm, "999", "personalization_data", GENERATE)
        icc_mk = emv.derive_icc_master_key(key, pan, psn, cvn=cvn)
        gcm = AESGCM(kek)
        n1, n2 = os.urandom(12), os.urandom(12)
        card = json.dumps({"pan": pan, "icvv": icvv}).encode()
        return {
            "card": base64.b64encode(n1 + gcm.encrypt(n1, card, b"bureau:card")).decode(),
            "icc_mk": base64.b64encode(n2 + gcm.encrypt(n2, icc_mk, b"bureau:icc_mk:" + psn.encode())).decode(),
            "transport_key": kek_info.kcv,
        }

    # ------------------------------------------------------------ MAC

    def _mac(self, key_kcv: str, data: bytes, algorithm: str | None, ksn: str | None, command_name: str, use: str) -> bytes:
        """The MAC under a TAK/ZAK, or under the DUKPT MAC key of a BDK and KSN (requests verified,
        responses generated): ISO 9797-1 algorithm 3 with TDES keys, AES-CMAC (8 bytes) with AES keys."""
        key, info = self._key(key_kcv, ("TAK", "ZAK", "BDK"), command_name, use=None)
        if info.key_type == "BDK":
            key = self._dukpt_key(key, info, ksn, "mac-request" if use == VERIFY else "mac-response", command_name)
        else:
            if ksn is not None:
                raise HsmError(st.INVALID_INPUT, f"{command_name}: a KSN goes with a BDK, not a {info.key_type}")
            _check_use(info, use, command_name)
        expected = {"TDES": "retail", "AES": "cmac"}[info.algorithm]
        if algorithm not in (None, expected):
            if algorithm not in ("retail", "cmac"):
                raise HsmError(st.INVALID_INPUT, f"{command_name}: unknown MAC algorithm {algorithm!r}")
            raise HsmError(st.KEY_ALGORITHM_MISMATCH, f"{command_name}: a {info.algorithm} key makes {expected} MACs, not {algorithm}")
        if expected == "cmac":
            return mac.aes_cmac(key, bytes(data))
        # A DUKPT key serves one transaction: its key schedules are not worth keeping.
        return mac.retail_mac(key, bytes(data), cache=info.key_type != "BDK")

    @command("key")
    def generate_mac(self, key: str, data: bytes, *, algorithm: str | None = None, ksn: str | None = None) -> str:
        """MAC of `data` (16 hex digits) under a TAK/ZAK, or the DUKPT response-MAC key of a BDK and KSN."""
        return self._mac(key, data, algorithm, ksn, "generate_mac", GENERATE).hex().upper()

    @command("key")
    def verify_mac(self, key: str, data: bytes, mac_value: str, *, algorithm: str | None = None, ksn: str | None = None) -> bool:
        """True when `mac_value` is the MAC of `data` under a TAK/ZAK, or the DUKPT request-MAC key of a BDK and KSN."""
        return self._verify_mac(key, data, mac_value, algorithm, ksn, "verify_mac")

    def _verify_mac(self, key: str, data: bytes, mac_value: str, algorithm: str | None, ksn: str | None, command_name: str) -> bool:
        expected = self._mac(key, data, algorithm, ksn, command_name, VERIFY).hex().upper()
        return isinstance(mac_value, str) and hmac.compare_digest(expected, mac_value.upper())

    @command("key", "cvk")
    def verify_request(
        self,
        key: str,
        data: bytes,
        mac_value: str,
        *,
        ksn: str | None = None,
        pan: str | None = None,
        cvk: str | None = None,
        cvvs: list[list[str]] | None = None,
    ) -> RequestChecks:
        """An authorization request's checks in one command: `verify_mac`, then, only when the MAC verifies,
        `fingerprint_pan` of `pan` and `verify_cvv` under `cvk` of each [expiry_yymm, service_code, cvv] in
        `cvvs` (at most MAX_REQUEST_CVVS). One audit line says what each part answered.

        It answers nothing `verify_mac`, `fingerprint_pan` and `verify_cvv` would not: a role needs all three.
        """
        caller = CALLER.get()
        for part in ("verify_mac", "fingerprint_pan", "verify_cvv"):
            if not caller.may(part):
                raise HsmError(st.NOT_PERMITTED, f"verify_request: role {caller.role} may not run {part}")
        checks = list(cvvs or ())
        if len(checks) > MAX_REQUEST_CVVS or not all(isinstance(c, (list, tuple)) and len(c) == 3 for c in checks):
            raise HsmError(st.INVALID_INPUT, f"verify_request: cvvs takes up to {MAX_REQUEST_CVVS} [expiry_yymm, service_code, cvv]")
        if checks and (cvk is None or pan is None):
            raise HsmError(st.INVALID_INPUT, "verify_request: cvvs need the cvk and the pan")
        if not self._verify_mac(key, data, mac_value, None, ksn, "verify_request"):
            # Nothing else of a message that does not authenticate is looked at.
            self._audit_extra = {"mac": st.VERIFICATION_FAILED}
            return RequestChecks(False, [], [])
        fingerprints = self._fingerprints(pan, "verify_request") if pan is not None else []
        results = [self._verify_cvv(str(cvk), str(pan), expiry, code, cvv, "verify_request") for expiry, code, cvv in checks]
        self._audit_extra = {"mac": st.OK, **({"cvv": ",".join(st.OK if ok else st.VERIFICATION_FAILED for ok in results)} if results else {})}
        return RequestChecks(True, fingerprints, results)

    # ------------------------------------------------------------ tokenization

    def _current(self, key_type: str, command_name: str, use: str) -> tuple[bytes, KeyInfo]:
        kcv = self.store.current.get(key_type)
        if kcv is None:
            raise HsmError(st.UNKNOWN_KEY, f"{command_name}: no {key_type} has been generated")
        return self._key(kcv, (key_type,), command_name, use=use)

    def _dek_version(self, version: int, command_name: str) -> bytes:
        for info in self.store.versions("DEK"):
            if info.version == version:
                return self._key(info.kcv, ("DEK",), command_name, use=DECRYPT)[0]
        raise HsmError(st.UNKNOWN_KEY, f"{command_name}: no data key version {version}")

    def _tokenize(self, pan: str, command_name: str) -> TokenizedPan:
        fpk, fpk_info = self._current("FPK", command_name, GENERATE)
        dek, dek_info = self._current("DEK", command_name, ENCRYPT)
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
        """The PAN's fingerprint under the newest FINGERPRINT_VERSIONS fingerprint-key versions, newest
        first (one look-up query); a vault re-sealed after each rotation needs only the newest."""
        return self._fingerprints(pan, "fingerprint_pan")

    def _fingerprints(self, pan: str, command_name: str) -> list[tuple[int, str]]:
        out = []
        for info in self.store.versions("FPK")[:FINGERPRINT_VERSIONS]:
            key, _ = self._key(info.kcv, ("FPK",), command_name, use=GENERATE)
            out.append((info.version, tokens.pan_fingerprint(key, pan)))
        if not out:
            raise HsmError(st.UNKNOWN_KEY, f"{command_name}: no FPK has been generated")
        return out

    @command()
    def fingerprint_pans(self, pans: list[str]) -> list[list[tuple[int, str]]]:
        """`fingerprint_pan` for several PANs in their order, at most MAX_PAN_FINGERPRINTS fingerprints (PANs
        times key versions) per command: one command and one audit line for a part of a clearing file."""
        keys = [
            (info.version, self._key(info.kcv, ("FPK",), "fingerprint_pans", use=GENERATE)[0])
            for info in self.store.versions("FPK")[:FINGERPRINT_VERSIONS]
        ]
        if not keys:
            raise HsmError(st.UNKNOWN_KEY, "fingerprint_pans: no FPK has been generated")
        if not isinstance(pans, list) or not 1 <= len(pans) * len(keys) <= MAX_PAN_FINGERPRINTS:
            raise HsmError(
                st.INVALID_INPUT,
                f"fingerprint_pans: 1 to {MAX_PAN_FINGERPRINTS // len(keys)} PANs per command ({len(keys)} key versions)",
            )
        return [[(version, tokens.pan_fingerprint(key, pan)) for version, key in keys] for pan in pans]

    def _open(self, sealed_pan: str, data_key_version: int, command_name: str) -> str:
        dek = self._dek_version(int(data_key_version), command_name)
        try:
            raw = base64.b64decode(sealed_pan, validate=True)
        except ValueError:
            raise HsmError(st.INVALID_INPUT, f"{command_name}: sealed PAN is not base64") from None
        return tokens.open_pan(dek, raw, aad=f"pan:v{data_key_version}".encode())

    @command()
    def reveal_pan(self, sealed_pan: str, data_key_version: int, *, operator: str, reason: str) -> str:
        """Detokenize for an operator; the audit line records who and why.

        Over the network the operator is the client's certificate: naming anyone else is refused.
        """
        caller = CALLER.get()
        if not isinstance(operator, str) or not operator.strip() or not isinstance(reason, str) or not reason.strip():
            raise HsmError(st.INVALID_INPUT, "reveal_pan: operator and reason are required")
        if caller is not LOCAL and operator != caller.name:
            raise HsmError(st.NOT_PERMITTED, f"reveal_pan: {caller.name} may not reveal a PAN in the name of {operator[:64]!r}")
        pan = self._open(sealed_pan, data_key_version, "reveal_pan")
        self._audit_extra = {"operator": operator[:64], "reason": reason[:200]}
        return pan

    @command()
    def reseal_pan(self, sealed_pan: str, data_key_version: int) -> TokenizedPan:
        """Re-encrypt and re-fingerprint under the current versions; the PAN never leaves the HSM."""
        return self._tokenize(self._open(sealed_pan, data_key_version, "reseal_pan"), "reseal_pan")

    @command()
    def rotate_tokenization_keys(self) -> tuple[int, int]:
        """New DEK and FPK versions become current; older versions stay for opening and look-up."""
        dek = self.store.add(new_key_bytes("AES", 256), "DEK", "AES", origin="generated")
        fpk = self.store.add(new_key_bytes("HMAC", 256), "FPK", "HMAC", origin="generated")
        return dek.version, fpk.version

    @command()
    def diagnostics(self) -> dict[str, Any]:
        """The LMK's check value and source, and the key count: what an operator checks first."""
        return {"lmk_kcv": self.store.lmk_kcv, "lmk_source": self.store.lmk_source, "keys": len(self.store.keys)}


_USE_NAMES = {ENCRYPT: "encryption or wrapping", DECRYPT: "decryption or unwrapping", GENERATE: "generation",
              VERIFY: "verification", DERIVE: "key derivation"}
_AES_DUKPT_USAGE = {
    "pin": dukpt_aes.KeyUsage.PIN_ENCRYPTION,
    "mac-request": dukpt_aes.KeyUsage.MAC_GENERATION,
    "mac-response": dukpt_aes.KeyUsage.MAC_VERIFICATION,
}
_TDES_DUKPT_VARIANT = {"pin": dukpt.pin_encryption_key, "mac-request": dukpt.mac_request_key, "mac-response": dukpt.mac_response_key}


def _check_use(info: KeyInfo, use: str, command_name: str) -> None:
    """Refuse a use the key's TR-31 mode of use does not grant."""
    if use not in keyblock.MODE_USES.get(info.mode_of_use, ()):
        raise HsmError(
            st.MODE_NOT_ALLOWED,
            f"{command_name}: key {info.kcv} has mode of use {info.mode_of_use}, which does not allow {_USE_NAMES[use]}",
        )


def _aes_key_type(key: bytes) -> "dukpt_aes.KeyType":
    """The X9.24-3 key type of an AES BDK (and so of the initial keys derived from it)."""
    return {16: dukpt_aes.KeyType.AES128, 24: dukpt_aes.KeyType.AES192, 32: dukpt_aes.KeyType.AES256}[len(key)]


def _safe(exc: BaseException) -> str:
    """An exception message without digits runs long enough to be a PAN or a key."""
    import re

    return re.sub(r"[0-9A-Fa-f]{12,}", "…", str(exc))[:200]


def to_jsonable(value: Any) -> Any:
    """Results as JSON for the host-command protocol."""
    if isinstance(value, (KeyInfo, TokenizedPan, KeyCeremony, RequestChecks)):
        return asdict(value)
    if isinstance(value, tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, list):
        return [to_jsonable(v) for v in value]
    return value
