"""A chip (contact or contactless) transaction as a POS terminal runs it against the engine.

    read the card (SELECT, GPO, READ RECORD, first GENERATE AC)   -> ARQC and its tags
    0100/0200 with DE 55 (those tags), DE 35 (the chip's track 2 equivalent), DE 23 (PSN), DE 22 05x/07x,
        and for a contact card an online PIN block under the terminal's DUKPT key when asked
    the issuer's answer: tag 91 (ARPC || ARC) back to the card, second GENERATE AC -> TC or AAC

A terminal never leaves a hold behind: when no answer comes within its timeout, or the connection
drops, or the card refuses the issuer's approval (AAC after an approval, card pulled out before the
second GENERATE AC), it sends a 0400 reversal of the request, repeating it until the engine
acknowledges it (a repeated reversal changes nothing on the engine's side).

Reading the card goes through any ``transmit(apdu) -> response``: ``VirtualCard.process_apdu`` in
process or ``PcscReader.transmit`` through pcscd.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hsm_sim.files import write_private
from terminal_sim.emv import tlv
from terminal_sim.emv.card import CardProfile, VirtualCard, mask_pan
from terminal_sim.emv.kernel import CardReadResult, Transmit, complete, read_card
from terminal_sim.iso_client import ResponseTimeout, TerminalConnection
from terminal_sim.pos import CardData, PosTerminal

__all__ = [
    "ChipCard",
    "ChipResult",
    "ReversalFailed",
    "chip_transaction",
    "send_reversal",
    "DEFAULT_COUNTRY_NUMERIC",
]

DEFAULT_COUNTRY_NUMERIC = "0276"
REVERSAL_ATTEMPTS = 3
# CVM results (9F34): enciphered PIN verified online (result unknown to the terminal); no CVM required.
CVM_ONLINE_PIN = b"\x02\x00\x00"
CVM_NONE = b"\x1f\x03\x02"
APPROVED_CODES = frozenset({"00", "10"})
ARC_APPROVED = b"00"
ARC_UNABLE_ONLINE = b"Z3"

Reconnect = Callable[[], Awaitable[TerminalConnection]]


class ReversalFailed(ConnectionError):
    """The reversal of a request got no acknowledgement after every attempt (the hold may remain)."""

    def __init__(self, message: str, reversal: dict[str, Any]) -> None:
        super().__init__(message)
        self.reversal = reversal


@dataclass
class ChipResult:
    """What a chip transaction ended with, as the terminal's receipt shows it."""

    rc: str | None  # the engine's DE 39; None when no answer came
    approval_code: str | None
    cryptogram: str  # the card's final decision: "TC" or "AAC" (contactless: the issuer's decision)
    atc: int
    contactless: bool
    pan_masked: str
    amount_minor: int
    stan: str
    reversed: bool = False
    reason: str = ""
    request: dict[str, Any] = field(default_factory=dict, repr=False)
    answer: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def approved(self) -> bool:
        """Approved by the issuer, accepted by the card and not reversed."""
        return self.rc in APPROVED_CODES and self.cryptogram == "TC" and not self.reversed

    def as_json(self) -> dict[str, Any]:
        return {
            "rc": self.rc,
            "approved": self.approved,
            "approval_code": self.approval_code,
            "cryptogram": self.cryptogram,
            "atc": self.atc,
            "interface": "contactless" if self.contactless else "contact",
            "pan": self.pan_masked,
            "amount_minor": self.amount_minor,
            "stan": self.stan,
            "reversed": self.reversed,
            "reason": self.reason,
        }


class ChipCard:
    """A personalized card used in process by one terminal at a time (load runs).

    Contact and contactless share the card's one ATC, kept here in memory: each transaction gets a fresh
    VirtualCard of the chosen interface starting from the current ATC.
    """

    def __init__(self, profile: CardProfile, *, pin: str | None = None, card_id: int | None = None,
                 account_id: int | None = None, state_path: Path | None = None, is_wallet: bool = False) -> None:
        self.profile = profile
        self.is_wallet = is_wallet  # a phone holding a device token of the card, not the plastic
        self.pin = pin
        self.card_id = card_id
        self.account_id = account_id
        self.state_path = Path(state_path) if state_path is not None else None
        self.atc = profile.atc_start
        self._pin_tries_left = profile.pin_try_limit
        if self.state_path is not None and self.state_path.exists():
            saved = json.loads(self.state_path.read_text(encoding="utf-8"))
            self.atc = max(self.atc, int(saved["atc"]))
            self._pin_tries_left = int(saved.get("pin_tries_left", self._pin_tries_left))
        self.lock = asyncio.Lock()
        self._interfaces: dict[bool, CardProfile] = {}

    def save_state(self) -> None:
        """Write the ATC reached to the card's state file (the one `terminal-sim card` uses), if it has one."""
        if self.state_path is None:
            return
        write_private(self.state_path, json.dumps({"atc": self.atc, "pin_tries_left": self._pin_tries_left}).encode())

    def __repr__(self) -> str:
        return f"ChipCard({mask_pan(self.profile.pan)}, atc={self.atc})"

    def insert(self, contactless: bool) -> VirtualCard:
        """The card as a reader sees it on that interface, at its current ATC."""
        base = self._interfaces.get(contactless)
        if base is None:
            base = self._interfaces[contactless] = replace(self.profile, contactless=contactless)
        return VirtualCard(replace(base, atc_start=self.atc))

    def remove(self, card: VirtualCard) -> None:
        """Take the card back: remember the ATC it reached."""
        self.atc = max(self.atc, card.atc)


def _track2_for_de35(track2: str) -> str:
    return track2.replace("D", "=")


async def _request_once(
    conn: TerminalConnection | None,
    reconnect: Reconnect | None,
    terminal: PosTerminal,
    fields: dict[str, Any],
    timeout_s: float | None,
) -> tuple[dict[str, Any], TerminalConnection]:
    if conn is None:
        if reconnect is None:
            raise ConnectionError("the connection to the engine is closed")
        conn = await reconnect()
    conn.add_terminal(terminal)
    return await conn.request(fields, timeout_s=timeout_s), conn


async def send_reversal(
    conn: TerminalConnection | None,
    terminal: PosTerminal,
    original: dict[str, Any],
    *,
    reconnect: Reconnect | None = None,
    timeout_s: float | None = None,
    attempts: int = REVERSAL_ATTEMPTS,
) -> dict[str, Any]:
    """Send the 0400 of `original` until the engine acknowledges it; its 0410, or ReversalFailed."""
    reversal = terminal.reversal(original)
    last: BaseException | None = None
    for _ in range(max(1, attempts)):
        try:
            answer, conn = await _request_once(conn, reconnect, terminal, reversal, timeout_s)
            terminal.batch.record(reversal, answer)
            return answer
        except (ResponseTimeout, ConnectionError, OSError) as exc:
            last = exc
            conn = None if not isinstance(exc, ResponseTimeout) else conn
    raise ReversalFailed(
        f"reversal of STAN {original.get('11')} not acknowledged after {attempts} attempts: {last}", reversal
    )


async def chip_transaction(
    conn: TerminalConnection | None,
    terminal: PosTerminal,
    transmit: Transmit,
    amount_minor: int,
    *,
    contactless: bool,
    pin: str | None = None,
    mti: str = "0200",
    processing_code: str = "000000",
    amount_other_minor: int = 0,
    country_numeric: str = DEFAULT_COUNTRY_NUMERIC,
    timeout_s: float | None = None,
    reconnect: Reconnect | None = None,
    unpredictable_number: bytes | None = None,
    now: dt.datetime | None = None,
    on_read: Callable[[CardReadResult], None] | None = None,
) -> ChipResult:
    """Run one chip transaction: read the card, ask the issuer online, finish with the card.

    Raises CardError (nothing was sent) when the card cannot be read, and ReversalFailed when an
    unanswered request could not be reversed either. `reconnect` opens a new connection when the
    current one dropped (needed to reverse after a disconnect).
    """
    if mti not in ("0100", "0200"):
        raise ValueError(f"a chip transaction is an 0100 or 0200, not {mti}")
    now = now or dt.datetime.now(dt.UTC)
    read = read_card(
        transmit,
        contactless=contactless,
        amount_minor=amount_minor,
        amount_other_minor=amount_other_minor,
        currency_numeric=terminal.currency_numeric,
        country_numeric=country_numeric,
        transaction_type=processing_code[:2],
        unpredictable_number=unpredictable_number or os.urandom(4),
        date=now.date(),
        cvm_results=CVM_ONLINE_PIN if pin is not None else CVM_NONE,
    )
    if on_read is not None:
        on_read(read)
    atc = int.from_bytes(read.icc_tags["9F36"], "big")
    if read.cryptogram_type == "AAC":
        # The card declined offline: nothing goes to the issuer.
        return ChipResult(None, None, "AAC", atc, contactless, mask_pan(read.pan), amount_minor, "",
                          reason="card declined offline (AAC)")
    track2 = _track2_for_de35(read.track2)
    card = CardData(pan=read.pan, expiry=read.expiry, track2=track2, cvv2="", pin=pin, chip_track2=track2,
                    psn=read.psn or "00")
    request = terminal.card_request(
        card,
        amount_minor,
        mti=mti,
        processing_code=processing_code,
        entry="contactless" if contactless else "chip",
        with_pin=pin is not None,
        icc=read.de55().hex().upper(),
        now=now,
    )
    request["2"] = read.pan  # the number the chip presents: the card's PAN, or a wallet's device token
    result = ChipResult(None, None, "AAC", atc, contactless, mask_pan(read.pan), amount_minor, request["11"],
                        request=request)
    try:
        answer, conn = await _request_once(conn, reconnect, terminal, request, timeout_s)
    except (ResponseTimeout, ConnectionError, OSError) as exc:
        # Unable to go online: the card ends with an AAC, and whatever the engine did is reversed.
        result.reason = f"no answer: {exc}"
        _finish_quietly(transmit, read, approved=False, arc=ARC_UNABLE_ONLINE)
        await send_reversal(None if not isinstance(exc, ResponseTimeout) else conn, terminal, request,
                            reconnect=reconnect, timeout_s=timeout_s)
        result.reversed = True
        return result
    result.answer = answer
    terminal.batch.record(request, answer)
    result.rc = str(answer.get("39", ""))
    approved = result.rc in APPROVED_CODES
    result.approval_code = answer.get("38") if approved else None
    issuer_tags = _issuer_tags(answer)
    try:
        result.cryptogram = complete(transmit, issuer_tags, approved, read_result=read,
                                     arc=ARC_APPROVED if approved else None)
    except Exception as exc:  # noqa: BLE001 - card answered garbage, or was pulled out (PcscError): no TC
        result.cryptogram = "AAC"
        result.reason = f"card: {exc}"
    if approved and result.cryptogram != "TC":
        # Approved online but the card refused to finish (bad ARPC, card removed): undo at the issuer.
        result.reason = result.reason or "card declined the issuer's approval (AAC)"
        await send_reversal(conn, terminal, request, reconnect=reconnect, timeout_s=timeout_s)
        result.reversed = True
    elif not result.reason:
        result.reason = str(answer.get("_reason", "")) or ("approved" if approved else "declined")
    return result


def _issuer_tags(answer: dict[str, Any]) -> dict[str, bytes]:
    raw = answer.get("55")
    if not raw:
        return {}
    try:
        return tlv.flatten(tlv.parse(bytes.fromhex(raw) if isinstance(raw, str) else bytes(raw)))
    except (ValueError, tlv.TlvError):
        return {}


def _finish_quietly(transmit: Transmit, read: CardReadResult, *, approved: bool, arc: bytes) -> None:
    """Second GENERATE AC asking for an AAC; the card may already be gone, which changes nothing."""
    try:
        complete(transmit, {}, approved, read_result=read, arc=arc)
    except Exception:  # noqa: BLE001 - the transaction is already being reversed
        pass
