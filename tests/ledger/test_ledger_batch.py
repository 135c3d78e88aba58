"""A batch answers exactly as its operations applied one at a time, in order.

On PostgreSQL the plain holds and debits of a batch are applied a few statements at a time (DUKPT counters
claimed together, funds taken together, holds written together); these tests hold that to the one-by-one
answers, with the same accounts, terminals and counters, on both databases.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ledger_helpers import Funded, healthy, op, open_funded

from processor import issuing, ledger
from processor.ledger import Store, ops

KINDS = ["hold", "debit", "hold_partial", "credit", "reverse", "replay", "wrong_pin", "chip"]

specs = st.lists(
    st.tuples(
        st.sampled_from(KINDS),
        st.integers(min_value=0, max_value=2),  # which account
        st.integers(min_value=1, max_value=900),  # amount
        st.integers(min_value=0, max_value=1),  # which terminal
        st.integers(min_value=1, max_value=12),  # DUKPT counter (repeats and steps back are replays)
        st.integers(min_value=0, max_value=30),  # which earlier request (reversals, replays)
    ),
    min_size=2,
    max_size=24,
)


async def _world(store: Store) -> tuple[list[Funded], list[str]]:
    """Three accounts of 1,000 (the third frozen), and two terminals of a new merchant."""
    accounts = [await open_funded(store, 1_000) for _ in range(3)]
    await ledger.accounts.set_status(store, accounts[2].account_id, "frozen")
    merchant = f"M{secrets.token_hex(6)}"[:15]
    await issuing.merchants.add(store, merchant_id=merchant, name="Shop", mcc="5411")
    terminals = []
    for _ in range(2):
        terminal = f"T{secrets.token_hex(3)}"[:8]
        await issuing.terminals.create(store, terminal_id=terminal, merchant_id=merchant)
        terminals.append(terminal)
    return accounts, terminals


def _ops(spec: list[tuple[str, int, int, int, int, int]], accounts: list[Funded], terminals: list[str]) -> list[Any]:
    made: list[Any] = []
    for kind, who_index, amount, terminal_index, counter, earlier in spec:
        who = accounts[who_index]
        common: dict[str, Any] = {"terminal_id": terminals[terminal_index], "ksn_counter": counter}
        if kind == "replay" and made:
            made.append(made[earlier % len(made)])
            continue
        if kind == "reverse" and made:
            made.append(op(ops.Reverse, None, 0, original_key=made[earlier % len(made)].idem_key, mti="0400", **common))
            continue
        if kind in ("hold", "hold_partial", "replay", "reverse"):
            made.append(op(ops.PlaceHold, who, amount, partial_ok=kind == "hold_partial", **common))
        elif kind == "debit":
            made.append(op(ops.Debit, who, amount, mti="0200", **common))
        elif kind == "credit":
            made.append(op(ops.Credit, who, amount, **common))
        elif kind == "wrong_pin":
            made.append(op(ops.PlaceHold, who, amount, pin=ops.PinCheck.WRONG, pin_try_limit=3, **common))
        else:  # a chip card's cryptogram counter on top of the terminal's
            made.append(op(ops.PlaceHold, who, amount, atc=counter, **common))
    return made


def _answer(outcome: ops.AuthOutcome) -> tuple[Any, ...]:
    return (outcome.result, outcome.approved_minor, outcome.ledger_minor, outcome.available_minor, outcome.duplicate,
            outcome.hold_id is not None)


async def _balances(store: Store, accounts: list[Funded]) -> list[tuple[int, int]]:
    views = [await ledger.accounts.get(store, a.account_id) for a in accounts]
    return [(v.ledger_minor, v.held_minor) for v in views]


def test_a_batch_answers_as_its_operations_one_by_one(db_url: str) -> None:
    loop = asyncio.new_event_loop()
    store = loop.run_until_complete(Store.open(db_url, max_batch=64, linger_ms=5))

    async def play(spec: list[tuple[str, int, int, int, int, int]]) -> None:
        accounts, terminals = await _world(store)
        alone = [await store.submit(o) for o in _ops(spec, accounts, terminals)]
        expected = await _balances(store, accounts)
        accounts, terminals = await _world(store)
        batch_ops = _ops(spec, accounts, terminals)
        batches = store.batches
        together = await asyncio.gather(*(store.submit(o) for o in batch_ops))
        assert store.batches - batches <= 2  # (the writer may take the first one alone)
        assert [_answer(o) for o in together] == [_answer(o) for o in alone]
        assert await _balances(store, accounts) == expected
        await healthy(store)

    @settings(
        max_examples=int(os.environ.get("LEDGER_EXAMPLES", "15")),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        derandomize="LEDGER_EXAMPLES" not in os.environ,
    )
    @given(specs)
    def check(spec: list[tuple[str, int, int, int, int, int]]) -> None:
        loop.run_until_complete(play(spec))

    try:
        check()
    finally:
        loop.run_until_complete(store.close())
        loop.close()


async def test_plain_holds_of_one_batch_on_shared_accounts_and_terminals(store: Store, funded) -> None:
    """Many holds on two accounts through one terminal: counters in order, funds until they run out."""
    a, b = await funded(1_000), await funded(500)
    merchant = f"M{secrets.token_hex(6)}"[:15]
    await issuing.merchants.add(store, merchant_id=merchant, name="Shop", mcc="5411")
    await issuing.terminals.create(store, terminal_id="TBATCH01", merchant_id=merchant)
    batch = [
        op(ops.PlaceHold, a if i % 2 else b, 300, terminal_id="TBATCH01", ksn_counter=i + 1) for i in range(8)
    ] + [op(ops.PlaceHold, a, 100, terminal_id="TBATCH01", ksn_counter=3)]  # a counter already used
    outcomes = await asyncio.gather(*(store.submit(o) for o in batch))
    by_account = {a.account_id: [], b.account_id: []}
    for o in outcomes[:8]:
        by_account[o.account_id].append(o.result)
    assert by_account[a.account_id] == [ops.Result.APPROVED] * 3 + [ops.Result.INSUFFICIENT_FUNDS]
    assert by_account[b.account_id] == [ops.Result.APPROVED] + [ops.Result.INSUFFICIENT_FUNDS] * 3
    assert outcomes[8].result is ops.Result.REPLAYED_KEY_SERIAL
    assert [o.available_minor for o in outcomes[:8] if o.account_id == a.account_id] == [700, 400, 100, 100]
    await healthy(store)
