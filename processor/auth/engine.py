"""The authorization engine: one ISO 8583 request in, one answer out.

`Engine.handle(payload)` owns the control flow of every message. For card requests it runs an ordered
list of small checks (the order is the order of the response-code table in the README); the first
check that fails names the response code and the reason, and the request ends as one store operation
(a hold, a posting or a recorded decline), group-committed with its neighbours and durable before the
answer is written. A retransmitted request reaches the store with the same idempotency key and gets
the first answer back without a second hold.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import secrets
import string
import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from hsm_sim import HsmApi, HsmError, RequestChecks
from processor import issuing, tokenization
from processor.auth import entry_modes
from processor.auth.answers import LEDGER_ANSWERS
from processor.auth.chip import declined_arpc, verify_chip_cryptogram
from processor.auth.context import AuthContext, Declined, Terminal, active_terminal
from processor.auth.entry_modes import Proof
from processor.auth.policy import FLOOR_LIMIT_CONFIG, REFUND_LIMITS_CONFIG, Policy
from processor.auth.reconciliation import reconcile
from processor.issuing.cards import CVV2_SERVICE_CODE, PVKI, CardRecord, pin_validation_data
from processor.issuing.controls import CardControls, find_card_with_controls
from processor.issuing.keys import IssuerKeys
from processor.issuing.pan import mask_pan
from processor.issuing.terminals import NETWORK_SCHEME
from processor.iso8583 import (
    Balance,
    MessageFormatError,
    Request,
    build_response,
    decode,
    response_mti,
    encode,
    rc,
)
from processor.iso8583.codec import REQUEST_MTIS
from processor.iso8583.mac import MAC_BYTES, encode_for_mac, signed_parts
from processor.iso8583.currency import alpha_for_numeric, numeric_for_alpha
from processor.ledger import StoreInterface, ops
from processor.ledger import generation as ledger_generation
from processor.ledger.errors import StoreBusy, StoreClosed

log = logging.getLogger("processor.auth")

_APPROVAL_ALPHABET = string.ascii_uppercase + string.digits
ENTRY_FALLBACK = "80"
ENTRY_MAGSTRIPE = frozenset({"02", "90", ENTRY_FALLBACK})
CARD_REQUEST_MTIS = frozenset({"0100", "0120", "0200"})
# Messages that move money name their merchant (DE 42); it must be the terminal's.
MERCHANT_MTIS = CARD_REQUEST_MTIS | {"0220", "0400", "0420"}
HANDLED_MTIS = MERCHANT_MTIS | {"0500", "0800"}
DUKPT_COUNTER_MASK = (1 << 21) - 1
# HSM answer statuses (hsm_sim/PROTOCOL.md) that say the HSM could not serve: key store error 40, internal
# error 41, frame error 80, timeout 90, connection error 91 (answered 91); and those that refuse a PIN
# block without saying anything of the PIN: PIN block error 20, invalid PIN 23 (answered 55, no try).
HSM_UNAVAILABLE = frozenset({"40", "41", "80", "90", "91"})
PIN_BLOCK_REFUSALS = frozenset({"20", "23"})
# What each card request may ask for (DE 3 positions 1-2, by the name messages.TRANSACTION_TYPES gives
# them). Anything else is refused (12) before any money moves.
TRANSACTIONS_BY_MTI: dict[str, frozenset[str]] = {
    "0100": frozenset({"purchase", "cash", "cashback", "refund", "balance"}),
    "0200": frozenset({"purchase", "cash", "cashback", "refund", "balance"}),
    "0120": frozenset({"purchase", "cash", "cashback", "refund"}),
    # Completions and reversals name their original by DE 90; a DE 3 they carry must still be one we know.
    "0220": frozenset({"purchase", "cash", "cashback", "refund"}),
    "0400": frozenset({"purchase", "cash", "cashback", "refund", "balance"}),
    "0420": frozenset({"purchase", "cash", "cashback", "refund", "balance"}),
}
CONFIG_CACHE_S = 5.0
# DE 3 positions 3-4 (from account) and 5-6 (to account): default, savings, checking.
FROM_ACCOUNTS = frozenset({"00", "10", "20"})
TO_ACCOUNTS = frozenset({"00"})


Check = Callable[["Engine", AuthContext], Awaitable[None]]


def approval_code() -> str:
    """Six random characters, the code a merchant writes on a voice-referral slip."""
    # One read of the system's random source for all six characters: it is a system call each time.
    return "".join(_APPROVAL_ALPHABET[b % len(_APPROVAL_ALPHABET)] for b in secrets.token_bytes(6))


def same_key_serial(ksn: str, initial_ksn: str) -> bool:
    """True when a TDES DUKPT KSN comes from the device whose initial KSN is given.

    The last 21 bits of a KSN are the transaction counter; everything before them names the key set and
    the device.
    """
    try:
        return int(ksn, 16) >> 21 == int(initial_ksn, 16) >> 21 and len(ksn) == len(initial_ksn) == 20
    except ValueError:
        return False


def dukpt_counter(ksn: str) -> int:
    """The transaction counter of a TDES DUKPT KSN: its last 21 bits."""
    return int(ksn, 16) & DUKPT_COUNTER_MASK


def _presented_pan(req: Request) -> str | None:
    """The PAN the request presents (DE 2, else the track's) when it is 12 to 19 digits; None when there is
    none, it is malformed, or DE 2 and DE 35 disagree (the checks decline those in their turn)."""
    track_pan = req.track2.pan if req.track2 is not None else None
    if req.pan and track_pan is not None and track_pan != req.pan:
        return None
    pan = req.pan or track_pan
    return pan if pan is not None and 12 <= len(pan) <= 19 and _digits(pan, len(pan)) else None


def _digits(value: str | None, length: int) -> bool:
    return value is not None and len(value) == length and value.isascii() and value.isdigit()


def _presented_cvvs(req: Request) -> list[list[str]]:
    """[expiry, service code, CVV] of the track's CVV and of a CVV2, as the request presents them, when they
    are well formed: what check_card_verification will ask of the card (whose expiry and service code the
    checks before it hold to the presented ones)."""
    out = []
    track2 = req.track2
    if track2 is not None and track2.cvv and _digits(track2.expiry, 4) and _digits(track2.service_code, 3):
        out.append([track2.expiry, track2.service_code, track2.cvv])
    cvv2 = req.de48.get("cvv2")
    expiry = req.expiry or (track2.expiry if track2 is not None else None)
    if cvv2 and _digits(expiry, 4):
        out.append([expiry, CVV2_SERVICE_CODE, cvv2])
    return out


def is_expired(expiry_yymm: str, now: dt.datetime) -> bool:
    """A card is valid through the last day of its expiry month."""
    return (int(expiry_yymm[:2]), int(expiry_yymm[2:])) < (now.year % 100, now.month)


# ---------------------------------------------------------------- checks, in the order they run


async def check_terminal(engine: "Engine", ctx: AuthContext) -> None:
    ctx.terminal = active_terminal(await engine.terminal(ctx.request.terminal_id, cached=ctx.cached))
    ctx.saw(ctx.terminal.generation)


async def check_processing_code(engine: "Engine", ctx: AuthContext) -> None:
    """Only the transactions this MTI may carry, on account types we know; nothing else reaches the store."""
    req = ctx.request
    pc = req.processing_code
    if pc is None:
        if req.mti in ("0220", "0400", "0420"):
            return  # the original (DE 90) says what it was
        raise Declined(rc.FORMAT_ERROR, "no processing code (DE 3)")
    allowed = TRANSACTIONS_BY_MTI.get(req.mti, frozenset())
    if req.transaction_type not in allowed:
        raise Declined(rc.INVALID_TRANSACTION, f"processing code {pc[:2]} is not accepted in an {req.mti}")
    if pc[2:4] not in FROM_ACCOUNTS or pc[4:6] not in TO_ACCOUNTS:
        raise Declined(rc.INVALID_TRANSACTION, f"processing code {pc}: unknown account type")


async def check_entry_mode(engine: "Engine", ctx: AuthContext) -> None:
    """The POS entry mode must be one the table accepts, and the request must carry what it needs."""
    req = ctx.request
    mode = entry_modes.lookup(req.entry_mode)
    if mode is None:
        if req.entry_mode is None:
            raise Declined(rc.NOT_PERMITTED_TERMINAL, "no POS entry mode (DE 22)")
        why = entry_modes.REFUSED_MODES.get(req.entry_mode, "not an accepted entry mode")
        raise Declined(rc.NOT_PERMITTED_TERMINAL, f"POS entry mode {req.entry_mode}: {why}")
    missing = [de for de in mode.requires if not _carries(req, de)]
    if missing:
        raise Declined(rc.NOT_PERMITTED_TERMINAL, f"{mode.name} (DE 22 {mode.code}) without {', '.join(f'DE {de}' for de in missing)}")
    ctx.mode = mode


def _carries(req: Request, de: str) -> bool:
    if de == "48 C2":
        return bool(req.de48.get("cvv2"))
    if de == "35":
        return req.track2 is not None
    if de == "55":
        return bool(req.icc)
    return bool(req.fields.get(de))


async def check_card_known(engine: "Engine", ctx: AuthContext) -> None:
    req = ctx.request
    pan = req.pan or (req.track2.pan if req.track2 else None)
    if not pan:
        raise Declined(rc.FORMAT_ERROR, "no PAN in DE 2 or DE 35")
    if req.pan and req.track2 is not None and req.track2.pan != req.pan:
        raise Declined(rc.FORMAT_ERROR, "DE 2 and the track 2 data in DE 35 name different cards")
    ctx.pan = pan
    hsm = engine.hsm
    # The MAC's HSM command may already have fingerprinted the PAN, on the HSM of that moment: a look-up that
    # misses with those asks the engine's HSM again, which may have learnt a new key version meanwhile.
    reused = ctx.fingerprints is not None and ctx.checked_pan == pan
    if reused:
        fingerprints = ctx.fingerprints
    else:
        fingerprints = [fp for _, fp in await hsm.fingerprint_pan(pan)]

    async def again() -> list[str] | None:
        """Fingerprints under the key versions the engine knows now, or None when they are the ones tried."""
        if not await engine.learn_key_versions(hsm) and not reused:
            return None
        fresh = [fp for _, fp in await engine.hsm.fingerprint_pan(pan)]
        return None if fresh == fingerprints else fresh

    if engine.token_bin and pan.startswith(engine.token_bin):
        found = await tokenization.tokens.find_by_fingerprints(engine.store, fingerprints)
        if found is None and (fresh := await again()) is not None:
            found = await tokenization.tokens.find_by_fingerprints(engine.store, fresh)
        if found is None:
            raise Declined(rc.UNKNOWN_CARD, "payment token not issued here")
        ctx.token, ctx.card = found
        return
    # A PIN try count and a chip's last ATC change with every such request: those read the card fresh.
    if ctx.cached and req.pin_block is None and req.icc is None:
        generation, found_card = await engine.cached_card(fingerprints)
        ctx.saw(generation)
    else:
        found_card = await find_card_with_controls(engine.store, fingerprints)
    if found_card is None and (fresh := await again()) is not None:
        # The vault was re-sealed under a fingerprint key these fingerprints did not use: look again with it.
        found_card = await find_card_with_controls(engine.store, fresh)
    if found_card is None:
        raise Declined(rc.UNKNOWN_CARD, "card not issued here")
    ctx.card, ctx.controls = found_card
    ctx.controls_read = True


_STATUS_CODES = {
    "lost": (rc.LOST_CARD, "card reported lost"),
    "stolen": (rc.STOLEN_CARD, "card reported stolen"),
    "frozen": (rc.RESTRICTED_CARD, "card frozen"),
    "inactive": (rc.RESTRICTED_CARD, "card not yet activated"),
    "closed": (rc.RESTRICTED_CARD, "card closed"),
    "expired": (rc.EXPIRED_CARD, "card expired"),
}


async def check_card_status(engine: "Engine", ctx: AuthContext) -> None:
    card = ctx.card
    if card.status != "active":
        code, reason = _STATUS_CODES.get(card.status, (rc.RESTRICTED_CARD, f"card {card.status}"))
        raise Declined(code, reason)
    if card.account_status != "open":
        raise Declined(rc.RESTRICTED_CARD, f"account {card.account_status}")
    if is_expired(card.expiry, ctx.now):
        raise Declined(rc.EXPIRED_CARD, "card past its expiry date")
    # A wallet presents its token's own expiry date, not the card's.
    expected = ctx.token.expiry if ctx.token is not None else card.expiry
    req = ctx.request
    track2_expiry = req.track2.expiry if req.track2 else None
    if ctx.mode is not None:
        # The mode's own expiry must be there (check_entry_mode saw to it) and match.
        presented = req.expiry if ctx.mode.expiry_from == "14" else track2_expiry
        if presented != expected:
            raise Declined(rc.EXPIRED_CARD, f"expiry date in DE {ctx.mode.expiry_from} does not match the card")
    for presented in (req.expiry, track2_expiry):
        if presented is not None and presented != expected:
            raise Declined(rc.EXPIRED_CARD, "expiry date does not match the card")


_TOKEN_STATUS_CODES = {
    "suspended": (rc.RESTRICTED_CARD, "payment token suspended"),
    "deleted": (rc.UNKNOWN_CARD, "payment token deleted"),
}


async def check_token_lifecycle(engine: "Engine", ctx: AuthContext) -> None:
    """A suspended, deleted or expired payment token serves no request of any kind."""
    token = ctx.token
    if token is None:
        return
    if token.status != "active":
        code, reason = _TOKEN_STATUS_CODES.get(token.status, (rc.RESTRICTED_CARD, f"payment token {token.status}"))
        raise Declined(code, reason)
    if is_expired(token.expiry, ctx.now):
        raise Declined(rc.EXPIRED_CARD, "payment token past its expiry date")


async def check_token_domain(engine: "Engine", ctx: AuthContext) -> None:
    """A payment token is usable only as its domain restrictions allow (EMVCo token domain controls)."""
    token, req = ctx.token, ctx.request
    if token is None:
        return
    await check_token_lifecycle(engine, ctx)
    if req.entry_mode not in token.allowed_entry_modes:
        raise Declined(rc.NOT_PERMITTED, f"payment token not allowed with POS entry mode {req.entry_mode}")
    mcc = req.mcc or (ctx.terminal.mcc if ctx.terminal else None)
    if token.mcc_allow is not None and mcc not in token.mcc_allow:
        raise Declined(rc.NOT_PERMITTED, f"payment token not allowed at MCC {mcc}")
    if token.merchant_allow is not None and req.merchant_id not in token.merchant_allow:
        raise Declined(rc.NOT_PERMITTED, "payment token not allowed at this merchant")
    if req.icc is None or "9F26" not in req.icc:
        raise Declined(rc.CVV_FAILURE, "payment token without a token cryptogram")


async def check_pin(engine: "Engine", ctx: AuthContext) -> None:
    req, card = ctx.request, ctx.card
    if req.pin_block is None:
        return
    if card.pin_method is None:
        raise Declined(rc.WRONG_PIN, "card has no PIN set")
    if card.pin_tries >= engine.policy.pin_try_limit:
        raise Declined(rc.PIN_TRIES_EXCEEDED, "PIN try limit already reached")
    terminal = ctx.terminal
    if req.ksn is None or terminal is None or terminal.bdk_kcv is None:
        raise Declined(rc.FORMAT_ERROR, "PIN block without a KSN (DE 53) from a DUKPT terminal")
    if terminal.initial_ksn and not same_key_serial(req.ksn, terminal.initial_ksn):
        raise Declined(rc.SECURITY_VIOLATION, "KSN does not belong to this terminal")
    # The store accepts the request only if this counter is above every one the terminal used before.
    ctx.ksn_counter = dukpt_counter(req.ksn)
    try:
        ok = await engine.hsm.verify_pin(
            req.pin_block,
            ctx.pan,
            terminal.bdk_kcv,
            0,
            engine.keys.pvk,
            method=card.pin_method,
            verification_value=card.pin_value,
            ksn=req.ksn,
            pvki=PVKI,
            validation_data=pin_validation_data(ctx.pan) if card.pin_method == "ibm3624" else None,
        )
    except HsmError as exc:
        if exc.code not in PIN_BLOCK_REFUSALS:
            raise  # the HSM failed: answered 91 or 96 by Engine.handle, and no try is counted
        # A block that does not decipher under the terminal's key is a key problem, not a wrong guess:
        # the cardholder's try counter is left alone.
        raise Declined(rc.WRONG_PIN, f"PIN block rejected by the HSM ({exc.code})") from exc
    if not ok:
        # The store counts the try in the statement that reads the count, and answers 75 at the limit.
        ctx.pin = ops.PinCheck.WRONG
        raise Declined(rc.WRONG_PIN, "wrong PIN")
    ctx.pin = ops.PinCheck.VERIFIED


async def check_fallback(engine: "Engine", ctx: AuthContext) -> None:
    """EMV fallback rules: a chip terminal reads a chip card's chip; its stripe counts only as fallback (80)."""
    req = ctx.request
    if req.entry_mode not in ENTRY_MAGSTRIPE or req.track2 is None:
        return
    chip_card = req.track2.has_chip
    chip_terminal = ctx.terminal is not None and ctx.terminal.chip_capable
    if req.entry_mode != ENTRY_FALLBACK:
        if chip_card and chip_terminal:
            raise Declined(rc.NOT_PERMITTED, "chip card swiped at a chip terminal: the chip must be read (fallback is DE 22 80)")
        return
    if not chip_card:
        raise Declined(rc.NOT_PERMITTED, "fallback (DE 22 80) for a card without a chip")
    if not chip_terminal:
        raise Declined(rc.NOT_PERMITTED, "fallback (DE 22 80) from a terminal without a chip reader")
    if (req.amount_minor or 0) > engine.policy.fallback_max_minor:
        raise Declined(rc.NOT_PERMITTED, f"fallback above {engine.policy.fallback_max_minor} minor units")


async def check_card_verification(engine: "Engine", ctx: AuthContext) -> None:
    """The proof the entry mode requires (CVV1, ARQC or CVV2) must verify; a CVV2 sent anyway must too."""
    req, card, mode = ctx.request, ctx.card, ctx.mode
    if mode is None:
        raise Declined(rc.NOT_PERMITTED_TERMINAL, "no accepted POS entry mode: nothing to verify the card with")
    cvv2 = req.de48.get("cvv2")
    if mode.proof is Proof.STRIPE_CVV:
        assert req.track2 is not None
        if req.track2.service_code != card.service_code:
            raise Declined(rc.CVV_FAILURE, "service code does not match the card")
        if not await _verify_cvv(engine, ctx, card.service_code, req.track2.cvv or ""):
            raise Declined(rc.CVV_FAILURE, "CVV on the magnetic stripe does not verify")
    elif mode.proof is Proof.ARQC:
        await engine.verify_chip(ctx)
    elif mode.proof is not Proof.CVV2:
        raise Declined(rc.NOT_PERMITTED_TERMINAL, f"no verification known for {mode.proof}")
    if cvv2 is not None:
        if not await _verify_cvv(engine, ctx, CVV2_SERVICE_CODE, cvv2):
            raise Declined(rc.CVV2_FAILURE, "CVV2 does not verify")


async def _verify_cvv(engine: "Engine", ctx: AuthContext, service_code: str, cvv: str) -> bool:
    """The card's CVV (of this service code) verifies: as verify_request already answered, else asked now."""
    card = ctx.card
    assert card is not None and ctx.pan is not None
    known = ctx.cvv_verified(card.expiry, service_code, cvv)
    if known is not None:
        return known
    return await engine.hsm.verify_cvv(engine.keys.cvk, ctx.pan, card.expiry, service_code, cvv)


async def check_amount(engine: "Engine", ctx: AuthContext) -> None:
    req, card = ctx.request, ctx.card
    if req.transaction_type == "balance":
        return
    if req.amount_minor is None or req.amount_minor <= 0:
        raise Declined(rc.INVALID_AMOUNT, "amount missing or zero")
    if req.amount_minor > engine.policy.amount_max_minor:
        raise Declined(rc.INVALID_AMOUNT, "amount above the single-transaction limit")
    if req.currency_numeric is None or alpha_for_numeric(req.currency_numeric) != card.currency:
        raise Declined(rc.INVALID_AMOUNT, "currency is not the account's currency")


_CONTROL_CODES = {"amount": rc.EXCEEDS_AMOUNT_LIMIT, "not_permitted": rc.NOT_PERMITTED, "restricted": rc.RESTRICTED_CARD}


async def check_controls(engine: "Engine", ctx: AuthContext) -> None:
    """The cardholder's spending controls, read fresh: channel, category, country, per-transaction limit.

    Daily and monthly limits are handed to the store with the request: it counts them with the funds.
    """
    from processor.issuing.controls import evaluate, for_card, merchant_country
    from processor.ledger.ops import SpendLimits

    req, card = ctx.request, ctx.card
    if req.transaction_type in ("balance", "refund"):
        return
    # Read with the card in the same request when it came by PAN; a wallet token's card is read here.
    controls = ctx.controls if ctx.controls_read else await for_card(engine.store, card.token)
    if controls is None:
        return
    refusal = evaluate(
        controls,
        amount_minor=req.amount_minor or 0,
        mcc=req.mcc or (ctx.terminal.mcc if ctx.terminal else None),
        entry_mode=req.entry_mode,
        cash=req.transaction_type == "cash",
        country=merchant_country(ctx.fields.get("43")),
        home_country=await engine.home_country(),
    )
    if refusal is not None:
        raise Declined(_CONTROL_CODES[refusal.kind], refusal.reason)
    if controls.counted:
        ctx.spend = SpendLimits(controls.daily_minor, controls.daily_count, controls.monthly_minor, controls.monthly_count)


async def check_advice(engine: "Engine", ctx: AuthContext) -> None:
    """A stand-in approval is honoured only for a debit up to the terminal's (or merchant's) floor limit."""
    req = ctx.request
    if req.transaction_type == "refund":
        raise Declined(rc.DO_NOT_HONOUR, "advice with a credit processing code: no stand-in credit is honoured")
    floor = await engine.floor_limit(ctx.terminal)
    if (req.amount_minor or 0) > floor:
        raise Declined(rc.DO_NOT_HONOUR, f"advice of {req.amount_minor} above the floor limit of {floor}")


CARD_CHECKS: tuple[Check, ...] = (
    check_terminal,
    check_processing_code,
    check_entry_mode,
    check_card_known,
    check_card_status,
    check_token_domain,
    check_fallback,
    check_pin,
    check_card_verification,
    check_amount,
    check_controls,
)
# A stand-in advice was approved by the network already: only what is needed to find the card runs.
ADVICE_CHECKS: tuple[Check, ...] = (
    check_terminal, check_processing_code, check_card_known, check_token_lifecycle, check_amount, check_advice,
)
# An increment tops up a hold the cardholder already authorized: the card (and a wallet token) must still
# be usable, but the card need not be presented again.
INCREMENTAL_CHECKS: tuple[Check, ...] = (
    check_terminal, check_processing_code, check_card_known, check_card_status, check_token_lifecycle, check_amount,
)


class _Verified(NamedTuple):
    """What the HSM's verify_request checked with a card request's MAC, and the PAN and CVVs it was given."""

    pan: str
    cvvs: list[list[str]]
    checks: RequestChecks


class _Stale(Exception):
    """Rows from the engine's cache decided a request and have changed since; or (`refusal`) they refused a
    message, which is refused only on fresh rows."""

    def __init__(self, *, refusal: bool = False) -> None:
        super().__init__("cached rows changed")
        self.refusal = refusal


class Engine:
    """Decode, check, hold or post, answer. Stateless between requests apart from bounded caches."""

    def __init__(
        self,
        store: StoreInterface,
        hsm: HsmApi,
        keys: IssuerKeys,
        *,
        policy: Policy | None = None,
        clock: Callable[[], dt.datetime] | None = None,
        terminal_cache_s: float = 5.0,
        token_bin: str | None = None,
        card_checks: tuple[Check, ...] = CARD_CHECKS,
        reopen_hsm: Callable[[], Awaitable[HsmApi | None]] | None = None,
    ) -> None:
        self.store = store
        self.hsm = hsm
        self.keys = keys
        self.policy = policy or Policy()
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self.token_bin = token_bin
        self.card_checks = card_checks
        # Cards and terminals, valid while the store's cache generation is `_generation` (None: not read yet).
        self._generation: int | None = None
        self._terminal_cache: dict[str, Terminal] = {}
        self._card_cache: dict[tuple[str, ...], tuple[int, tuple[CardRecord, CardControls | None]]] = {}
        self._terminal_cache_s = terminal_cache_s
        self._terminal_cache_max = 10_000
        self._network_cache: dict[str, tuple[float, Terminal | None]] = {}
        self._config_cache: dict[str, tuple[float, str | None]] = {}
        # An HSM in this process reads its key store once: `reopen_hsm` gives a fresh one when another
        # process (`processor keys rotate --new-keys`) changed the key store, None when nothing changed.
        self._reopen_hsm = reopen_hsm
        self._retired_hsms: list[HsmApi] = []
        self._reopen_lock = asyncio.Lock()
        self._home_country: str | None = None

    # ------------------------------------------------------------ entry point

    async def handle(self, payload: bytes, *, sender: str | None = None, session: Any = None) -> bytes | None:
        """Answer one framed payload; None means no answer (unreadable, or the outcome not confirmed yet): the
        connection should close, and a terminal sends the request again.

        `sender` is the terminal id the transport has authenticated, when it has (the broker's account on
        MQTT). A request whose DE 41 names another terminal is then refused with 03 and nothing is recorded:
        its idempotency key belongs to that other terminal. `session` (the TCP connection) has its
        `authenticated` set once a message authenticates: until then the transport gives it little time.
        """
        started = time.perf_counter()
        try:
            fields = decode(payload)
            request = Request.from_fields(fields)
        except MessageFormatError as exc:
            return self._format_error(payload, exc, started)
        if sender is not None and request.terminal_id != sender:
            log.warning("terminal %s sent a request naming terminal %s in DE 41: refused", sender, request.terminal_id)
            self._log(request, rc.INVALID_MERCHANT, f"sent by terminal {sender}, not by the terminal in DE 41", started)
            return encode(build_response(fields, rc.INVALID_MERCHANT))
        try:
            try:
                return await self._dispatch(payload, fields, request, started, session, cached=True)
            except _Stale as stale:
                # Cached rows decided it and they have changed since, or refused it and may have: decided
                # again, on fresh rows only.
                if not stale.refusal or await ledger_generation.current(self.store) != self._generation:
                    self.forget_cached()
                return await self._dispatch(payload, fields, request, started, session, cached=False)
        except HsmError as exc:
            # Without the HSM nothing can be verified: the truth is "issuer inoperative", never a wrong PIN,
            # and nothing was recorded (no PIN try spent). The client reconnects on the next call.
            code = rc.ISSUER_INOPERATIVE if exc.code in HSM_UNAVAILABLE else rc.SYSTEM_ERROR
            log.error("request %s stan=%s: HSM failed (%s): %s", request.mti, request.stan, exc.code, exc)
            self._log(request, code, f"HSM failed ({exc.code})", started)
            return encode(build_response(fields, code))
        except (StoreBusy, StoreClosed) as exc:
            # The store could not confirm the commit (no commit in time, or the store closing under it): the
            # operation may still be applied. A 96 now could contradict the answer the store records, so no
            # answer at all: the terminal sends the same request again (over TCP on a new connection, this
            # one closes) and its idempotency key gets the recorded first answer, from this engine or another.
            log.warning("request %s stan=%s terminal=%s: outcome not confirmed (%s); not answered, the terminal "
                        "retransmits", request.mti, request.stan, request.terminal_id, exc)
            return None
        except Exception:
            # A system error is a safe answer for a failure that recorded nothing: a retransmission (same
            # STAN) of a request whose outcome the store did record gets that first answer back.
            log.exception("request %s stan=%s failed", request.mti, request.stan)
            self._log(request, rc.SYSTEM_ERROR, "system error", started)
            return encode(build_response(fields, rc.SYSTEM_ERROR))

    async def _dispatch(
        self, payload: bytes, fields: dict[str, Any], request: Request, started: float, session: Any = None,
        *, cached: bool = False,
    ) -> bytes | None:
        """`cached`: the engine's cached rows may decide, for the kinds whose outcome the store applies only
        while they are current (raising _Stale when they are not); a refusal they made is made again on
        fresh rows before it is answered."""
        mti = request.mti
        cached = cached and mti in MERCHANT_MTIS
        if mti not in HANDLED_MTIS:
            # An answer sent to us as a request (0110, 0210...) is never processed as anything else.
            log.warning("mti=%s stan=%s terminal=%s: a response sent as a request; dropped", mti, request.stan, request.terminal_id)
            return None
        verified: _Verified | None = None
        network = await self.network_key(request.acquirer_id)
        if network is not None:
            # A message naming an acquiring network must carry the network's own MAC, checked before any
            # of its other fields (DE 41, DE 42) is looked at: a forged one learns nothing and changes nothing.
            refusal, verified = await self._authenticate(payload, fields, request, network)
            if refusal is not None:
                self._log(request, rc.SECURITY_VIOLATION, f"network {request.acquirer_id}: {refusal}", started)
                return encode(build_response(fields, rc.SECURITY_VIOLATION))
        sender = await self.terminal(request.terminal_id, cached=cached)
        refusal = self._identity_refusal(request, sender, network is not None)
        if refusal is not None and sender is not None and sender.generation is not None:
            raise _Stale(refusal=True)
        if refusal is not None:
            # Nothing is recorded for a message that does not come from the terminal it names.
            self._log(request, rc.INVALID_MERCHANT, refusal, started)
            return encode(build_response(fields, rc.INVALID_MERCHANT))
        assert sender is not None
        if network is None:
            refusal, verified = await self._authenticate(payload, fields, request, sender)
            if refusal is not None and sender.generation is not None:
                raise _Stale(refusal=True)  # a terminal given a new key is read again before its message is refused
            if refusal is not None:
                # Nothing in an unauthenticated message is trusted: nothing is recorded and no counter moves.
                self._log(request, rc.SECURITY_VIOLATION, refusal, started)
                return encode(build_response(fields, rc.SECURITY_VIOLATION))
        if session is not None:
            session.authenticated = True
        ksn = request.ksn if sender.bdk_kcv is not None else None
        ksn_counter = dukpt_counter(ksn) if ksn else None
        if mti == "0800":
            answer, outcome_rc = await self._network_management(fields, request, ksn_counter)
        elif mti in CARD_REQUEST_MTIS:
            answer, outcome_rc = await self._card_request(fields, request, ksn_counter, verified, cached=cached)
        elif mti == "0220":
            answer, outcome_rc = await self._completion(fields, request, ksn_counter, cached=cached)
        elif mti in ("0400", "0420"):
            answer, outcome_rc = await self._reversal(fields, request, ksn_counter, cached=cached)
        elif mti == "0500":
            ctx = AuthContext(fields=fields, request=request, now=self.clock(), ksn_counter=ksn_counter)
            answer, outcome_rc = await reconcile(self.store, self.terminal, ctx)
        else:
            raise AssertionError(f"MTI {mti} is in HANDLED_MTIS without a handler")
        self._log(request, outcome_rc, answer.pop("_reason", ""), started)
        return await self._seal(answer, sender, ksn)

    async def _authenticate(
        self, payload: bytes, fields: dict[str, Any], req: Request, sender: Terminal
    ) -> tuple[str | None, _Verified | None]:
        """(why the message is not the terminal's own (its MAC under the DUKPT key of its KSN), or None; what
        the HSM checked of the card with the MAC).

        For a card request the one HSM command that verifies the MAC also fingerprints the PAN and verifies
        the CVVs the request presents, for the checks to use once the card is known.
        """
        if sender.bdk_kcv is None:
            # A terminal row without a key (one written straight into the store) can prove nothing: refused.
            if sender.network is not None:
                return "the network has no key registered: register it again (`processor settle network add`)", None
            return "the terminal has no key registered: register it with `processor terminal add`", None
        if req.ksn is None:
            return "no key serial number (DE 53): every message is MACed under the terminal's DUKPT key", None
        if not sender.initial_ksn or not same_key_serial(req.ksn, sender.initial_ksn):
            return "the KSN in DE 53 is not this terminal's", None
        parts = signed_parts(payload, fields)
        if parts is None:
            return "no MAC as the message's last field (DE 64, or DE 128 with a secondary bitmap)", None
        data, tag = parts
        pan = _presented_pan(req) if req.mti in CARD_REQUEST_MTIS else None
        if pan is None:
            if not await self.hsm.verify_mac(sender.bdk_kcv, data, tag, ksn=req.ksn):
                return "MAC does not verify under the terminal's key", None
            return None, None
        cvvs = _presented_cvvs(req)
        checks = await self.hsm.verify_request(
            sender.bdk_kcv, data, tag, ksn=req.ksn, pan=pan, cvk=self.keys.cvk, cvvs=cvvs or None
        )
        if not checks.mac_ok:
            return "MAC does not verify under the terminal's key", None
        return None, _Verified(pan, cvvs, checks)

    async def _seal(self, answer: dict[str, Any], sender: Terminal, ksn: str | None) -> bytes:
        """The encoded answer, MACed under the response key of the request's KSN when it came from a terminal."""
        if ksn is None or sender.bdk_kcv is None:
            return encode(answer)
        raw = encode_for_mac(answer)
        tag = await self.hsm.generate_mac(sender.bdk_kcv, raw[:-MAC_BYTES], ksn=ksn)
        return raw[:-MAC_BYTES] + bytes.fromhex(tag)

    @staticmethod
    def _identity_refusal(request: Request, terminal: Terminal | None, from_network: bool) -> str | None:
        """Why a message cannot be from the terminal its DE 41 names, or None when it can. A network's
        message names one of the terminals registered for that network; our own terminals' never name a
        network (their traffic would otherwise settle as the network's, or the network's as ours)."""
        if terminal is None:
            if from_network:
                return f"terminal {request.terminal_id} is not registered for network {request.acquirer_id}"
            return "unknown terminal: nothing recorded"
        if from_network and terminal.network != request.acquirer_id:
            return f"terminal {terminal.terminal_id} is not registered for network {request.acquirer_id}"
        if not from_network and terminal.network is not None:
            return f"terminal {terminal.terminal_id} belongs to network {terminal.network}: DE 32 must name it"
        if request.merchant_id is None and request.mti in MERCHANT_MTIS:
            return "no merchant (DE 42)"
        if request.merchant_id is not None and request.merchant_id != terminal.merchant_id:
            return f"DE 42 is not the merchant of terminal {terminal.terminal_id}"
        return None

    # ------------------------------------------------------------ message kinds

    async def _card_request(
        self, fields: dict[str, Any], req: Request, ksn_counter: int | None, verified: _Verified | None = None,
        *, cached: bool = False,
    ) -> tuple[dict[str, Any], str]:
        ctx = AuthContext(fields=fields, request=req, now=self.clock(), ksn_counter=ksn_counter, cached=cached)
        if verified is not None:
            ctx.checked_pan = verified.pan
            ctx.fingerprints = [fp for _, fp in verified.checks.fingerprints]
            ctx.cvv_checks = {
                (e, code, cvv): ok for (e, code, cvv), ok in zip(verified.cvvs, verified.checks.cvvs, strict=True)
            }
        advice = req.mti == "0120"
        incremental = req.mti == "0100" and bool(req.de48.get("incremental")) and req.original is not None
        checks = ADVICE_CHECKS if advice else INCREMENTAL_CHECKS if incremental else self.card_checks
        try:
            for check in checks:
                await check(self, ctx)
            if incremental:
                op = self._increment_op(ctx)
            elif req.transaction_type == "refund":
                op = await self._refund_op(ctx)
            else:
                op = self._approval_op(ctx, force=advice)
        except Declined as declined:
            code = declined.code
            if advice:
                # Acknowledged, not honoured: the advice lands on the operator's exception list
                # (`processor advice exceptions`) and no money moves.
                code, declined.reason = rc.DO_NOT_HONOUR, f"advice not honoured: {declined.reason}"
            ctx.reason = declined.reason
            op = ops.Decline(**self._op_common(ctx, amount_minor=req.amount_minor or 0), rc=code)
        outcome = await self._submit(op)
        if req.icc is not None and outcome.rc not in rc.APPROVALS and outcome.rc not in (rc.FORMAT_ERROR, rc.CVV_FAILURE):
            # A declined chip card still hears from its issuer: an ARPC over the decline code.
            ctx.icc_response = await declined_arpc(self.hsm, self.keys, ctx)
        return self._answer(ctx, outcome), outcome.rc

    async def _completion(
        self, fields: dict[str, Any], req: Request, ksn_counter: int | None, *, cached: bool = False
    ) -> tuple[dict[str, Any], str]:
        ctx = AuthContext(fields=fields, request=req, now=self.clock(), ksn_counter=ksn_counter, cached=cached)
        try:
            await check_terminal(self, ctx)
            if req.original is None:
                raise Declined(rc.FORMAT_ERROR, "completion without original data elements (DE 90)")
            await check_processing_code(self, ctx)
            if req.amount_minor is None or req.amount_minor < 0:
                raise Declined(rc.INVALID_AMOUNT, "completion amount missing")
            mcc = req.mcc or ctx.terminal.mcc
            op = ops.Capture(
                **self._op_common(ctx, amount_minor=req.amount_minor), original_key=req.original_key(),
                tolerance_pct=self.policy.tolerance_pct(mcc),
            )
        except Declined as declined:
            ctx.reason = declined.reason
            op = ops.Decline(**self._op_common(ctx, amount_minor=req.amount_minor or 0), rc=declined.code)
        outcome = await self._submit(op)
        return self._answer(ctx, outcome), outcome.rc

    async def _reversal(
        self, fields: dict[str, Any], req: Request, ksn_counter: int | None, *, cached: bool = False
    ) -> tuple[dict[str, Any], str]:
        ctx = AuthContext(fields=fields, request=req, now=self.clock(), ksn_counter=ksn_counter, cached=cached)
        try:
            await check_terminal(self, ctx)
            if req.original is None:
                raise Declined(rc.FORMAT_ERROR, "reversal without original data elements (DE 90)")
            await check_processing_code(self, ctx)
            op = ops.Reverse(
                **self._op_common(ctx, amount_minor=req.amount_minor or 0),
                original_key=req.original_key(),
                remaining_minor=req.replacement_amount_minor,
            )
        except Declined as declined:
            ctx.reason = declined.reason
            op = ops.Decline(**self._op_common(ctx, amount_minor=req.amount_minor or 0), rc=declined.code)
        outcome = await self._submit(op)
        return self._answer(ctx, outcome), outcome.rc

    async def _network_management(
        self, fields: dict[str, Any], req: Request, ksn_counter: int | None
    ) -> tuple[dict[str, Any], str]:
        code = req.network_code or "301"
        if code not in ("001", "002", "301"):
            answer = build_response(fields, rc.INVALID_TRANSACTION)
            answer["_reason"] = f"unknown network management code {code}"
            return answer, rc.INVALID_TRANSACTION
        if ksn_counter is not None and not await issuing.terminals.claim_ksn_counter(self.store, req.terminal_id or "", ksn_counter):
            answer = build_response(fields, rc.SECURITY_VIOLATION)
            answer["_reason"] = f"DUKPT counter {ksn_counter} is not above the terminal's last one: replayed message"
            return answer, rc.SECURITY_VIOLATION
        answer = build_response(fields, rc.APPROVED)
        answer["_reason"] = {"001": "sign-on", "002": "sign-off"}.get(code, "echo")
        return answer, rc.APPROVED

    async def _submit(self, op: ops.AnyOp) -> ops.AuthOutcome:
        outcome = await self.store.submit(op)
        if outcome.result is ops.Result.STALE:
            raise _Stale()
        return outcome

    # ------------------------------------------------------------ building store operations

    def _op_common(self, ctx: AuthContext, *, amount_minor: int) -> dict[str, Any]:
        req, card = ctx.request, ctx.card
        currency = card.currency if card is not None else (alpha_for_numeric(req.currency_numeric) or "XXX")
        return dict(
            idem_key=req.idempotency_key(),
            mti=req.mti,
            terminal_id=req.terminal_id or "",
            stan=req.stan or "",
            rrn=req.rrn or "",
            card_id=card.card_id if card is not None else None,
            account_id=card.account_id if card is not None else None,
            amount_minor=amount_minor,
            currency=currency,
            auth_code=approval_code(),
            reason=ctx.reason,
            answer_codes=LEDGER_ANSWERS,
            ref=req.reference_key(),
            pin=ctx.pin,
            pin_try_limit=self.policy.pin_try_limit,
            ksn_counter=ctx.ksn_counter,
            atc=ctx.atc,
            acquirer_id=req.acquirer_id or "",
            merchant_id=req.merchant_id or (ctx.terminal.merchant_id if ctx.terminal else ""),
            mcc=req.mcc or (ctx.terminal.mcc if ctx.terminal and ctx.terminal.mcc else ""),
            entry_mode=(req.entry_mode or "")[:2],
            spend=ctx.spend,
            seen_generation=ctx.seen_generation,
            **({"token_id": ctx.token.token_id} if ctx.token is not None else {}),
        )

    def _approval_op(self, ctx: AuthContext, *, force: bool) -> ops.AnyOp:
        req = ctx.request
        common = self._op_common(ctx, amount_minor=req.amount_minor or 0)
        partial_ok = bool(req.de48.get("partial_ok"))
        kind = req.transaction_type
        if kind == "balance":
            return ops.Inquiry(**common)
        if req.mti in ("0100", "0120"):
            mcc = req.mcc or (ctx.terminal.mcc if ctx.terminal else None)
            return ops.PlaceHold(
                **common,
                expires_at=self.policy.hold_expires_at(mcc, ctx.now),
                partial_ok=partial_ok,
                force=force,
            )
        return ops.Debit(**common, partial_ok=partial_ok, force=force, kind="cash" if kind == "cash" else "purchase")

    async def _refund_op(self, ctx: AuthContext) -> ops.Credit:
        """A refund: bounded by its purchase when it names one (DE 90, or DE 48 OR), else by its merchant's
        limits; an 0100 authorizes it and credits nothing until its completion."""
        req = ctx.request
        common = self._op_common(ctx, amount_minor=req.amount_minor or 0)
        original_key = req.original_key() if req.original is not None else None
        original_rrn = req.de48.get("original_rrn") if original_key is None else None
        limits = None
        if original_key is None and original_rrn is None:
            limits = await self.refund_limits(common["merchant_id"])
        return ops.Credit(
            **common, original_key=original_key, original_rrn=original_rrn, limits=limits, post=req.mti != "0100"
        )

    def _increment_op(self, ctx: AuthContext) -> ops.Increment:
        req = ctx.request
        return ops.Increment(
            **self._op_common(ctx, amount_minor=req.amount_minor or 0),
            original_key=req.original_key(),
            partial_ok=bool(req.de48.get("partial_ok")),
        )

    # ------------------------------------------------------------ chip

    async def verify_chip(self, ctx: AuthContext) -> None:
        """Verify the ARQC in DE 55 through the HSM and prepare the ARPC for the card."""
        ctx.icc_response = await verify_chip_cryptogram(self.hsm, self.keys, ctx)

    # ------------------------------------------------------------ answers and logs

    def _answer(self, ctx: AuthContext, outcome: ops.AuthOutcome) -> dict[str, Any]:
        req = ctx.request
        approved = outcome.rc in (rc.APPROVED, rc.PARTIAL_APPROVAL)
        balances: list[Balance] | None = None
        if outcome.ledger_minor is not None and outcome.currency and (
            req.transaction_type == "balance" or outcome.rc == rc.PARTIAL_APPROVAL
        ):
            numeric = numeric_for_alpha(outcome.currency)
            account_type = req.from_account or "00"
            balances = [
                Balance(account_type, "01", numeric, outcome.ledger_minor),
                Balance(account_type, "02", numeric, outcome.available_minor),
            ]
            if outcome.rc == rc.PARTIAL_APPROVAL:
                balances.append(Balance(account_type, "57", numeric, req.amount_minor or 0))
        answer = build_response(
            ctx.fields,
            outcome.rc,
            approval_code=outcome.auth_code if approved else None,
            amount_minor=outcome.approved_minor if outcome.rc == rc.PARTIAL_APPROVAL else None,
            balances=balances,
            icc_response=ctx.icc_response,
        )
        answer["_reason"] = ("duplicate: " if outcome.duplicate else "") + (outcome.reason or ctx.reason)
        return answer

    def _format_error(self, payload: bytes, exc: MessageFormatError, started: float) -> bytes | None:
        partial = getattr(exc, "partial", None) or {}
        mti = payload[:4].decode("ascii", "replace")
        if mti not in REQUEST_MTIS:
            log.warning("format error: %s; MTI %r is not a request this host answers, no answer", exc, mti if mti.isprintable() else "?")
            return None
        answer: dict[str, Any] = {"t": response_mti(mti), "39": rc.FORMAT_ERROR}
        for de in ("3", "4", "7", "11", "12", "13", "32", "37", "41", "42", "49"):
            value = partial.get(de)
            if isinstance(value, str):
                answer[de] = value
        log.info(
            "mti=%s stan=%s terminal=%s pan=- rc=30 reason=%r latency_ms=%.2f",
            mti,
            answer.get("11", "-"),
            answer.get("41", "-"),
            f"format error: {exc}",
            (time.perf_counter() - started) * 1000,
        )
        try:
            return encode(answer)
        except MessageFormatError:
            return encode({"t": answer["t"], "39": rc.FORMAT_ERROR})

    def _log(self, req: Request, code: str, reason: str, started: float) -> None:
        pan = req.pan or (req.track2.pan if req.track2 else None)
        log.info(
            "mti=%s stan=%s terminal=%s pan=%s amount=%s rc=%s reason=%r latency_ms=%.2f",
            req.mti,
            req.stan,
            req.terminal_id,
            mask_pan(pan),
            req.amount_minor,
            code,
            reason,
            (time.perf_counter() - started) * 1000,
        )

    # ------------------------------------------------------------ look-ups

    async def sender(self, req: Request) -> Terminal | None:
        """The registered terminal a message comes from, by DE 41 (an acquiring network's merchant terminal
        is registered for its network, under the network's key), read fresh; None when there is none."""
        return await self.terminal(req.terminal_id)

    async def network_key(self, acquirer_id: str | None) -> Terminal | None:
        """The key holder of the acquiring network DE 32 names, when it names a registered one (`processor
        settle network add`): its connection MACs every message under the network's DUKPT key. Cached briefly."""
        if not acquirer_id:
            return None
        now = time.monotonic()
        hit = self._network_cache.get(acquirer_id)
        if hit is not None and now - hit[0] < self._terminal_cache_s:
            return hit[1]
        raw = await issuing.config.get(self.store, f"network.{acquirer_id}")
        holder = None
        if raw is not None:
            entry = json.loads(raw)
            holder = Terminal(
                terminal_id="", merchant_id="", mcc=None, status="active", bdk_kcv=entry.get("bdk_kcv"),
                initial_ksn=entry.get("initial_ksn"), network=acquirer_id,
            )
        if len(self._network_cache) >= self._terminal_cache_max:
            self._network_cache.clear()
        self._network_cache[acquirer_id] = (now, holder)
        return holder

    async def learn_key_versions(self, used: HsmApi) -> bool:
        """After a card or token was not found with HSM `used`: True when the engine's HSM now knows key
        versions that one did not.

        Key versions change while the engine runs (a vault rotation): the engine picks them up on the first
        look-up that misses, without a restart; the misses waiting meanwhile use the fresh HSM too.
        Requests still in flight finish on the HSM they started on.
        """
        if self._reopen_hsm is None:
            return False
        async with self._reopen_lock:
            if self.hsm is not used:
                return True
            fresh = await self._reopen_hsm()
            if fresh is None:
                return False
            self._retired_hsms.append(self.hsm)
            self.hsm = fresh
        log.warning("the HSM's key store changed: key versions read again")
        return True

    async def close(self) -> None:
        """Close the HSMs this engine replaced (the current one belongs to whoever opened it)."""
        for hsm in self._retired_hsms:
            await hsm.close()
        self._retired_hsms.clear()

    async def config_value(self, key: str) -> str | None:
        """A value of the store's config, cached briefly: operators change limits, not requests."""
        now = time.monotonic()
        hit = self._config_cache.get(key)
        if hit is not None and now - hit[0] < CONFIG_CACHE_S:
            return hit[1]
        value = await issuing.config.get(self.store, key)
        if len(self._config_cache) >= self._terminal_cache_max:
            self._config_cache.clear()
        self._config_cache[key] = (now, value)
        return value

    async def floor_limit(self, terminal: Terminal | None) -> int:
        """The terminal's stand-in floor limit in minor units, else its merchant's, else the policy's."""
        if terminal is not None:
            for key in (f"{FLOOR_LIMIT_CONFIG}.terminal.{terminal.terminal_id}", f"{FLOOR_LIMIT_CONFIG}.merchant.{terminal.merchant_id}"):
                value = await self.config_value(key)
                if value is not None and value.isdigit():
                    return int(value)
        return self.policy.advice_floor_limit_minor

    async def refund_limits(self, merchant_id: str) -> ops.RefundLimits:
        """What the merchant may refund without naming the purchase, per transaction and per day."""
        value = await self.config_value(f"{REFUND_LIMITS_CONFIG}.merchant.{merchant_id}")
        parts = (value or "").split(",")
        if len(parts) == 2 and all(p.isdigit() for p in parts):
            return ops.RefundLimits(int(parts[0]), int(parts[1]))
        return ops.RefundLimits(self.policy.refund_per_transaction_minor, self.policy.refund_daily_minor)

    async def home_country(self) -> str:
        """The issuer's country (config issuer.country, ISO 3166 alpha-2): what "abroad" is measured from."""
        if self._home_country is None:
            from processor.issuing.controls import DEFAULT_HOME_COUNTRY, HOME_COUNTRY_CONFIG

            self._home_country = (await issuing.config.get(self.store, HOME_COUNTRY_CONFIG) or DEFAULT_HOME_COUNTRY).upper()
        return self._home_country

    async def cache_generation(self) -> int:
        """The cache generation the engine's cached rows are read at (processor.ledger.generation): read
        once, and again after the store said a cached row had changed."""
        if self._generation is None:
            self._generation = await ledger_generation.current(self.store)
        return self._generation

    def forget_cached(self) -> None:
        """Drop the cached cards and terminals: the next requests read them, and the generation, again."""
        self._generation = None
        self._card_cache.clear()
        self._terminal_cache.clear()

    async def cached_card(
        self, fingerprints: list[str]
    ) -> tuple[int | None, tuple[CardRecord, CardControls | None] | None]:
        """(the cache generation it was read at, the card with its controls) by PAN fingerprints; a card not
        found is not cached (it may be issued the next moment)."""
        key = tuple(fingerprints)
        hit = self._card_cache.get(key)
        if hit is not None and hit[0] == self._generation:
            return hit
        generation = await self.cache_generation()
        found = await find_card_with_controls(self.store, fingerprints)
        if found is None or self._generation != generation:
            return generation, found
        if len(self._card_cache) >= self._terminal_cache_max:
            self._card_cache.clear()
        self._card_cache[key] = (generation, found)
        return generation, found

    async def terminal(self, terminal_id: str | None, *, cached: bool = False) -> Terminal | None:
        """The terminal by DE 41 with its merchant, read fresh; or, when `cached`, from the engine's cache, with
        the cache generation it was read at (an unknown terminal is not cached)."""
        if not terminal_id:
            return None
        generation = None
        if cached:
            hit = self._terminal_cache.get(terminal_id)
            if hit is not None and hit.generation == self._generation:
                return hit
            generation = await self.cache_generation()
        row = await issuing.terminals.get(self.store, terminal_id)
        if row is None:
            return None
        terminal = Terminal(
            terminal_id=row.terminal_id,
            merchant_id=row.merchant_id,
            mcc=row.mcc,
            status=row.status,
            bdk_kcv=row.bdk_kcv,
            initial_ksn=row.initial_ksn,
            chip_capable=row.chip_capable,
            network=row.key_scheme[len(NETWORK_SCHEME):] if (row.key_scheme or "").startswith(NETWORK_SCHEME) else None,
            generation=generation,
        )
        if generation is not None and self._generation == generation:
            if len(self._terminal_cache) >= self._terminal_cache_max:
                self._terminal_cache.clear()
            self._terminal_cache[terminal_id] = terminal
        return terminal
