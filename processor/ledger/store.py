"""The account store: one object over SQLite or PostgreSQL, with group commit on the hot path.

`submit(op)` puts the operation on a bounded queue. A writer takes what is waiting (up to `max_batch`),
applies it in ONE transaction, commits, and only then resolves the futures: an approval is durable before
its answer. When a batch fails as a whole, its operations are retried one transaction each, so one bad
operation cannot take its neighbours down.

Everything else the processor keeps runs through `run_read`, `run_write`, `run_query` and `lookup` (the
`StoreInterface`): the queries belong to the packages that own the tables. How each database is reached
(threads, connections, retries) is in `processor.ledger.backends`.
"""

from __future__ import annotations

import asyncio
import functools
import os
import logging
from collections.abc import Callable, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import Connection
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from processor.ledger import ops
from processor.ledger.apply import BatchState, apply_batch
from processor.ledger.backends import (
    FileLease,
    PgLease,
    PgLookupReader,
    PgWriter,
    SqliteInlineReader,
    SqliteReaders,
    SqliteWriter,
    describe,
    pg_transact,
)
from processor.ledger.errors import StoreBusy, StoreClosed, StoreError
from processor.ledger.interface import Lookup
from processor.ledger.models import utcnow

log = logging.getLogger("processor.ledger")
T = TypeVar("T")
P = ParamSpec("P")

_STOP = object()
CLOSE_RELEASE_S = 3.0  # closing one connection, pool or thread at shutdown; past it the operating system does it


class Store:
    """The account store. Open with `await Store.open(url)`, close with `await store.close()`."""

    def __init__(
        self,
        url: str,
        dialect: str,
        read_engine: AsyncEngine | None,
        *,
        sqlite_readers: SqliteReaders | None = None,
        sqlite_writer: SqliteWriter | None,
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
        self._inline: SqliteInlineReader | None = None
        self._pg_lookups: PgLookupReader | None = None
        self._sqlite = sqlite_writer
        self._pg_writers = pg_writers
        self.max_batch = max_batch
        self.linger_s = linger_s
        self.submit_timeout_s = submit_timeout_s
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=queue_max)
        self._internal_ids: dict[tuple[str, str], int] = {}
        self._writers: list[asyncio.Task[None]] = []
        self._pg_writer_conns: list[PgWriter] = []
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
        pg_writers: int = 2,
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
            raise StoreError(f"cannot open the database {safe}: {describe(exc)}") from exc

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
            _create_private(parsed.database)
            sync_url = parsed.set(drivername="sqlite+pysqlite").render_as_string(hide_password=False)
            writer = SqliteWriter(sync_url)
            try:
                await writer.transact(upgrade)
            except BaseException:
                writer.close()
                raise
            store = cls(
                url, "sqlite", None, sqlite_readers=SqliteReaders(sync_url, reader_threads), sqlite_writer=writer,
                pg_writers=1, max_batch=max_batch, queue_max=queue_max,
                linger_s=linger_ms / 1000, submit_timeout_s=submit_timeout_s,
            )
            store._inline = SqliteInlineReader(parsed.database)
        elif backend == "postgresql":
            async_url = parsed.set(drivername="postgresql+asyncpg")
            read = create_async_engine(
                # (the writers have their own connections: this pool serves run_write, run_read and run_query)
                async_url, pool_size=4, max_overflow=8, pool_timeout=5
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
            store._pg_lookups = await PgLookupReader.open(dsn, size=4)
        else:
            raise StoreError(f"unsupported database {backend!r}: use sqlite+aiosqlite:///FILE or postgresql+asyncpg://...")
        await store._start()
        return store

    async def _start(self) -> None:
        if self._sqlite is not None:
            self._writers.append(
                asyncio.create_task(self._writer_loop(self._sqlite.transact_driver), name="ledger-writer")
            )
        for i in range(self._pg_writers if self._sqlite is None else 0):
            assert self._read is not None
            url = make_url(self.url)
            writer = PgWriter(url.set(drivername="postgresql").render_as_string(hide_password=False), self._read.dialect, url)
            try:
                await writer.connect()
            except BaseException:
                for started in self._pg_writer_conns:
                    await started.close()
                raise
            self._pg_writer_conns.append(writer)
            self._writers.append(asyncio.create_task(self._writer_loop(writer.transact), name=f"ledger-writer-{i}"))
        for task in self._writers:
            task.add_done_callback(self._writer_ended)

    def _writer_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            # A writer must never die silently: later submits would only time out.
            log.error("ledger writer %s stopped", task.get_name(), exc_info=task.exception())
            self._closing = True
            self._fail_queued(StoreClosed(f"store writer stopped: {describe(task.exception())}"))

    async def close(self, timeout_s: float = 10.0) -> None:
        """Commit the queued operations (within `timeout_s`), then release the database (within
        `CLOSE_RELEASE_S`). An operation not committed by then fails with StoreClosed: its transaction
        was rolled back or never began, so it is applied in full or not at all."""
        if self._closed:
            return
        self._closed = self._closing = True
        live = [task for task in self._writers if not task.done()]
        if self._writers:
            try:
                async with asyncio.timeout(max(timeout_s, 0.0)):
                    for _ in live:  # one stop marker each, behind the operations already queued
                        await self._queue.put(_STOP)
                    if live:
                        await asyncio.wait(live)
            except TimeoutError:
                log.warning("store writers did not finish within %.1fs; stopping them", timeout_s)
            for task in self._writers:
                task.cancel()
            _, stuck = await asyncio.wait(self._writers, timeout=CLOSE_RELEASE_S)
            if stuck:
                # A writer whose rollback does not come back (a server that stopped answering): drop its
                # connection; the server rolls the transaction back when the connection goes.
                log.warning("%d store writer(s) did not stop within %.1fs; dropping their connections", len(stuck),
                            CLOSE_RELEASE_S)
                for writer in self._pg_writer_conns:
                    writer.terminate()
        self._fail_queued(StoreClosed("store closed before the operation was committed"))
        if self.batches:
            log.info("store: %d batch(es) committed, %.1f operations each on average", self.batches,
                     self.batched_ops / self.batches)
        if self._pg_lookups is not None and self._pg_lookups.statements:
            log.info("store: %d look-up(s) in %d statement(s)", self._pg_lookups.lookups, self._pg_lookups.statements)
        await asyncio.gather(*(writer.close() for writer in self._pg_writer_conns))
        if self._sqlite is not None:
            await self._bounded(asyncio.get_running_loop().run_in_executor(None, self._sqlite.close), "the writer")
        if self._inline is not None:
            self._inline.close()
        if self._pg_lookups is not None:
            await self._bounded(self._pg_lookups.close(), "the look-up pool", self._pg_lookups.terminate)
        if self._readers is not None:
            await self._bounded(asyncio.get_running_loop().run_in_executor(None, self._readers.close), "the readers")
        if self._read is not None:
            await self._bounded(self._read.dispose(), "the connection pool")

    @staticmethod
    async def _bounded(aw: Any, what: str, on_timeout: Callable[[], None] | None = None) -> None:
        """Release one resource within CLOSE_RELEASE_S; past it, log and go on (the process is ending)."""
        try:
            await asyncio.wait_for(aw, timeout=CLOSE_RELEASE_S)
        except TimeoutError:
            log.warning("closing %s took more than %.1fs; left to the operating system", what, CLOSE_RELEASE_S)
            if on_timeout is not None:
                on_timeout()

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

    async def try_lease(self, name: str) -> "PgLease | FileLease | None":
        """Take the lease `name` if no process on this database holds it (one holder at a time across every
        process: say, the one event publisher of a consumer); None when another holds it. The holder calls
        `release()`; a holder that dies loses it at once."""
        parsed = make_url(self.url)
        if self.dialect == "sqlite":
            assert parsed.database is not None
            return FileLease.try_take(parsed.database, name)
        return await PgLease.try_take(parsed.set(drivername="postgresql").render_as_string(hide_password=False), name)

    # ------------------------------------------------------------------ hot path

    async def submit(self, op: ops.AnyOp) -> ops.AuthOutcome:
        """Apply `op` with its neighbours in one transaction; returns once it is committed."""
        if self._closing:
            raise StoreClosed("store is closed")
        fut: asyncio.Future[ops.AuthOutcome] = asyncio.get_running_loop().create_future()
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
        batch: list[tuple[ops.AnyOp, asyncio.Future[ops.AuthOutcome]]] = []
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

    def _batch_body(self, conn: Any, batch: Sequence[ops.AnyOp]) -> tuple[list[ops.AuthOutcome], dict[Any, int]]:
        state = BatchState(now=utcnow(), internal_ids=self._internal_ids)
        outcomes = apply_batch(conn, batch, state)
        return outcomes, state.new_internal_ids

    async def _run_batch(self, batch: list[Any], transact: Callable[..., Any]) -> None:
        live = [(op, fut) for op, fut in batch if not fut.done()]
        if not live:
            return
        pending = [op for op, _ in live]
        results: list[ops.AuthOutcome | BaseException]
        try:
            outcomes, new_ids = await transact(self._batch_body, pending)
            self._internal_ids.update(new_ids)
            results = list(outcomes)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if len(pending) > 1:
                log.warning("batch of %d failed (%s); applying its operations one by one", len(pending), describe(exc))
            self.fallbacks += 1
            results = []
            for op in pending:
                try:
                    outcomes, new_ids = await transact(self._batch_body, [op])
                    self._internal_ids.update(new_ids)
                    results.append(outcomes[0])
                except asyncio.CancelledError:
                    raise
                except Exception as one:
                    log.error("operation %s %s failed: %s", type(op).__name__, op.idem_key, describe(one))
                    failure = f"{type(op).__name__} {op.idem_key} could not be applied: {describe(one)}"
                    results.append(StoreError(failure))
        self.batches += 1
        self.batched_ops += len(pending)
        for (_, fut), result in zip(live, results, strict=True):
            if fut.done():
                continue
            if isinstance(result, BaseException):
                fut.set_exception(result)
            else:
                fut.set_result(result)

    async def lookup(self, query: Lookup[T], keys: Sequence[str]) -> T | None:
        """The record of the first row whose key is one of `keys` (say, a PAN fingerprint per key version)."""
        if not keys:
            return None
        if self._inline is not None:
            return self._inline.lookup(query, keys)
        assert self._pg_lookups is not None
        return await self._pg_lookups.lookup(query, keys)

    @property
    def lookup_statements(self) -> tuple[int, int] | None:
        """PostgreSQL: (look-ups asked, statements run for them) so far; None on SQLite (no statements)."""
        if self._pg_lookups is None:
            return None
        return self._pg_lookups.lookups, self._pg_lookups.statements

    # ------------------------------------------------------------------ everything else

    async def run_write(
        self, body: Callable[Concatenate[Connection, P], T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run `body(conn, *args)` in one write transaction, serialized with the hot path's batches on SQLite.

        Keep every journal entry balanced (`processor.ledger.apply.post_entry` checks it) and the accounts'
        ledger/held columns in step. A constraint the database refuses becomes a StoreError.
        """
        if self._closing:
            raise StoreClosed("store is closed")
        work = functools.partial(body, **kwargs) if kwargs else body
        try:
            if self._sqlite is not None:
                return await self._sqlite.transact(work, *args)
            assert self._read is not None
            async with self._read.connect() as conn:
                return await pg_transact(conn, work, *args)
        except IntegrityError as exc:
            raise StoreError(f"refused by the database: {describe(exc)}") from None

    async def run_read(
        self, body: Callable[Concatenate[Connection, P], T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run read-only `body(conn, *args)` on one consistent snapshot (SQLite: under the write lock;
        PostgreSQL: REPEATABLE READ)."""
        work = functools.partial(body, **kwargs) if kwargs else body
        if self._sqlite is not None:
            return await self._sqlite.transact(work, *args)
        assert self._read is not None
        async with self._read.connect() as conn:
            conn = await conn.execution_options(isolation_level="REPEATABLE READ")
            async with conn.begin():
                return await conn.run_sync(work, *args)

    async def run_query(
        self, body: Callable[Concatenate[Connection, P], T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run read-only `body(conn, *args)` outside the write path (one statement or a few, no snapshot)."""
        work = functools.partial(body, **kwargs) if kwargs else body
        if self._readers is not None:
            return await self._readers.query(work, *args)
        assert self._read_autocommit is not None
        async with self._read_autocommit.connect() as conn:
            return await conn.run_sync(work, *args)


def _create_private(database: str) -> None:
    """The SQLite file, created owner-only when it does not exist yet (SQLite gives its WAL the same mode)."""
    try:
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
