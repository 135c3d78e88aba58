"""The hot path's statements run on the database driver itself, each compiled once. Internal to `processor.ledger`.

`apply_batch` and the modules it calls (`spend`, `outbox`) are written against SQLAlchemy's `Connection`:
`conn.execute(core_statement, params)`. Through SQLAlchemy every such call pays for its execution context,
cache-key generation and result machinery, about 100 µs per authorization. `DriverConnection` offers the
same small surface (`execute`, `exec_driver_sql`, `dialect`, `engine.url`) but compiles each statement once
per set of parameter names and then hands the SQL and a positional argument list straight to the driver:
pysqlite's cursor, or asyncpg's prepared statements (from synchronous code, through a greenlet, as
SQLAlchemy's own asyncpg adapter does). The transaction is the caller's, exactly as before.

What SQLAlchemy would do for these statements is done here too, from the compiled statement: literal values,
bind and result type processing (timestamps stay UTC-aware on both databases), Python-side column defaults,
`IN` over a list (`= ANY($n)` on PostgreSQL), and driver errors raised as SQLAlchemy's `DBAPIError` family,
so callers' retry rules see the same exceptions. A statement it cannot compile this way is refused with a
`LedgerBug` before anything is sent.
"""

from __future__ import annotations

import re
from collections import namedtuple
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Insert
from sqlalchemy.engine import URL
from sqlalchemy.engine.interfaces import Dialect
from sqlalchemy.exc import DBAPIError, MultipleResultsFound, NoResultFound
from sqlalchemy.sql.compiler import SQLCompiler

_MISSING = object()
_POSTCOMPILE = re.compile(r"__\[POSTCOMPILE_(\w+)\]")
_PG_IN = re.compile(r"(?<!NOT )IN \(__\[POSTCOMPILE_(\w+)\]\)")
CACHE_MAX = 512  # compiled statements kept; statements built per call (rare, off the hot path) cycle through


class DriverStatementError(AssertionError):
    """A statement the driver path cannot run as SQLAlchemy would (a programming error, found before sending)."""


class Rows:
    """The result of one statement: the subset of SQLAlchemy's `Result` the write path uses."""

    __slots__ = ("rows", "rowcount")

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self.rows = rows
        self.rowcount = rowcount

    def __iter__(self) -> Any:
        return iter(self.rows)

    def first(self) -> Any:
        return self.rows[0] if self.rows else None

    def one(self) -> Any:
        if len(self.rows) != 1:
            raise NoResultFound("No row was found when one was required") if not self.rows else MultipleResultsFound(
                "Multiple rows were found when exactly one was required"
            )
        return self.rows[0]

    def scalar_one(self) -> Any:
        return self.one()[0]

    def scalar(self) -> Any:
        return self.rows[0][0] if self.rows else None

    def all(self) -> list[Any]:
        return list(self.rows)

    def scalars(self) -> "Scalars":
        return Scalars(row[0] for row in self.rows)


class Scalars(list[Any]):
    def all(self) -> list[Any]:
        return list(self)

    def first(self) -> Any:
        return self[0] if self else None


class Compiled:
    """One statement compiled for one dialect and one set of parameter names, ready for the driver."""

    __slots__ = ("sql", "binds", "expanding", "row", "results", "returns", "many_sql", "many_binds", "stmt")

    def __init__(self, stmt: Any, dialect: Dialect, keys: Sequence[str] | None) -> None:
        self.stmt = stmt  # keeps the statement alive: the cache is keyed by its identity
        compiled = stmt.compile(dialect=dialect, column_keys=list(keys) if keys is not None else None)
        assert isinstance(compiled, SQLCompiler)
        literals = compiled.construct_params(_check=False)
        processors = compiled._bind_processors
        defaults = _python_defaults(stmt) if isinstance(stmt, Insert) else {}
        names = list(compiled.positiontup or ())
        self.expanding = tuple(n for n in dict.fromkeys(names) if compiled.binds[n].expanding)
        if dialect.paramstyle == "numeric_dollar":
            names = [n for n in dict.fromkeys(names) if n not in self.expanding]
        elif dialect.paramstyle != "qmark":
            raise DriverStatementError(f"paramstyle {dialect.paramstyle} is not supported")
        # One (name, value when the caller gives none, processor) per placeholder, in order.
        self.binds = tuple(
            (name, _fallback(name, literals.get(name), defaults, compiled), processors.get(name)) for name in names
        )
        sql = compiled.string
        if self.expanding:
            if dialect.paramstyle == "numeric_dollar":
                types = {n: dialect.type_compiler_instance.process(compiled.binds[n].type) for n in self.expanding}
                first = len(names) + 1
                sql = _PG_IN.sub(lambda m: f"= ANY(${first + self.expanding.index(m[1])}::{types[m[1]]}[])", sql)
                names += list(self.expanding)
                self.binds += tuple((n, _MISSING, None) for n in self.expanding)
            if dialect.paramstyle == "numeric_dollar" and _POSTCOMPILE.search(sql):
                raise DriverStatementError(f"only IN over a list is supported: {sql}")
        self.sql = sql
        columns = compiled._result_columns
        self.returns = bool(columns)
        self.row = namedtuple("Row", [c[0] for c in columns], rename=True) if columns else None  # type: ignore[misc]
        procs = [c[3]._cached_result_processor(dialect, None) for c in columns]
        self.results = tuple(procs) if any(procs) else None
        self.many_sql: str | None = None
        self.many_binds: Any = None
        if isinstance(stmt, Insert) and dialect.paramstyle == "numeric_dollar" and keys is not None:
            self._unnest(compiled, dialect, stmt)

    def _unnest(self, compiled: SQLCompiler, dialect: Dialect, stmt: Insert) -> None:
        """PostgreSQL: many rows in one statement (one executor run, not one per row as executemany does),
        inserted in the order given; with RETURNING, the rows come back in that order."""
        table = stmt.table
        if self.returns:
            ids = [c.name for c in table.primary_key.columns]
            if ids != ["id"] or compiled._result_columns[0][0] != "id":
                return  # (the returned rows are put back in order by their new ids)
        binds = [b for b in self.binds if b[0] in table.c]
        if len(binds) != len(self.binds) or stmt._multi_values or getattr(stmt, "_post_values_clause", None) is not None:
            return  # (values() with expressions: such a statement runs row by row)
        cols = ", ".join(dialect.identifier_preparer.quote(table.c[name].name) for name, _, _ in binds)
        arrays = ", ".join(
            f"${i}::{dialect.type_compiler_instance.process(table.c[name].type)}[]"
            for i, (name, _, _) in enumerate(binds, 1)
        )
        returning = compiled.string[compiled.string.rindex(" RETURNING ") :] if self.returns else ""
        # Ids from the table's sequence rise in the order the rows are inserted, which ORDER BY fixes: sorting
        # the returned ids gives them in parameter order (the rule SQLAlchemy's own sorted insertmanyvalues uses).
        self.many_sql = (
            f"INSERT INTO {dialect.identifier_preparer.format_table(table)} ({cols}) "
            f"SELECT {cols} FROM unnest({arrays}) WITH ORDINALITY AS imp({cols}, imp_order) ORDER BY imp_order"
            f"{returning}"
        )
        self.many_binds = binds

    def args(self, params: Any) -> list[Any]:
        out = []
        for name, fallback, proc in self.binds:
            value = params.get(name, fallback) if params else fallback
            if value.__class__ is _Default:
                value = value.fn()
            elif value is _MISSING:
                raise DriverStatementError(f"no value for parameter {name!r} of: {self.sql}")
            if proc is not None:
                value = [proc(v) for v in value] if name in self.expanding else proc(value)
            elif name in self.expanding:
                value = list(value)
            out.append(value)
        return out

    def build(self, records: Sequence[Any]) -> list[Any]:
        row, procs = self.row, self.results
        assert row is not None
        if procs is None:
            return [row(*record) for record in records]
        return [row(*(p(v) if p is not None else v for p, v in zip(procs, record))) for record in records]


class _Default:
    """A column's Python-side default, for a row that gives no value (as SQLAlchemy fills it in)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn


def _python_defaults(stmt: Insert) -> dict[str, _Default]:
    found: dict[str, _Default] = {}
    for column in stmt.table.c:
        default = column.default
        if default is None:
            continue
        if default.is_scalar:
            found[column.key] = _Default(lambda value=default.arg: value)
        elif default.is_callable:
            # SQLAlchemy wraps a default function to take the execution context; ours need none.
            found[column.key] = _Default(lambda fn=default.arg: fn(None))
    return found


def _fallback(name: str, literal: Any, defaults: dict[str, _Default], compiled: SQLCompiler) -> Any:
    """What a placeholder gets when the caller's parameters do not name it."""
    if literal is not None:
        return literal  # a value written into the statement (`kind != 'internal'`)
    return defaults.get(name, _MISSING)


class Engine:
    """What callers read from `conn.engine`: its URL."""

    __slots__ = ("url",)

    def __init__(self, url: URL) -> None:
        self.url = url


class DriverConnection:
    """The shared part: the compile cache. Subclasses run the SQL on one driver connection."""

    def __init__(self, dialect: Dialect, url: URL) -> None:
        self.dialect = dialect
        self.engine = Engine(url)
        self._cache: dict[tuple[int, tuple[str, ...] | None], Compiled] = {}

    def compiled(self, stmt: Any, params: Any) -> Compiled:
        keys = tuple(params) if params and stmt.is_dml else None
        key = (id(stmt), keys)
        found = self._cache.get(key)
        if found is None or found.stmt is not stmt:
            if len(self._cache) >= CACHE_MAX:
                self._cache.clear()
            found = self._cache[key] = Compiled(stmt, self.dialect, keys)
        return found

    def execute(self, stmt: Any, params: Any = None) -> Rows:
        """Run one Core statement: `params` a dict, or a list of dicts (one row each)."""
        if isinstance(params, list):
            if not params:
                return Rows([], 0)
            compiled = self.compiled(stmt, params[0])
            return self._many(compiled, params)
        compiled = self.compiled(stmt, params)
        return self._one(compiled, compiled.args(params))

    def exec_driver_sql(self, sql: str) -> Rows:
        raise NotImplementedError

    def _one(self, compiled: Compiled, args: list[Any]) -> Rows:
        raise NotImplementedError

    def _many(self, compiled: Compiled, params: list[Any]) -> Rows:
        raise NotImplementedError


class SqliteDriver(DriverConnection):
    """On one pysqlite connection, inside the transaction its owner began."""

    def __init__(self, dbapi_conn: Any, dialect: Dialect, url: URL) -> None:
        super().__init__(dialect, url)
        self.raw = dbapi_conn
        self._expanded: dict[tuple[str, tuple[int, ...]], str] = {}

    def _sql(self, compiled: Compiled, args: list[Any]) -> tuple[str, list[Any]]:
        if not compiled.expanding:
            return compiled.sql, args
        flat: list[Any] = []
        sizes = []
        for (name, _, _), value in zip(compiled.binds, args):
            if name in compiled.expanding:
                values = list(value)
                sizes.append(len(values))
                flat.extend(values)
            else:
                flat.append(value)
        key = (compiled.sql, tuple(sizes))
        sql = self._expanded.get(key)
        if sql is None:
            counts = iter(sizes)
            sql = _POSTCOMPILE.sub(lambda _m: ", ".join("?" * n) if (n := next(counts)) else "NULL", compiled.sql)
            if len(self._expanded) >= CACHE_MAX:
                self._expanded.clear()
            self._expanded[key] = sql
        return sql, flat

    def exec_driver_sql(self, sql: str) -> Rows:
        return self._run(sql, [], None)

    def _one(self, compiled: Compiled, args: list[Any]) -> Rows:
        sql, args = self._sql(compiled, args)
        return self._run(sql, args, compiled)

    def _run(self, sql: str, args: Sequence[Any], compiled: Compiled | None) -> Rows:
        try:
            cur = self.raw.execute(sql, args)
            records = cur.fetchall()
        except self.dialect.dbapi.Error as exc:  # type: ignore[union-attr]
            raise _wrap(sql, args, exc, self.dialect.dbapi.Error) from exc  # type: ignore[union-attr]
        rows = compiled.build(records) if compiled is not None and compiled.row is not None else records
        return Rows(rows, cur.rowcount)

    def _many(self, compiled: Compiled, params: list[Any]) -> Rows:
        if compiled.returns or compiled.expanding:
            rows: list[Any] = []
            count = 0
            for one in params:
                result = self._one(compiled, compiled.args(one))
                rows.extend(result.rows)
                count += max(result.rowcount, 0)
            return Rows(rows, count)
        batch = [compiled.args(one) for one in params]
        try:
            cur = self.raw.executemany(compiled.sql, batch)
        except self.dialect.dbapi.Error as exc:  # type: ignore[union-attr]
            raise _wrap(compiled.sql, batch, exc, self.dialect.dbapi.Error) from exc  # type: ignore[union-attr]
        return Rows([], cur.rowcount)


class AsyncpgDriver(DriverConnection):
    """On one asyncpg connection from synchronous code running in a greenlet (`greenlet_spawn`).

    asyncpg keeps each statement prepared on its connection (its statement cache), so a statement is parsed
    and planned by PostgreSQL once per connection.
    """

    def __init__(self, raw: Any, dialect: Dialect, url: URL) -> None:
        super().__init__(dialect, url)
        self.raw = raw

    def _call(self, sql: str, args: Any, coro: Any) -> Any:
        from sqlalchemy.util import await_

        try:
            return await_(coro)
        except Exception as exc:
            raise _wrap_pg(sql, args, exc) from exc

    def exec_driver_sql(self, sql: str) -> Rows:
        return Rows(list(self._call(sql, (), self.raw.fetch(sql))), -1)

    def _one(self, compiled: Compiled, args: list[Any]) -> Rows:
        if compiled.returns:
            records = self._call(compiled.sql, args, self.raw.fetch(compiled.sql, *args))
            return Rows(compiled.build(records), len(records))
        status = self._call(compiled.sql, args, self.raw.execute(compiled.sql, *args))
        return Rows([], _rowcount(status))

    def _many(self, compiled: Compiled, params: list[Any]) -> Rows:
        if compiled.returns:
            if compiled.many_sql is not None and len(params) > 1:
                columns: list[list[Any]] = [[] for _ in compiled.many_binds]
                for one in params:
                    for column, value in zip(columns, compiled.args(one)):
                        column.append(value)
                records = self._call(compiled.many_sql, columns, self.raw.fetch(compiled.many_sql, *columns))
                if len(records) != len(params):
                    raise DriverStatementError(f"{len(params)} rows inserted but {len(records)} returned")
                return Rows(compiled.build(sorted(records, key=lambda r: r[0])), len(records))
            rows: list[Any] = []
            for one in params:
                rows.extend(self._one(compiled, compiled.args(one)).rows)
            return Rows(rows, len(rows))
        if compiled.many_sql is not None and len(params) > 1:
            columns = [[] for _ in compiled.many_binds]
            for one in params:
                for column, value in zip(columns, compiled.args(one)):
                    column.append(value)
            status = self._call(compiled.many_sql, columns, self.raw.execute(compiled.many_sql, *columns))
            return Rows([], _rowcount(status))
        batch = [compiled.args(one) for one in params]
        self._call(compiled.sql, batch, self.raw.executemany(compiled.sql, batch))
        return Rows([], -1)


def _rowcount(status: str) -> int:
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else -1


def _wrap(sql: str, args: Any, exc: Exception, base: type[Exception]) -> DBAPIError:
    return DBAPIError.instance(sql, args, exc, base, hide_parameters=True)  # type: ignore[return-value]


def _wrap_pg(sql: str, args: Any, exc: Exception) -> Exception:
    """asyncpg's exceptions as SQLAlchemy raises them through its asyncpg dialect (same classes, same orig)."""
    import asyncpg

    from sqlalchemy import exc as sa_exc

    if isinstance(exc, asyncpg.IntegrityConstraintViolationError):
        kind: type[DBAPIError] = sa_exc.IntegrityError
    elif isinstance(exc, (asyncpg.PostgresError,)):
        kind = sa_exc.OperationalError if getattr(exc, "sqlstate", "").startswith(("40", "53", "57", "08")) else sa_exc.DBAPIError
    elif isinstance(exc, (asyncpg.InterfaceError, OSError, ConnectionError)):
        return sa_exc.OperationalError(sql, None, exc, hide_parameters=True, connection_invalidated=True)
    else:
        return exc
    return kind(sql, None, exc, hide_parameters=True)
