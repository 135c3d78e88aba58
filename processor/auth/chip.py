"""Chip (EMV) checks: the ARQC in DE 55 verified by the HSM, ATC replay, and the ARPC for the card."""

from __future__ import annotations

from hsm_sim import HsmApi
from processor.auth.context import AuthContext, Declined
from processor.auth.cryptogram import arqc_transaction_data, cvn_from_iad
from processor.issuing.keys import IssuerKeys
from processor.iso8583 import rc

ARC_APPROVED = "3030"  # "00" in ASCII, as the card expects it in tag 8A / 91
ARC_DECLINED = "3035"  # "05"


def _psn(ctx: AuthContext) -> str:
    """A wallet token has its own cryptogram key, derived from the token PAN with PSN 00."""
    if ctx.token is not None:
        return "00"
    assert ctx.card is not None
    return f"{int(ctx.request.psn or ctx.card.psn):02d}"


def _cryptogram_input(icc: dict[str, bytes]) -> tuple[int, bytes]:
    """(CVN, the bytes the card MACed) from DE 55; ValueError when the tags cannot give them."""
    cvn = cvn_from_iad(icc["9F10"])
    return cvn, arqc_transaction_data(icc, cvn)


async def _verify_arqc(
    hsm: HsmApi, keys: IssuerKeys, ctx: AuthContext, icc: dict[str, bytes], cvn: int, data: bytes, arc: str
) -> tuple[bool, str | None]:
    """(the ARQC verifies, the ARPC over `arc`), computed by the HSM."""
    return await hsm.verify_arqc(
        keys.imk_ac,
        ctx.pan,
        _psn(ctx),
        icc["9F36"].hex().upper(),
        icc["9F26"].hex().upper(),
        data.hex().upper(),
        cvn=cvn,
        arc=arc,
    )


async def verify_chip_cryptogram(hsm: HsmApi, keys: IssuerKeys, ctx: AuthContext) -> dict[str, bytes]:
    """Raise Declined(82) unless the ARQC verifies and its ATC is new; return the tag 91 to send back."""
    icc: dict[str, bytes] = ctx.request.icc or {}
    missing = [tag for tag in ("9F26", "9F36", "9F10", "9F37") if tag not in icc]
    if missing:
        raise Declined(rc.FORMAT_ERROR, f"DE 55 lacks {', '.join(missing)}")
    try:
        cvn, data = _cryptogram_input(icc)
    except ValueError as exc:
        raise Declined(rc.FORMAT_ERROR, f"DE 55: {exc}") from exc
    ok, arpc = await _verify_arqc(hsm, keys, ctx, icc, cvn, data, ARC_APPROVED)
    if not ok:
        raise Declined(rc.CVV_FAILURE, "ARQC does not verify")
    atc = int.from_bytes(icc["9F36"], "big")
    assert ctx.card is not None
    # A wallet token counts its own ATC. A first look at the counter saves the funds check for an obvious
    # replay; the store checks it again atomically with the hold, which is what stops two copies racing.
    last_atc = ctx.token.last_atc if ctx.token is not None else ctx.card.last_atc
    if last_atc is not None and atc <= last_atc:
        raise Declined(rc.CVV_FAILURE, f"ATC {atc} is not above the last ATC {last_atc}: replayed cryptogram")
    ctx.atc = atc
    return {"91": bytes.fromhex(arpc) + bytes.fromhex(ARC_APPROVED)} if arpc else {}


async def declined_arpc(hsm: HsmApi, keys: IssuerKeys, ctx: AuthContext) -> dict[str, bytes] | None:
    """For a declined chip request whose ARQC verifies, the ARPC over the decline ARC.

    The card then knows the issuer authenticated it and declined; it answers AAC to the second
    GENERATE AC either way, but records issuer authentication as performed.
    """
    icc: dict[str, bytes] = ctx.request.icc or {}
    if ctx.card is None or ctx.pan is None or not all(tag in icc for tag in ("9F26", "9F36", "9F10")):
        return None
    try:
        cvn, data = _cryptogram_input(icc)
    except ValueError:
        return None
    ok, arpc = await _verify_arqc(hsm, keys, ctx, icc, cvn, data, ARC_DECLINED)
    return {"91": bytes.fromhex(arpc) + bytes.fromhex(ARC_DECLINED)} if ok and arpc else None
