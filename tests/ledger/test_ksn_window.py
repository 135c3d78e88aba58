"""A terminal's DUKPT counters: each accepted once, in any order within the window, never a replay."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import insert

from processor.ledger import Store
from processor.ledger.apply import KSN_WINDOW, claim_ksn_counter
from processor.ledger.models import merchants, terminals

_ids = itertools.count(1)


def _new_terminal(conn: Any) -> str:
    n = next(_ids)
    merchant = conn.execute(insert(merchants).values(merchant_id=f"M{n:014d}", name="shop", location="", mcc="5411")
                            .returning(merchants.c.id)).scalar_one()
    terminal_id = f"T{n:07d}"
    conn.execute(insert(terminals).values(terminal_id=terminal_id, merchant_id=merchant, status="active"))
    return terminal_id


def _expected(counters: list[int]) -> list[bool]:
    used: set[int] = set()
    out = []
    for c in counters:
        ok = c not in used and (not used or c > max(used) - KSN_WINDOW)
        out.append(ok)
        if ok:
            used.add(c)
    return out


def test_counters_are_accepted_once_within_the_window(db_url: str) -> None:
    loop = asyncio.new_event_loop()
    store = loop.run_until_complete(Store.open(db_url))

    @settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(st.integers(min_value=1, max_value=300), min_size=1, max_size=40))
    def check(counters: list[int]) -> None:
        tid = loop.run_until_complete(store.run_write(_new_terminal))
        got = [loop.run_until_complete(store.run_write(claim_ksn_counter, tid, c)) for c in counters]
        assert got == _expected(counters)

    try:
        check()
        # The cases by name: in order, out of order, replayed, too old.
        tid = loop.run_until_complete(store.run_write(_new_terminal))
        claim = lambda c: loop.run_until_complete(store.run_write(claim_ksn_counter, tid, c))  # noqa: E731
        assert [claim(c) for c in (5, 7, 6, 7, 5, 100, 100 - KSN_WINDOW, 100 - KSN_WINDOW + 1)] == [
            True, True, True, False, False, True, False, True
        ]
    finally:
        loop.run_until_complete(store.close())
        loop.close()
