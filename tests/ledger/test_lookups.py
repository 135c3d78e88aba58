"""Hot-path look-ups: each caller gets its own row; on PostgreSQL look-ups that arrive together share statements."""

from __future__ import annotations

import asyncio

from sqlalchemy import select

from processor.events import advance_consumer
from processor.events.outbox import event_consumers
from processor.ledger import Store
from processor.ledger.interface import Lookup

POSITION_BY_NAME = Lookup("consumer position", select(event_consumers.c.position), event_consumers.c.name,
                          lambda row: row[0])


async def test_look_ups_that_arrive_together_each_get_their_own_row(store: Store) -> None:
    for i in range(40):
        await store.run_write(advance_consumer, f"lookup-{i}", 1000 + i)
    before = store.lookup_statements
    wanted = [[f"lookup-{i % 40}"] if i % 5 else ["nobody", f"lookup-{i % 40}"] for i in range(300)]
    wanted += [["nobody"], ["nobody", "nothing"]]
    found = await asyncio.gather(*(store.lookup(POSITION_BY_NAME, keys) for keys in wanted))
    assert found[:300] == [1000 + i % 40 for i in range(300)], "each caller has the row of its own key"
    assert found[300:] == [None, None], "no row: None"
    assert await store.lookup(POSITION_BY_NAME, []) is None
    if before is not None:  # PostgreSQL
        asked, statements = store.lookup_statements
        assert asked - before[0] == len(wanted)
        assert statements - before[1] <= len(wanted) // 10, "look-ups waiting together went in shared statements"
        # Alone, a look-up goes at once, in a statement of its own.
        assert await store.lookup(POSITION_BY_NAME, ["lookup-7"]) == 1007
        assert store.lookup_statements == (asked + 1, statements + 1)
