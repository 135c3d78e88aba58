"""Request and response bodies of the API (pydantic), the source of its OpenAPI document."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from processor.issuing.controls import CATEGORIES

from pydantic import BaseModel, ConfigDict, Field

AMOUNT_MAX_MINOR = 10**12
CATEGORY_NAMES = tuple(sorted(CATEGORIES))
Handle = Field(min_length=1, max_length=65, pattern=r"^@?[A-Za-z0-9_.\-]{1,64}$")
Currency = Field(pattern=r"^[A-Z]{3}$")


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class ErrorDetail(BaseModel):
    code: str = Field(description="stable code to branch on; see the README's table")
    message: str = Field(description="for people; may change")
    details: dict[str, Any] = Field(default_factory=dict)


class ErrorBody(BaseModel):
    error: ErrorDetail


class SignIn(Strict):
    handle: str = Field(min_length=1, max_length=65)
    password: str = Field(min_length=1, max_length=256)


class Refresh(Strict):
    refresh_token: str = Field(min_length=1, max_length=200)


class Tokens(BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["Bearer"]
    expires_in: int
    cardholder_id: int
    handle: str


class Me(BaseModel):
    id: int
    handle: str
    name: str


class SavingsInfo(BaseModel):
    product: str
    annual_rate_ppm: int
    accrued_unposted_minor: int


class Account(BaseModel):
    id: int
    kind: Literal["checking", "savings"]
    currency: str
    status: Literal["open", "frozen", "closed"]
    ledger_minor: int
    available_minor: int
    held_minor: int
    created_at: str
    savings: SavingsInfo | None


class OpenSavings(Strict):
    kind: Literal["savings"]
    product: str = Field(min_length=1, max_length=32)


class OwnTransfer(Strict):
    from_account_id: int = Field(ge=1, le=2**62)
    to_account_id: int = Field(ge=1, le=2**62)
    amount_minor: int = Field(gt=0, le=AMOUNT_MAX_MINOR)
    note: str = Field(default="", max_length=280)


class TransferOut(BaseModel):
    id: int
    from_account_id: int
    to_account_id: int
    amount_minor: int
    currency: str
    note: str
    created_at: str
    from_balance_minor: int
    to_balance_minor: int


class Card(BaseModel):
    id: int
    account_id: int
    status: str
    last4: str
    expiry: str
    chip: bool
    pin_set: bool
    replaced_by_card_id: int | None
    created_at: str


class LostCard(BaseModel):
    card: Card
    replacement: Card
    repointed_token_ids: list[int]


class SetPin(Strict):
    pin: str = Field(pattern=r"^[0-9]{4,12}$")
    current_pin: str | None = Field(default=None, pattern=r"^[0-9]{4,12}$")


class Merchant(BaseModel):
    name: str
    location: str
    mcc: str


class Transaction(BaseModel):
    id: str
    type: str
    status: Literal["pending", "posted", "reversed"]
    amount_minor: int
    currency: str
    card_id: int | None
    merchant: Merchant | None
    created_at: str


class TransactionPage(BaseModel):
    items: list[Transaction]
    next_cursor: str | None


class OpenConversation(Strict):
    with_: str = Field(alias="with", min_length=1, max_length=65, pattern=r"^@?[A-Za-z0-9_.\-]{1,64}$")

    model_config = ConfigDict(strict=True, extra="forbid", populate_by_name=False)


class Conversation(BaseModel):
    id: int
    with_: str = Field(alias="with")
    created_at: str
    last_item: dict[str, Any] | None


class NewMessage(Strict):
    text: str = Field(min_length=1, max_length=1000)


class PaymentRequestOut(BaseModel):
    id: int
    conversation_id: int
    requester: str
    payer: str
    amount_minor: int
    currency: str
    note: str
    status: Literal["open", "paid", "declined", "cancelled", "expired"]
    expires_at: str
    payment_id: int | None
    created_at: str
    closed_at: str | None


class Item(BaseModel):
    id: int
    conversation_id: int
    type: Literal["message", "payment", "request"]
    sender: str
    text: str
    created_at: str
    amount_minor: int | None = None
    currency: str | None = None
    request_id: int | None
    request: PaymentRequestOut | None = None


class ItemPage(BaseModel):
    items: list[Item]
    next_cursor: str | None


class NewPayment(Strict):
    to: str = Field(min_length=1, max_length=65, pattern=r"^@?[A-Za-z0-9_.\-]{1,64}$")
    amount_minor: int = Field(gt=0, le=AMOUNT_MAX_MINOR)
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    note: str = Field(default="", max_length=280)


class Balance(BaseModel):
    account_id: int
    ledger_minor: int
    available_minor: int


class Payment(BaseModel):
    id: int
    conversation_id: int
    from_: str = Field(alias="from")
    to: str
    amount_minor: int
    currency: str
    note: str
    request_id: int | None
    created_at: str
    balance: Balance | None = None


class NewRequest(Strict):
    from_: str = Field(alias="from", min_length=1, max_length=65, pattern=r"^@?[A-Za-z0-9_.\-]{1,64}$")
    amount_minor: int = Field(gt=0, le=AMOUNT_MAX_MINOR)
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    note: str = Field(default="", max_length=280)
    expires_in_hours: int = Field(default=168, ge=1, le=720)

    model_config = ConfigDict(strict=True, extra="forbid", populate_by_name=False)


class EventOut(BaseModel):
    schema_version: int
    id: int
    type: str
    audience: str
    cardholder_id: int | None
    occurred_at: str
    data: dict[str, Any]


class EventPage(BaseModel):
    items: list[EventOut]
    last_id: int


class NewCardholder(Strict):
    name: str = Field(min_length=1, max_length=200)
    handle: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    password: str = Field(min_length=10, max_length=256)
    currency: str = Field(default="EUR", pattern=r"^[A-Z]{3}$")


class CardholderOut(BaseModel):
    id: int
    name: str
    handle: str
    account_id: int


class SetPassword(Strict):
    password: str = Field(min_length=10, max_length=256)


class Deposit(Strict):
    amount_minor: int = Field(gt=0, le=AMOUNT_MAX_MINOR)


class NewProduct(Strict):
    code: str = Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_\-]{1,32}$")
    name: str = Field(min_length=1, max_length=200)
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    annual_rate_ppm: int = Field(ge=0, le=1_000_000)


class Product(BaseModel):
    id: int
    code: str
    name: str
    currency: str
    annual_rate_ppm: int
    status: str


class PasswordSet(BaseModel):
    id: int
    password_set: bool


class P2pLimits(Strict):
    daily_limit_minor: int = Field(ge=0, le=AMOUNT_MAX_MINOR)
    daily_count: int = Field(ge=0, le=1_000_000)


class Controls(Strict):
    """A card's spending controls; PUT replaces them all (a field left out takes the value shown here)."""

    per_transaction_minor: int | None = Field(default=None, ge=0, le=AMOUNT_MAX_MINOR)
    daily_minor: int | None = Field(default=None, ge=0, le=AMOUNT_MAX_MINOR)
    daily_count: int | None = Field(default=None, ge=0, le=1_000_000)
    monthly_minor: int | None = Field(default=None, ge=0, le=AMOUNT_MAX_MINOR)
    monthly_count: int | None = Field(default=None, ge=0, le=1_000_000)
    blocked_mccs: list[Annotated[str, Field(pattern=r"^[0-9]{4}$")]] = Field(default_factory=list, max_length=200)
    blocked_categories: list[Literal[CATEGORY_NAMES]] = Field(default_factory=list, max_length=50)  # type: ignore[valid-type]
    allowed_countries: list[Annotated[str, Field(pattern=r"^[A-Z]{2}$")]] | None = Field(default=None, max_length=200)
    contactless: bool = True
    ecommerce: bool = True
    atm: bool = True
    abroad: bool = True
