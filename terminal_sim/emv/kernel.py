"""Terminal-side EMV kernel: read a card and produce the ICC data for ISO 8583 DE 55.

Transport agnostic: every function takes ``transmit(command_apdu) -> response_apdu``
(response data followed by SW1 SW2), so the same code drives
``VirtualCard.process_apdu`` in process and ``PcscReader.transmit`` through pcscd.

    result = read_card(card.process_apdu, contactless=False, amount_minor=1250,
                       currency_numeric="0978", country_numeric="0250",
                       transaction_type="00", unpredictable_number=os.urandom(4),
                       date=datetime.date.today())
    de55 = result.de55()          # send with the 0100/0200
    outcome = complete(card.process_apdu, response_de55, approved=True, read_result=result)
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from terminal_sim.emv import tlv
from terminal_sim.emv.card import PPSE_NAME, PSE_NAME, mask_pan

__all__ = ["CardError", "CardReadResult", "Transmit", "read_card", "complete", "DE55_ORDER"]

Transmit = Callable[[bytes], bytes]

# Tags sent in DE 55, in this order, when present.
DE55_ORDER = (
    "9F26", "9F27", "9F10", "9F37", "9F36", "95", "9A", "9C", "9F02", "5F2A", "82",
    "9F1A", "9F03", "9F33", "9F34", "9F35", "84", "9F09", "5F34", "9F66", "9F6C",
    "9F19", "9F24", "57",
)

VISA_AIDS = ("A0000000031010", "A0000000032010", "A0000000041010")
_MAX_RECORDS = 64
_MAX_DIRECTORY_RECORDS = 16
_MAX_GET_RESPONSE = 8
_CID_NAMES = {0x00: "AAC", 0x40: "TC", 0x80: "ARQC"}


class CardError(Exception):
    """The card answered something a terminal cannot use; the message names the command."""

    def __init__(self, message: str, *, sw: bytes | None = None) -> None:
        super().__init__(message)
        self.sw = sw


@dataclass(frozen=True)
class CardReadResult:
    """What the terminal learnt from the card; ``icc_tags`` is the DE 55 content."""

    contactless: bool
    aid: bytes
    label: str
    pan: str
    psn: str | None
    expiry: str  # YYMM
    track2: str  # digits with 'D' separator
    cardholder_name: str | None
    cryptogram_type: str  # "ARQC" | "TC" | "AAC"
    cvn: int
    icc_tags: dict[str, bytes] = field(repr=False)
    cdol2: bytes | None = field(default=None, repr=False)
    offline_pin_verified: bool | None = None

    def __repr__(self) -> str:
        return (
            f"CardReadResult(pan={mask_pan(self.pan)!r}, aid={self.aid.hex().upper()!r}, "
            f"contactless={self.contactless}, cryptogram={self.cryptogram_type}, cvn={self.cvn})"
        )

    def de55(self) -> bytes:
        """BER-TLV encoding of icc_tags for ISO 8583 DE 55."""
        return b"".join(tlv.encode(t, v) for t, v in self.icc_tags.items())


def _apdu(cla: int, ins: int, p1: int, p2: int, data: bytes | None = None, le: int | None = 0) -> bytes:
    out = bytes([cla, ins, p1, p2])
    if data:
        out += bytes([len(data)]) + data
    if le is not None:
        out += bytes([le])
    return out


def _exchange(transmit: Transmit, apdu: bytes, what: str, *, allow: tuple[bytes, ...] = ()) -> tuple[bytes, bytes]:
    """Send one command; follow 61xx and 6Cxx; return (data, sw) or raise CardError."""
    resp = transmit(apdu)
    data = b""
    for _ in range(_MAX_GET_RESPONSE):
        if len(resp) < 2:
            raise CardError(f"{what}: response of {len(resp)} byte(s) has no status word")
        sw = resp[-2:]
        data += resp[:-2]
        if sw[0] == 0x61:
            resp = transmit(_apdu(0x00, 0xC0, 0x00, 0x00, le=sw[1]))
            continue
        if sw[0] == 0x6C and not data:
            resp = transmit(apdu[:-1] + bytes([sw[1]]))
            continue
        if sw == b"\x90\x00" or sw in allow:
            return data, sw
        raise CardError(f"{what}: card answered SW {sw.hex().upper()}", sw=sw)
    raise CardError(f"{what}: more than {_MAX_GET_RESPONSE} GET RESPONSE/6Cxx rounds")


def _parse(data: bytes, what: str, template: tuple[str, ...]) -> list[tlv.Tlv]:
    try:
        objs = tlv.parse(data)
    except tlv.TlvError as e:
        raise CardError(f"{what}: malformed TLV in the response: {e}") from None
    if not objs or objs[0].tag not in template:
        got = objs[0].tag if objs else "nothing"
        raise CardError(f"{what}: expected template {'/'.join(template)}, got {got}")
    return objs


def _directory_entries(objs: list[tlv.Tlv]) -> list[tuple[int, bytes, str]]:
    out = []
    for entry in tlv.find_all(objs, "61"):
        aid = tlv.find(entry.children, "4F")
        if aid is None:
            continue
        prio = tlv.find(entry.children, "87")
        label = tlv.find(entry.children, "50") or b""
        out.append(((prio[0] & 0x0F) if prio else 15, aid, label.decode("ascii", "replace")))
    out.sort(key=lambda e: e[0])
    return out


def _select(transmit: Transmit, name: bytes, what: str, allow: tuple[bytes, ...] = ()) -> tuple[list[tlv.Tlv] | None, bytes]:
    data, sw = _exchange(transmit, _apdu(0x00, 0xA4, 0x04, 0x00, name), what, allow=allow)
    if sw != b"\x90\x00":
        return None, sw
    return _parse(data, what, ("6F",)), sw


def _candidates(transmit: Transmit, contactless: bool, terminal_aids: tuple[str, ...]) -> list[tuple[int, bytes, str]]:
    not_found = (b"\x6a\x82", b"\x6a\x81")
    if contactless:
        fci, _ = _select(transmit, PPSE_NAME, "SELECT PPSE")
        assert fci is not None
        entries = _directory_entries(fci)
        if not entries:
            raise CardError("SELECT PPSE: the directory (BF0C) lists no application")
        return entries
    fci, sw = _select(transmit, PSE_NAME, "SELECT PSE", allow=not_found)
    if fci is not None:
        sfi_raw = tlv.find(fci, "88")
        if not sfi_raw or not 1 <= sfi_raw[0] <= 30:
            raise CardError("SELECT PSE: FCI lacks a valid directory SFI (88)")
        sfi = sfi_raw[0]
        entries: list[tuple[int, bytes, str]] = []
        for rec in range(1, _MAX_DIRECTORY_RECORDS + 1):
            what = f"READ RECORD PSE SFI {sfi} record {rec}"
            data, sw = _exchange(
                transmit, _apdu(0x00, 0xB2, rec, (sfi << 3) | 4), what, allow=(b"\x6a\x83",)
            )
            if sw == b"\x6a\x83":
                break
            entries += _directory_entries(_parse(data, what, ("70",)))
        if entries:
            return sorted(entries, key=lambda e: e[0])
    # No PSE: try the terminal's own AID list (EMV Book 1 12.3.3).
    return [(15, bytes.fromhex(a), "") for a in terminal_aids]


def _select_application(
    transmit: Transmit, contactless: bool, terminal_aids: tuple[str, ...], preferred_aid: bytes | None
) -> tuple[bytes, str, list[tlv.Tlv]]:
    candidates = _candidates(transmit, contactless, terminal_aids)
    if preferred_aid is not None:
        candidates = [c for c in candidates if c[1] == preferred_aid] or candidates
    for _, aid, label in candidates:
        what = f"SELECT AID {aid.hex().upper()}"
        fci, _ = _select(transmit, aid, what, allow=(b"\x6a\x82", b"\x62\x83"))
        if fci is None:
            continue
        df_name = tlv.find(fci, "84") or aid
        card_label = tlv.find(fci, "50")
        return df_name, card_label.decode("ascii", "replace") if card_label else label, fci
    raise CardError("application selection: the card has none of the candidate applications")


def _decode_digits(raw: bytes) -> str:
    return raw.hex().upper().rstrip("F")


def read_card(
    transmit: Transmit,
    *,
    contactless: bool,
    amount_minor: int,
    currency_numeric: str,
    country_numeric: str,
    transaction_type: str = "00",
    unpredictable_number: bytes,
    date: _dt.date,
    amount_other_minor: int = 0,
    tvr: bytes = bytes(5),
    terminal_capabilities: str = "E0F8C8",
    terminal_type: str = "22",
    ttq: str = "36800000",
    cvm_results: bytes = b"\x1f\x03\x02",
    offline_pin: str | None = None,
    preferred_aid: bytes | None = None,
    terminal_aids: tuple[str, ...] = VISA_AIDS,
) -> CardReadResult:
    """Select, GPO, read records and (contact) first GENERATE AC for an online ARQC."""
    if not 0 <= amount_minor <= 999_999_999_999:
        raise ValueError(f"amount_minor {amount_minor} does not fit tag 9F02 (12 digits)")
    if not 0 <= amount_other_minor <= 999_999_999_999:
        raise ValueError(f"amount_other_minor {amount_other_minor} does not fit tag 9F03")
    if len(unpredictable_number) != 4:
        raise ValueError(f"unpredictable_number is {len(unpredictable_number)} bytes, expecting 4")
    if len(tvr) != 5:
        raise ValueError(f"tvr is {len(tvr)} bytes, expecting 5")
    for name, value, n in (("currency_numeric", currency_numeric, 3), ("country_numeric", country_numeric, 3)):
        if not (value.isdigit() and len(value.lstrip("0")) <= n and len(value) <= 4):
            raise ValueError(f"{name} must be an ISO numeric code")
    if not (len(transaction_type) == 2 and transaction_type.isdigit()):
        raise ValueError("transaction_type must be 2 digits (ISO 8583 processing code positions 1-2)")

    terminal: dict[str, bytes] = {
        "9F02": bytes.fromhex(f"{amount_minor:012d}"),
        "9F03": bytes.fromhex(f"{amount_other_minor:012d}"),
        "9F1A": bytes.fromhex(country_numeric.rjust(4, "0")),
        "95": bytes(tvr),
        "5F2A": bytes.fromhex(currency_numeric.rjust(4, "0")),
        "9A": bytes.fromhex(date.strftime("%y%m%d")),
        "9C": bytes.fromhex(transaction_type),
        "9F37": bytes(unpredictable_number),
        "9F33": bytes.fromhex(terminal_capabilities),
        "9F35": bytes.fromhex(terminal_type),
        "9F34": bytes(cvm_results),
    }
    if contactless:
        terminal["9F66"] = bytes.fromhex(ttq)

    aid, label, fci = _select_application(transmit, contactless, terminal_aids, preferred_aid)

    # GET PROCESSING OPTIONS
    pdol = tlv.find(fci, "9F38") or b""
    try:
        pdol_data = tlv.build_dol_data(pdol, terminal)
    except tlv.TlvError as e:
        raise CardError(f"SELECT AID: malformed PDOL (9F38): {e}") from None
    data, _ = _exchange(transmit, _apdu(0x80, 0xA8, 0x00, 0x00, tlv.encode("83", pdol_data)), "GET PROCESSING OPTIONS")
    gpo = _parse(data, "GET PROCESSING OPTIONS", ("80", "77"))
    card: dict[str, bytes] = {}
    if gpo[0].tag == "80":
        body = gpo[0].value
        if len(body) < 6 or (len(body) - 2) % 4:
            raise CardError(f"GET PROCESSING OPTIONS: format 1 body is {len(body)} bytes, expecting 2 + 4n")
        card["82"], card["94"] = body[:2], body[2:]
    else:
        card.update(tlv.flatten(gpo))
        if "82" not in card or "94" not in card:
            raise CardError("GET PROCESSING OPTIONS: response lacks AIP (82) or AFL (94)")

    # READ RECORD per AFL
    afl = card["94"]
    if len(afl) % 4:
        raise CardError(f"GET PROCESSING OPTIONS: AFL is {len(afl)} bytes, expecting a multiple of 4")
    records_read = 0
    for i in range(0, len(afl), 4):
        sfi, first, last = afl[i] >> 3, afl[i + 1], afl[i + 2]
        if not 1 <= sfi <= 30 or first == 0 or last < first:
            raise CardError(f"GET PROCESSING OPTIONS: AFL entry {afl[i:i + 4].hex().upper()} is invalid")
        for rec in range(first, last + 1):
            records_read += 1
            if records_read > _MAX_RECORDS:
                raise CardError(f"READ RECORD: AFL lists more than {_MAX_RECORDS} records")
            what = f"READ RECORD SFI {sfi} record {rec}"
            rdata, _ = _exchange(transmit, _apdu(0x00, 0xB2, rec, (sfi << 3) | 4), what)
            for tag, value in tlv.flatten(_parse(rdata, what, ("70",))).items():
                card.setdefault(tag, value)

    track2_raw = card.get("57")
    if track2_raw is None:
        raise CardError("READ RECORD: the card has no track 2 equivalent data (57)")
    track2 = _decode_digits(track2_raw)
    if "D" not in track2:
        raise CardError("READ RECORD: track 2 equivalent data (57) has no separator")
    pan = _decode_digits(card["5A"]) if "5A" in card else track2.split("D", 1)[0]
    expiry = card["5F24"].hex()[:4] if "5F24" in card else track2.split("D", 1)[1][:4]
    psn = card["5F34"].hex() if "5F34" in card else None
    name_raw = card.get("5F20")

    # Offline plaintext PIN, when asked and the card's CVM list offers it.
    pin_verified: bool | None = None
    if offline_pin is not None and not contactless:
        cvm_list = card.get("8E", b"")
        rules = [cvm_list[i] & 0x3F for i in range(8, len(cvm_list) - 1, 2)]
        if 0x01 in rules:
            pin_verified = _verify_offline_pin(transmit, offline_pin)
            terminal["9F34"] = b"\x01\x00" + (b"\x02" if pin_verified else b"\x01")
            if not pin_verified:
                tvr2 = bytearray(terminal["95"])
                tvr2[2] |= 0x80  # cardholder verification was not successful
                terminal["95"] = bytes(tvr2)

    if contactless:
        crypto = card
    else:
        cdol1 = card.get("8C")
        if cdol1 is None:
            raise CardError("READ RECORD: the card has no CDOL1 (8C)")
        try:
            cdol1_data = tlv.build_dol_data(cdol1, terminal | {"82": card["82"]})
        except tlv.TlvError as e:
            raise CardError(f"READ RECORD: malformed CDOL1 (8C): {e}") from None
        data, _ = _exchange(transmit, _apdu(0x80, 0xAE, 0x80, 0x00, cdol1_data), "GENERATE AC (first)")
        crypto = _parse_ac_response(data, "GENERATE AC (first)")

    for tag in ("9F26", "9F27", "9F36", "9F10"):
        if tag not in crypto:
            raise CardError(f"{'GET PROCESSING OPTIONS' if contactless else 'GENERATE AC (first)'}: response lacks {tag}")
    iad = crypto["9F10"]
    if len(iad) < 7:
        raise CardError(f"cryptogram response: 9F10 is {len(iad)} bytes, expecting at least 7")
    cid = crypto["9F27"][0] & 0xC0
    if cid not in _CID_NAMES:
        raise CardError(f"cryptogram response: 9F27 {crypto['9F27'].hex().upper()} is not AAC/TC/ARQC")

    source = terminal | {"84": aid, "82": card["82"], "57": track2_raw} | {
        t: crypto[t] for t in ("9F26", "9F27", "9F36", "9F10", "9F6C") if t in crypto
    }
    for t in ("5F34", "9F09", "9F19", "9F24"):
        if t in card:
            source[t] = card[t]
    if not contactless:
        source.pop("9F66", None)
    icc_tags = {t: source[t] for t in DE55_ORDER if t in source}
    return CardReadResult(
        contactless=contactless,
        aid=aid,
        label=label,
        pan=pan,
        psn=psn,
        expiry=expiry,
        track2=track2,
        cardholder_name=name_raw.decode("ascii", "replace").strip() if name_raw else None,
        cryptogram_type=_CID_NAMES[cid],
        cvn=iad[2],
        icc_tags=icc_tags,
        cdol2=card.get("8D"),
        offline_pin_verified=pin_verified,
    )


def _verify_offline_pin(transmit: Transmit, pin: str) -> bool:
    if not (pin.isdigit() and 4 <= len(pin) <= 12):
        raise ValueError("offline PIN must be 4-12 digits")
    block = bytes.fromhex(f"2{len(pin):X}{pin}".ljust(16, "F"))
    _, sw = _exchange(
        transmit, _apdu(0x00, 0x20, 0x00, 0x80, block, le=None), "VERIFY",
        allow=tuple(bytes([0x63, 0xC0 | n]) for n in range(16)) + (b"\x69\x83",),
    )
    return sw == b"\x90\x00"


def _parse_ac_response(data: bytes, what: str) -> dict[str, bytes]:
    objs = _parse(data, what, ("80", "77"))
    if objs[0].tag == "77":
        return tlv.flatten(objs)
    body = objs[0].value
    if len(body) < 11 + 7:
        raise CardError(f"{what}: format 1 body is {len(body)} bytes, expecting at least 18")
    return {"9F27": body[:1], "9F36": body[1:3], "9F26": body[3:11], "9F10": body[11:]}


def complete(
    transmit: Transmit,
    arpc_response_tlv: bytes | Mapping[str, bytes],
    approved: bool,
    *,
    read_result: CardReadResult,
    arc: bytes | None = None,
) -> str:
    """Second GENERATE AC with the issuer's 91 (and ARC 8A); returns "TC" or "AAC".

    ``arpc_response_tlv`` is the DE 55 of the authorization response (BER-TLV bytes or
    {tag: value}). A contactless (qVSDC) card has left the field after GPO, so the
    outcome is the issuer's decision and the card is not addressed.
    """
    if read_result.contactless or read_result.cryptogram_type != "ARQC":
        return "TC" if approved and read_result.cryptogram_type != "AAC" else "AAC"
    if isinstance(arpc_response_tlv, Mapping):
        issuer = {k.upper(): bytes(v) for k, v in arpc_response_tlv.items()}
    else:
        try:
            issuer = tlv.flatten(tlv.parse(arpc_response_tlv))
        except tlv.TlvError as e:
            raise ValueError(f"issuer response DE 55: {e}") from None
    if read_result.cdol2 is None:
        raise CardError("GENERATE AC (second): the card has no CDOL2 (8D)")
    values = dict(read_result.icc_tags)
    if "91" in issuer:
        values["91"] = issuer["91"]
    values["8A"] = arc if arc is not None else (b"00" if approved else b"05")
    try:
        cdol2_data = tlv.build_dol_data(read_result.cdol2, values)
    except tlv.TlvError as e:
        raise CardError(f"READ RECORD: malformed CDOL2 (8D): {e}") from None
    p1 = 0x40 if approved else 0x00
    what = "GENERATE AC (second)"
    data, _ = _exchange(transmit, _apdu(0x80, 0xAE, p1, 0x00, cdol2_data), what)
    crypto = _parse_ac_response(data, what)
    if "9F27" not in crypto or "9F26" not in crypto:
        raise CardError(f"{what}: response lacks 9F27 or 9F26")
    cid = crypto["9F27"][0] & 0xC0
    if cid == 0x40:
        return "TC"
    if cid == 0x00:
        return "AAC"
    raise CardError(f"{what}: card answered {_CID_NAMES.get(cid, hex(cid))}, expecting TC or AAC")
