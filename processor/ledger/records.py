"""Plain values the store hands out and takes in (no ORM objects leave the store)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from processor.errors import NotFound, ProcessorError


class StoreError(ProcessorError):
    """The store refused or could not carry out a request; the message says which object and why."""


class StoreNotFound(StoreError, NotFound):
    """A referenced cardholder, account, card, merchant or terminal does not exist."""


class StoreBusy(StoreError):
    """The write queue stayed full (or the commit did not come) within the timeout: shed load and retry."""


class StoreClosed(StoreError):
    """The store was closed before the operation was committed; it may or may not have been applied."""


@dataclass(frozen=True, slots=True)
class CardholderRecord:
    id: int
    name: str
    handle: str
    created_at: dt.datetime


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
class HoldView:
    id: int
    account_id: int
    card_id: int | None
    amount_minor: int
    currency: str
    status: str
    expires_at: dt.datetime | None
    created_at: dt.datetime | None
    captured_minor: int | None
    forced: bool


@dataclass(frozen=True, slots=True)
class AccountView:
    """An account's balances: available = ledger - active holds."""

    id: int
    cardholder_id: int | None
    kind: str
    purpose: str | None
    currency: str
    status: str
    ledger_minor: int
    held_minor: int
    available_minor: int
    holds: list[HoldView] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class MerchantRecord:
    id: int
    merchant_id: str
    name: str
    location: str
    mcc: str


@dataclass(frozen=True, slots=True)
class TerminalRecord:
    """A terminal with its merchant's DE 42 id and MCC."""

    id: int
    terminal_id: str
    merchant_id: str
    merchant_name: str
    mcc: str
    status: str
    key_scheme: str | None
    bdk_kcv: str | None
    initial_ksn: str | None
    chip_capable: bool = True


@dataclass(frozen=True, slots=True)
class NewPaymentToken:
    """A payment token to create: its number is already fingerprinted and sealed by the HSM."""

    card_id: int
    token_fingerprint: str
    fingerprint_version: int
    sealed_token: str
    data_key_version: int
    token_last4: str
    token_bin: str
    expiry: str
    requestor_id: str
    wallet: str
    device_id: str
    allowed_entry_modes: tuple[str, ...] = ("07",)
    mcc_allow: tuple[str, ...] | None = None
    merchant_allow: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """What the engine needs of a payment token: status, expiry and domain restrictions."""

    token_id: int
    card_id: int
    status: str
    expiry: str
    requestor_id: str
    allowed_entry_modes: tuple[str, ...]
    mcc_allow: tuple[str, ...] | None
    merchant_allow: tuple[str, ...] | None
    token_last4: str
    last_atc: int | None


@dataclass(frozen=True, slots=True)
class TokenView:
    """A payment token as an operator sees it (no secret)."""

    id: int
    card_id: int
    status: str
    expiry: str
    token_last4: str
    token_bin: str
    requestor_id: str
    wallet: str
    device_id: str
    allowed_entry_modes: tuple[str, ...]
    mcc_allow: tuple[str, ...] | None
    merchant_allow: tuple[str, ...] | None
    fingerprint_version: int
    data_key_version: int
    last_atc: int | None
    created_at: dt.datetime
    updated_at: dt.datetime
