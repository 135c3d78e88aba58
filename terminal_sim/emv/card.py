"""A virtual EMV payment card (Visa VIS / qVSDC style) that answers APDUs.

The card holds one application. Contact profiles answer SELECT of the PSE
(``1PAY.SYS.DDF01``), contactless profiles the PPSE (``2PAY.SYS.DDF01``); both answer
SELECT of their AID, GET PROCESSING OPTIONS, READ RECORD, GENERATE AC (contact), GET
DATA and VERIFY (plaintext offline PIN).

Cryptogram input (what the issuer recomputes)
---------------------------------------------
The card MACs ``cryptogram.mac_input(...)`` (:mod:`terminal_sim.emv.cryptogram`, the
card's own code), independent of the order of the card's CDOL1 or PDOL::

    9F02 ‖ 9F03 ‖ 9F1A ‖ 95 ‖ 5F2A ‖ 9A ‖ 9C ‖ 9F37 ‖ 82 ‖ 9F36 ‖ X
    X = CVR (9F10 bytes 4-7) for CVN 10, the whole 9F10 for CVN 18

where the terminal tags come from the CDOL1 data of the first GENERATE AC (contact) or
from the PDOL data of GET PROCESSING OPTIONS (contactless), and 82, 9F36 and 9F10 are
the card's own, as returned in the same response. Every one of these tags travels in
DE 55, so the issuer rebuilds the same bytes from the request.

Keys: the profile holds the ICC master key for AC (``icc_mk_ac``), derived by the issuer
from its IMK-AC with pyemv (``VisaCVN10`` option A, ``VisaCVN18`` option B) for the PAN
the card presents (the token PAN for a device token) and PSN. CVN 10 MACs with the ICC
master key itself, CVN 18 with the EMV common session key (R = ATC ‖ 00..00); the ARPC
is checked with the same key. ARPC method 1 (``arpc_method=1``, the default, CVN 10 and
18): 91 = ARPC(8) ‖ ARC(2), ARPC = DES3(key, ARQC ⊕ ARC‖00..00), the ARC must approve.
ARPC method 2 (``arpc_method=2``, CVN 18 only, as ``pyemv.cvn.VisaCVN18``): 91 =
ARPC(4) ‖ CSU(4), CSU byte 2 bit 8 = issuer approves.

The ATC is incremented once per transaction (at the first GENERATE AC on contact, at
GET PROCESSING OPTIONS on contactless) and written to the state file before the
cryptogram leaves the card, so a restart never reuses an ATC.
"""

from __future__ import annotations

import calendar
import enum
import hmac
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pyemv import ac as _ac

from hsm_sim.files import write_private
from terminal_sim.emv import cryptogram, tlv

__all__ = [
    "PSE_NAME",
    "PPSE_NAME",
    "CardProfile",
    "VirtualCard",
    "GarbageCard",
    "GarbageMode",
    "SealError",
    "make_track2",
    "mask_pan",
]

PSE_NAME = b"1PAY.SYS.DDF01"
PPSE_NAME = b"2PAY.SYS.DDF01"

# Status words.
SW_OK = b"\x90\x00"
SW_WRONG_LENGTH = b"\x67\x00"
SW_CONDITIONS = b"\x69\x85"
SW_BLOCKED = b"\x69\x83"
SW_FILE_NOT_FOUND = b"\x6a\x82"
SW_RECORD_NOT_FOUND = b"\x6a\x83"
SW_WRONG_P1P2 = b"\x6a\x86"
SW_DATA_NOT_FOUND = b"\x6a\x88"
SW_WRONG_DATA = b"\x6a\x80"
SW_INS_NOT_SUPPORTED = b"\x6d\x00"
SW_CLA_NOT_SUPPORTED = b"\x6e\x00"

# Cryptogram Information Data (9F27) values.
CID_AAC = 0x00
CID_TC = 0x40
CID_ARQC = 0x80

# Authorisation Response Codes (8A, two ASCII characters) that mean "approved".
APPROVING_ARCS = frozenset({b"00", b"08", b"10", b"11", b"Y1", b"Y3"})

DEFAULT_PDOL = "9F66049F02069F03069F1A0295055F2A029A039C019F3704"
DEFAULT_CDOL1 = "9F02069F03069F1A0295055F2A029A039C019F3704"
_MAX_ATC = 0xFFFF
_ISSUER_AUTH_LEN = {1: 10, 2: 8}  # tag 91 length by ARPC method


def mask_pan(pan: str) -> str:
    """First six and last four digits, the rest as '*'."""
    if len(pan) < 10:
        return "*" * len(pan)
    return pan[:6] + "*" * (len(pan) - 10) + pan[-4:]


def _luhn_ok(pan: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(pan)):
        d = int(ch)
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def make_track2(pan: str, expiry_yymm: str, service_code: str, discretionary: str) -> str:
    """Track 2 equivalent data as digits with the 'D' separator (tag 57 before packing)."""
    for name, value in (("expiry", expiry_yymm), ("service code", service_code)):
        if not value.isdigit():
            raise ValueError(f"track 2 {name} must be digits")
    if not discretionary.isdigit():
        raise ValueError("track 2 discretionary data must be digits")
    return f"{pan}D{expiry_yymm}{service_code}{discretionary}"


def _pack_digits(digits: str) -> bytes:
    """cn packing: digits (and 'D') as nibbles, padded with F to a whole byte."""
    if len(digits) % 2:
        digits += "F"
    return bytes.fromhex(digits)


class SealError(ValueError):
    """A sealed profile could not be opened (wrong transport key or altered file)."""


_SECRET_FIELDS = ("icc_mk_ac", "offline_pin")


@dataclass(frozen=True)
class CardProfile:
    """Personalisation data of one card application.

    ``icc_mk_ac`` and ``offline_pin`` are secrets: they are in clear only in memory;
    :meth:`seal` encrypts them under a transport key (AES-GCM) for the profile file.
    """

    aid: str
    label: str
    pan: str
    psn: str
    expiry: str  # YYMM
    effective: str  # YYMM
    track2: str  # digits with 'D' separator, iCVV in the discretionary data
    cardholder_name: str
    cvn: int
    icc_mk_ac: bytes = field(repr=False)
    aip: str = "1C00"
    afl: str = "0801020010010100"
    cdol1: str = DEFAULT_CDOL1
    pdol: str = DEFAULT_PDOL
    currency_numeric: str = "0978"
    country_numeric: str = "0250"
    atc_start: int = 0
    offline_pin: str | None = field(default=None, repr=False)
    pin_try_limit: int = 3
    contactless: bool = False
    priority: int = 1
    dki: int = 1
    token_pan: str | None = None
    token_expiry: str | None = None
    token_requestor_id: str | None = None
    payment_account_reference: str | None = None
    gen_ac_format1: bool = False
    arpc_method: int = 1

    def __post_init__(self) -> None:
        def bad(what: str) -> ValueError:
            return ValueError(f"card profile {mask_pan(self.pan)}: {what}")

        try:
            aid = bytes.fromhex(self.aid)
        except ValueError:
            raise bad("aid must be hex") from None
        if not 5 <= len(aid) <= 16:
            raise bad(f"aid is {len(aid)} bytes, expecting 5 to 16")
        for name in ("pan", "token_pan"):
            pan = getattr(self, name)
            if pan is None:
                continue
            if not (pan.isdigit() and 12 <= len(pan) <= 19 and _luhn_ok(pan)):
                raise bad(f"{name} must be 12-19 digits with a valid check digit")
        if not (len(self.psn) == 2 and self.psn.isdigit()):
            raise bad("psn must be 2 digits")
        for name in ("expiry", "effective", "token_expiry"):
            value = getattr(self, name)
            if value is None:
                continue
            if not (len(value) == 4 and value.isdigit() and 1 <= int(value[2:]) <= 12):
                raise bad(f"{name} must be YYMM")
        if self.cvn not in (10, 18):
            raise bad(f"cvn {self.cvn} is not supported, expecting 10 or 18")
        if self.arpc_method not in (1, 2) or (self.cvn == 10 and self.arpc_method != 1):
            raise bad("arpc_method must be 1, or 2 with CVN 18")
        if len(self.icc_mk_ac) != 16:
            raise bad(f"icc_mk_ac is {len(self.icc_mk_ac)} bytes, expecting 16")
        if not self.track2.startswith(self.card_pan + "D"):
            raise bad("track2 must start with the presented PAN and the 'D' separator")
        t2 = self.track2.replace("D", "")
        if not t2.isdigit() or self.track2.count("D") != 1 or len(self.track2) > 37:
            raise bad("track2 must be at most 37 digits with one 'D' separator")
        if self.track2[len(self.card_pan) + 1 : len(self.card_pan) + 5] != self.card_expiry:
            raise bad("track2 expiry differs from the profile expiry")
        if len(bytes.fromhex(self.aip)) != 2:
            raise bad("aip must be 2 bytes hex")
        afl = bytes.fromhex(self.afl)
        if not afl or len(afl) % 4:
            raise bad("afl must be a non-empty multiple of 4 bytes")
        tlv.parse_dol(bytes.fromhex(self.cdol1))
        tlv.parse_dol(bytes.fromhex(self.pdol))
        if self.offline_pin is not None and not (
            self.offline_pin.isdigit() and 4 <= len(self.offline_pin) <= 12
        ):
            raise bad("offline_pin must be 4-12 digits")
        if not 1 <= self.pin_try_limit <= 15:
            raise bad("pin_try_limit must be 1-15")
        if not 0 <= self.atc_start < _MAX_ATC:
            raise bad("atc_start must be 0-65534")
        if not (self.label.isascii() and len(self.label) <= 16):
            raise bad("label must be at most 16 ASCII characters")
        if not self.cardholder_name.isascii():
            raise bad("cardholder_name must be ASCII")

    def __repr__(self) -> str:
        return (
            f"CardProfile(aid={self.aid!r}, pan={mask_pan(self.pan)!r}, psn={self.psn!r}, "
            f"cvn={self.cvn}, contactless={self.contactless}, token={self.token_pan is not None})"
        )

    @property
    def card_pan(self) -> str:
        """The PAN the card presents (5A, 57): the token PAN for a device token."""
        return self.token_pan or self.pan

    @property
    def card_expiry(self) -> str:
        if self.token_pan is not None and self.token_expiry is not None:
            return self.token_expiry
        return self.expiry

    @property
    def cdol2(self) -> str:
        """CDOL2: issuer authentication data, ARC, TVR, unpredictable number."""
        return f"91{_ISSUER_AUTH_LEN[self.arpc_method]:02X}8A0295059F3704"

    def _aad(self, name: str) -> bytes:
        return f"card-profile|{name}|{self.aid}|{self.pan}|{self.psn}".encode()

    def seal(self, transport_key: bytes) -> dict[str, Any]:
        """JSON-ready dict with the secrets encrypted under the transport key (AES-GCM)."""
        aead = AESGCM(transport_key)
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _SECRET_FIELDS:
                if value is None:
                    out[f.name + "_sealed"] = None
                    continue
                clear = value if isinstance(value, bytes) else value.encode()
                nonce = os.urandom(12)
                out[f.name + "_sealed"] = (nonce + aead.encrypt(nonce, clear, self._aad(f.name))).hex()
            else:
                out[f.name] = value
        return out

    @classmethod
    def open(cls, sealed: Mapping[str, Any], transport_key: bytes) -> "CardProfile":
        """Inverse of :meth:`seal`; raises SealError for a wrong key or altered data."""
        aead = AESGCM(transport_key)
        plain = {k: v for k, v in sealed.items() if not k.endswith("_sealed")}
        known = {f.name for f in fields(cls)}
        clear_secrets = set(plain) & set(_SECRET_FIELDS)
        if clear_secrets:
            raise ValueError(f"card profile: {sorted(clear_secrets)} must be sealed, not in clear")
        unknown = set(plain) - known
        if unknown:
            raise ValueError(f"card profile: unknown fields {sorted(unknown)}")
        aad_of = lambda name: (  # noqa: E731
            f"card-profile|{name}|{plain.get('aid')}|{plain.get('pan')}|{plain.get('psn')}".encode()
        )
        for name in _SECRET_FIELDS:
            blob = sealed.get(name + "_sealed")
            if blob is None:
                if name == "icc_mk_ac":
                    raise ValueError("card profile: icc_mk_ac_sealed is missing")
                plain[name] = None
                continue
            raw = bytes.fromhex(blob)
            try:
                clear = aead.decrypt(raw[:12], raw[12:], aad_of(name))
            except Exception:
                raise SealError(f"card profile: {name} does not open with this transport key") from None
            plain[name] = clear if name == "icc_mk_ac" else clear.decode()
        return cls(**plain)

    def save(self, path: Path, transport_key: bytes) -> None:
        """Write the sealed profile as JSON."""
        write_private(Path(path), json.dumps(self.seal(transport_key), indent=2).encode())

    @classmethod
    def load(cls, path: Path, transport_key: bytes) -> "CardProfile":
        """Read and open a profile written by :meth:`save`."""
        return cls.open(json.loads(Path(path).read_text()), transport_key)


@dataclass
class _CardState:
    atc: int
    pin_tries_left: int


class _Apdu:
    __slots__ = ("cla", "ins", "p1", "p2", "data", "le", "case")

    def __init__(self, raw: bytes) -> None:
        if len(raw) < 4:
            raise _SwError(SW_WRONG_LENGTH)
        self.cla, self.ins, self.p1, self.p2 = raw[0], raw[1], raw[2], raw[3]
        self.data = b""
        self.le: int | None = None
        if len(raw) == 4:
            self.case = 1
        elif len(raw) == 5:
            self.case = 2
            self.le = raw[4] or 256
        else:
            lc = raw[4]
            # Extended length (Lc = 00 followed by two bytes) is not supported by EMV cards.
            if lc == 0:
                raise _SwError(SW_WRONG_LENGTH)
            if len(raw) == 5 + lc:
                self.case = 3
            elif len(raw) == 6 + lc:
                self.case = 4
                self.le = raw[5 + lc] or 256
            else:
                raise _SwError(SW_WRONG_LENGTH)
            self.data = bytes(raw[5 : 5 + lc])


class _SwError(Exception):
    def __init__(self, sw: bytes) -> None:
        super().__init__(sw.hex().upper())
        self.sw = sw


class VirtualCard:
    """An EMV card answering command APDUs; ATC and PIN try counter persist in state_path."""

    def __init__(
        self,
        profile: CardProfile,
        state_path: Path | None = None,
    ) -> None:
        self.profile = profile
        self._state_path = Path(state_path) if state_path is not None else None
        self._state = self._load_state()
        self._reset_transaction()

    # ---- persistent state -------------------------------------------------

    def _load_state(self) -> _CardState:
        if self._state_path is not None and self._state_path.exists():
            raw = json.loads(self._state_path.read_text())
            return _CardState(atc=int(raw["atc"]), pin_tries_left=int(raw["pin_tries_left"]))
        return _CardState(atc=self.profile.atc_start, pin_tries_left=self.profile.pin_try_limit)

    def _save_state(self) -> None:
        if self._state_path is not None:
            write_private(self._state_path, json.dumps(asdict(self._state)).encode())

    @property
    def atc(self) -> int:
        return self._state.atc

    @property
    def pin_tries_left(self) -> int:
        return self._state.pin_tries_left

    # ---- transaction state ------------------------------------------------

    def _reset_transaction(self) -> None:
        self._selected: str | None = None  # "PSE" | "PPSE" | "AID"
        self._gpo_done = False
        self._first_ac: dict[str, bytes] | None = None  # cryptogram tags of the ARQC
        self._completed = False
        self._pin_verified = False
        self._pin_failed = False

    def reset(self) -> None:
        """Cold/warm reset: the selected application and transaction are forgotten."""
        self._reset_transaction()

    # ---- APDU dispatch ----------------------------------------------------

    def process_apdu(self, apdu: bytes) -> bytes:
        """Answer one command APDU with response data followed by SW1 SW2, as at the APDU level (T=1, or
        T=CL contactless); `terminal_sim.vpcd.T0Transmission` carries the same answers over T=0."""
        try:
            cmd = _Apdu(bytes(apdu))
            data = self._dispatch(cmd)
        except _SwError as e:
            return e.sw
        if cmd.case == 2 and cmd.le not in (None, 256) and cmd.le != len(data) and data:
            # Wrong Le on a case 2 command: tell the terminal the right one.
            return bytes([0x6C, len(data) & 0xFF])
        return data + SW_OK

    def _dispatch(self, cmd: _Apdu) -> bytes:
        table = {
            (0x00, 0xA4): self._select,
            (0x00, 0xB2): self._read_record,
            (0x00, 0x20): self._verify,
            (0x80, 0xA8): self._gpo,
            (0x80, 0xAE): self._generate_ac,
            (0x80, 0xCA): self._get_data,
        }
        handler = table.get((cmd.cla, cmd.ins))
        if handler is not None:
            return handler(cmd)
        if cmd.cla not in (0x00, 0x80):
            raise _SwError(SW_CLA_NOT_SUPPORTED)
        if cmd.ins in {ins for _, ins in table}:
            raise _SwError(SW_CLA_NOT_SUPPORTED)
        raise _SwError(SW_INS_NOT_SUPPORTED)

    # ---- SELECT -----------------------------------------------------------

    def _directory_entry(self) -> bytes:
        p = self.profile
        return tlv.encode(
            "61",
            [
                tlv.encode("4F", bytes.fromhex(p.aid)),
                tlv.encode("50", p.label.encode("ascii")),
                tlv.encode("87", bytes([p.priority])),
            ],
        )

    def _select(self, cmd: _Apdu) -> bytes:
        if cmd.p1 != 0x04 or cmd.p2 not in (0x00, 0x02):
            raise _SwError(SW_WRONG_P1P2)
        if cmd.case not in (3, 4):
            raise _SwError(SW_WRONG_LENGTH)
        self._reset_transaction()
        name = cmd.data
        p = self.profile
        aid = bytes.fromhex(p.aid)
        # One application only: a "next occurrence" select never finds another.
        if cmd.p2 == 0x02:
            raise _SwError(SW_FILE_NOT_FOUND)
        if name == PSE_NAME and not p.contactless:
            self._selected = "PSE"
            return tlv.encode(
                "6F",
                [
                    tlv.encode("84", PSE_NAME),
                    tlv.encode("A5", [tlv.encode("88", b"\x01"), tlv.encode("5F2D", b"en")]),
                ],
            )
        if name == PPSE_NAME and p.contactless:
            self._selected = "PPSE"
            return tlv.encode(
                "6F",
                [
                    tlv.encode("84", PPSE_NAME),
                    tlv.encode("A5", [tlv.encode("BF0C", self._directory_entry())]),
                ],
            )
        # Partial AID selection (EMV Book 1 12.3.3): the name may be a prefix of the AID.
        if 5 <= len(name) <= 16 and aid.startswith(name):
            self._selected = "AID"
            prop = [
                tlv.encode("50", p.label.encode("ascii")),
                tlv.encode("87", bytes([p.priority])),
            ]
            if p.contactless:
                prop.append(tlv.encode("9F38", bytes.fromhex(p.pdol)))
            prop.append(tlv.encode("5F2D", b"en"))
            return tlv.encode("6F", [tlv.encode("84", aid), tlv.encode("A5", prop)])
        raise _SwError(SW_FILE_NOT_FOUND)

    # ---- READ RECORD ------------------------------------------------------

    def _records(self) -> dict[tuple[int, int], bytes]:
        p = self.profile
        expiry = p.card_expiry
        yy, mm = int(expiry[:2]), int(expiry[2:])
        last_day = calendar.monthrange(2000 + yy, mm)[1]
        cvm = b"\x00" * 8
        if p.offline_pin is not None:
            cvm += b"\x01\x03"  # plaintext PIN by ICC, if terminal supports CVM
        cvm += b"\x42\x03" + b"\x1e\x03" + b"\x1f\x03"
        rec1 = [
            tlv.encode("57", _pack_digits(p.track2)),
            tlv.encode("5F20", p.cardholder_name.encode("ascii")[:26]),
        ]
        rec2 = [
            tlv.encode("5A", _pack_digits(p.card_pan)),
            tlv.encode("5F24", bytes.fromhex(expiry + f"{last_day:02d}")),
            tlv.encode("5F25", bytes.fromhex(p.effective + "01")),
            tlv.encode("5F34", bytes.fromhex(p.psn)),
            tlv.encode("5F28", bytes.fromhex(p.country_numeric)),
            tlv.encode("9F07", b"\xff\x00"),
            tlv.encode("9F08", b"\x00\x96"),
            tlv.encode("8E", cvm),
        ]
        if p.token_requestor_id is not None:
            rec2.append(tlv.encode("9F19", bytes.fromhex(p.token_requestor_id.rjust(12, "0"))))
        if p.payment_account_reference is not None:
            rec2.append(tlv.encode("9F24", p.payment_account_reference.encode("ascii")))
        rec3 = [
            tlv.encode("8C", bytes.fromhex(p.cdol1)),
            tlv.encode("8D", bytes.fromhex(p.cdol2)),
            tlv.encode("9F42", bytes.fromhex(p.currency_numeric)),
            tlv.encode("9F44", b"\x02"),
        ]
        return {
            (1, 1): tlv.encode("70", rec1),
            (1, 2): tlv.encode("70", rec2),
            (2, 1): tlv.encode("70", rec3),
        }

    def _read_record(self, cmd: _Apdu) -> bytes:
        if cmd.p2 & 0x07 != 0x04 or cmd.p1 == 0 or cmd.p2 >> 3 == 0:
            raise _SwError(SW_WRONG_P1P2)
        if cmd.case not in (1, 2):
            raise _SwError(SW_WRONG_LENGTH)
        sfi, rec = cmd.p2 >> 3, cmd.p1
        if self._selected == "PSE":
            if (sfi, rec) == (1, 1):
                return tlv.encode("70", self._directory_entry())
            raise _SwError(SW_RECORD_NOT_FOUND)
        if self._selected != "AID" or not self._gpo_done:
            raise _SwError(SW_CONDITIONS)
        record = self._records().get((sfi, rec))
        if record is None:
            raise _SwError(SW_RECORD_NOT_FOUND)
        return record

    # ---- crypto -----------------------------------------------------------

    def _iad(self, cvr_byte2: int, cvr_byte3: int = 0) -> bytes:
        p = self.profile
        # Visa IAD format 0/2: length 06, DKI, CVN, CVR (length 03 + 3 bytes).
        return bytes([0x06, p.dki, p.cvn, 0x03, cvr_byte2, cvr_byte3, 0x00])

    def _cryptogram(self, tags: Mapping[str, bytes]) -> bytes:
        p = self.profile
        data = cryptogram.mac_input(tags, tags["82"], tags["9F36"], tags["9F10"], p.cvn)
        return cryptogram.application_cryptogram(p.icc_mk_ac, tags["9F36"], data, p.cvn)

    def _next_atc(self) -> bytes:
        if self._state.atc >= _MAX_ATC:
            raise _SwError(SW_CONDITIONS)
        self._state.atc += 1
        # Persist before the cryptogram leaves the card: an ATC is never reused.
        self._save_state()
        return self._state.atc.to_bytes(2, "big")

    def _cvr_byte3(self) -> int:
        b3 = 0
        if self._pin_verified or self._pin_failed:
            b3 |= 0x40
        if self._pin_failed:
            b3 |= 0x20
        if self.profile.offline_pin is not None and self._state.pin_tries_left == 0:
            b3 |= 0x04
        return b3

    # ---- GET PROCESSING OPTIONS -------------------------------------------

    def _gpo(self, cmd: _Apdu) -> bytes:
        if cmd.p1 != 0 or cmd.p2 != 0:
            raise _SwError(SW_WRONG_P1P2)
        if self._selected != "AID" or self._gpo_done:
            raise _SwError(SW_CONDITIONS)
        if cmd.case not in (3, 4) or len(cmd.data) < 2 or cmd.data[0] != 0x83:
            raise _SwError(SW_WRONG_DATA)
        p = self.profile
        pdol = bytes.fromhex(p.pdol) if p.contactless else b""
        try:
            objs = tlv.parse(cmd.data)
        except tlv.TlvError:
            raise _SwError(SW_WRONG_DATA) from None
        if len(objs) != 1 or objs[0].tag != "83":
            raise _SwError(SW_WRONG_DATA)
        pdol_data = objs[0].value
        try:
            terminal = tlv.split_dol_data(pdol, pdol_data)
        except tlv.TlvError:
            raise _SwError(SW_WRONG_LENGTH) from None
        aip = bytes.fromhex(p.aip)
        afl = bytes.fromhex(p.afl)
        if not p.contactless:
            self._gpo_done = True
            return tlv.encode("80", aip + afl)
        tags = _terminal_defaults() | terminal
        tags["82"] = aip
        tags["9F36"] = self._next_atc()
        tags["9F10"] = self._iad(0xA0, self._cvr_byte3())
        arqc = self._cryptogram(tags)
        self._gpo_done = True
        # qVSDC: the card leaves the field after GPO; there is no second GENERATE AC.
        self._completed = True
        return tlv.encode(
            "77",
            [
                tlv.encode("82", aip),
                tlv.encode("94", afl),
                tlv.encode("9F36", tags["9F36"]),
                tlv.encode("9F26", arqc),
                tlv.encode("9F27", bytes([CID_ARQC])),
                tlv.encode("9F10", tags["9F10"]),
                tlv.encode("57", _pack_digits(p.track2)),
                tlv.encode("5F34", bytes.fromhex(p.psn)),
                tlv.encode("9F6C", b"\x00\x00"),
            ],
        )

    # ---- GENERATE AC ------------------------------------------------------

    def _generate_ac(self, cmd: _Apdu) -> bytes:
        if cmd.p2 != 0 or cmd.p1 & 0xC0 == 0xC0 or cmd.p1 & 0x2F:
            raise _SwError(SW_WRONG_P1P2)
        p = self.profile
        if self._selected != "AID" or not self._gpo_done or self._completed or p.contactless:
            raise _SwError(SW_CONDITIONS)
        if cmd.case not in (3, 4):
            raise _SwError(SW_WRONG_LENGTH)
        requested = cmd.p1 & 0xC0
        if self._first_ac is None:
            return self._first_generate_ac(cmd, requested)
        return self._second_generate_ac(cmd, requested)

    def _ac_response(self, cid: int, tags: Mapping[str, bytes], cryptogram: bytes) -> bytes:
        if self.profile.gen_ac_format1:
            return tlv.encode("80", bytes([cid]) + tags["9F36"] + cryptogram + tags["9F10"])
        return tlv.encode(
            "77",
            [
                tlv.encode("9F27", bytes([cid])),
                tlv.encode("9F36", tags["9F36"]),
                tlv.encode("9F26", cryptogram),
                tlv.encode("9F10", tags["9F10"]),
            ],
        )

    def _first_generate_ac(self, cmd: _Apdu, requested: int) -> bytes:
        p = self.profile
        try:
            terminal = tlv.split_dol_data(bytes.fromhex(p.cdol1), cmd.data)
        except tlv.TlvError:
            raise _SwError(SW_WRONG_LENGTH) from None
        # Card risk management of an online-only card: a TC request becomes an ARQC.
        cid = CID_AAC if requested == 0x00 else CID_ARQC
        cvr2 = 0x80 if cid == CID_AAC else 0xA0  # first AC type: 00 AAC, 10 ARQC
        tags = _terminal_defaults() | terminal
        tags["82"] = bytes.fromhex(p.aip)
        tags["9F36"] = self._next_atc()
        tags["9F10"] = self._iad(cvr2, self._cvr_byte3())
        card_cryptogram = self._cryptogram(tags)
        if cid == CID_AAC:
            self._completed = True
        else:
            self._first_ac = dict(tags) | {"9F26": card_cryptogram}
        return self._ac_response(cid, tags, card_cryptogram)

    def _issuer_authentication_ok(self, issuer_auth: bytes, arc: bytes) -> bool:
        p = self.profile
        assert self._first_ac is not None
        arqc = self._first_ac["9F26"]
        key = cryptogram.ac_key(p.icc_mk_ac, self._first_ac["9F36"], p.cvn)
        if p.arpc_method == 1:
            arpc, arpc_rc = issuer_auth[:8], issuer_auth[8:10]
            expected = _ac.generate_arpc_1(key, arqc, arpc_rc)
            return hmac.compare_digest(expected, arpc) and arpc_rc in APPROVING_ARCS and arc in APPROVING_ARCS
        arpc, csu = issuer_auth[:4], issuer_auth[4:8]
        expected = _ac.generate_arpc_2(key, arqc, csu)
        return hmac.compare_digest(expected, arpc) and bool(csu[1] & 0x80) and arc in APPROVING_ARCS

    def _second_generate_ac(self, cmd: _Apdu, requested: int) -> bytes:
        p = self.profile
        assert self._first_ac is not None
        try:
            cdol2 = tlv.split_dol_data(bytes.fromhex(p.cdol2), cmd.data)
        except tlv.TlvError:
            raise _SwError(SW_WRONG_LENGTH) from None
        if requested == CID_ARQC:
            raise _SwError(SW_WRONG_P1P2)
        authenticated = self._issuer_authentication_ok(cdol2["91"], cdol2["8A"])
        cid = CID_TC if requested == CID_TC and authenticated else CID_AAC
        # CVR byte 2: second AC type (01 TC / 00 AAC), first was ARQC, issuer auth performed.
        cvr2 = (0x60 if cid == CID_TC else 0x20) | 0x08
        cvr3 = self._cvr_byte3() | (0x00 if authenticated else 0x80)
        tags = dict(self._first_ac)
        tags["95"] = cdol2["95"]
        tags["9F37"] = cdol2["9F37"]
        tags["9F10"] = self._iad(cvr2, cvr3)
        card_cryptogram = self._cryptogram(tags)
        self._completed = True
        return self._ac_response(cid, tags, card_cryptogram)

    # ---- GET DATA / VERIFY ------------------------------------------------

    def _get_data(self, cmd: _Apdu) -> bytes:
        if cmd.case not in (1, 2):
            raise _SwError(SW_WRONG_LENGTH)
        tag = f"{cmd.p1:02X}{cmd.p2:02X}"
        if tag == "9F36":
            return tlv.encode("9F36", self._state.atc.to_bytes(2, "big"))
        if tag == "9F17" and self.profile.offline_pin is not None:
            return tlv.encode("9F17", bytes([self._state.pin_tries_left]))
        raise _SwError(SW_DATA_NOT_FOUND)

    def _verify(self, cmd: _Apdu) -> bytes:
        if cmd.p1 != 0x00 or cmd.p2 != 0x80:
            raise _SwError(SW_WRONG_P1P2)
        pin = self.profile.offline_pin
        if pin is None:
            raise _SwError(SW_DATA_NOT_FOUND)
        if self._selected != "AID" or not self._gpo_done:
            raise _SwError(SW_CONDITIONS)
        if self._state.pin_tries_left == 0:
            raise _SwError(SW_BLOCKED)
        if cmd.case == 1:  # ISO 7816-4: VERIFY without data reports the tries left
            raise _SwError(bytes([0x63, 0xC0 | self._state.pin_tries_left]))
        if len(cmd.data) != 8:
            raise _SwError(SW_WRONG_LENGTH)
        offered = _parse_plain_pin_block(cmd.data)
        if offered is None:
            raise _SwError(SW_WRONG_DATA)
        if offered == pin:
            self._state.pin_tries_left = self.profile.pin_try_limit
            self._save_state()
            self._pin_verified = True
            return b""
        self._state.pin_tries_left -= 1
        self._save_state()
        self._pin_failed = True
        raise _SwError(bytes([0x63, 0xC0 | self._state.pin_tries_left]))


def _parse_plain_pin_block(block: bytes) -> str | None:
    """ISO 9564 format 2 block: 2N PPPP.. padded with F; None if malformed."""
    h = block.hex().upper()
    if h[0] != "2":
        return None
    n = int(h[1], 16)
    if not 4 <= n <= 12:
        return None
    digits, pad = h[2 : 2 + n], h[2 + n :]
    if not digits.isdigit() or set(pad) - {"F"}:
        return None
    return digits


def _terminal_defaults() -> dict[str, bytes]:
    """Zero values for the cryptogram tags a custom DOL may leave out (Book 3 5.4)."""
    return {
        "9F02": bytes(6),
        "9F03": bytes(6),
        "9F1A": bytes(2),
        "95": bytes(5),
        "5F2A": bytes(2),
        "9A": bytes(3),
        "9C": bytes(1),
        "9F37": bytes(4),
    }


class GarbageMode(enum.Enum):
    """How a GarbageCard misbehaves."""

    STATUS_6F00 = "status_6f00"  # every command fails with "no precise diagnosis"
    MALFORMED_FCI = "malformed_fci"  # SELECT answers TLV whose length overruns the data
    MALFORMED_GPO = "malformed_gpo"  # GET PROCESSING OPTIONS answers a truncated template
    SHORT_RESPONSE = "short_response"  # one byte, not even a status word
    NO_CRYPTOGRAM = "no_cryptogram"  # the cryptogram response lacks 9F26
    WRONG_AID = "wrong_aid"  # the directory names an AID the card then refuses


class GarbageCard:
    """A card that breaks the protocol in one chosen way, for terminal error handling."""

    def __init__(self, profile: CardProfile, mode: GarbageMode) -> None:
        self.mode = mode
        self._card = VirtualCard(profile, None)

    def reset(self) -> None:
        self._card.reset()

    def process_apdu(self, apdu: bytes) -> bytes:
        """Answer like VirtualCard, except for the broken part."""
        m = self.mode
        ins = apdu[1] if len(apdu) > 1 else -1
        if m is GarbageMode.STATUS_6F00:
            return b"\x6f\x00"
        if m is GarbageMode.SHORT_RESPONSE:
            return b"\x90"
        resp = self._card.process_apdu(apdu)
        if resp[-2:] != SW_OK:
            return resp
        body = resp[:-2]
        if m is GarbageMode.MALFORMED_FCI and ins == 0xA4:
            return body[:1] + bytes([len(body) + 10]) + body[2:] + SW_OK
        if m is GarbageMode.MALFORMED_GPO and ins == 0xA8:
            return body[: len(body) // 2] + SW_OK
        if m is GarbageMode.NO_CRYPTOGRAM and ins in (0xA8, 0xAE):
            objs = tlv.parse(body)
            if objs[0].tag == "77":
                kept = [tlv.encode(o.tag, o.value) for o in objs[0].children if o.tag != "9F26"]
                return tlv.encode("77", kept) + SW_OK
            if ins == 0xAE:  # format 1: CID and ATC only
                return tlv.encode("80", objs[0].value[:3]) + SW_OK
        if m is GarbageMode.WRONG_AID and ins == 0xA4 and apdu[5:5 + apdu[4]] not in (PSE_NAME, PPSE_NAME):
            return SW_FILE_NOT_FOUND
        return resp
