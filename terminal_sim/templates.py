"""Prepared request templates for throughput runs (`terminal-sim load --templates`).

A load generator on the same cores as the engine must cost much less than what it measures. Building a
request field by field, encoding it and decoding every answer in full costs several times an engine's
decode; here each terminal and kind has its message encoded once, framed, and each request copies it and
patches in place what changes: the card's fields, amount, STAN, RRN, times, KSN and, last, the MAC under
the DUKPT request-MAC key of that KSN (terminal_sim.fastmac). The bytes sent are the ones the full path
would send for the same values (tests/terminal/test_templates.py checks it), so the engine cannot tell
the two apart.

Each answer is checked without decoding it in full (`Prepared.check`): the answer MTI of its request, the
same STAN, RRN and terminal, a MAC under the response-MAC key of the request's KSN as its last field, and
its response code; AnswerLayouts finds those fields from a layout kept per bitmap.

The kinds sent as one request each (purchase, manual, preauth, balance, refund) have templates; the PIN
and chip kinds, completions and reversals run the full terminal path.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Any

from processor.iso8583 import SPEC, response_mti
from processor.iso8583.codec import COMPILED
from processor.iso8583.mac import MAC_BYTES, mac_field
from terminal_sim.fastmac import DesBlocks, DukptPath
from terminal_sim.pos import CardData, PosTerminal, encode_de48, next_dukpt_counter

TEMPLATE_KINDS = frozenset({"purchase", "manual", "preauth", "balance", "refund"})
# What a kind's request says, beside its card and amount (as Workload.next builds it).
KIND_SHAPE: dict[str, dict[str, Any]] = {
    "purchase": {"entry": "magstripe"},
    "manual": {"entry": "manual"},
    "preauth": {"mti": "0100", "entry": "magstripe"},
    "balance": {"processing_code": "310000", "entry": "magstripe"},
    "refund": {"processing_code": "200000", "entry": "magstripe"},
}
# The fields patched per request, in the order of Prepared's values; the card's, per card.
PER_REQUEST = ("4", "7", "11", "12", "13", "37", "53")
CARD_FIELDS = {"manual": ("2", "14", "48")}
CARD_FIELDS_DEFAULT = ("35",)
# The request fields the terminal's journal, a completion and a reversal read back.
KEPT = ("t", "3", "4", "7", "11", "32", "2", "35", "22")
FRAME_HEADER_BYTES = 2
MAX_TEMPLATES = 4096
MAX_LAYOUTS = 256


@dataclass(frozen=True, slots=True)
class Template:
    """One framed message with a zero MAC, where each patched field starts in it, and what its answer is."""

    framed: bytes
    starts: tuple[int, ...]  # PER_REQUEST's fields, in that order
    card_starts: tuple[int, ...]  # the kind's card fields
    kept: dict[str, Any]
    answer_mti: bytes
    debit_or_credit: str | None  # what an approval adds to the terminal's batch


@dataclass(slots=True)
class Prepared:
    """One request as sent, and what its answer must match."""

    framed: bytes
    kind: str
    template: Template
    terminal: PosTerminal
    stan: bytes
    de7: bytes
    rrn: bytes
    amount_minor: int
    response_key: bytes

    @property
    def payload(self) -> bytes:
        return self.framed[FRAME_HEADER_BYTES:]

    def fields(self) -> dict[str, Any]:
        """The request fields a journal, a completion or a reversal of it reads."""
        kept = dict(self.template.kept)
        kept["4"] = f"{self.amount_minor:012d}"
        kept["7"] = self.de7.decode("ascii")
        kept["11"] = self.stan.decode("ascii")
        return kept

    def check(self, raw: bytes, spans: dict[str, tuple[int, int]] | None, des: DesBlocks) -> tuple[str | None, str | None]:
        """(response code, None) for an answer that is this request's and carries the engine's MAC; else
        (the code when readable, why the answer is not one)."""
        if spans is None:
            return None, "an answer that does not decode"
        code_span = spans.get("39")
        code = raw[code_span[0] : code_span[1]].decode("ascii", "replace") if code_span else None
        if raw[:4] != self.template.answer_mti:
            return code, "an answer of another message type"
        rrn = spans.get("37")
        if rrn is None or raw[rrn[0] : rrn[1]] != self.rrn:
            return code, "an answer with another RRN"
        if code is None:
            return None, "an answer without a response code"
        # The MAC is DE 128 in a message with a secondary bitmap, else DE 64 (processor.iso8583.mac's rule).
        mac = spans.get("128" if raw[4] & 0x80 else "64")
        if (mac is None or mac[1] != len(raw) or mac[1] - mac[0] != MAC_BYTES or "64" in spans and "128" in spans
                or des.retail_mac(self.response_key, raw[:-MAC_BYTES]) != raw[-MAC_BYTES:]):
            return code, "an answer without the engine's MAC"
        return code, None


class AnswerLayouts:
    """Where each field of an answer sits, from a layout kept per bitmap: an answer with the same bitmap,
    the same length and the same length prefixes has the same layout; anything else is walked afresh."""

    def __init__(self) -> None:
        self._layouts: dict[bytes, tuple[int, tuple[tuple[int, int, bytes], ...], dict[str, tuple[int, int]]]] = {}

    def spans(self, raw: bytes) -> dict[str, tuple[int, int]] | None:
        """{field: (start, end)} of the answer's data, or None when it does not decode."""
        head = raw[4:20] if len(raw) > 4 and raw[4] & 0x80 else raw[4:12]
        layout = self._layouts.get(head)
        if layout is not None:
            length, prefixes, spans = layout
            if len(raw) == length:
                for start, end, prefix in prefixes:
                    if raw[start:end] != prefix:
                        break
                else:
                    return spans
        spans = COMPILED.spans(raw)
        if spans is None:
            return None
        prefixes = tuple(
            (start - SPEC[key]["len_type"], start, raw[start - SPEC[key]["len_type"] : start])
            for key, (start, _) in spans.items()
            if key in SPEC and SPEC[key]["len_type"]
        )
        if len(self._layouts) >= MAX_LAYOUTS:
            self._layouts.clear()
        self._layouts[head] = (len(raw), prefixes, spans)
        return spans


class RequestTemplates:
    """Builds a terminal's next request of a kind from its template."""

    def __init__(self, des: DesBlocks | None = None) -> None:
        self.des = des or DesBlocks()
        self._templates: dict[tuple[Any, ...], Template] = {}
        self._card_bytes: dict[tuple[int, str], tuple[bytes, ...]] = {}
        self._paths: dict[int, tuple[PosTerminal, DukptPath, int]] = {}
        self._second = -1
        self._clock: tuple[bytes, bytes, bytes, bytes] = (b"", b"", b"", b"")

    def _times(self) -> tuple[bytes, bytes, bytes, bytes]:
        # DE 7, 12 and 13 and the RRN's date part change once a second: formatted once a second, for all.
        second = int(time.time())
        if second != self._second:
            now = dt.datetime.fromtimestamp(second, dt.UTC)
            self._second = second
            self._clock = (
                now.strftime("%m%d%H%M%S").encode(), now.strftime("%H%M%S").encode(), now.strftime("%m%d").encode(),
                f"{now.year % 10}{now.strftime('%j%H')}".encode(),
            )
        return self._clock

    @staticmethod
    def card_values(kind: str, card: CardData) -> tuple[str, ...]:
        if kind == "manual":
            return (card.pan, card.expiry, encode_de48({"C2": card.cvv2}))
        return (card.track2,)

    def _path(self, terminal: PosTerminal) -> tuple[DukptPath, int]:
        known = self._paths.get(id(terminal))
        if known is None or known[0] is not terminal:
            if terminal.ipek is None or terminal.initial_ksn is None:
                raise RuntimeError(f"terminal {terminal.terminal_id} has no DUKPT key injected")
            ksn = bytes.fromhex(terminal.initial_ksn)
            known = self._paths[id(terminal)] = (terminal, DukptPath(bytes.fromhex(terminal.ipek), ksn, self.des), int.from_bytes(ksn, "big"))
        return known[1], known[2]

    def prepare(self, terminal: PosTerminal, kind: str, card: CardData, amount_minor: int) -> Prepared:
        """The terminal's next request of `kind` (a TEMPLATE_KINDS one) for the card, framed and MACed."""
        de7, de12, de13, rrn_date = self._times()
        stan = terminal.next_stan().encode()
        # The terminal's DUKPT counter moves as next_ksn() moves it; the KSN goes in as its 10 bytes.
        counter = terminal.dukpt_counter = next_dukpt_counter(terminal.dukpt_counter)
        path, ksn_base = self._path(terminal)
        if kind == "balance":
            amount_minor = 0
        card_bytes = self._card_bytes.get((id(card), kind))
        if card_bytes is None:
            if len(self._card_bytes) >= MAX_TEMPLATES:
                self._card_bytes.clear()
            card_bytes = self._card_bytes[(id(card), kind)] = tuple(v.encode("ascii") for v in self.card_values(kind, card))
        shape = (id(terminal), kind, *map(len, card_bytes))
        template = self._templates.get(shape)
        if template is None:
            if len(self._templates) >= MAX_TEMPLATES:
                self._templates.clear()
            template = self._templates[shape] = self._template(terminal, kind, card)
        rrn = rrn_date + stan
        message = bytearray(template.framed)
        a, t7, t11, t12, t13, t37, t53 = template.starts
        message[a : a + 12] = b"%012d" % amount_minor
        message[t7 : t7 + 10] = de7
        message[t11 : t11 + 6] = stan
        message[t12 : t12 + 6] = de12
        message[t13 : t13 + 4] = de13
        message[t37 : t37 + 12] = rrn
        message[t53 : t53 + 10] = (ksn_base | counter).to_bytes(10, "big")
        for start, value in zip(template.card_starts, card_bytes):
            message[start : start + len(value)] = value
        request_key, response_key = path.mac_keys(counter)
        message[-MAC_BYTES:] = self.des.retail_mac(request_key, bytes(message[FRAME_HEADER_BYTES:-MAC_BYTES]))
        return Prepared(bytes(message), kind, template, terminal, stan, de7, rrn, amount_minor, response_key)

    def build(self, terminal: PosTerminal, kind: str, card: CardData, amount_minor: int) -> tuple[bytes, dict[str, Any], str]:
        """The request as sent (MACed, unframed), the fields a journal or reversal needs, and its KSN in hex."""
        prepared = self.prepare(terminal, kind, card, amount_minor)
        ksn = prepared.payload[prepared.template.starts[6] - FRAME_HEADER_BYTES :][:10].hex().upper()
        return prepared.payload, prepared.fields(), ksn

    def _template(self, terminal: PosTerminal, kind: str, card: CardData) -> Template:
        """Encode the kind's request once, the full way, and find where its changing fields sit."""
        fields = terminal.card_request(card, 0, now=dt.datetime(2026, 1, 1, tzinfo=dt.UTC), **KIND_SHAPE[kind])
        # card_request took a STAN of its own: the template's fields are placeholders of the same widths.
        fields.update({"4": "0" * 12, "11": "0" * 6, "37": "0" * 12, "53": "00" * 10})
        for key, value in zip(CARD_FIELDS.get(kind, CARD_FIELDS_DEFAULT), self.card_values(kind, card)):
            fields[key] = value
        fields.pop("64", None)
        fields.pop("128", None)
        fields[mac_field(fields)] = "00" * MAC_BYTES
        raw = COMPILED.encode(fields)
        spans = COMPILED.spans(raw) if raw is not None else None
        if raw is None or spans is None:
            raise ValueError(f"the {kind} request of terminal {terminal.terminal_id} has no template form")
        widths = {"4": 12, "7": 10, "11": 6, "12": 6, "13": 4, "37": 12, "53": 10}
        for key, width in widths.items():
            if spans[key][1] - spans[key][0] != width:
                raise ValueError(f"field {key} of the {kind} template is not where its value goes")
        debit_or_credit = None
        if fields["t"] == "0200":
            debit_or_credit = {"20": "credit", "00": "debit"}.get(fields["3"][:2])
        return Template(
            framed=len(raw).to_bytes(FRAME_HEADER_BYTES, "big") + raw,
            starts=tuple(spans[key][0] + FRAME_HEADER_BYTES for key in PER_REQUEST),
            card_starts=tuple(spans[key][0] + FRAME_HEADER_BYTES for key in CARD_FIELDS.get(kind, CARD_FIELDS_DEFAULT)),
            kept={key: fields[key] for key in KEPT if key in fields},
            answer_mti=response_mti(fields["t"]).encode("ascii"),
            debit_or_credit=debit_or_credit,
        )
