"""Database fixtures shared by every test folder.

- `db_url`: parametrized over "sqlite" (a file in tmp_path) and "postgres" (a fresh database on the real
  server, cloned from a migrated template, dropped after the test). Tests using it run once per database.
- `sqlite_url` / `pg_url`: one database only; `empty_pg_url`: a PostgreSQL database without schema;
  `pg_server`: the server itself (create_database / drop_database / url_for).
- `store`: an open `processor.ledger.Store` on `db_url`, closed afterwards.

Hypothesis runs under the "ci" profile when CI=true: no deadline (a loaded machine makes an example slow,
not wrong), derandomized so that a run is repeatable, and no example database in the fresh clone. Example
counts stay what each test sets.

PostgreSQL is reached through PROCESSOR_TEST_PG_URL (default postgresql+asyncpg://postgres@127.0.0.1:5432/postgres,
used as the admin connection). When it is unreachable the postgres variants are skipped, except under
CI=true, where they fail: CI must not pass by skipping.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
from database_kinds import DATABASES
from hypothesis import settings

settings.register_profile("ci", deadline=None, derandomize=True, database=None, print_blob=True)
if os.environ.get("CI") == "true":
    settings.load_profile("ci")

PG_ADMIN_URL = os.environ.get("PROCESSOR_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")
T = TypeVar("T")


def run_in_fresh_loop(factory: Callable[[], Coroutine[Any, Any, T]], timeout_s: float = 120) -> T:
    """Run a coroutine to completion on its own loop in another thread (safe from sync fixtures)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result(timeout=timeout_s)


class PgServer:
    """The test PostgreSQL server: creates and drops throwaway databases."""

    def __init__(self, admin_url: str) -> None:
        from sqlalchemy.engine import make_url

        self.admin_url = make_url(admin_url).set(drivername="postgresql+asyncpg")
        self.template: str | None = None
        self._dropper = ThreadPoolExecutor(1, thread_name_prefix="pg-drop")
        self._drops: list[Future[None]] = []

    def url_for(self, database: str) -> str:
        return self.admin_url.set(database=database).render_as_string(hide_password=False)

    def _dsn(self) -> str:
        return self.admin_url.set(drivername="postgresql").render_as_string(hide_password=False)

    async def _admin(self, *statements: str) -> None:
        import asyncpg

        conn = await asyncpg.connect(self._dsn(), timeout=5)
        try:
            for sql in statements:
                await conn.execute(sql)
        finally:
            await conn.close()

    def ping(self) -> None:
        run_in_fresh_loop(lambda: self._admin("SELECT 1"), timeout_s=15)

    def create_database(self, prefix: str = "processor_test", *, migrated: bool = True, template: str | None = None) -> str:
        """A new database, a copy of `template` (which no one may be connected to), else of the migrated
        template unless migrated=False; returns its name."""
        name = f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}"
        template = template or (self.template if migrated else None)
        copied = f' TEMPLATE "{template}"' if template else ""
        run_in_fresh_loop(lambda: self._admin(f'CREATE DATABASE "{name}"{copied}'))
        return name

    def execute(self, *statements: str) -> None:
        """Run statements as the admin, e.g. ALTER DATABASE."""
        run_in_fresh_loop(lambda: self._admin(*statements))

    def drop_database(self, name: str) -> None:
        run_in_fresh_loop(lambda: self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    def drop_database_later(self, name: str) -> None:
        """Drop a test's database while the next test runs: a drop waits on the server's disk for as long
        as a test takes to set up. `finish_drops` waits for them (at the end of the session)."""
        self._drops.append(self._dropper.submit(self.drop_database, name))

    def finish_drops(self) -> None:
        for drop in self._drops:
            drop.result(timeout=120)
        self._drops.clear()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The reachable test server with a migrated template database, or a skip (a failure under CI=true)."""
    server = PgServer(PG_ADMIN_URL)
    unreachable = None
    try:
        server.ping()
    except Exception as exc:  # noqa: BLE001 - any failure to connect means the same thing here
        unreachable = f"PostgreSQL at {server.admin_url.render_as_string()} is unreachable ({type(exc).__name__}: {exc})"
    if unreachable and os.environ.get("CI") == "true":
        pytest.fail(f"{unreachable}; CI=true requires it (set PROCESSOR_TEST_PG_URL)", pytrace=False)
    if unreachable:
        pytest.skip(f"{unreachable}; set PROCESSOR_TEST_PG_URL to run the PostgreSQL variants")
    template = server.create_database("processor_template")

    async def migrate() -> None:
        from processor.ledger import Store

        store = await Store.open(server.url_for(template))
        await store.close()

    try:
        run_in_fresh_loop(migrate)
        server.template = template
        yield server
    finally:
        server.finish_drops()
        server.template = None
        server.drop_database(template)


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for one test, dropped afterwards."""
    name = pg_server.create_database()
    try:
        yield pg_server.url_for(name)
    finally:
        pg_server.drop_database_later(name)


@pytest.fixture
def empty_pg_url(pg_server: PgServer) -> Iterator[str]:
    """A fresh PostgreSQL database without any schema, dropped afterwards."""
    name = pg_server.create_database(migrated=False)
    try:
        yield pg_server.url_for(name)
    finally:
        pg_server.drop_database_later(name)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite database file of its own for one test."""
    return f"sqlite+aiosqlite:///{tmp_path / 'processor.db'}"


@pytest.fixture(params=DATABASES)
def db_url(request: pytest.FixtureRequest) -> str:
    """The test runs once on SQLite and once on PostgreSQL, each time on a database of its own."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("pg_url")


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Any]:
    """An open account store on `db_url`."""
    from processor.ledger import Store

    opened = await Store.open(db_url)
    try:
        yield opened
    finally:
        await opened.close()


def _broker_unavailable() -> str | None:
    """Why a broker of our own cannot run here, or None."""
    try:
        from processor.transport.broker import dynsec_plugin, mosquitto_binary

        mosquitto_binary()
        dynsec_plugin()
        import aiomqtt  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - BrokerError or ImportError: the same verdict
        return str(exc)
    return None


@pytest.fixture
def broker() -> Iterator[Any]:
    """A Mosquitto of our own with the shipped configuration (accounts, ACLs) on a free port; stopped after.

    Its folder is under the system's temporary folder, which the `mosquitto` user can enter (pytest's own
    folders are private to us). Missing Mosquitto, its dynamic security plugin or aiomqtt skips the test,
    and fails it under CI=true.
    """
    import shutil
    import tempfile

    reason = _broker_unavailable()
    if reason and os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI=true requires a broker", pytrace=False)
    if reason:
        pytest.skip(reason)
    from processor.transport.broker import BrokerDir, start_broker

    folder = tempfile.mkdtemp(prefix="processor-test-broker-")
    try:
        with start_broker(BrokerDir.init(folder)) as process:
            yield process
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist (`-n 2 --dist loadgroup`), the tests of the machine's one pcscd and vpcd reader run
    in one worker, which alone starts and stops the daemon when it is absent."""
    for item in items:
        if "pcscd_daemon" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("pcscd"))
