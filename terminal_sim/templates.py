"""Prepared request templates for throughput runs (`terminal-sim load --templates`).

A load generator on the same cores as the engine must cost much less than what it measures. Building a
request field by field, encoding it and decoding every answer in full costs several times an engine's
decode; here each terminal and kind has its message encoded once, and each request copies it and patches
in place what changes: the card's fields, amount, STAN, RRN, times, KSN and, last, the MAC under the
DUKPT request-MAC key of that KSN. The bytes sent are the ones the full path would send for the same
values (tests/terminal/test_templates.py checks it), so the engine cannot tell the two apart.

The kinds sent as one request each (purchase, manual, preauth, balance, refund) have templates; the PIN
and chip kinds, completions and reversals run the full terminal path.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Any

from hsm_sim.crypto.dukpt import mac_request_key
from hsm_sim.crypto.mac import retail_mac
from processor.iso8583.codec import COMPILED
from processor.iso8583.mac import MAC_BYTES, mac_field
from terminal_sim.pos import CardData, PosTerminal, encode_de48

TEMPLATE_KINDS = frozenset({"purchase", "manual", "preauth", "balance", "refund"})
# What changes from one request to the next; the rest of a terminal's message for a kind stays.
PER_REQUEST = ("4", "7", "11", "12", "13", "37", "53")
PER_CARD = {"manual": ("2", "14", "48")}
PER_CARD_DEFAULT = ("35",)
# What a kind's request says, beside its card and amount (as Workload.next builds it).
KIND_SHAPE: dict[str, dict[str, Any]] = {
    "purchase": {"entry": "magstripe"},
    "manual": {"entry": "manual"},
    "preauth": {"mti": "0100", "entry": "magstripe"},
    "balance": {"processing_code": "310000", "entry": "magstripe"},
    "refund": {"processing_code": "200000", "entry": "magstripe"},
}
# The request fields the terminal's journal and a reversal read back.
KEPT = ("t", "3", "4", "7", "11", "32", "2", "35", "22")


@dataclass(frozen=True, slots=True)
class Template:
    """One encoded message and where each patched field's data sits in it."""

    raw: bytes
    spans: tuple[tuple[str, int, int, bool], ...]  # (field, start, end, binary)
    kept: dict[str, Any]


class RequestTemplates:
    """Builds a terminal's next request of a kind from its template: (bytes to send, fields kept, STAN, KSN)."""

    def __init__(self) -> None:
        self._templates: dict[tuple[Any, ...], Template] = {}
        self._second = -1
        self._clock: dict[str, str] = {}

    def _times(self) -> dict[str, str]:
        # The transmission and local times change once a second: formatted once a second, for every terminal.
        second = int(time.time())
        if second != self._second:
            now = dt.datetime.fromtimestamp(second, dt.UTC)
            self._second = second
            self._clock = {
                "7": now.strftime("%m%d%H%M%S"), "12": now.strftime("%H%M%S"), "13": now.strftime("%m%d"),
                "37": f"{now.year % 10}{now.strftime('%j%H')}",
            }
        return self._clock

    @staticmethod
    def card_values(kind: str, card: CardData) -> dict[str, str]:
        if kind == "manual":
            return {"2": card.pan, "14": card.expiry, "48": encode_de48({"C2": card.cvv2})}
        return {"35": card.track2}

    def build(self, terminal: PosTerminal, kind: str, card: CardData, amount_minor: int) -> tuple[bytes, dict[str, Any], str]:
        """The request as sent (MACed), the fields a journal or reversal needs, and its KSN."""
        clock = self._times()
        stan = terminal.next_stan()
        ksn = terminal.next_ksn()
        values = self.card_values(kind, card)
        values["4"] = f"{0 if kind == 'balance' else amount_minor:012d}"
        values["7"] = clock["7"]
        values["11"] = stan
        values["12"] = clock["12"]
        values["13"] = clock["13"]
        values["37"] = clock["37"] + stan
        values["53"] = ksn
        shape = (id(terminal), kind, *(len(values[k]) for k in (PER_CARD.get(kind, PER_CARD_DEFAULT))))
        template = self._templates.get(shape)
        if template is None:
            template = self._templates[shape] = self._prepare(terminal, kind, card, values)
        message = bytearray(template.raw)
        for key, start, end, binary in template.spans:
            message[start:end] = bytes.fromhex(values[key]) if binary else values[key].encode("ascii")
        covered = bytes(message[:-MAC_BYTES])
        message[-MAC_BYTES:] = retail_mac(mac_request_key(terminal._transaction_key(ksn)), covered, cache=False)
        kept = dict(template.kept)
        for key in ("2", "35", "4", "7", "11"):
            if key in values:
                kept[key] = values[key]
        return bytes(message), kept, ksn

    @staticmethod
    def _prepare(terminal: PosTerminal, kind: str, card: CardData, values: dict[str, str]) -> Template:
        """Encode the kind's request once, the full way, and find where its changing fields sit."""
        fields = terminal.card_request(card, int(values["4"]), **KIND_SHAPE[kind])
        fields.update(values)
        fields.pop("64", None)
        fields.pop("128", None)
        fields[mac_field(fields)] = "00" * MAC_BYTES
        raw = COMPILED.encode(fields)
        spans = COMPILED.spans(raw) if raw is not None else None
        if raw is None or spans is None:
            raise ValueError(f"the {kind} request of terminal {terminal.terminal_id} has no template form")
        binary = {"53"}
        patched = tuple((key, *spans[key], key in binary) for key in values)
        for key, start, end, is_binary in patched:
            width = len(values[key]) // 2 if is_binary else len(values[key])
            if end - start != width:
                raise ValueError(f"field {key} of the {kind} template is not where its value goes")
        kept = {key: fields[key] for key in KEPT if key in fields}
        return Template(raw, patched, kept)
