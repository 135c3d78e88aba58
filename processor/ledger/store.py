"""The account store: one object over SQLite or PostgreSQL, with group commit on the hot path.

`submit(op)` puts the operation on a bounded queue. A writer takes what is waiting (up to `max_batch`),
applies it in ONE transaction, commits, and only then resolves the futures: an approval is durable before
its answer. When a batch fails as a whole, its operations are retried one transaction each, so one bad
operation cannot take its neighbours down.

- SQLite: one writer thread holding a pysqlite connection (WAL, synchronous=FULL, BEGIN IMMEDIATE). A batch
  costs one thread hop instead of one per statement (aiosqlite's model); several processes on one file
  serialize on the database write lock (busy_timeout).
- PostgreSQL: several writer tasks, each on its own asyncpg connection, running the same synchronous batch
  code through `AsyncConnection.run_sync`. Row locks serialize conflicting batches; deadlocks and
  serialization failures are retried a bounded number of times.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy.dialects import postgresql as postgresql_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy import Connection, bindparam, create_engine, event, select
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from processor.ledger import admin, batches, invariants
from processor.ledger import ops as o
from processor.ledger.apply import BatchState, Conflict, LedgerBug, apply_batch, outcome_from_row
from processor.ledger.models import auths, cards, payment_tokens, utcnow
from processor.ledger.records import (
    AccountView,
    CardholderRecord,
    CardRecord,
    MerchantRecord,
    NewCard,
    NewPaymentToken,
    StoreBusy,
    StoreClosed,
    StoreError,
    TerminalRecord,
    TokenRecord,
    TokenView,
)

log = logging.getLogger("processor.ledger")
T = TypeVar("T")

SQLITE_BUSY_TIMEOUT_MS = 5000
TXN_ATTEMPTS = 6
PG_RETRY_SQLSTATES = frozenset({"40001", "40P01"})  # serialization failure, deadlock detected
_FIND_CARD = admin.CARD_SELECT.where(cards.c.pan_fingerprint.in_(bindparam("fps", expanding=True))).limit(1)
_FIND_AUTH = select(*auths.c).where(auths.c.idem_key == bindparam("k"))

_STOP = object()


def _find_card(conn: Connection, fingerprints: list[str]) -> CardRecord | None:
    row = conn.execute(_FIND_CARD, {"fps": fingerprints}).first()
    return admin.card_record(row) if row is not None else None


def _find_auth(conn: Connection, idem_key: str) -> o.AuthOutcome | None:
    row = conn.execute(_FIND_AUTH, {"k": idem_key}).first()
    return outcome_from_row(row, duplicate=True) if row is not None else None


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, Conflict):
        return True
    if isinstance(exc, IntegrityError) and "idem_key" in str(exc.orig):
        return True  # another connection committed the same request first: the retry finds its answer
    if isinstance(exc, OperationalError) and "locked" in str(exc.orig).lower():
        return True  # SQLite: the write lock stayed with another process beyond busy_timeout
    if isinstance(exc, DBAPIError):
        orig = exc.orig
        code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
        cause = getattr(orig, "__cause__", None)
        code = code or getattr(cause, "sqlstate", None)
        return code in PG_RETRY_SQLSTATES
    return False


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")  # first: switching to WAL may wait for a lock
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while cur.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        try:
            cur.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError:
            # The switch needs the file to itself and does not wait through busy_timeout: retry briefly.
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)
    cur.execute("PRAGMA synchronous=FULL")  # the commit is on disk before an approval is answered
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _sqlite_writer_engine(url: str) -> Engine:
    """A sync engine whose transactions start with BEGIN IMMEDIATE (take the write lock up front).

    Taking the lock at BEGIN means a transaction never has to upgrade a read lock, which SQLite would refuse
    with SQLITE_BUSY at once instead of waiting busy_timeout.
    """
    engine = create_engine(url, poolclass=NullPool)

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, record: Any) -> None:
        dbapi_conn.isolation_level = None  # SQLAlchemy, not the driver, decides where transactions begin
        _sqlite_pragmas(dbapi_conn, record)

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class _SqliteReaders:
    """Read-only pysqlite connections, one per reader thread: a look-up costs one thread hop.

    (aiosqlite would cost a hop for the checkout, the statement, the fetch and the rollback each.)
    """

    def __init__(self, url: str, threads: int) -> None:
        # Each connection is used by its own thread only; close() runs after those threads have stopped.
        self.engine = create_engine(url, poolclass=NullPool, connect_args={"check_same_thread": False})
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="ledger-reader")
        self._local = threading.local()
        self._conns: list[Connection] = []
        self._lock = threading.Lock()

        @event.listens_for(self.engine, "connect")
        def _connect(dbapi_conn: Any, record: Any) -> None:
            dbapi_conn.isolation_level = None
            _sqlite_pragmas(dbapi_conn, record)
            dbapi_conn.execute("PRAGMA query_only=ON")

    async def query(self, body: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.pool, self._query, body, args)

    def _query(self, body: Callable[..., T], args: Sequence[Any]) -> T:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self.engine.connect()
            with self._lock:
                self._conns.append(conn)
        try:
            return body(conn, *args)
        finally:
            conn.rollback()

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        for conn in self._conns:
            with contextlib.suppress(Exception):
                conn.close()
        self.engine.dispose()


class _InlineCardReader:
    """Card look-ups on SQLite straight from the event loop thread, on a read-only sqlite3 connection.

    An indexed look-up under WAL takes microseconds and never waits for the writer, so running it
    inline is cheaper than any thread hop; this is the engine's one read per authorization.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._sa: Connection | None = None
        self._sa_engine: Engine | None = None
        self.conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.conn.execute("PRAGMA busy_timeout=5000")
        self.conn.execute("PRAGMA query_only=ON")
        self._sql: dict[int, str] = {}
        self._names = [col.name for col in admin.CARD_COLUMNS]

    def _statement(self, count: int) -> str:
        sql = self._sql.get(count)
        if sql is None:
            stmt = admin.CARD_SELECT.where(cards.c.pan_fingerprint.in_([bindparam(f"fp{i}") for i in range(count)]))
            sql = self._sql[count] = str(stmt.compile(dialect=sqlite_dialect.dialect())) + " LIMIT 1"
        return sql

    def find_card(self, fingerprints: list[str]) -> CardRecord | None:
        row = self.conn.execute(self._statement(len(fingerprints)), fingerprints).fetchone()
        return CardRecord(**dict(zip(self._names, row))) if row is not None else None

    def _token_statement(self, count: int) -> str:
        sql = self._sql.get(-count)
        if sql is None:
            fps = [bindparam(f"fp{i}") for i in range(count)]
            stmt = admin.TOKEN_CARD_SELECT.where(payment_tokens.c.token_fingerprint.in_(fps))
            sql = self._sql[-count] = str(stmt.compile(dialect=sqlite_dialect.dialect())) + " LIMIT 1"
        return sql

    def find_payment_token(self, fingerprints: list[str]) -> tuple[TokenRecord, CardRecord] | None:
        row = self.conn.execute(self._token_statement(len(fingerprints)), fingerprints).fetchone()
        return admin.token_card_from_values(row) if row is not None else None

    def close(self) -> None:
        self.conn.close()
        if self._sa is not None:
            self._sa.close()
            self._sa_engine.dispose()

    def run(self, body: Callable[..., T], *args: Any) -> T:
        """Run read-only Core `body(conn, *args)` right here, on a query-only connection of this thread."""
        if self._sa is None:
            self._sa_engine = create_engine(f"sqlite+pysqlite:///{self.path}", poolclass=NullPool)

            @event.listens_for(self._sa_engine, "connect")
            def _connect(dbapi_conn: Any, record: Any) -> None:
                dbapi_conn.isolation_level = None
                dbapi_conn.execute("PRAGMA busy_timeout=5000")
                dbapi_conn.execute("PRAGMA query_only=ON")

            self._sa = self._sa_engine.connect()
        try:
            return body(self._sa, *args)
        finally:
            self._sa.rollback()


class _PgCardReader:
    """Card look-ups on PostgreSQL through a small asyncpg pool with one prepared statement."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self._names = [col.name for col in admin.CARD_COLUMNS]
        base = str(admin.CARD_SELECT.compile(dialect=postgresql_dialect.dialect()))
        self.sql = f"{base} WHERE cards.pan_fingerprint = ANY($1::varchar[]) LIMIT 1"
        token_base = str(admin.TOKEN_CARD_SELECT.compile(dialect=postgresql_dialect.dialect()))
        self.token_sql = f"{token_base} WHERE payment_tokens.token_fingerprint = ANY($1::varchar[]) LIMIT 1"

    @classmethod
    async def open(cls, dsn: str, size: int) -> "_PgCardReader":
        import asyncpg

        return cls(await asyncpg.create_pool(dsn, min_size=1, max_size=size, command_timeout=10))

    async def find_card(self, fingerprints: list[str]) -> CardRecord | None:
        row = await self.pool.fetchrow(self.sql, fingerprints)
        return CardRecord(**dict(zip(self._names, row))) if row is not None else None

    async def find_payment_token(self, fingerprints: list[str]) -> tuple[TokenRecord, CardRecord] | None:
        row = await self.pool.fetchrow(self.token_sql, fingerprints)
        return admin.token_card_from_values(tuple(row)) if row is not None else None

    async def close(self) -> None:
        await asyncio.wait_for(self.pool.close(), timeout=10)


class _SqliteWriter:
    """Runs transactions on one pysqlite connection in one dedicated thread."""

    def __init__(self, url: str) -> None:
        self.engine = _sqlite_writer_engine(url)
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="ledger-writer")
        self.conn: Connection | None = None

    async def transact(self, body: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.pool, self._transact, body, args)

    def _transact(self, body: Callable[..., T], args: Sequence[Any]) -> T:
        for attempt in range(TXN_ATTEMPTS):
            if self.conn is None:
                self.conn = self.engine.connect()
            try:
                with self.conn.begin():
                    return body(self.conn, *args)
            except Exception as exc:
                if isinstance(exc, DBAPIError) and exc.connection_invalidated:
                    self.conn.close()
                    self.conn = None  # the next attempt (or transaction) starts on a new connection
                if attempt + 1 == TXN_ATTEMPTS or not _retryable(exc):
                    raise
                time.sleep(0.002 * 2**attempt)
        raise AssertionError("unreachable")

    def close(self) -> None:
        def _close() -> None:
            if self.conn is not None:
                self.conn.close()
                self.conn = None

        self.pool.submit(_close).result(timeout=30)
        self.pool.shutdown(wait=True)
        self.engine.dispose()


async def _pg_transact(conn: AsyncConnection, body: Callable[..., T], *args: Any) -> T:
    for attempt in range(TXN_ATTEMPTS):
        try:
            async with conn.begin():
                return await conn.run_sync(body, *args)
        except Exception as exc:
            if attempt + 1 == TXN_ATTEMPTS or not _retryable(exc):
                raise
            await asyncio.sleep(0.002 * 2**attempt)
    raise AssertionError("unreachable")


class _PgWriter:
    """One writer's own PostgreSQL connection, replaced when the server drops it."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.conn: AsyncConnection | None = None

    async def connect(self) -> None:
        self.conn = await self.engine.connect()

    async def transact(self, body: Callable[..., T], *args: Any) -> T:
        if self.conn is None or self.conn.invalidated or self.conn.closed:
            await self.close()
            await self.connect()
        assert self.conn is not None
        try:
            return await _pg_transact(self.conn, body, *args)
        except DBAPIError as exc:
            if exc.connection_invalidated:
                await self.close()  # the next batch reconnects
            raise

    async def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                await self.conn.close()
            self.conn = None


class Store:
    """The account store. Open with `await Store.open(url)`, close with `await store.close()`."""

    def __init__(
        self,
        url: str,
        dialect: str,
        read_engine: AsyncEngine | None,
        *,
        sqlite_readers: _SqliteReaders | None = None,
        sqlite_writer: _SqliteWriter | None,
        pg_writers: int,
        max_batch: int,
        queue_max: int,
        linger_s: float,
        submit_timeout_s: float,
    ) -> None:
        self.url = url
        self.dialect = dialect
        self._read = read_engine
        # Look-ups need no transaction: autocommit saves the BEGIN and ROLLBACK round trips around each one.
        self._read_autocommit = read_engine.execution_options(isolation_level="AUTOCOMMIT") if read_engine else None
        self._readers = sqlite_readers
        self._inline: _InlineCardReader | None = None
        self._pg_cards: _PgCardReader | None = None
        self._sqlite = sqlite_writer
        self._pg_writers = pg_writers
        self.max_batch = max_batch
        self.linger_s = linger_s
        self.submit_timeout_s = submit_timeout_s
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=queue_max)
        self._internal_ids: dict[tuple[str, str], int] = {}
        self._writers: list[asyncio.Task[None]] = []
        self._pg_writer_conns: list[_PgWriter] = []
        self._closing = False  # no new operations
        self._closed = False  # resources released
        self.batches = 0
        self.batched_ops = 0
        self.fallbacks = 0

    # ------------------------------------------------------------------ life cycle

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        max_batch: int = 256,
        queue_max: int = 4096,
        linger_ms: float = 1.0,
        submit_timeout_s: float = 5.0,
        pg_writers: int = 4,
        reader_threads: int = 2,
    ) -> "Store":
        """Open (and migrate to the newest schema) the database at `url`."""
        try:
            return await cls._open(
                url, max_batch=max_batch, queue_max=queue_max, linger_ms=linger_ms,
                submit_timeout_s=submit_timeout_s, pg_writers=pg_writers, reader_threads=reader_threads,
            )
        except (DBAPIError, OSError) as exc:
            safe = make_url(url).render_as_string(hide_password=True)
            raise StoreError(f"cannot open the database {safe}: {_describe(exc)}") from exc

    @classmethod
    async def _open(
        cls,
        url: str,
        *,
        max_batch: int,
        queue_max: int,
        linger_ms: float,
        submit_timeout_s: float,
        pg_writers: int,
        reader_threads: int,
    ) -> "Store":
        from processor.ledger.migrate import upgrade  # (imported here so `python -m ...migrate` runs cleanly)

        parsed = make_url(url)
        backend = parsed.get_backend_name()
        if backend == "sqlite":
            if parsed.database in (None, "", ":memory:"):
                raise StoreError("SQLite store needs a file path (several connections share it), not :memory:")
            sync_url = parsed.set(drivername="sqlite+pysqlite").render_as_string(hide_password=False)
            writer = _SqliteWriter(sync_url)
            try:
                await writer.transact(upgrade)
            except BaseException:
                writer.close()
                raise
            store = cls(
                url, "sqlite", None, sqlite_readers=_SqliteReaders(sync_url, reader_threads), sqlite_writer=writer,
                pg_writers=1, max_batch=max_batch, queue_max=queue_max,
                linger_s=linger_ms / 1000, submit_timeout_s=submit_timeout_s,
            )
            store._inline = _InlineCardReader(parsed.database)
        elif backend == "postgresql":
            async_url = parsed.set(drivername="postgresql+asyncpg")
            read = create_async_engine(
                async_url, pool_size=pg_writers + 4, max_overflow=8, pool_timeout=5
            )
            try:
                async with read.begin() as conn:
                    await conn.run_sync(upgrade)
            except BaseException:
                await read.dispose()
                raise
            store = cls(
                url, "postgresql", read, sqlite_writer=None, pg_writers=pg_writers, max_batch=max_batch, queue_max=queue_max,
                linger_s=linger_ms / 1000, submit_timeout_s=submit_timeout_s,
            )
            dsn = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
            store._pg_cards = await _PgCardReader.open(dsn, size=4)
        else:
            raise StoreError(f"unsupported database {backend!r}: use sqlite+aiosqlite:///FILE or postgresql+asyncpg://...")
        await store._start()
        return store

    async def _start(self) -> None:
        if self._sqlite is not None:
            self._writers.append(asyncio.create_task(self._writer_loop(self._sqlite.transact), name="ledger-writer"))
        for i in range(self._pg_writers if self._sqlite is None else 0):
            assert self._read is not None
            writer = _PgWriter(self._read)
            await writer.connect()
            self._pg_writer_conns.append(writer)
            self._writers.append(asyncio.create_task(self._writer_loop(writer.transact), name=f"ledger-writer-{i}"))
        for task in self._writers:
            task.add_done_callback(self._writer_ended)

    def _writer_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            # A writer must never die silently: later submits would only time out.
            log.error("ledger writer %s stopped", task.get_name(), exc_info=task.exception())
            self._closing = True
            self._fail_queued(StoreClosed(f"store writer stopped: {_describe(task.exception())}"))

    async def close(self, timeout_s: float = 10.0) -> None:
        """Finish the queued operations (within `timeout_s`), then release the database."""
        if self._closed:
            return
        self._closed = self._closing = True
        live = [task for task in self._writers if not task.done()]
        if self._writers:
            try:
                async with asyncio.timeout(timeout_s):
                    for _ in live:  # one stop marker each, behind the operations already queued
                        await self._queue.put(_STOP)
                    if live:
                        await asyncio.wait(live)
            except TimeoutError:
                log.warning("store writers did not finish within %.1fs; stopping them", timeout_s)
            for task in self._writers:
                task.cancel()
            await asyncio.gather(*self._writers, return_exceptions=True)
        self._fail_queued(StoreClosed("store closed before the operation was committed"))
        for writer in self._pg_writer_conns:
            await writer.close()
        if self._sqlite is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._sqlite.close)
        if self._inline is not None:
            self._inline.close()
        if self._pg_cards is not None:
            await self._pg_cards.close()
        if self._readers is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._readers.close)
        if self._read is not None:
            await self._read.dispose()

    async def __aenter__(self) -> "Store":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _fail_queued(self, exc: StoreError) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            if item is not _STOP and not item[1].done():
                item[1].set_exception(exc)

    # ------------------------------------------------------------------ hot path

    async def submit(self, op: o.AnyOp) -> o.AuthOutcome:
        """Apply `op` with its neighbours in one transaction; returns once it is committed."""
        if self._closing:
            raise StoreClosed("store is closed")
        fut: asyncio.Future[o.AuthOutcome] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((op, fut))
        except asyncio.QueueFull:
            try:
                async with asyncio.timeout(self.submit_timeout_s):
                    await self._queue.put((op, fut))
            except TimeoutError:
                raise StoreBusy(
                    f"write queue full ({self._queue.maxsize} operations) for {self.submit_timeout_s}s"
                ) from None
        try:
            async with asyncio.timeout(self.submit_timeout_s * 2):
                return await fut
        except TimeoutError:
            raise StoreBusy(
                f"no commit within {self.submit_timeout_s * 2}s; the operation may still complete, "
                "retry with the same idempotency key"
            ) from None

    async def _writer_loop(self, transact: Callable[..., Any]) -> None:
        last_size = 0
        batch: list[tuple[o.AnyOp, asyncio.Future[o.AuthOutcome]]] = []
        try:
            while True:
                item = await self._queue.get()
                if item is _STOP:
                    return
                batch = [item]
                stop = self._drain(batch)
                if not stop and last_size > 1 and len(batch) < self.max_batch and self.linger_s > 0:
                    # Under load, a short wait gathers a fuller batch: one commit for more answers.
                    await asyncio.sleep(self.linger_s)
                    stop = self._drain(batch)
                last_size = len(batch)
                await self._run_batch(batch, transact)
                batch = []
                if stop:
                    return
        except asyncio.CancelledError:
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(StoreClosed("store writer stopped before the commit was confirmed"))
            raise

    def _drain(self, batch: list[Any]) -> bool:
        """Move waiting operations into `batch` up to max_batch; True when a stop marker was met."""
        while len(batch) < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                return False
            if item is _STOP:
                return True
            batch.append(item)
        return False

    def _batch_body(self, conn: Connection, batch: Sequence[o.AnyOp]) -> tuple[list[o.AuthOutcome], dict[Any, int]]:
        state = BatchState(now=utcnow(), internal_ids=self._internal_ids)
        outcomes = apply_batch(conn, batch, state)
        return outcomes, state.new_internal_ids

    async def _run_batch(self, batch: list[Any], transact: Callable[..., Any]) -> None:
        live = [(op, fut) for op, fut in batch if not fut.done()]
        if not live:
            return
        ops = [op for op, _ in live]
        results: list[o.AuthOutcome | BaseException]
        try:
            outcomes, new_ids = await transact(self._batch_body, ops)
            self._internal_ids.update(new_ids)
            results = list(outcomes)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if len(ops) > 1:
                log.warning("batch of %d failed (%s); applying its operations one by one", len(ops), _describe(exc))
            self.fallbacks += 1
            results = []
            for op in ops:
                try:
                    outcomes, new_ids = await transact(self._batch_body, [op])
                    self._internal_ids.update(new_ids)
                    results.append(outcomes[0])
                except asyncio.CancelledError:
                    raise
                except Exception as one:
                    log.error("operation %s %s failed: %s", type(op).__name__, op.idem_key, _describe(one))
                    results.append(StoreError(f"{type(op).__name__} {op.idem_key} could not be applied: {_describe(one)}"))
        self.batches += 1
        self.batched_ops += len(ops)
        for (_, fut), result in zip(live, results, strict=True):
            if fut.done():
                continue
            if isinstance(result, BaseException):
                fut.set_exception(result)
            else:
                fut.set_result(result)

    async def find_card(self, fingerprints: list[str]) -> CardRecord | None:
        """The card whose PAN fingerprint is one of `fingerprints` (one per key version), or None."""
        if not fingerprints:
            return None
        if self._inline is not None:
            return self._inline.find_card(list(fingerprints))
        if self._pg_cards is not None:
            return await self._pg_cards.find_card(list(fingerprints))
        return await self._query(_find_card, list(fingerprints))

    async def find_payment_token(self, fingerprints: list[str]) -> tuple[TokenRecord, CardRecord] | None:
        """The payment token whose fingerprint is one of `fingerprints`, with its card's current state, or None.

        One indexed read joining the token to its card and account: a closed card or a frozen account shows
        at once, whatever the token's own status.
        """
        if not fingerprints:
            return None
        if self._inline is not None:
            return self._inline.find_payment_token(list(fingerprints))
        if self._pg_cards is not None:
            return await self._pg_cards.find_payment_token(list(fingerprints))
        return await self._query(admin.find_payment_token, list(fingerprints))

    async def find_auth(self, idem_key: str) -> o.AuthOutcome | None:
        """The stored first answer to `idem_key` (duplicate=True), or None."""
        return await self._query(_find_auth, idem_key)

    # ------------------------------------------------------------------ admin

    async def _write(self, body: Callable[..., T], *args: Any) -> T:
        """A short admin transaction, serialized with the hot path's batches on SQLite."""
        if self._closing:
            raise StoreClosed("store is closed")
        try:
            if self._sqlite is not None:
                return await self._sqlite.transact(body, *args)
            assert self._read is not None
            async with self._read.connect() as conn:
                return await _pg_transact(conn, body, *args)
        except IntegrityError as exc:
            raise StoreError(f"refused by the database: {_describe(exc)}") from None

    async def _snapshot(self, body: Callable[..., T], *args: Any) -> T:
        """Run read-only `body` on one consistent snapshot (SQLite: under the write lock; PostgreSQL: REPEATABLE READ)."""
        if self._sqlite is not None:
            return await self._sqlite.transact(body, *args)
        assert self._read is not None
        async with self._read.connect() as conn:
            conn = await conn.execution_options(isolation_level="REPEATABLE READ")
            async with conn.begin():
                return await conn.run_sync(body, *args)

    async def _query(self, body: Callable[..., T], *args: Any) -> T:
        """A read outside the write path (one statement or a few; no snapshot across them)."""
        if self._readers is not None:
            return await self._readers.query(body, *args)
        assert self._read_autocommit is not None
        async with self._read_autocommit.connect() as conn:
            return await conn.run_sync(body, *args)

    async def run_read(self, body: Callable[..., T], *args: Any) -> T:
        """Run `body(conn, *args)`, synchronous Core queries on the models' tables, on a consistent snapshot."""
        return await self._snapshot(body, *args)

    async def read_now(self, body: Callable[..., T], *args: Any) -> T:
        """A one-statement read on the hot path: inline on SQLite (microseconds under WAL), pooled on PostgreSQL."""
        if self._inline is not None:
            return self._inline.run(body, *args)
        return await self._query(body, *args)

    async def run_query(self, body: Callable[..., T], *args: Any) -> T:
        """Run read-only `body(conn, *args)` outside the write path (no snapshot across its statements)."""
        return await self._query(body, *args)

    async def run_write(self, body: Callable[..., T], *args: Any) -> T:
        """Run `body(conn, *args)` in one write transaction, serialized with the hot path's batches on SQLite.

        For jobs the store has no method for (settlement posting, reports); keep every journal entry balanced
        (`processor.ledger.apply.post_entry` checks it) and the accounts' ledger/held columns in step.
        """
        return await self._write(body, *args)

    async def create_cardholder(self, name: str, handle: str) -> int:
        return await self._write(admin.create_cardholder, name, handle)

    async def open_account(self, cardholder_id: int, kind: str, currency: str) -> int:
        """A customer account; the funding and clearing accounts of `currency` are created when missing."""
        account_id = await self._write(admin.open_account, cardholder_id, kind, currency)
        return account_id

    async def deposit(self, account_id: int, amount_minor: int, *, reference: str) -> int:
        """Move `amount_minor` from the currency's funding account to the account; returns the journal entry id."""
        return await self._write(admin.deposit, account_id, amount_minor, reference)

    async def transfer(
        self, from_account_id: int, to_account_id: int, amount_minor: int, *, reference: str, kind: str = "transfer"
    ) -> int:
        """Move money between two customer accounts of one currency if the source has it available; entry id."""
        return await self._write(admin.transfer, from_account_id, to_account_id, amount_minor, reference, kind)

    async def post_adjustment(
        self, account_id: int, amount_minor: int, *, purpose: str, kind: str, reference: str
    ) -> int:
        """Interest (amount > 0, paid by the internal `purpose` account) or a fee (amount < 0, paid to it); entry id."""
        return await self._write(admin.post_adjustment, account_id, amount_minor, purpose, kind, reference)

    async def find_cardholder(self, handle: str) -> CardholderRecord | None:
        return await self._query(admin.find_cardholder, handle)

    async def list_accounts(self, cardholder_id: int) -> list[AccountView]:
        return await self._query(admin.list_accounts, cardholder_id)

    async def set_account_status(self, account_id: int, status: str) -> None:
        await self._write(admin.set_account_status, account_id, status)

    async def create_card(self, new: NewCard) -> int:
        return await self._write(admin.create_card, new)

    async def set_card_status(self, card_id: int, status: str) -> None:
        """Move a card through its lifecycle; refuses transitions such as lost -> active."""
        await self._write(admin.set_card_status, card_id, status)

    async def reset_pin_tries(self, card_id: int) -> None:
        await self._write(admin.reset_pin_tries, card_id)

    async def get_card(self, card_id: int) -> CardRecord:
        return await self._query(admin.get_card, card_id)

    async def list_cards(self, account_id: int) -> list[CardRecord]:
        return await self._query(admin.list_cards, account_id)

    async def add_merchant(self, *, merchant_id: str, name: str, location: str = "", mcc: str) -> int:
        return await self._write(admin.add_merchant, merchant_id, name, location, mcc)

    async def get_merchant(self, merchant_id: str) -> MerchantRecord | None:
        return await self._query(admin.get_merchant, merchant_id)

    async def add_terminal(
        self,
        *,
        terminal_id: str,
        merchant_id: str,
        key_scheme: str | None = None,
        bdk_kcv: str | None = None,
        initial_ksn: str | None = None,
        status: str = "active",
        chip_capable: bool = True,
    ) -> int:
        """Register a terminal (DE 41) of an existing merchant (DE 42)."""
        return await self._write(
            admin.add_terminal, terminal_id, merchant_id, key_scheme, bdk_kcv, initial_ksn, status, chip_capable
        )

    async def set_terminal_status(self, terminal_id: str, status: str) -> None:
        await self._write(admin.set_terminal_status, terminal_id, status)

    async def get_terminal(self, terminal_id: str) -> TerminalRecord | None:
        return await self._query(admin.get_terminal, terminal_id)

    async def list_terminals(self, limit: int = 10_000) -> list[TerminalRecord]:
        """Registered terminals by terminal id, at most `limit`."""
        return await self._query(admin.list_terminals, limit)

    async def close_batch(
        self,
        *,
        idem_key: str,
        terminal_id: str,
        batch_number: str,
        currency: str,
        totals: batches.BatchTotals,
        now: dt.datetime | None = None,
    ) -> batches.BatchOutcome:
        """Close the terminal's open batch (0500) and compare totals; a repeated `idem_key` gets the first answer."""
        try:
            return await self._write(
                batches.close_batch, idem_key, terminal_id, batch_number, currency, totals, now or utcnow()
            )
        except StoreError:
            # Two copies of one 0500 raced on the idempotency key: the loser answers with the winner's batch.
            stored = await self._query(batches.find_batch, idem_key)
            if stored is None:
                raise
            return stored

    async def open_batch_totals(self, terminal_id: str, currency: str) -> batches.BatchTotals:
        """The totals of the terminal's batch not yet closed."""
        return await self._snapshot(batches.open_totals, terminal_id, currency)

    async def list_batches(self, terminal_id: str, limit: int = 100) -> list[batches.BatchOutcome]:
        """The terminal's closed batches, newest first."""
        return await self._query(batches.list_batches, terminal_id, limit)

    async def account_view(self, account_id: int) -> AccountView:
        """Balances and active holds of an account."""
        return await self._query(admin.account_view, account_id)

    async def expire_holds(self, now: Any) -> int:
        """Release active holds whose expires_at <= now; returns how many."""
        return await self._write(admin.expire_holds, now)

    async def check_invariants(self) -> list[str]:
        """Violations of the ledger invariants (empty when healthy), from one consistent snapshot."""
        failures, _ = await self._snapshot(invariants.check)
        return failures

    async def ledger_report(self) -> dict[str, Any]:
        """Totals per currency, counts, failures and warnings (forced overdrafts)."""
        return await self._snapshot(invariants.report)

    # ------------------------------------------------------------------ PAN vault and payment tokens

    async def cards_to_reseal(
        self, dek_version: int, fpk_version: int, after_id: int, limit: int
    ) -> list[tuple[int, str, int, int]]:
        """(card_id, sealed_pan, data_key_version, fingerprint_version) of cards with id > after_id behind a version."""
        return await self._query(admin.cards_to_reseal, dek_version, fpk_version, after_id, limit)

    async def update_card_vault(self, card_id: int, old_dek_version: int, old_fpk_version: int, vault: Any) -> bool:
        """Store a re-sealed PAN (an HSM TokenizedPan) if the card still has the old versions; False when not."""
        return await self._write(admin.update_card_vault, card_id, old_dek_version, old_fpk_version, vault)

    async def update_cards_vault(self, updates: Sequence[tuple[int, int, int, Any]]) -> list[bool]:
        """update_card_vault for each (card_id, old_dek_version, old_fpk_version, vault) in one transaction."""
        return await self._write(admin.update_cards_vault, list(updates))

    async def tokens_to_reseal(
        self, dek_version: int, fpk_version: int, after_id: int, limit: int
    ) -> list[tuple[int, str, int, int]]:
        """(token_id, sealed_token, data_key_version, fingerprint_version) of payment tokens behind a version."""
        return await self._query(admin.tokens_to_reseal, dek_version, fpk_version, after_id, limit)

    async def update_tokens_vault(self, updates: Sequence[tuple[int, int, int, Any]]) -> list[bool]:
        """Re-sealed token numbers, each written only if the token still has the old versions."""
        return await self._write(admin.update_tokens_vault, list(updates))

    async def count_behind_vault(self, dek_version: int, fpk_version: int) -> int:
        """Cards and payment tokens still under an older data or fingerprint key version."""
        return await self._query(admin.count_behind_vault, dek_version, fpk_version)

    async def add_payment_token(self, new: NewPaymentToken) -> int:
        """Record a provisioned payment token of an active card (event "provisioned"); its id."""
        return await self._write(admin.add_payment_token, new)

    async def set_token_status(self, token_id: int, status: str, detail: str = "") -> None:
        """active <-> suspended, either -> deleted (final); each move is an event."""
        await self._write(admin.set_token_status, token_id, status, detail)

    async def repoint_tokens(self, old_card_id: int, new_card_id: int) -> list[int]:
        """Move the old card's active and suspended tokens to the new card; the moved token ids."""
        return await self._write(admin.repoint_tokens, old_card_id, new_card_id)

    async def replace_card(self, old_card_id: int, new_card_id: int) -> list[int]:
        """In one transaction: close the old card, point it at the new one, move its tokens; the moved ids."""
        return await self._write(admin.replace_card, old_card_id, new_card_id)

    async def get_token(self, token_id: int) -> TokenView:
        return await self._query(admin.get_token, token_id)

    async def list_tokens(self, card_id: int) -> list[TokenView]:
        return await self._query(admin.list_tokens, card_id)

    async def token_events(self, token_id: int) -> list[dict[str, Any]]:
        """The token's lifecycle events, oldest first: id, event, detail, created_at."""
        return await self._query(admin.list_token_events, token_id)

    async def get_config(self, key: str) -> str | None:
        return await self._query(admin.get_config, key)

    async def set_config(self, key: str, value: str) -> None:
        await self._write(admin.set_config, key, value)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, LedgerBug):
        return f"ledger check failed: {exc}"
    if isinstance(exc, DBAPIError):
        return str(exc.orig).splitlines()[0] if exc.orig is not None else str(exc).splitlines()[0]
    return f"{type(exc).__name__}: {exc}"
