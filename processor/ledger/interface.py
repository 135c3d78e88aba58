"""What the rest of the processor may ask of the account store: five verbs, typed.

Each package owns its tables and the queries on them (`ledger.accounts`, `issuing.cards`,
`tokenization.tokens`, ...). Its functions take a `StoreInterface` and run their synchronous Core queries
through it; no query lives in the store itself:

    run_read(body, *args)    body(conn, *args) on one consistent snapshot
    run_write(body, *args)   body(conn, *args) in one write transaction, serialized with the hot path's batches
    run_query(body, *args)   body(conn, *args) outside the write path (no snapshot across its statements)
    lookup(query, keys)      a hot-path read of one indexed row, through the fastest reader of the database
    submit(op)               one authorization operation, group-committed with its neighbours

`processor.ledger.Store` is the implementation (SQLite or PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Concatenate, Generic, ParamSpec, Protocol, TypeVar

from sqlalchemy import Column, Connection, Select

from processor.ledger.ops import AnyOp, AuthOutcome

T = TypeVar("T")
P = ParamSpec("P")


@dataclass(frozen=True, slots=True, eq=False)
class Lookup(Generic[T]):
    """A hot-path read: the first row of `select` whose `key` is one of a few values, built into a record.

    `select` has no WHERE, ORDER BY or LIMIT: each reader adds `key IN (...)` (or `= ANY(...)`) and
    `LIMIT 1` in the form its driver runs fastest, and compiles it once. `build` gets the row's values in
    the order of the select's columns.
    """

    name: str
    select: Select[Any]
    key: Column[Any]
    build: Callable[[Sequence[Any]], T]


class StoreInterface(Protocol):
    """The account store as its owners' modules use it (see the module's docstring)."""

    async def run_read(
        self, body: Callable[Concatenate[Connection, P], T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run `body(conn, *args)` on one consistent snapshot."""
        ...

    async def run_write(
        self, body: Callable[Concatenate[Connection, P], T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run `body(conn, *args)` in one write transaction; an integrity error becomes a StoreError."""
        ...

    async def run_query(
        self, body: Callable[Concatenate[Connection, P], T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run read-only `body(conn, *args)` outside the write path."""
        ...

    async def lookup(self, query: Lookup[T], keys: Sequence[str]) -> T | None:
        """The record of the first row whose key is one of `keys`, or None (also for no keys)."""
        ...

    async def submit(self, op: AnyOp) -> AuthOutcome:
        """Apply `op` with its neighbours in one transaction; returns once it is committed."""
        ...
