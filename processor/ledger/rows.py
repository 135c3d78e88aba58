"""Many rows into one table through the driver's executemany: the hot paths' bulk inserts on SQLite (and
look-ups of many rows by a two-column key).

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

from sqlalchemy import Connection, Table, bindparam, insert, select, tuple_

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


# SQLite parses an OR chain into a tree as deep as the chain; its expression depth limit is 1000.
_PAIRS_PER_QUERY = 200
_pair_sql: dict[tuple[str, tuple[str, ...], str, str, int], str] = {}


def rows_by_pairs(conn: Connection, table: Table, columns: Sequence[str], key: tuple[str, str], pairs: Sequence[tuple[Any, Any]]) -> list[Any]:
    """The `columns` of the rows of `table` whose two-column `key` is one of `pairs` (an index on `key` serves it).

    SQLite (3.40) answers `(a, b) IN (...)` by scanning the whole index, which grows with the table; an OR of
    equalities searches it once per pair (MULTI-INDEX OR). That query is written as driver SQL (building the
    OR as SQLAlchemy expressions costs more than the query), so the columns must need no result conversion
    (integers and strings). PostgreSQL takes the row-value IN.
    """
    if not pairs:
        return []
    left, right = table.c[key[0]], table.c[key[1]]
    if conn.dialect.name != "sqlite":
        return list(conn.execute(select(*(table.c[c] for c in columns)).where(tuple_(left, right).in_(list(pairs)))))
    out: list[Any] = []
    for start in range(0, len(pairs), _PAIRS_PER_QUERY):
        chunk = pairs[start:start + _PAIRS_PER_QUERY]
        cache_key = (table.name, tuple(columns), key[0], key[1], len(chunk))
        sql = _pair_sql.get(cache_key)
        if sql is None:
            quote = conn.dialect.identifier_preparer.quote
            for name in columns:
                if table.c[name].type._cached_result_processor(conn.dialect, None) is not None:
                    raise TypeError(f"{table.name}.{name} needs converting when read; rows_by_pairs reads it raw")
            match = f"({quote(left.name)} = ? AND {quote(right.name)} = ?)"
            sql = _pair_sql[cache_key] = (f"SELECT {', '.join(quote(c) for c in columns)} FROM {quote(table.name)} "
                                          f"WHERE {' OR '.join([match] * len(chunk))}")
        out += conn.exec_driver_sql(sql, tuple(v for pair in chunk for v in pair)).all()
    return out


__all__ = ["insert_rows", "rows_by_pairs"]
