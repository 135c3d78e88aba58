"""What the operator CLI prints: aligned tables for people (rich), one JSON document for machines (--json).

A command returns plain data (a dict, a list of dicts or a prepared text); only this module decides how it
looks. For people, an amount in minor units (`ledger_minor` next to `currency`) is shown as `100.00 EUR`
under its plain name (`ledger`), and a JSON value never appears as a blob.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from rich import box
from rich.console import Console
from rich.table import Table

from processor.iso8583.currency import SUPPORTED, format_amount

# Wide enough for a key block or a path in one line when the output goes to a file or a pipe.
_PIPE_WIDTH = 200


def console(stream: TextIO | None = None) -> Console:
    """A console on `stream` (stdout by default): the terminal's width, or wide and plain when redirected."""
    stream = stream or sys.stdout
    tty = stream.isatty()
    return Console(file=stream, width=None if tty else _PIPE_WIDTH, no_color=not tty, highlight=False, soft_wrap=False)


def print_result(result: Any, as_json: bool, stream: TextIO | None = None) -> None:
    """Print a command's result: one JSON document, or text for people."""
    stream = stream or sys.stdout
    if as_json:
        stream.write(json.dumps(result, default=str) + "\n")
        return
    out = console(stream)
    if isinstance(result, str):
        out.print(result, markup=False, highlight=False)
    elif isinstance(result, list):
        out.print(rows_table(result) if result else "(none)")
    elif isinstance(result, dict):
        _print_dict(out, result)
    else:
        out.print(str(result), markup=False)


def for_people(row: dict[str, Any], currency: str | None = None) -> dict[str, Any]:
    """A row with its minor-unit amounts shown in their currency (`ledger_minor` -> `ledger: 100.00 EUR`);
    `currency` is the enclosing record's, for rows that do not name their own."""
    currency = row.get("currency") or currency
    shown: dict[str, Any] = {}
    for key, value in row.items():
        if key.endswith("_minor") and isinstance(value, int) and not isinstance(value, bool) and currency in SUPPORTED:
            name = key[: -len("_minor")]
            if name not in row:  # a row may already carry the formatted amount under the plain name
                shown[name] = format_amount(value, currency)
            continue
        shown[key] = value
    return shown


def cell(value: Any) -> str:
    """One value as a person reads it."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        if all(not isinstance(v, (dict, list)) for v in value):
            return ", ".join(cell(v) for v in value) or "-"
        return f"{len(value)} item(s)"
    if isinstance(value, dict):
        return ", ".join(f"{k}={cell(v)}" for k, v in value.items()) or "-"
    return str(value)


def rows_table(rows: list[dict[str, Any]], title: str | None = None, currency: str | None = None) -> Table:
    """A list of records as one aligned table; amounts right-aligned in their currency."""
    people = [for_people(row, currency) if isinstance(row, dict) else {"value": row} for row in rows]
    columns: list[str] = []
    for row in people:
        columns += [key for key in row if key not in columns]
    table = Table(box=box.SIMPLE_HEAD, title=title, title_justify="left", pad_edge=False, show_edge=False)
    for column in columns:
        numeric = all(_is_amount_or_number(row.get(column)) for row in people)
        table.add_column(column, justify="right" if numeric else "left", overflow="fold")
    for row in people:
        table.add_row(*(cell(row.get(column)) for column in columns))
    return table


def _is_amount_or_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)) or value is None:
        return True
    return isinstance(value, str) and value[-3:] in SUPPORTED and value[:-4].lstrip("-").replace(".", "").isdigit()


def _print_dict(out: Console, result: dict[str, Any]) -> None:
    people = for_people(result)
    grid = Table.grid(padding=(0, 2))
    grid.add_column(justify="right", style="bold")
    grid.add_column(overflow="fold")
    nested: list[tuple[str, list[dict[str, Any]]]] = []
    for key, value in people.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            nested.append((key, value))
            continue
        if isinstance(value, dict) and value and any(isinstance(v, (dict, list)) for v in value.values()):
            nested.append((key, [value]))
            continue
        if isinstance(value, dict):
            value = for_people(value, result.get("currency"))
        grid.add_row(key, cell(value))
    out.print(grid)
    for key, rows in nested:
        out.print()
        out.print(rows_table(rows, title=key, currency=result.get("currency")))


@contextlib.contextmanager
def progress(program: str) -> Iterator[Callable[[str, int, int | None], None]]:
    """A `progress(phase, done, total)` callback on standard error: rich bars, one a phase, on a terminal;
    elsewhere (a log, CI) a plain line a phase at most every 2 s and when it completes."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    err = Console(stderr=True)
    if not err.is_terminal:
        last: dict[str, float] = {}

        def plain(phase: str, done: int, total: int | None) -> None:
            now = time.monotonic()
            if now - last.get(phase, -2.0) >= 2 or (total is not None and done >= total):
                last[phase] = now
                print(f"{program}: {phase} {done:,}" + (f" of {total:,}" if total else ""), file=sys.stderr, flush=True)

        yield plain
        return
    with Progress(
        TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err, transient=False,
    ) as bar:
        tasks: dict[str, Any] = {}

        def update(phase: str, done: int, total: int | None) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(phase, total=total)
            bar.update(tasks[phase], completed=done, total=total)

        yield update
