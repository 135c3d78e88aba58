"""Spending controls a cardholder sets on a card: limits, blocked merchant categories, countries, channels.

The engine applies them on every authorization; it may keep them with the card it caches, and a change
still counts from the next one (`processor.ledger.generation`). What a single request shows (its merchant category, country, channel and amount) is checked in the
engine; the daily and monthly totals are counted in the store, in the transaction that takes the funds,
so two purchases at once can never pass a limit together (`processor.ledger.spend`).

Response codes: 61 amount limit (per transaction, day or month), 65 count limit, 57 not permitted (a
blocked category or merchant code, a channel turned off), 62 restricted (a country not allowed, abroad off).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from collections.abc import Sequence
from typing import Any

from sqlalchemy import BigInteger, Boolean, Connection, ForeignKey, Integer, String, Text, select
from sqlalchemy.orm import Mapped, mapped_column

from processor.issuing.cards import CARD_COLUMNS, CARD_SELECT, CardRecord, card_from_values
from processor.ledger import Lookup, StoreInterface
from processor.ledger.models import cards as cards_table
from processor.ledger.models import Base, UtcDateTime, utcnow
from processor.ledger.errors import StoreError

# Merchant categories by MCC, for blocking a whole kind of merchant at once.
CATEGORIES: dict[str, frozenset[str]] = {
    "gambling": frozenset({"7800", "7801", "7802", "7995"}),
    "cash": frozenset({"6010", "6011"}),
    "quasi_cash": frozenset({"4829", "6050", "6051", "6540"}),
    "airlines": frozenset({str(m) for m in range(3000, 3351)} | {"4511"}),
    "car_rental": frozenset({str(m) for m in range(3351, 3501)} | {"7512"}),
    "lodging": frozenset({str(m) for m in range(3501, 4000)} | {"7011"}),
    "restaurants": frozenset({"5812", "5813", "5814"}),
    "fuel": frozenset({"5541", "5542", "5983"}),
    "groceries": frozenset({"5411", "5422", "5441", "5451", "5462", "5499"}),
    "digital_goods": frozenset({"5815", "5816", "5817", "5818"}),
    "adult": frozenset({"5967"}),
}
ENTRY_CONTACTLESS = frozenset({"07", "91"})
ENTRY_KEYED = frozenset({"01", "10", "81"})  # manual key entry, credential on file, e-commerce
HOME_COUNTRY_CONFIG = "issuer.country"
DEFAULT_HOME_COUNTRY = "DE"
LIST_MAX = 200


class CardControlsRow(Base):
    """A card's spending controls; no row means no controls beyond the issuer's."""

    __tablename__ = "card_controls"

    card_id: Mapped[int] = mapped_column(ForeignKey("cards.id"), primary_key=True)
    # The card's surrogate number: the engine's look-up key (a string key reads the same way on both databases).
    card_token: Mapped[str] = mapped_column(String(19), unique=True)
    per_transaction_minor: Mapped[int | None] = mapped_column(BigInteger)
    daily_minor: Mapped[int | None] = mapped_column(BigInteger)
    daily_count: Mapped[int | None] = mapped_column(Integer)
    monthly_minor: Mapped[int | None] = mapped_column(BigInteger)
    monthly_count: Mapped[int | None] = mapped_column(Integer)
    blocked_mccs: Mapped[str] = mapped_column(Text, default="")
    blocked_categories: Mapped[str] = mapped_column(Text, default="")
    # ISO 3166 alpha-2 codes, comma separated; NULL: every country.
    allowed_countries: Mapped[str | None] = mapped_column(Text)
    contactless: Mapped[bool] = mapped_column(Boolean, default=True)
    ecommerce: Mapped[bool] = mapped_column(Boolean, default=True)
    atm: Mapped[bool] = mapped_column(Boolean, default=True)
    abroad: Mapped[bool] = mapped_column(Boolean, default=True)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow)


card_controls = CardControlsRow.__table__


@dataclass(frozen=True, slots=True)
class CardControls:
    """A card's controls as the engine and the API see them."""

    per_transaction_minor: int | None = None
    daily_minor: int | None = None
    daily_count: int | None = None
    monthly_minor: int | None = None
    monthly_count: int | None = None
    blocked_mccs: tuple[str, ...] = ()
    blocked_categories: tuple[str, ...] = ()
    allowed_countries: tuple[str, ...] | None = None
    contactless: bool = True
    ecommerce: bool = True
    atm: bool = True
    abroad: bool = True

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["blocked_mccs"] = list(self.blocked_mccs)
        out["blocked_categories"] = list(self.blocked_categories)
        out["allowed_countries"] = list(self.allowed_countries) if self.allowed_countries is not None else None
        return out

    @property
    def counted(self) -> bool:
        """Whether the store must count this card's spending (a daily or monthly limit is set)."""
        return any(v is not None for v in (self.daily_minor, self.daily_count, self.monthly_minor, self.monthly_count))


def _split(text: str | None) -> tuple[str, ...]:
    return tuple(v for v in (text or "").split(",") if v)


def controls_from_row(row: Any) -> CardControls:
    """From a row (or a dict of its values)."""
    v = row if isinstance(row, dict) else row._asdict()
    return CardControls(
        per_transaction_minor=v["per_transaction_minor"], daily_minor=v["daily_minor"], daily_count=v["daily_count"],
        monthly_minor=v["monthly_minor"], monthly_count=v["monthly_count"], blocked_mccs=_split(v["blocked_mccs"]),
        blocked_categories=_split(v["blocked_categories"]),
        allowed_countries=_split(v["allowed_countries"]) if v["allowed_countries"] is not None else None,
        contactless=bool(v["contactless"]), ecommerce=bool(v["ecommerce"]), atm=bool(v["atm"]), abroad=bool(v["abroad"]),
    )


def validate(controls: CardControls) -> CardControls:
    """Refuse values no card could have, naming the field."""
    for name in ("per_transaction_minor", "daily_minor", "daily_count", "monthly_minor", "monthly_count"):
        value = getattr(controls, name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0 or value > 10**12):
            raise StoreError(f"card controls: {name} must be a whole number from 0 to 10^12, or none")
    for mcc in controls.blocked_mccs:
        if not (len(mcc) == 4 and mcc.isdigit()):
            raise StoreError(f"card controls: blocked MCC {mcc!r} is not 4 digits")
    for category in controls.blocked_categories:
        if category not in CATEGORIES:
            raise StoreError(f"card controls: unknown category {category!r}; known: {', '.join(sorted(CATEGORIES))}")
    for country in controls.allowed_countries or ():
        if not (len(country) == 2 and country.isascii() and country.isalpha() and country.isupper()):
            raise StoreError(f"card controls: country {country!r} is not an ISO 3166 alpha-2 code such as DE")
    if max(len(controls.blocked_mccs), len(controls.blocked_categories), len(controls.allowed_countries or ())) > LIST_MAX:
        raise StoreError(f"card controls: at most {LIST_MAX} entries in a list")
    return controls


_COLUMNS = tuple(c for c in card_controls.c if c.name not in ("card_id", "card_token", "updated_at"))


def _from_values(values: Any) -> CardControls:
    return controls_from_row(dict(zip((c.name for c in _COLUMNS), values)))


# The engine's read, once per authorization, through the store's fastest reader.
BY_CARD_TOKEN: Lookup[CardControls] = Lookup("card controls by card token", select(*_COLUMNS), card_controls.c.card_token, _from_values)


def _card_and_controls(values: Sequence[Any]) -> tuple[CardRecord, CardControls | None]:
    card = card_from_values(values[:_CARD_WIDTH])
    # The controls' own card_token is NULL when the outer join found no controls for the card.
    return card, (_from_values(values[_CARD_WIDTH + 1 :]) if values[_CARD_WIDTH] is not None else None)


_CARD_WIDTH = len(CARD_COLUMNS)
# The engine's one read per card authorization: the card, its account's status and its controls, in one
# statement instead of two round trips to the store's reader.
CARD_WITH_CONTROLS_BY_FINGERPRINT: Lookup[tuple[CardRecord, CardControls | None]] = Lookup(
    "card and its controls by PAN fingerprint",
    CARD_SELECT.add_columns(card_controls.c.card_token, *_COLUMNS).outerjoin(
        card_controls, card_controls.c.card_token == cards_table.c.token
    ),
    cards_table.c.pan_fingerprint,
    _card_and_controls,
)


async def find_card_with_controls(
    store: StoreInterface, fingerprints: Sequence[str]
) -> tuple[CardRecord, CardControls | None] | None:
    """The card whose PAN fingerprint is one of `fingerprints`, with its controls (None: none set), read fresh."""
    return await store.lookup(CARD_WITH_CONTROLS_BY_FINGERPRINT, fingerprints)


async def for_card(store: StoreInterface, card_token: str) -> CardControls | None:
    """A card's controls (None: none set), read fresh."""
    return await store.lookup(BY_CARD_TOKEN, [card_token])


def get_controls(conn: Connection, card_id: int) -> CardControls | None:
    row = conn.execute(select(card_controls).where(card_controls.c.card_id == card_id)).first()
    return controls_from_row(row) if row is not None else None


def set_controls(conn: Connection, card_id: int, controls: CardControls) -> CardControls:
    """Replace a card's controls (in the caller's transaction)."""
    from sqlalchemy import delete, insert

    from processor.ledger.models import cards

    validate(controls)
    token = conn.execute(select(cards.c.token).where(cards.c.id == card_id)).scalar()
    if token is None:
        from processor.ledger.errors import StoreNotFound

        raise StoreNotFound(f"card {card_id} does not exist")
    conn.execute(delete(card_controls).where(card_controls.c.card_id == card_id))
    values = controls.as_json()
    values.update(
        card_id=card_id,
        card_token=token,
        blocked_mccs=",".join(controls.blocked_mccs),
        blocked_categories=",".join(controls.blocked_categories),
        allowed_countries=",".join(controls.allowed_countries) if controls.allowed_countries is not None else None,
        updated_at=utcnow(),
    )
    conn.execute(insert(card_controls), values)
    return controls


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why the controls refuse a request: 'amount', 'not_permitted' or 'restricted', and the reason."""

    kind: str
    reason: str


def merchant_country(name_location: str | None) -> str | None:
    """The merchant's ISO 3166 alpha-2 country: the last word of DE 43 (name, city, country), or None."""
    text = (name_location or "").rstrip()
    country = text[-2:]
    if len(text) < 4 or text[-3] != " " or not (country.isascii() and country.isalpha() and country.isupper()):
        return None
    return country


def evaluate(
    controls: CardControls, *, amount_minor: int, mcc: str | None, entry_mode: str | None, cash: bool,
    country: str | None, home_country: str,
) -> Refusal | None:
    """What a single request shows against the controls (the daily and monthly totals are the store's)."""
    if cash and (not controls.atm or "cash" in controls.blocked_categories):
        return Refusal("not_permitted", "cash withdrawals are turned off for this card")
    if entry_mode in ENTRY_CONTACTLESS and not controls.contactless:
        return Refusal("not_permitted", "contactless payments are turned off for this card")
    if entry_mode in ENTRY_KEYED and not controls.ecommerce:
        return Refusal("not_permitted", "keyed and online payments are turned off for this card")
    if mcc is not None and mcc in controls.blocked_mccs:
        return Refusal("not_permitted", f"merchant category {mcc} is blocked on this card")
    for category in controls.blocked_categories:
        if mcc is not None and mcc in CATEGORIES.get(category, ()):
            return Refusal("not_permitted", f"{category} merchants are blocked on this card")
    if controls.allowed_countries is not None or not controls.abroad:
        if country is None:
            return Refusal("restricted", "the merchant's country is unknown and this card is limited by country")
        if controls.allowed_countries is not None and country not in controls.allowed_countries:
            return Refusal("restricted", f"payments in {country} are not allowed on this card")
        if not controls.abroad and country != home_country:
            return Refusal("restricted", "payments abroad are turned off for this card")
    if controls.per_transaction_minor is not None and amount_minor > controls.per_transaction_minor:
        return Refusal("amount", f"above the card's limit of {controls.per_transaction_minor} per transaction")
    return None
