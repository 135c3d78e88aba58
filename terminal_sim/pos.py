"""A simulated POS terminal: builds the ISO 8583 requests a real one sends, with its own DUKPT keys.

The terminal holds its initial key (IPEK) as a key-loading device injected it, and advances its KSN
counter for every PIN it encrypts, skipping counters with more than ten one-bits as ANSI X9.24-1 requires.
"""

from __future__ import annotations

import datetime as dt
import hmac
import itertools
from dataclasses import dataclass, field
from typing import Any

from hsm_sim.crypto.des import tdes_ecb_encrypt
from hsm_sim.crypto.dukpt import COUNTER_MASK, TransactionKeys, mac_request_key, mac_response_key, pin_encryption_key
from hsm_sim.crypto.mac import retail_mac
from hsm_sim.crypto.pinblock import encode_pin_block
from processor.iso8583 import MessageFormatError, chip_service_code, decode
from processor.iso8583.mac import MAC_BYTES, encode_for_mac, signed_parts
from terminal_sim.journal import TerminalBatch

COUNTER_BITS = 21
MAX_ONE_BITS = 10


class InsertChip(ValueError):
    """A chip card was swiped at a terminal with a chip reader: the terminal asks for the chip instead."""


@dataclass(frozen=True, slots=True)
class CardData:
    """What a terminal can read or be told about a card: the card carrier's data, and the PIN its holder knows."""

    pan: str
    expiry: str
    track2: str
    cvv2: str
    pin: str | None = None
    chip_track2: str | None = None
    psn: str = "00"
    card_id: int | None = None
    account_id: int | None = None

    @property
    def has_chip(self) -> bool:
        """The stripe's service code says the card carries a chip."""
        _, _, rest = self.track2.replace("D", "=").partition("=")
        return chip_service_code(rest[4:7])

    @classmethod
    def from_issued(cls, issued: dict[str, Any], pin: str | None) -> "CardData":
        return cls(
            pan=issued["pan"],
            expiry=issued["expiry"],
            track2=issued["track2"],
            cvv2=issued["cvv2"],
            pin=pin,
            chip_track2=issued.get("chip_track2"),
            psn=issued.get("psn", "00"),
            card_id=issued.get("id"),
            account_id=issued.get("account_id"),
        )


def next_dukpt_counter(counter: int) -> int:
    """The next usable transaction counter after `counter` (X9.24-1: at most ten one-bits)."""
    candidate = counter + 1
    while bin(candidate).count("1") > MAX_ONE_BITS:
        # Adding the lowest set bit skips the whole run of counters that would keep too many one-bits.
        candidate += candidate & -candidate
    if candidate >= 2**COUNTER_BITS:
        raise RuntimeError("DUKPT counter exhausted: the terminal needs a new initial key")
    return candidate


@dataclass
class PosTerminal:
    """One terminal: identity, DUKPT state, and a STAN sequence."""

    terminal_id: str
    merchant_id: str
    mcc: str = "5411"
    ipek: str | None = None
    initial_ksn: str | None = None
    acquirer_id: str = "000001"
    currency_numeric: str = "978"
    name_location: str = "Simulated Merchant      Berlin       DE"
    dukpt_counter: int = 0
    chip_capable: bool = True
    batch: TerminalBatch = field(default_factory=TerminalBatch)
    _stan: itertools.count = field(default_factory=lambda: itertools.count(1))
    _last_key: tuple[str, bytes] | None = field(default=None, init=False, repr=False, compare=False)
    # The keys on the path of the latest counter, as a terminal's future-key registers keep them.
    _keys: TransactionKeys = field(default_factory=lambda: TransactionKeys(max_devices=4), init=False, repr=False, compare=False)

    @classmethod
    def from_registered(cls, registered: dict[str, Any], currency_numeric: str = "978") -> "PosTerminal":
        return cls(
            terminal_id=registered["terminal_id"],
            merchant_id=registered["merchant_id"],
            mcc=registered.get("mcc", "5411"),
            ipek=registered.get("ipek"),
            initial_ksn=registered.get("initial_ksn"),
            currency_numeric=currency_numeric,
            chip_capable=bool(registered.get("chip_capable", True)),
        )

    # ------------------------------------------------------------ security

    def next_ksn(self) -> str:
        """The KSN of this terminal's next transaction (its DUKPT counter moves forward)."""
        if self.ipek is None or self.initial_ksn is None:
            raise RuntimeError(f"terminal {self.terminal_id} has no DUKPT key injected")
        self.dukpt_counter = next_dukpt_counter(self.dukpt_counter)
        return f"{int(self.initial_ksn, 16) | self.dukpt_counter:020X}"

    def _transaction_key(self, ksn: str) -> bytes:
        """The DUKPT transaction key of `ksn`; its PIN block, its MAC and the answer's MAC share it."""
        assert self.ipek is not None
        last = self._last_key
        if last is not None and last[0] == ksn:
            return last[1]
        key = self._keys.get(self.ipek, bytes.fromhex(self.ipek), bytes.fromhex(ksn))
        self._last_key = (ksn, key)
        return key

    def owns(self, ksn: str) -> bool:
        """The KSN is one of this terminal's (its initial KSN but for the counter)."""
        try:
            return self.initial_ksn is not None and int(ksn, 16) & ~COUNTER_MASK == int(self.initial_ksn, 16) and len(ksn) == 20
        except ValueError:
            return False

    def encrypt_pin(self, pin: str, pan: str) -> tuple[str, str]:
        """(PIN block hex, KSN hex): ISO format 0 under this transaction's DUKPT PIN key."""
        ksn = self.next_ksn()
        key = pin_encryption_key(self._transaction_key(ksn))
        block = tdes_ecb_encrypt(key, encode_pin_block(pin, pan, 0))
        return block.hex().upper(), ksn

    def sign(self, fields: dict[str, Any]) -> tuple[bytes, str]:
        """(the message as sent, its KSN): DE 53 the KSN of this transaction (its PIN block's when it has
        one, else the next), and as its last field the MAC under that KSN's DUKPT request-MAC key."""
        ksn = fields.get("53")
        if ksn and self.owns(ksn):
            # A PIN block built by a copy of this terminal still spends the counter here.
            self.dukpt_counter = max(self.dukpt_counter, int(ksn, 16) & COUNTER_MASK)
        else:
            ksn = self.next_ksn()
        raw = encode_for_mac({**fields, "53": ksn})
        tag = retail_mac(mac_request_key(self._transaction_key(ksn)), raw[:-MAC_BYTES], cache=False)
        return raw[:-MAC_BYTES] + tag, ksn

    def authentic(self, payload: bytes, ksn: str, decoded: dict[str, Any] | None = None) -> bool:
        """The answer carries, as its last field, the MAC under the response-MAC key of the request's KSN
        (`decoded`: the payload already decoded, when the caller has it)."""
        try:
            parts = signed_parts(payload, decoded if decoded is not None else decode(payload))
        except MessageFormatError:
            return False
        if parts is None:
            return False
        data, tag = parts
        expected = retail_mac(mac_response_key(self._transaction_key(ksn)), data, cache=False).hex().upper()
        return hmac.compare_digest(expected, tag)

    # ------------------------------------------------------------ message building

    def next_stan(self) -> str:
        return f"{next(self._stan) % 1_000_000 or 1:06d}"

    def _base(self, mti: str, processing_code: str, amount_minor: int, now: dt.datetime | None) -> dict[str, Any]:
        now = now or dt.datetime.now(dt.UTC)
        stan = self.next_stan()
        return {
            "t": mti,
            "3": processing_code,
            "4": f"{amount_minor:012d}",
            "7": now.strftime("%m%d%H%M%S"),
            "11": stan,
            "12": now.strftime("%H%M%S"),
            "13": now.strftime("%m%d"),
            "18": self.mcc,
            "32": self.acquirer_id,
            "37": f"{now.year % 10}{now.strftime('%j%H')}{stan}",
            "41": self.terminal_id.ljust(8),
            "42": self.merchant_id.ljust(15),
            "43": self.name_location[:40].ljust(40),
            "49": self.currency_numeric,
        }

    def card_request(
        self,
        card: CardData,
        amount_minor: int,
        *,
        mti: str = "0200",
        processing_code: str = "000000",
        entry: str = "magstripe",
        with_pin: bool = False,
        pin: str | None = None,
        cvv2: str | None = None,
        partial_ok: bool = False,
        icc: str | None = None,
        now: dt.datetime | None = None,
        extra_de48: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """A card-present or keyed request. entry: magstripe, chip, contactless, manual, fallback.

        A chip card swiped at a terminal with a chip reader raises InsertChip: the stripe of a chip card is
        read only after its chip failed (entry "fallback", DE 22 80).
        """
        if entry == "magstripe" and self.chip_capable and card.has_chip:
            raise InsertChip(f"terminal {self.terminal_id}: chip card, insert it (a swipe is only a fallback)")
        if entry == "fallback" and not self.chip_capable:
            raise ValueError(f"terminal {self.terminal_id} has no chip reader to fall back from")
        fields = self._base(mti, processing_code, amount_minor, now)
        pin_capability = "1"
        if entry == "manual":
            fields["2"] = card.pan
            fields["14"] = card.expiry
            fields["22"] = "012"
            pin_capability = "2"
        else:
            chip = entry in ("chip", "contactless") and card.chip_track2 is not None
            fields["35"] = card.chip_track2 if chip else card.track2
            fields["23"] = f"{int(card.psn):03d}"
            fields["22"] = {"magstripe": "90", "chip": "05", "contactless": "07", "fallback": "80"}[entry] + "1"
        if entry == "manual":
            fields["22"] = "01" + pin_capability
        if with_pin:
            secret = pin if pin is not None else card.pin
            if secret is None:
                raise ValueError("this card has no PIN to enter")
            block, ksn = self.encrypt_pin(secret, card.pan)
            fields["52"] = block
            fields["53"] = ksn
        de48: dict[str, str] = dict(extra_de48 or {})
        if cvv2 is not None:
            de48["C2"] = cvv2
        if partial_ok:
            de48["PA"] = "1"
        if de48:
            fields["48"] = encode_de48(de48)
        if icc is not None:
            fields["55"] = icc
        return fields

    def original_data(self, original: dict[str, Any]) -> str:
        """DE 90 pointing at an earlier request of this terminal."""
        return f"{original['t']}{original['11']}{original['7']}{original['32'].rjust(11, '0')}{'0' * 11}"

    def completion(self, original: dict[str, Any], amount_minor: int, now: dt.datetime | None = None) -> dict[str, Any]:
        fields = self._base("0220", original["3"], amount_minor, now)
        fields["2"] = _pan_of(original)
        fields["22"] = original.get("22", "901")
        fields["90"] = self.original_data(original)
        return fields

    def incremental(self, original: dict[str, Any], extra_minor: int, now: dt.datetime | None = None) -> dict[str, Any]:
        fields = self._base("0100", original["3"], extra_minor, now)
        fields["2"] = _pan_of(original)
        fields["22"] = "012"
        fields["90"] = self.original_data(original)
        fields["48"] = encode_de48({"IA": "1"})
        return fields

    def reversal(
        self, original: dict[str, Any], *, remaining_minor: int | None = None, advice: bool = False, now: dt.datetime | None = None
    ) -> dict[str, Any]:
        """0400 (or 0420): full reversal, or partial when `remaining_minor` says what the sale really was."""
        fields = self._base("0420" if advice else "0400", original["3"], int(original["4"]), now)
        fields["2"] = _pan_of(original)
        fields["90"] = self.original_data(original)
        if remaining_minor is not None:
            fields["95"] = f"{remaining_minor:012d}".ljust(42, "0")
        return fields

    def echo(self, code: str = "301", now: dt.datetime | None = None) -> dict[str, Any]:
        now = now or dt.datetime.now(dt.UTC)
        return {
            "t": "0800",
            "7": now.strftime("%m%d%H%M%S"),
            "11": self.next_stan(),
            "41": self.terminal_id.ljust(8),
            "70": code,
        }


def encode_de48(elements: dict[str, str]) -> str:
    """DE 48 sub-elements: tag (2) + length (3 digits) + value, in the order given."""
    return "".join(f"{tag}{len(value):03d}{value}" for tag, value in elements.items())


def _pan_of(original: dict[str, Any]) -> str:
    if original.get("2"):
        return str(original["2"])
    return str(original["35"]).split("=", 1)[0]
