"""Many rows in one driver call: settlement writes thousands of rows per chunk, and SQLAlchemy's per-row
statement compilation and bind processing cost more than the database's own work.

`insert_rows` and `update_rows` hand the driver one statement and a list of tuples (`executemany`: the
C loop of sqlite3, asyncpg's pipelined prepared statement on PostgreSQL). On PostgreSQL `insert_rows` uses
COPY instead (asyncpg's `copy_records_to_table`, in the caller's transaction): one stream rather than a
statement per row. Values go through each column's own bind processor once, so datetimes are stored
exactly as the ORM stores them.

`refresh_statistics` re-analyzes the PostgreSQL tables a bulk step reads when many rows changed since
their last ANALYZE: a day's million rows written since, and planned on stale statistics, turn keyset
pages into full scans.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Connection, Table, func, select, text
from sqlalchemy.util import await_only

COPY_TIMEOUT_S = 120
# Rows changed since the last ANALYZE above which `refresh_statistics` analyzes a table again.
STALE_ROWS = 10_000

# settlement_items as the day's claim and the clearing ingest write them (tuples in this order).
ITEM_COLUMNS = (
    "source_key", "business_date", "origin_date", "side", "kind", "party", "terminal_id", "mcc", "entry_mode", "auth_id",
    "card_id", "amount_minor", "fee_minor", "interchange_minor", "currency", "captured_at",
)


def _placeholders(conn: Connection, count: int, start: int = 1) -> list[str]:
    style = conn.dialect.paramstyle
    if style == "qmark":
        return ["?"] * count
    if style == "numeric_dollar":
        return [f"${i}" for i in range(start, start + count)]
    if style == "format":
        return ["%s"] * count
    raise NotImplementedError(f"parameter style {style} is not supported by bulk writes")


def _processors(conn: Connection, table: Table, columns: Sequence[str]) -> list[Callable[[Any], Any] | None]:
    return [table.c[name].type.dialect_impl(conn.dialect).bind_processor(conn.dialect) for name in columns]


def _bound(rows: Sequence[Sequence[Any]], processors: list[Callable[[Any], Any] | None]) -> list[tuple[Any, ...]]:
    active = [(i, p) for i, p in enumerate(processors) if p is not None]
    if not active:
        return [tuple(row) for row in rows]
    out = []
    for row in rows:
        values = list(row)
        for i, process in active:
            values[i] = process(values[i])
        out.append(tuple(values))
    return out


def insert_rows(conn: Connection, table: Table, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """INSERT `rows` (tuples in the order of `columns`) into `table` in one executemany."""
    if not rows:
        return
    if conn.dialect.driver == "asyncpg":
        raw = conn.connection.driver_connection
        if not raw.is_in_transaction():
            conn.exec_driver_sql("SELECT 1")  # the adapter begins its transaction at its first statement
        await_only(raw.copy_records_to_table(table.name, records=_bound(rows, _processors(conn, table, columns)),
                                             columns=list(columns), timeout=COPY_TIMEOUT_S))
        return
    quote = conn.dialect.identifier_preparer.quote
    sql = (
        f"INSERT INTO {quote(table.name)} ({', '.join(quote(c) for c in columns)}) "
        f"VALUES ({', '.join(_placeholders(conn, len(columns)))})"
    )
    conn.exec_driver_sql(sql, _bound(rows, _processors(conn, table, columns)))


def update_rows(
    conn: Connection, table: Table, set_sql: str, set_columns: Sequence[str], where_sql: str, where_columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
) -> int:
    """UPDATE `table` once per row: `set_sql` and `where_sql` are format strings whose `{}` are the
    placeholders of `set_columns` then `where_columns`, in order (values bound by those columns' types).
    Returns the rows changed, or -1 when the driver does not say."""
    if not rows:
        return 0
    if conn.dialect.driver == "asyncpg":
        return _update_from_arrays(conn, table, set_sql, set_columns, where_sql, where_columns, rows)
    marks = _placeholders(conn, len(set_columns) + len(where_columns))
    sql = f"UPDATE {conn.dialect.identifier_preparer.quote(table.name)} SET " + set_sql.format(*marks[: len(set_columns)])
    sql += " WHERE " + where_sql.format(*marks[len(set_columns) :])
    result = conn.exec_driver_sql(sql, _bound(rows, _processors(conn, table, [*set_columns, *where_columns])))
    return result.rowcount


def refresh_statistics(conn: Connection, tables: Sequence[Table]) -> list[str]:
    """ANALYZE those of `tables` (PostgreSQL) with more than STALE_ROWS rows changed since their last
    analysis; the names analyzed. SQLite plans from its indexes alone: nothing to do."""
    if conn.dialect.name != "postgresql":
        return []
    names = [t.name for t in tables]
    stale = [
        name for name, in conn.execute(
            text("SELECT relname FROM pg_stat_user_tables WHERE relname = ANY(:names) AND n_mod_since_analyze > :limit"
                 " ORDER BY relname"),
            {"names": names, "limit": STALE_ROWS},
        )
    ]
    quote = conn.dialect.identifier_preparer.quote
    for name in stale:
        conn.exec_driver_sql(f"ANALYZE {quote(name)}")
    return stale


def _update_from_arrays(
    conn: Connection, table: Table, set_sql: str, set_columns: Sequence[str], where_sql: str, where_columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
) -> int:
    """`update_rows` on PostgreSQL as one statement: UPDATE ... FROM unnest(one array per column)."""
    names = [*set_columns, *where_columns]
    values = [f"v.c{i}" for i in range(len(names))]
    arrays = ", ".join(f"${i + 1}::{table.c[name].type.compile(conn.dialect)}[]" for i, name in enumerate(names))
    # v's columns are c0, c1, ...: the statement's own column names still mean the target's.
    sql = (
        f"UPDATE {conn.dialect.identifier_preparer.quote(table.name)} SET {set_sql.format(*values[: len(set_columns)])} "
        f"FROM unnest({arrays}) AS v({', '.join(f'c{i}' for i in range(len(names)))}) "
        f"WHERE {where_sql.format(*values[len(set_columns) :])}"
    )
    bound = _bound(rows, _processors(conn, table, names))
    return conn.exec_driver_sql(sql, tuple(list(column) for column in zip(*bound, strict=True))).rowcount


def allocate_ids(conn: Connection, table: Table, count: int) -> list[int]:
    """`count` new primary keys of `table`, as its inserts would take them, for rows inserted with their id.

    PostgreSQL: from the table's sequence. SQLite: the rowids after the largest, which is what SQLite
    itself would give (no AUTOINCREMENT); the caller's transaction holds the write lock (BEGIN IMMEDIATE),
    so no one else takes them meanwhile."""
    if count <= 0:
        return []
    if conn.dialect.name == "postgresql":
        return list(conn.execute(
            text("SELECT nextval(pg_get_serial_sequence(:t, 'id')) FROM generate_series(1, :n)"),
            {"t": table.name, "n": count},
        ).scalars())
    first = (conn.execute(select(func.max(table.c.id))).scalar() or 0) + 1
    return list(range(first, first + count))
