"""The account store: cardholders, accounts, cards, holds, a double-entry journal and the auth records.

    store = await Store.open("sqlite+aiosqlite:///processor.db")   # or postgresql+asyncpg://...
    outcome = await store.submit(ops.PlaceHold(...))               # durable before it returns
    await store.close()
"""

from processor.ledger import ops
from processor.ledger.batches import BatchOutcome, BatchTotals
from processor.ledger.ops import AuthOutcome
from processor.ledger.records import (
    AccountView,
    CardholderRecord,
    CardRecord,
    HoldView,
    MerchantRecord,
    NewCard,
    NewPaymentToken,
    StoreBusy,
    StoreClosed,
    StoreError,
    StoreNotFound,
    TerminalRecord,
    TokenRecord,
    TokenView,
)
from processor.ledger.store import Store

__all__ = [
    "AccountView",
    "AuthOutcome",
    "BatchOutcome",
    "BatchTotals",
    "CardholderRecord",
    "CardRecord",
    "HoldView",
    "MerchantRecord",
    "NewCard",
    "NewPaymentToken",
    "Store",
    "StoreBusy",
    "StoreClosed",
    "StoreError",
    "StoreNotFound",
    "TerminalRecord",
    "TokenRecord",
    "TokenView",
    "ops",
]
