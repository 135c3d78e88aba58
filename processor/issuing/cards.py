"""Cards: issuance, the lifecycle, and the queries on the cards table, including the engine's look-up.

Issuance draws a PAN in the issuer's BIN with its security values and tokenizes it at once, so only the
HSM ever sees it again: the store keeps a surrogate number, the sealed PAN and the HSM's keyed fingerprint
(`find_by_fingerprints`, the engine's one read per authorization).

    card = await cards.issue_card(store, hsm, keys, account_id=account_id, pin="1234")
    await cards.set_status(store, card.id, "frozen")
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Connection, insert, select, update
from sqlalchemy.exc import IntegrityError

from hsm_sim import HsmApi
from processor.errors import InvalidRequest
from processor.issuing.config import DEFAULT_BIN
from processor.issuing.keys import IssuerKeys
from processor.issuing.pan import generate_pan, surrogate_for
from processor.iso8583 import build_track2
from processor.ledger import Lookup, StoreError, StoreInterface, StoreNotFound, accounts
from processor.ledger.outbox import cardholder_event, write_events
from processor.ledger.models import accounts as accounts_table
from processor.ledger.models import cards, utcnow

PVKI = 1
PIN_TRY_LIMIT = 3
SERVICE_CODE_CHIP = "201"  # international, integrated circuit card; normal authorization; no restrictions
SERVICE_CODE_MAGSTRIPE = "101"
CVV2_SERVICE_CODE = "000"
ICVV_SERVICE_CODE = "999"

CARD_STATUSES = frozenset({"inactive", "active", "frozen", "lost", "stolen", "closed", "expired"})
# Lost, stolen, expired and closed are final apart from closing; a frozen card can come back.
CARD_TRANSITIONS: dict[str, frozenset[str]] = {
    "inactive": frozenset({"active", "closed"}),
    "active": frozenset({"frozen", "lost", "stolen", "closed", "expired"}),
    "frozen": frozenset({"active", "lost", "stolen", "closed", "expired"}),
    "lost": frozenset({"closed"}),
    "stolen": frozenset({"closed"}),
    "expired": frozenset({"closed"}),
    "closed": frozenset(),
}


@dataclass(frozen=True, slots=True)
class NewCard:
    """A card to create; secrets are already tokenized, sealed or reduced to verification values."""

    account_id: int
    token: str
    last4: str
    pan_fingerprint: str
    sealed_pan: str
    expiry: str
    service_code: str
    status: str = "inactive"
    product: str = "debit"
    fingerprint_version: int = 1
    data_key_version: int = 1
    psn: str = "00"
    pin_method: str | None = None
    pin_value: str | None = None
    replaced_card_id: int | None = None


@dataclass(frozen=True, slots=True)
class CardRecord:
    """A card with what the engine needs of its account."""

    card_id: int
    account_id: int
    status: str
    product: str
    token: str
    last4: str
    pan_fingerprint: str
    fingerprint_version: int
    sealed_pan: str
    data_key_version: int
    expiry: str
    service_code: str
    psn: str
    pin_method: str | None
    pin_value: str | None
    pin_tries: int
    replaced_by_card_id: int | None
    account_status: str
    currency: str
    last_atc: int | None = None


@dataclass(frozen=True, slots=True)
class IssuedCard:
    """What a card carrier shows once (and the card bureau gets for the chip): none of it is kept after this."""

    id: int
    account_id: int
    pan: str
    token: str
    last4: str
    expiry: str
    service_code: str
    track2: str
    chip_track2: str | None  # None for a magstripe-only card
    cvv2: str
    psn: str
    status: str
    pin_method: str | None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def pin_validation_data(pan: str) -> str:
    """IBM 3624 validation data: the PAN's 11 digits before the check digit, padded to 16 with 'F'."""
    return pan[:-1][-11:].ljust(16, "F")


def check_pin_format(pin: str) -> None:
    """Refuse, with a message that does not repeat it, a PIN that is not 4 to 12 digits."""
    if not pin.isdigit() or not 4 <= len(pin) <= 12:
        raise InvalidRequest("PIN must be 4 to 12 digits")


def expiry_after(years: int, today: dt.date) -> str:
    """YYMM of the month `years` after today (cards are valid through the end of that month)."""
    return f"{(today.year + years) % 100:02d}{today.month:02d}"


async def pin_verification_for(hsm: HsmApi, keys: IssuerKeys, pan: str, pin: str) -> tuple[str, str]:
    """(method, value): a Visa PVV for 4-digit PINs, an IBM 3624 offset for longer ones."""
    check_pin_format(pin)
    if len(pin) == 4:
        return "pvv", await hsm.generate_pin_verification(pin, pan, keys.pvk, "pvv", pvki=PVKI)
    value = await hsm.generate_pin_verification(
        pin, pan, keys.pvk, "ibm3624", validation_data=pin_validation_data(pan)
    )
    return "ibm3624", value


async def issue_card(
    store: StoreInterface,
    hsm: HsmApi,
    keys: IssuerKeys,
    *,
    account_id: int,
    pin: str | None,
    bin_prefix: str = DEFAULT_BIN,
    chip: bool = True,
    product: str = "debit",
    validity_years: int = 4,
    active: bool = True,
    psn: str = "00",
    today: dt.date | None = None,
) -> IssuedCard:
    """Issue a card on an account: PAN, expiry, CVV1/CVV2/iCVV, track 2, PIN verification data, vault entry."""
    if pin is not None:
        check_pin_format(pin)
    await accounts.get(store, account_id)  # raises when the account does not exist
    today = today or dt.datetime.now(dt.UTC).date()
    expiry = expiry_after(validity_years, today)
    service_code = SERVICE_CODE_CHIP if chip else SERVICE_CODE_MAGSTRIPE
    for _ in range(8):  # a random PAN that is already issued is simply drawn again
        pan = generate_pan(bin_prefix)
        vault = await hsm.tokenize_pan(pan)
        if await find_by_fingerprints(store, [vault.fingerprint]) is not None:
            continue
        cvv1 = await hsm.generate_cvv(keys.cvk, pan, expiry, service_code)
        cvv2 = await hsm.generate_cvv(keys.cvk, pan, expiry, CVV2_SERVICE_CODE)
        icvv = await hsm.generate_cvv(keys.cvk, pan, expiry, ICVV_SERVICE_CODE)
        pin_method, pin_value = (None, None)
        if pin is not None:
            pin_method, pin_value = await pin_verification_for(hsm, keys, pan, pin)
        pvv_on_track = pin_value if pin_method == "pvv" else "0000"
        track2 = build_track2(pan, expiry, service_code, cvv1, discretionary=f"{PVKI}{pvv_on_track}")
        # The chip carries the same track with the iCVV instead of the CVV, so a skimmed chip track
        # cannot be replayed on a magnetic stripe.
        chip_track2 = build_track2(pan, expiry, service_code, icvv, discretionary=f"{PVKI}{pvv_on_track}") if chip else None
        token = surrogate_for(pan)
        new = NewCard(
            account_id=account_id,
            status="active" if active else "inactive",
            product=product,
            token=token,
            last4=pan[-4:],
            pan_fingerprint=vault.fingerprint,
            fingerprint_version=vault.fingerprint_version,
            sealed_pan=vault.sealed_pan,
            data_key_version=vault.data_key_version,
            expiry=expiry,
            service_code=service_code,
            psn=psn,
            pin_method=pin_method,
            pin_value=pin_value,
        )
        card_id = await create(store, new)
        return IssuedCard(
            id=card_id,
            account_id=account_id,
            pan=pan,
            token=token,
            last4=pan[-4:],
            expiry=expiry,
            service_code=service_code,
            track2=track2,
            chip_track2=chip_track2,
            cvv2=cvv2,
            psn=psn,
            status=new.status,
            pin_method=pin_method,
        )
    raise InvalidRequest(f"could not draw a free card number in BIN {bin_prefix}: the range is nearly full")


# ------------------------------------------------------------------ the cards table

CARD_COLUMNS = (
    cards.c.id.label("card_id"),
    *(
        cards.c[name]
        for name in (
            "account_id", "status", "product", "token", "last4", "pan_fingerprint", "fingerprint_version",
            "sealed_pan", "data_key_version", "expiry", "service_code", "psn", "pin_method", "pin_value", "pin_tries",
            "replaced_by_card_id",
        )
    ),
    accounts_table.c.status.label("account_status"),
    accounts_table.c.currency,
    cards.c.last_atc,
)
# A card with its account's status and currency: one row, one join (the engine's look-up and the operator's).
CARD_SELECT = select(*CARD_COLUMNS).join(accounts_table, accounts_table.c.id == cards.c.account_id)
_CARD_NAMES = tuple(column.name for column in CARD_COLUMNS)


def card_from_values(values: Sequence[Any]) -> CardRecord:
    """A CardRecord from one CARD_SELECT row's values, in CARD_COLUMNS order."""
    return CardRecord(**dict(zip(_CARD_NAMES, values)))


BY_FINGERPRINT: Lookup[CardRecord] = Lookup(
    "card by PAN fingerprint", CARD_SELECT, cards.c.pan_fingerprint, card_from_values
)


async def find_by_fingerprints(store: StoreInterface, fingerprints: Sequence[str]) -> CardRecord | None:
    """The card whose PAN fingerprint is one of `fingerprints` (one per key version), or None."""
    return await store.lookup(BY_FINGERPRINT, fingerprints)


async def create(store: StoreInterface, new: NewCard) -> int:
    """The card's row on an existing customer account; refused when its surrogate or fingerprint is taken."""
    return await store.run_write(_create, new)


async def set_status(store: StoreInterface, card_id: int, status: str) -> None:
    """Move a card through its lifecycle; refuses transitions such as lost -> active."""
    await store.run_write(change_status, card_id, status)


async def reset_pin_tries(store: StoreInterface, card_id: int) -> None:
    await store.run_write(_reset_pin_tries, card_id)


async def get(store: StoreInterface, card_id: int) -> CardRecord:
    """The card (StoreNotFound when there is none)."""
    return await store.run_query(_get, card_id)


async def list_for_account(store: StoreInterface, account_id: int) -> list[CardRecord]:
    """The account's cards, oldest first."""
    return await list_cards(store, account_id=account_id)


async def list_cards(store: StoreInterface, *, account_id: int | None = None, status: str | None = None) -> list[CardRecord]:
    """Cards (of one account, in one status), oldest first."""
    if status is not None and status not in CARD_STATUSES:
        raise StoreError(f"card status must be one of {', '.join(sorted(CARD_STATUSES))}, got {status!r}")
    return await store.run_query(_list_cards, account_id, status)


def _create(conn: Connection, new: NewCard) -> int:
    if new.status not in CARD_STATUSES:
        raise StoreError(f"card status must be one of {sorted(CARD_STATUSES)}, got {new.status!r}")
    if not (len(new.expiry) == 4 and new.expiry.isdigit()):
        raise StoreError(f"card expiry must be YYMM, got {new.expiry!r}")
    accounts.customer_account(conn, new.account_id)
    taken = conn.execute(
        select(cards.c.id).where((cards.c.token == new.token) | (cards.c.pan_fingerprint == new.pan_fingerprint))
    ).first()
    if taken is not None:
        raise StoreError("a card with this token or PAN fingerprint already exists")
    now = utcnow()
    try:
        with conn.begin_nested():
            card_id = conn.execute(
                insert(cards).returning(cards.c.id),
                {
                    "account_id": new.account_id,
                    "status": new.status,
                    "product": new.product,
                    "token": new.token,
                    "last4": new.last4,
                    "pan_fingerprint": new.pan_fingerprint,
                    "fingerprint_version": new.fingerprint_version,
                    "sealed_pan": new.sealed_pan,
                    "data_key_version": new.data_key_version,
                    "expiry": new.expiry,
                    "service_code": new.service_code,
                    "psn": new.psn,
                    "pin_method": new.pin_method,
                    "pin_value": new.pin_value,
                    "pin_tries": 0,
                    "created_at": now,
                    "updated_at": now,
                    "replaced_by_card_id": None,
                },
            ).scalar_one()
    except IntegrityError:
        raise StoreError("a card with this token or PAN fingerprint already exists") from None
    if new.replaced_card_id is not None:
        conn.execute(
            update(cards).where(cards.c.id == new.replaced_card_id).values(replaced_by_card_id=card_id, updated_at=now)
        )
    return card_id


def change_status(conn: Connection, card_id: int, status: str, detail: dict[str, Any] | None = None) -> None:
    """`set_status` inside the caller's transaction; the cardholder's feed gets a `card.status` event."""
    if status not in CARD_STATUSES:
        raise StoreError(f"card status must be one of {sorted(CARD_STATUSES)}, got {status!r}")
    current = conn.execute(select(cards.c.status).where(cards.c.id == card_id)).scalar()
    if current is None:
        raise StoreNotFound(f"card {card_id} does not exist")
    if status == current:
        return
    if status not in CARD_TRANSITIONS[current]:
        raise StoreError(f"card {card_id} is {current} and cannot become {status}")
    now = utcnow()
    values: dict[str, Any] = {"status": status, "updated_at": now}
    if current == "inactive" and status == "active":
        values["pin_tries"] = 0
    conn.execute(update(cards).where(cards.c.id == card_id).values(values))
    holder = conn.execute(
        select(accounts_table.c.cardholder_id, cards.c.last4).join(accounts_table, accounts_table.c.id == cards.c.account_id)
        .where(cards.c.id == card_id)
    ).one()
    data = {"card_id": card_id, "status": status, "previous_status": current, "last4": holder.last4, **(detail or {})}
    write_events(conn, [cardholder_event(holder.cardholder_id, "card.status", data, now)])


def _reset_pin_tries(conn: Connection, card_id: int) -> None:
    reset = conn.execute(update(cards).where(cards.c.id == card_id).values(pin_tries=0, updated_at=utcnow()))
    if reset.rowcount != 1:
        raise StoreNotFound(f"card {card_id} does not exist")


def _get(conn: Connection, card_id: int) -> CardRecord:
    row = conn.execute(CARD_SELECT.where(cards.c.id == card_id)).first()
    if row is None:
        raise StoreNotFound(f"card {card_id} does not exist")
    return card_from_values(row)


def _list_cards(conn: Connection, account_id: int | None, status: str | None) -> list[CardRecord]:
    query = CARD_SELECT.order_by(cards.c.id)
    if account_id is not None:
        query = query.where(cards.c.account_id == account_id)
    if status is not None:
        query = query.where(cards.c.status == status)
    return [card_from_values(row) for row in conn.execute(query)]
