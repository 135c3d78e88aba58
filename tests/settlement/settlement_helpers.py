"""Placing requests in time (give auths rows the capture time a test needs); the simulated network EuroNet."""

from __future__ import annotations

import datetime as dt
from typing import Any


def _move(conn: Any, auth_ids: list[int], at: dt.datetime) -> None:
    from sqlalchemy import update

    from processor.ledger.models import auths, holds

    conn.execute(update(auths).where(auths.c.id.in_(auth_ids)).values(created_at=at))
    conn.execute(update(holds).where(holds.c.auth_id.in_(auth_ids)).values(created_at=at))


async def captured_at(store: Any, stan_rrns: list[str], at: dt.datetime) -> None:
    """Give the auths rows with these RRNs the capture time `at` (as if the requests had come then)."""
    from sqlalchemy import select

    from processor.ledger.models import auths

    def body(conn: Any) -> None:
        ids = list(conn.execute(select(auths.c.id).where(auths.c.rrn.in_(stan_rrns))).scalars())
        assert ids, f"no auths with RRN {stan_rrns}"
        _move(conn, ids, at)

    await store.run_write(body)


async def all_captured_at(store: Any, at: dt.datetime) -> None:
    from sqlalchemy import select

    from processor.ledger.models import auths

    def body(conn: Any) -> None:
        _move(conn, list(conn.execute(select(auths.c.id)).scalars()), at)

    await store.run_write(body)


async def euronet(issuer: Any, merchants: int = 3) -> Any:
    """EuroNet (acquirer 400001) registered at the issuer with its key and its merchants, as its simulator."""
    from processor.settlement.config import add_network, add_network_merchant
    from terminal_sim.network import AcquiringNetwork

    store = issuer.running.store
    key = await add_network(store, issuer.running.hsm, issuer.running.engine.keys, "400001", "EuroNet")
    network = AcquiringNetwork("400001", key, merchants=merchants)
    for merchant in network.registrations():
        await add_network_merchant(store, "400001", **merchant)
    return network
