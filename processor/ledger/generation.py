"""The cache generation: what lets an engine cache cards and terminals and still see every change at once.

Triggers (migration 0010) move one counter in the transaction of every change to what the engine caches:
a card's status, keys, PIN values or account, its account's status, its controls, a terminal's keys or
status, its merchant. The engine tags what it caches with the counter it read before the rows, hands the
tag to the store with the operation it decided (`ops.Op.seen_generation`), and the batch that applies it
reads the counter once in its own transaction: an operation decided on rows older than the current
generation is answered STALE, not applied, and the engine decides it again on fresh rows. So the first
authorization after a card is frozen, on any engine process, on SQLite or PostgreSQL, is declined.
"""

from __future__ import annotations

from sqlalchemy import select

from processor.ledger.interface import Lookup, StoreInterface
from processor.ledger.models import cache_generation

CACHES = "caches"

CACHE_GENERATION: Lookup[int] = Lookup(
    "the cache generation",
    select(cache_generation.c.generation),
    cache_generation.c.name,
    lambda values: int(values[0]),
)


async def current(store: StoreInterface) -> int:
    """The cache generation now (read on the hot path's reader, as a card is)."""
    found = await store.lookup(CACHE_GENERATION, [CACHES])
    if found is None:
        raise LookupError("the cache generation row is missing: the store's schema is not at migration 0010")
    return found
