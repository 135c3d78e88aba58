"""How the store reaches each database: writer connections, readers, retries. Internal to `processor.ledger`.

- SQLite: one writer thread holding a pysqlite connection (WAL, synchronous=FULL, BEGIN IMMEDIATE). A batch
  costs one thread hop instead of one per statement (aiosqlite's model), and its statements go straight to
  pysqlite (`processor.ledger.driver`); several processes on one file serialize on the database write lock
  (busy_timeout). Reads run on a few read-only connections in their own threads, and the hot path's
  look-ups on one read-only sqlite3 connection straight from the event loop.
- PostgreSQL: two writer tasks by default, each on its own asyncpg connection, running the same synchronous
  batch code in a greenlet whose statements are asyncpg prepared statements. Few writers make big batches:
  a batch's plain holds and debits cost a few statements in all (`apply._apply_together`), so one commit
  answers many. Row locks serialize conflicting batches; deadlocks and serialization failures are retried
  a bounded number of times. The hot path's look-ups go through a small asyncpg pool with prepared
  statements and no reset on release. `run_write`, `run_read` and `run_query` use SQLAlchemy's own pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import Connection, String, any_, bindparam, create_engine, event
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.dialects.postgresql import ARRAY, distinct_on
from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.pool import NullPool
from sqlalchemy.util import greenlet_spawn

from processor.ledger.apply import Conflict, LedgerBug
from processor.ledger.driver import AsyncpgDriver, SqliteDriver
from processor.ledger.interface import Lookup

T = TypeVar("T")

SQLITE_BUSY_TIMEOUT_MS = 5000
TXN_ATTEMPTS = 6
PG_COMMAND_TIMEOUT_S = 30.0
PG_RETRY_SQLSTATES = frozenset({"40001", "40P01"})  # serialization failure, deadlock detected


def retryable(exc: BaseException) -> bool:
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


def sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
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


def sqlite_writer_engine(url: str) -> Engine:
    """A sync engine whose transactions start with BEGIN IMMEDIATE (take the write lock up front).

    Taking the lock at BEGIN means a transaction never has to upgrade a read lock, which SQLite would refuse
    with SQLITE_BUSY at once instead of waiting busy_timeout.
    """
    engine = create_engine(url, poolclass=NullPool)

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, record: Any) -> None:
        dbapi_conn.isolation_level = None  # SQLAlchemy, not the driver, decides where transactions begin
        sqlite_pragmas(dbapi_conn, record)

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class SqliteReaders:
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
            sqlite_pragmas(dbapi_conn, record)
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


class SqliteInlineReader:
    """Hot-path look-ups on SQLite straight from the event loop thread, on a read-only sqlite3 connection.

    An indexed look-up under WAL takes microseconds and never waits for the writer, so running it
    inline is cheaper than any thread hop; this is the engine's one read per authorization.
    """

    def __init__(self, path: str) -> None:
        self.conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.conn.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        self.conn.execute("PRAGMA query_only=ON")
        self._sql: dict[tuple[Lookup[Any], int], str] = {}

    def _statement(self, query: Lookup[Any], count: int) -> str:
        sql = self._sql.get((query, count))
        if sql is None:
            stmt = query.select.where(query.key.in_([bindparam(f"k{i}") for i in range(count)]))
            sql = self._sql[(query, count)] = str(stmt.compile(dialect=sqlite_dialect.dialect())) + " LIMIT 1"
        return sql

    def lookup(self, query: Lookup[T], keys: Sequence[str]) -> T | None:
        row = self.conn.execute(self._statement(query, len(keys)), list(keys)).fetchone()
        return query.build(row) if row is not None else None

    def close(self) -> None:
        self.conn.close()


class PgLookupReader:
    """Hot-path look-ups on PostgreSQL through a small asyncpg pool, one prepared statement per kind of look-up.

    Look-ups coalesce the way the write path's operations do: while `MAX_IN_FLIGHT` statements of one kind
    are running, new look-ups of that kind wait, and then go together, one statement for all their keys (at
    most `MAX_KEYS`). Alone, a look-up goes at once; under load one round trip serves many requests, which
    saves the engine and the database a statement each. Each statement runs in a task of its own, so a
    caller that gives up (a timeout) cancels nothing for the others.
    """

    MAX_IN_FLIGHT = 2
    MAX_KEYS = 256
    TIMEOUT_S = 10.0

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self._sql: dict[Lookup[Any], str] = {}
        self._waiting: dict[Lookup[Any], list[tuple[list[str], asyncio.Future[Any]]]] = {}
        self._running: dict[Lookup[Any], int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.statements = 0
        self.lookups = 0

    @classmethod
    async def open(cls, dsn: str, size: int) -> "PgLookupReader":
        import asyncpg

        # Look-ups are single read-only statements that change no session state, so a connection goes back
        # to the pool as it is: asyncpg's default reset would cost a round trip (RESET ALL ...) per look-up.
        pool = await asyncpg.create_pool(
            dsn, min_size=1, max_size=size, command_timeout=cls.TIMEOUT_S, reset=_keep_session
        )
        return cls(pool)

    def _statement(self, query: Lookup[Any]) -> str:
        sql = self._sql.get(query)
        if sql is None:
            # One row per key (DISTINCT ON), the key last so that each answer finds its caller.
            stmt = (
                query.select.add_columns(query.key)
                .where(query.key == any_(bindparam("keys", type_=ARRAY(String))))
                .ext(distinct_on(query.key))
                .order_by(query.key)
            )
            sql = self._sql[query] = str(stmt.compile(dialect=asyncpg_dialect.dialect()))
        return sql

    async def lookup(self, query: Lookup[T], keys: Sequence[str]) -> T | None:
        fut: asyncio.Future[T | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(query, []).append((list(keys), fut))
        self.lookups += 1
        self._pump(query)
        return await fut

    def _pump(self, query: Lookup[Any]) -> None:
        waiting = self._waiting.get(query)
        while waiting and self._running.get(query, 0) < self.MAX_IN_FLIGHT:
            taken: list[tuple[list[str], asyncio.Future[Any]]] = []
            count = 0
            while waiting and (not taken or count + len(waiting[0][0]) <= self.MAX_KEYS):
                item = waiting.pop(0)
                if not item[1].done():  # (a caller that gave up)
                    taken.append(item)
                    count += len(item[0])
            if not taken:
                break
            self._running[query] = self._running.get(query, 0) + 1
            task = asyncio.get_running_loop().create_task(self._run(query, taken))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if not waiting:
            self._waiting.pop(query, None)

    async def _run(self, query: Lookup[Any], taken: list[tuple[list[str], asyncio.Future[Any]]]) -> None:
        try:
            keys = list(dict.fromkeys(key for wanted, _ in taken for key in wanted))
            self.statements += 1
            rows = await self.pool.fetch(self._statement(query), keys, timeout=self.TIMEOUT_S)
            by_key = {row[-1]: row for row in rows}
            for wanted, fut in taken:
                if fut.done():
                    continue
                row = next((by_key[key] for key in wanted if key in by_key), None)
                fut.set_result(query.build(tuple(row)[:-1]) if row is not None else None)
        except BaseException as exc:
            for _, fut in taken:
                if not fut.done():
                    fut.set_exception(exc if isinstance(exc, Exception) else StoreLookupCancelled("look-up cancelled"))
            if not isinstance(exc, Exception):
                raise
        finally:
            self._running[query] -= 1
            self._pump(query)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.pool.close()

    def terminate(self) -> None:
        self.pool.terminate()


class StoreLookupCancelled(Exception):
    """The statement serving a look-up was cancelled (the store is closing)."""


async def _keep_session(_conn: Any) -> None:
    """A look-up connection needs no reset on release (asyncpg still rolls back an open transaction)."""


class SqliteWriter:
    """Runs transactions on one pysqlite connection in one dedicated thread."""

    def __init__(self, url: str) -> None:
        self.engine = sqlite_writer_engine(url)
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="ledger-writer")
        self.conn: Connection | None = None
        self.driver: SqliteDriver | None = None  # the hot path's statements, on the same connection

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
                    self.conn = None
                    self.driver = None  # the next attempt (or transaction) starts on a new connection
                if attempt + 1 == TXN_ATTEMPTS or not retryable(exc):
                    raise
                time.sleep(0.002 * 2**attempt)
        raise AssertionError("unreachable")

    async def transact_driver(self, body: Callable[..., T], *args: Any) -> T:
        """Run `body(driver, *args)` in one BEGIN IMMEDIATE transaction on the writer's own connection."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, self._transact_driver, body, args)

    def _transact_driver(self, body: Callable[..., T], args: Sequence[Any]) -> T:
        for attempt in range(TXN_ATTEMPTS):
            if self.conn is None:
                self.conn = self.engine.connect()
            if self.driver is None or self.driver.raw is not self.conn.connection.dbapi_connection:
                self.driver = SqliteDriver(self.conn.connection.dbapi_connection, self.engine.dialect, self.engine.url)
            raw = self.driver.raw
            try:
                self.driver.exec_driver_sql("BEGIN IMMEDIATE")
                try:
                    result = body(self.driver, *args)
                    self.driver.exec_driver_sql("COMMIT")
                    return result
                except BaseException:
                    if raw.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            raw.execute("ROLLBACK")
                    raise
            except Exception as exc:
                if attempt + 1 == TXN_ATTEMPTS or not retryable(exc):
                    raise
                time.sleep(0.002 * 2**attempt)
        raise AssertionError("unreachable")

    def close(self) -> None:
        def _close() -> None:
            self.driver = None
            if self.conn is not None:
                self.conn.close()
                self.conn = None

        self.pool.submit(_close).result(timeout=30)
        self.pool.shutdown(wait=True)
        self.engine.dispose()


async def pg_transact(conn: AsyncConnection, body: Callable[..., T], *args: Any) -> T:
    for attempt in range(TXN_ATTEMPTS):
        try:
            async with conn.begin():
                return await conn.run_sync(body, *args)
        except Exception as exc:
            if attempt + 1 == TXN_ATTEMPTS or not retryable(exc):
                raise
            await asyncio.sleep(0.002 * 2**attempt)
    raise AssertionError("unreachable")


class PgWriter:
    """One writer's own asyncpg connection for the hot path's batches, replaced when the server drops it.

    The batch code is synchronous; it runs in a greenlet whose statements go to asyncpg as prepared
    statements (`processor.ledger.driver`). No pool: the connection is this writer's for its whole life, so
    nothing is reset between batches.
    """

    def __init__(self, dsn: str, dialect: Any, url: Any) -> None:
        self.dsn = dsn
        self.dialect = dialect
        self.url = url
        self.driver: AsyncpgDriver | None = None

    async def connect(self) -> None:
        import asyncpg

        raw = await asyncpg.connect(self.dsn, timeout=10, command_timeout=PG_COMMAND_TIMEOUT_S)
        self.driver = AsyncpgDriver(raw, self.dialect, self.url)

    async def transact(self, body: Callable[..., T], *args: Any) -> T:
        """Run `body(driver, *args)` in one transaction; deadlocks and serialization failures are retried."""
        for attempt in range(TXN_ATTEMPTS):
            if self.driver is None or self.driver.raw.is_closed():
                await self.close()
                await self.connect()
            assert self.driver is not None
            try:
                async with self.driver.raw.transaction():
                    return await greenlet_spawn(body, self.driver, *args)
            except Exception as exc:
                if isinstance(exc, DBAPIError) and exc.connection_invalidated:
                    await self.close()  # the next attempt (or batch) reconnects
                if attempt + 1 == TXN_ATTEMPTS or not retryable(exc):
                    raise
                await asyncio.sleep(0.002 * 2**attempt)
        raise AssertionError("unreachable")

    async def close(self) -> None:
        if self.driver is not None:
            raw, self.driver = self.driver.raw, None
            try:
                await asyncio.wait_for(raw.close(), timeout=5)
            except Exception:
                raw.terminate()

    def terminate(self) -> None:
        """Drop the connection at once (shutdown, a writer stuck): the server rolls back its transaction."""
        if self.driver is not None:
            raw, self.driver = self.driver.raw, None
            raw.terminate()


def lease_key(name: str) -> int:
    """A stable signed 64-bit key for `name` (PostgreSQL advisory locks take a bigint)."""
    digest = hashlib.sha256(b"processor.lease:" + name.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class PgLease:
    """A session advisory lock held on a connection of its own: released by `release()`, or by the server
    the moment the holder's connection ends (the process died), so a stand-by can take over."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    @classmethod
    async def try_take(cls, dsn: str, name: str) -> "PgLease | None":
        import asyncpg

        conn = await asyncpg.connect(dsn, timeout=10, command_timeout=10)
        try:
            if await conn.fetchval("SELECT pg_try_advisory_lock($1)", lease_key(name)):
                return cls(conn)
        except BaseException:
            conn.terminate()
            raise
        await asyncio.wait_for(conn.close(), timeout=5)
        return None

    @property
    def held(self) -> bool:
        return not self.conn.is_closed()

    async def release(self) -> None:
        try:
            await asyncio.wait_for(self.conn.close(), timeout=3)
        except Exception:
            self.conn.terminate()


class FileLease:
    """SQLite: an exclusive lock on a file beside the database, released when its descriptor closes (also
    when the process dies)."""

    def __init__(self, fd: int) -> None:
        self.fd: int | None = fd

    @classmethod
    def try_take(cls, database: str, name: str) -> "FileLease | None":
        import fcntl

        path = f"{database}.{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.lease"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return cls(fd)

    @property
    def held(self) -> bool:
        return self.fd is not None

    async def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def describe(exc: BaseException) -> str:
    if isinstance(exc, LedgerBug):
        return f"ledger check failed: {exc}"
    if isinstance(exc, DBAPIError):
        return str(exc.orig).splitlines()[0] if exc.orig is not None else str(exc).splitlines()[0]
    return f"{type(exc).__name__}: {exc}"
