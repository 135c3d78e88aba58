"""The account store and its ledger: accounts, a double-entry journal, holds, and the first answer to each request.

    store = await Store.open("sqlite+aiosqlite:///processor.db")   # or postgresql+asyncpg://...
    account_id = await accounts.open_account(store, cardholder_id, "checking", "EUR")
    outcome = await store.submit(ops.PlaceHold(...))               # durable before it returns
    await store.close()

`Store` runs group commit and reaches the database; what is kept and asked lives with its owner:
`accounts`, `holds`, `auths` (idempotency records), `terminal_batches` (batch totals over the auths rows)
and `invariants` here, cards and terminals in `processor.issuing`, tokens in `processor.tokenization`.
Their functions take any `StoreInterface`.
"""

from processor.ledger import accounts, auths, holds, invariants, ops, terminal_batches
from processor.ledger.accounts import AccountView
from processor.ledger.terminal_batches import BatchOutcome, BatchTotals
from processor.ledger.errors import StoreBusy, StoreClosed, StoreError, StoreNotFound
from processor.ledger.holds import HoldView
from processor.ledger.interface import Lookup, StoreInterface
from processor.ledger.ops import AuthOutcome
from processor.ledger.store import Store

__all__ = [
    "AccountView",
    "AuthOutcome",
    "BatchOutcome",
    "BatchTotals",
    "HoldView",
    "Lookup",
    "Store",
    "StoreBusy",
    "StoreClosed",
    "StoreError",
    "StoreInterface",
    "StoreNotFound",
    "accounts",
    "auths",
    "holds",
    "invariants",
    "ops",
    "terminal_batches",
]
