"""Typed, read-only views of decoded requests, and the answer built from a request."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .codec import REPEAT_MTIS, MessageFormatError, parse_de48
from .tlv import decode_tlv

TRANSACTION_TYPES = {"00": "purchase", "01": "cash", "09": "cashback", "20": "refund", "31": "balance"}
ECHOED_FIELDS = ("2", "3", "4", "7", "11", "12", "13", "32", "37", "41", "42", "49")


def chip_service_code(service_code: str) -> bool:
    """A service code whose first digit says the card carries a chip (2: international, 6: national)."""
    return service_code[:1] in ("2", "6")


@dataclass(frozen=True, slots=True)
class Track2:
    """Track 2 (or its chip equivalent): PAN=YYMM, service code, then PVKI(1) PVV(4) CVV(3) and padding."""

    pan: str
    expiry: str
    service_code: str
    discretionary: str

    @property
    def has_chip(self) -> bool:
        return chip_service_code(self.service_code)

    @property
    def pvki(self) -> str | None:
        return self.discretionary[0:1] or None

    @property
    def pvv(self) -> str | None:
        return self.discretionary[1:5] if len(self.discretionary) >= 5 else None

    @property
    def cvv(self) -> str | None:
        return self.discretionary[5:8] if len(self.discretionary) >= 8 else None


def parse_track2(text: str) -> Track2:
    """'PAN=YYMMSSSdiscretionary' (or 'D' as separator, as chips write it)."""
    text = text.upper().rstrip("F")
    sep = "=" if "=" in text else "D"
    pan, _, rest = text.partition(sep)
    if not (pan.isdigit() and 12 <= len(pan) <= 19) or len(rest) < 7 or not rest[:7].isdigit():
        raise MessageFormatError("track 2 is not PAN=YYMM plus service code: field 35", "35")
    return Track2(pan=pan, expiry=rest[:4], service_code=rest[4:7], discretionary=rest[7:])


def build_track2(pan: str, expiry: str, service_code: str, cvv: str, *, discretionary: str = "") -> str:
    """Track 2 of our cards: PAN=YYMM SSS, then `discretionary` (PVKI+PVV) and the CVV, zero-padded."""
    data = f"{pan}={expiry}{service_code}{discretionary}{cvv}"
    return data.ljust(min(37, max(len(data), len(pan) + 21)), "0")


@dataclass(frozen=True, slots=True)
class OriginalData:
    """DE 90: which earlier request a reversal or completion refers to."""

    mti: str
    stan: str
    transmission_time: str
    acquirer_id: str


@dataclass(frozen=True, slots=True)
class Balance:
    """One DE 54 amount: account type, amount type (01 ledger, 02 available, 57 original), currency, signed amount."""

    account_type: str
    amount_type: str
    currency_numeric: str
    amount_minor: int

    def encode(self) -> str:
        sign = "C" if self.amount_minor >= 0 else "D"
        return f"{self.account_type:0>2}{self.amount_type:0>2}{self.currency_numeric:0>3}{sign}{abs(self.amount_minor):012d}"

    @classmethod
    def parse_all(cls, text: str) -> list["Balance"]:
        if len(text) % 20:
            raise MessageFormatError("additional amounts are not a multiple of 20 characters: field 54", "54")
        out = []
        for i in range(0, len(text), 20):
            chunk = text[i : i + 20]
            sign, amount = chunk[7], chunk[8:]
            if sign not in "CD" or not amount.isdigit():
                raise MessageFormatError("additional amount malformed: field 54", "54")
            out.append(cls(chunk[0:2], chunk[2:4], chunk[4:7], int(amount) * (1 if sign == "C" else -1)))
        return out


@dataclass(frozen=True, slots=True)
class Request:
    """A decoded request with named, typed attributes; built by `Request.from_fields`."""

    fields: dict[str, Any] = field(repr=False)
    mti: str
    repeat: bool
    pan: str | None
    processing_code: str | None
    transaction_type: str | None
    from_account: str | None
    amount_minor: int | None
    currency_numeric: str | None
    stan: str | None
    rrn: str | None
    transmission_time: str | None
    expiry: str | None
    mcc: str | None
    entry_mode: str | None
    pin_capable: bool
    psn: str | None
    acquirer_id: str
    track2: Track2 | None
    terminal_id: str | None
    merchant_id: str | None
    de48: dict[str, Any]
    pin_block: str | None
    ksn: str | None
    icc: dict[str, bytes] | None
    network_code: str | None
    original: OriginalData | None
    replacement_amount_minor: int | None

    def __repr__(self) -> str:
        return f"Request(mti={self.mti}, stan={self.stan}, terminal={self.terminal_id})"

    @classmethod
    def from_fields(cls, fields: dict[str, Any]) -> "Request":
        """Typed view of a decoded message; MessageFormatError names the field that does not parse.

        A repeat (0101, 0121, 0201, 0221, 0401, 0421) is viewed as the message it repeats: `mti` is that
        message's, and `repeat` is True.
        """
        pc = fields.get("3")
        pos = fields.get("22")
        track2 = parse_track2(fields["35"]) if fields.get("35") else None
        raw48 = parse_de48(fields["48"]) if fields.get("48") else {}
        de48: dict[str, Any] = {
            "cvv2": raw48.get("C2"),
            "partial_ok": raw48.get("PA") == "1",
            "incremental": raw48.get("IA") == "1",
            "token_requestor": raw48.get("TR"),
            "wallet_id": raw48.get("WI"),
            "original_rrn": raw48.get("OR"),  # a refund's purchase, by its retrieval reference number
        }
        de48 = {k: v for k, v in de48.items() if v not in (None, False)}
        icc = decode_tlv(bytes.fromhex(fields["55"])) if fields.get("55") else None
        original = None
        if fields.get("90"):
            de90 = fields["90"]
            if len(de90) != 42 or not de90.isdigit():
                raise MessageFormatError("original data elements must be 42 digits: field 90", "90")
            original = OriginalData(de90[0:4], de90[4:10], de90[10:20], de90[20:31].lstrip("0") or "0")
        replacement = None
        if fields.get("95"):
            head = fields["95"][:12]
            if not head.isdigit():
                raise MessageFormatError("replacement amount must be numeric: field 95", "95")
            replacement = int(head)
        amount = fields.get("4")
        mti = fields["t"]
        return cls(
            fields=fields,
            mti=repeated_mti(mti),
            repeat=mti != repeated_mti(mti),
            pan=fields.get("2"),
            processing_code=pc,
            transaction_type=TRANSACTION_TYPES.get(pc[:2], "unknown") if pc else None,
            from_account=pc[2:4] if pc else None,
            amount_minor=int(amount) if amount is not None else None,
            currency_numeric=fields.get("49"),
            stan=fields.get("11"),
            rrn=fields.get("37"),
            transmission_time=fields.get("7"),
            expiry=fields.get("14"),
            mcc=fields.get("18"),
            entry_mode=pos[:2] if pos else None,
            pin_capable=bool(pos) and pos[2:3] == "1",
            psn=fields.get("23"),
            acquirer_id=(fields.get("32") or "0").lstrip("0") or "0",
            track2=track2,
            terminal_id=fields["41"].strip() if fields.get("41") else None,
            merchant_id=fields["42"].strip() if fields.get("42") else None,
            de48=de48,
            pin_block=fields.get("52"),
            ksn=fields.get("53"),
            icc=icc,
            network_code=fields.get("70"),
            original=original,
            replacement_amount_minor=replacement,
        )

    @staticmethod
    def mti_class(mti: str) -> str:
        """0100 and 0120 are one class ("01"): an advice repeats the request it stands in for."""
        return mti[:2]

    def idempotency_key(self) -> str:
        """acquirer:terminal:STAN:local date and time:RRN:MTI class: what a retransmission keeps.

        A terminal that sends a request again (as a repeat, 0101, 0401...) keeps its STAN, its local date
        and time (DE 13, DE 12) and its RRN; its transmission time (DE 7) changes with every send and is
        not part of the key. So a retransmission gets the first answer, and a new request, even with a
        STAN that came round again, is a new request.
        """
        local = f"{self.fields.get('13') or ''}{self.fields.get('12') or ''}"
        return (
            f"{self.acquirer_id}:{self.terminal_id or ''}:{self.stan or ''}:{local}:{self.rrn or ''}"
            f":{self.mti_class(self.mti)}"
        )

    def reference_key(self) -> str:
        """acquirer:terminal:STAN:MTI class: how a later reversal or completion (DE 90) names this request."""
        return f"{self.acquirer_id}:{self.terminal_id or ''}:{self.stan or ''}:{self.mti_class(self.mti)}"

    def original_key(self) -> str:
        """The reference key of the request DE 90 points at, on this terminal (another's cannot be named)."""
        if self.original is None:
            raise MessageFormatError("no original data elements: field 90", "90")
        o = self.original
        return f"{o.acquirer_id}:{self.terminal_id or ''}:{o.stan}:{self.mti_class(o.mti)}"


@dataclass(frozen=True, slots=True)
class BatchTotals:
    """Counts and amounts (minor units) of a batch's credits and debits: DE 74/86 and DE 76/88."""

    credits_count: int = 0
    credits_minor: int = 0
    debits_count: int = 0
    debits_minor: int = 0

    @property
    def net_minor(self) -> int:
        """Debits less credits: what the terminal's merchant is owed for the batch (DE 97)."""
        return self.debits_minor - self.credits_minor

    def fields(self) -> dict[str, str]:
        """DE 74, 76, 86, 88 and 97."""
        return {
            "74": f"{self.credits_count:010d}",
            "76": f"{self.debits_count:010d}",
            "86": f"{self.credits_minor:016d}",
            "88": f"{self.debits_minor:016d}",
            "97": encode_net_amount(self.net_minor),
        }

    @classmethod
    def from_fields(cls, fields: dict[str, Any]) -> "BatchTotals":
        """The totals in a decoded 0500 or 0510; MessageFormatError names what is missing or inconsistent."""
        for de in ("74", "76", "86", "88"):
            if not fields.get(de):
                raise MessageFormatError(f"batch totals need DE 74, 76, 86 and 88: field {de} is missing", de)
        totals = cls(int(fields["74"]), int(fields["86"]), int(fields["76"]), int(fields["88"]))
        net = fields.get("97")
        if net:
            if len(net) != 17 or net[0] not in "CD" or not net[1:].isdigit():
                raise MessageFormatError("net settlement amount must be C or D and 16 digits: field 97", "97")
            if parse_net_amount(net) != totals.net_minor:
                raise MessageFormatError("net settlement amount is not debits less credits: field 97", "97")
        return totals

    def describe(self) -> str:
        """'3 debits 1250, 1 credits 200' (amounts in minor units), for logs and reports."""
        return f"{self.debits_count} debits {self.debits_minor}, {self.credits_count} credits {self.credits_minor}"

    def as_json(self) -> dict[str, int]:
        return {
            "credits_count": self.credits_count,
            "credits_minor": self.credits_minor,
            "debits_count": self.debits_count,
            "debits_minor": self.debits_minor,
            "net_minor": self.net_minor,
        }


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """A 0500 batch close: the batch number (DE 60), its currency (DE 50) and the terminal's totals."""

    batch_number: str
    currency_numeric: str
    totals: BatchTotals

    @classmethod
    def from_fields(cls, fields: dict[str, Any]) -> "Reconciliation":
        """A decoded 0500; MessageFormatError names what is missing or inconsistent."""
        totals = BatchTotals.from_fields(fields)
        currency = fields.get("50") or fields.get("49")
        if not currency:
            raise MessageFormatError("batch totals need a settlement currency: field 50", "50")
        batch_number = str(fields.get("60") or "").strip()
        if len(batch_number) > 6 or not batch_number.isdigit() and batch_number:
            raise MessageFormatError("batch number must be up to 6 digits: field 60", "60")
        return cls(batch_number.zfill(6) if batch_number else "", currency, totals)


def encode_net_amount(net_minor: int) -> str:
    """DE 97: 'C' when the merchant is owed (debits above credits), 'D' otherwise, then 16 digits."""
    return f"{'C' if net_minor >= 0 else 'D'}{abs(net_minor):016d}"


def parse_net_amount(text: str) -> int:
    """DE 97 back to signed minor units (positive: the merchant is owed)."""
    return int(text[1:]) * (1 if text[0] == "C" else -1)


def repeated_mti(mti: str) -> str:
    """The message a repeat stands for (0101 -> 0100); any other MTI unchanged."""
    return f"{mti[:3]}0" if mti in REPEAT_MTIS else mti


def response_mti(mti: str) -> str:
    """0100 -> 0110, 0420 -> 0430; a repeat is answered as the message it repeats (0401 -> 0410)."""
    mti = repeated_mti(mti)
    return f"{mti[:2]}{int(mti[2]) + 1}{mti[3]}"


def build_response(
    request_fields: dict[str, Any],
    rc: str,
    *,
    approval_code: str | None = None,
    amount_minor: int | None = None,
    balances: list[Balance] | None = None,
    icc_response: dict[str, bytes] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The answer to a request: echoed matching fields, DE 39, and 38/4/54/55 when given."""
    from .tlv import encode_tlv

    answer: dict[str, Any] = {"t": response_mti(request_fields["t"])}
    for de in ECHOED_FIELDS:
        if de in request_fields:
            answer[de] = request_fields[de]
    if request_fields.get("70"):
        answer["70"] = request_fields["70"]
    answer["39"] = rc
    if approval_code:
        answer["38"] = approval_code
    if amount_minor is not None:
        answer["4"] = f"{amount_minor:012d}"
    if balances:
        answer["54"] = "".join(b.encode() for b in balances)
    if icc_response:
        answer["55"] = encode_tlv(icc_response).hex().upper()
    if extra:
        answer.update(extra)
    return answer
