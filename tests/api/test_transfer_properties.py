"""Concurrent transfers between the same accounts never lose or create money (hypothesis, SQLite and PostgreSQL).

Two stores on one database, each with its own transfer desk, stand for two API processes. Random transfer
sequences (payments by handle, paying requests, moves between a person's own accounts, some overdrawing,
some to frozen accounts) are sent through both at once; afterwards the answers, a model of the balances and
the ledger invariants must all agree.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processor.api.payments import DAILY_COUNT_CONFIG, DAILY_LIMIT_CONFIG, Transfer, TransferDesk
from processor.issuing import cardholders, config
from processor.ledger import Store, accounts, invariants

EXAMPLES = int(os.environ.get("TRANSFER_EXAMPLES", "12"))

transfer_specs = st.lists(
    st.tuples(
        st.sampled_from(["p2p", "p2p", "p2p", "own"]),
        st.integers(min_value=0, max_value=3),  # payer
        st.integers(min_value=0, max_value=3),  # payee (p2p) / direction (own)
        st.integers(min_value=1, max_value=4_000),
        st.integers(min_value=0, max_value=1),  # which desk
        st.booleans(),  # repeat the same Idempotency-Key
    ),
    min_size=1,
    max_size=40,
)


async def _people(store: Store, deposits: list[int], frozen: int | None) -> list[dict[str, Any]]:
    people = []
    for n, deposit in enumerate(deposits):
        tag = secrets.token_hex(4)
        cid = await cardholders.create(store, f"P {tag}", f"p{tag}")
        checking = await accounts.open_account(store, cid, "checking", "EUR")
        savings = await accounts.open_account(store, cid, "savings", "EUR")
        if deposit:
            await accounts.deposit(store, checking, deposit, reference="test")
        if n == frozen:
            await accounts.set_status(store, checking, "frozen")
        people.append({"id": cid, "handle": f"p{tag}", "checking": checking, "savings": savings, "frozen": n == frozen})
    return people


async def _balances(store: Store, ids: list[int]) -> dict[int, int]:
    return {i: (await accounts.get(store, i)).ledger_minor for i in ids}


def test_concurrent_transfers_keep_money_and_invariants(db_url: str) -> None:
    loop = asyncio.new_event_loop()
    stores = [loop.run_until_complete(Store.open(db_url)) for _ in range(2)]
    loop.run_until_complete(config.put(stores[0], DAILY_LIMIT_CONFIG, str(10**9)))
    loop.run_until_complete(config.put(stores[0], DAILY_COUNT_CONFIG, str(10**6)))
    desks = [TransferDesk(s, max_batch=8, writers=1 if s.dialect == "sqlite" else 3) for s in stores]
    for desk in desks:
        loop.run_until_complete(desk.start())

    async def play(deposits: list[int], frozen: int | None, specs: list[tuple[Any, ...]]) -> None:
        people = await _people(stores[0], deposits, frozen)
        accounts = [p["checking"] for p in people] + [p["savings"] for p in people]
        before = await _balances(stores[0], accounts)
        jobs, keys = [], []
        for n, (kind, payer, payee, amount, desk, repeat) in enumerate(specs):
            who = people[payer % len(people)]
            key = keys[-1][1] if repeat and keys and keys[-1][0] == (kind, payer, payee, amount) else f"k{n}-{secrets.token_hex(3)}"
            keys.append(((kind, payer, payee, amount), key))
            if kind == "own":
                src, dst = (who["checking"], who["savings"]) if payee % 2 == 0 else (who["savings"], who["checking"])
                t = Transfer(kind="own", payer_id=who["id"], principal=f"ch:{who['id']}", idem_key=key, rhash=f"{kind}{payer}{payee}{amount}",
                             amount_minor=amount, from_account_id=src, to_account_id=dst)
            else:
                t = Transfer(kind="p2p", payer_id=who["id"], principal=f"ch:{who['id']}", idem_key=key, rhash=f"{kind}{payer}{payee}{amount}",
                             amount_minor=amount, currency="EUR", payee_handle=people[payee % len(people)]["handle"])
            jobs.append((t, desks[desk]))
        answers = await asyncio.gather(*(desk.submit(t) for t, desk in jobs))

        expected = dict(before)
        applied: dict[tuple[str, str], Any] = {}
        for (t, _), answer in zip(jobs, answers, strict=True):
            k = (t.principal, t.idem_key)
            if answer.status == 201 and not answer.replayed and k not in applied:
                applied[k] = answer.body
                if t.kind == "own":
                    expected[t.from_account_id] -= t.amount_minor
                    expected[t.to_account_id] += t.amount_minor
                else:
                    src = next(p for p in people if p["id"] == t.payer_id)["checking"]
                    dst = next(p for p in people if p["handle"] == t.payee_handle)["checking"]
                    expected[src] -= t.amount_minor
                    expected[dst] += t.amount_minor
            if k in applied and answer.status == 201:
                assert answer.body == applied[k], "a repeated key got a different answer"
            if answer.status == 422:
                assert answer.body["error"]["code"] in {"insufficient_funds", "account_not_open", "recipient_cannot_receive",
                                                        "cannot_pay_yourself"}
        after = await _balances(stores[0], accounts)
        assert after == expected, "balances differ from the answers given"
        assert sum(after.values()) == sum(before.values()), "money was created or lost"
        assert all(v >= 0 for v in after.values())
        frozen_ids = {p["checking"] for p in people if p["frozen"]}
        assert all(after[i] == before[i] for i in frozen_ids), "a frozen account sent or received"
        codes = Counter(a.status for a in answers)
        assert codes[500] == 0
        assert await invariants.check(stores[1]) == []

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(
        deposits=st.lists(st.integers(min_value=0, max_value=10_000), min_size=2, max_size=4),
        frozen=st.one_of(st.none(), st.integers(min_value=0, max_value=3)),
        specs=transfer_specs,
    )
    def run(deposits: list[int], frozen: int | None, specs: list[tuple[Any, ...]]) -> None:
        loop.run_until_complete(play(deposits, frozen, specs))

    try:
        run()
    finally:
        for desk in desks:
            loop.run_until_complete(desk.close())
        for store in stores:
            loop.run_until_complete(store.close())
        loop.close()
