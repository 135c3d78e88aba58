"""Chip (EMV) checks: the ARQC in DE 55 verified by the HSM, ATC replay, and the ARPC for the card."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from processor.auth.cryptogram import arqc_transaction_data, cvn_from_iad
from processor.iso8583 import rc

if TYPE_CHECKING:
    from processor.auth.engine import AuthContext, Engine

ARC_APPROVED = "3030"  # "00" in ASCII, as the card expects it in tag 8A / 91
ARC_DECLINED = "3035"  # "05"


cryptogram_version = cvn_from_iad


async def verify_chip_cryptogram(engine: "Engine", ctx: "AuthContext") -> dict[str, bytes]:
    """Raise Declined(82) unless the ARQC verifies and its ATC is new; return the tag 91 to send back."""
    from processor.auth.engine import Declined

    icc: dict[str, bytes] = ctx.request.icc or {}
    missing = [tag for tag in ("9F26", "9F36", "9F10", "9F37") if tag not in icc]
    if missing:
        raise Declined(rc.FORMAT_ERROR, f"DE 55 lacks {', '.join(missing)}")
    try:
        cvn = cryptogram_version(icc["9F10"])
        data = arqc_transaction_data(icc, cvn)
    except ValueError as exc:
        raise Declined(rc.FORMAT_ERROR, f"DE 55: {exc}") from exc
    atc = int.from_bytes(icc["9F36"], "big")
    card = ctx.card
    # A wallet token has its own cryptogram key (derived from the token PAN, PSN 00) and its own ATC.
    psn = "00" if ctx.token is not None else (ctx.request.psn or card.psn)
    last_atc = ctx.token.last_atc if ctx.token is not None else card.last_atc
    ok, arpc = await engine.hsm.verify_arqc(
        engine.keys.imk_ac,
        ctx.pan,
        f"{int(psn):02d}",
        icc["9F36"].hex().upper(),
        icc["9F26"].hex().upper(),
        data.hex().upper(),
        cvn=cvn,
        arc=ARC_APPROVED,
    )
    if not ok:
        raise Declined(rc.CVV_FAILURE, "ARQC does not verify")
    # A first look at the counter saves the funds check for an obvious replay; the store checks it
    # again atomically with the hold, which is what stops two copies racing each other.
    if last_atc is not None and atc <= last_atc:
        raise Declined(rc.CVV_FAILURE, f"ATC {atc} is not above the last ATC {last_atc}: replayed cryptogram")
    ctx.atc = atc
    return {"91": bytes.fromhex(arpc) + bytes.fromhex(ARC_APPROVED)} if arpc else {}


async def declined_arpc(engine: "Engine", ctx: "AuthContext") -> dict[str, Any] | None:
    """For a declined chip request whose ARQC verifies, the ARPC over the decline ARC.

    The card then knows the issuer authenticated it and declined; it answers AAC to the second
    GENERATE AC either way, but records issuer authentication as performed.
    """
    icc: dict[str, bytes] = ctx.request.icc or {}
    if ctx.card is None or ctx.pan is None or not all(tag in icc for tag in ("9F26", "9F36", "9F10")):
        return None
    try:
        cvn = cryptogram_version(icc["9F10"])
        data = arqc_transaction_data(icc, cvn)
    except ValueError:
        return None
    ok, arpc = await engine.hsm.verify_arqc(
        engine.keys.imk_ac,
        ctx.pan,
        "00" if ctx.token is not None else f"{int(ctx.request.psn or ctx.card.psn):02d}",
        icc["9F36"].hex().upper(),
        icc["9F26"].hex().upper(),
        data.hex().upper(),
        cvn=cvn,
        arc=ARC_DECLINED,
    )
    return {"91": bytes.fromhex(arpc) + bytes.fromhex(ARC_DECLINED)} if ok and arpc else None
