"""Many rows into one table through the driver's executemany: the hot paths' bulk inserts on SQLite; and
look-ups of many rows by a two-column key.

SQLAlchemy's executemany processes every row's parameters through the compiled statement (type processors,
parameter construction), which costs more than SQLite's own insert. Here the statement is compiled once per
table and column set, each column's bind processor is looked up once, and the rows go to the driver as
tuples. Values are converted exactly as SQLAlchemy would (the same bind processors), so what is stored is
the same. Other databases take SQLAlchemy's ordinary path.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Connection, Table, and_, bindparam, insert, or_, tuple_

_Compiled = tuple[str, tuple[str, ...], tuple[Callable[[Any], Any] | None, ...]]
_compiled: dict[tuple[str, str, tuple[str, ...]], _Compiled] = {}
_inserts: dict[str, Any] = {}


def _compile(conn: Connection, table: Table, columns: tuple[str, ...]) -> _Compiled:
    key = (conn.dialect.name, table.name, columns)
    found = _compiled.get(key)
    if found is None:
        compiled = insert(table).values({name: bindparam(name) for name in columns}).compile(dialect=conn.dialect)
        order = tuple(compiled.positiontup or ())
        if sorted(order) != sorted(columns):
            raise RuntimeError(f"cannot bind {table.name}'s columns positionally on {conn.dialect.name}")
        processors = tuple(table.c[name].type._cached_bind_processor(conn.dialect) for name in order)
        found = _compiled[key] = (str(compiled), order, processors)
    return found


def _converted(values: list[Any], process: Callable[[Any], Any]) -> list[Any]:
    """`process` over the values, each distinct timestamp once (a batch's rows mostly share theirs)."""
    done: dict[Any, Any] = {}
    out = []
    for v in values:
        if v is None:
            out.append(None)
        elif isinstance(v, dt.datetime | dt.date):
            out.append(done[v] if v in done else done.setdefault(v, process(v)))
        else:
            out.append(process(v))
    return out


def insert_rows(conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """INSERT `rows` (dicts with the same keys) into `table` inside the caller's transaction."""
    if not rows:
        return
    if conn.dialect.name != "sqlite" or not isinstance(conn, Connection):
        # PostgreSQL through SQLAlchemy, or the hot path's driver connection (which has its own bulk path):
        # one statement object per table, so a compiled form is reused.
        stmt = _inserts.get(table.name)
        if stmt is None:
            stmt = _inserts[table.name] = insert(table)
        conn.execute(stmt, list(rows))
        return
    sql, order, processors = _compile(conn, table, tuple(rows[0]))
    columns = []
    for name, process in zip(order, processors, strict=True):
        values = [row[name] for row in rows]
        if process is not None:
            values = _converted(values, process)
        columns.append(values)
    conn.exec_driver_sql(sql, list(zip(*columns, strict=True)))


def pairs_in(conn: Connection, left: Any, right: Any, pairs: Sequence[tuple[Any, Any]]) -> ColumnElement[bool]:
    """`(left, right) IN pairs`, written so that the database searches its index on (left, right) once per pair.

    SQLite (3.40) answers a row-value IN list by scanning the whole index, which grows with the table; an OR
    of equalities is searched pair by pair (MULTI-INDEX OR). PostgreSQL searches either form.
    """
    if conn.dialect.name == "sqlite":
        return or_(*(and_(left == a, right == b) for a, b in pairs))
    return tuple_(left, right).in_(list(pairs))


__all__ = ["insert_rows", "pairs_in"]
