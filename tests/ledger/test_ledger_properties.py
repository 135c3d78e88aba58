"""Random operation sequences against a model of the balances; the invariants hold after every step."""

from __future__ import annotations

import asyncio
import os
import datetime as dt
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule, run_state_machine_as_test
from ledger_helpers import Funded, op, open_funded

from processor import ledger
from processor.ledger import Store, ops

amounts = st.integers(min_value=1, max_value=3_000)
UNBOUNDED_REFUNDS = ops.RefundLimits(10**12, 10**15)


@dataclass
class ModelHold:
    account: int
    amount: int
    active: bool = True
    reversed: bool = False
    approved: int = 0  # what the authorization itself approved (increments come on top)


@dataclass
class ModelPosting:
    """An approved debit, capture or credit: reversing it moves `amount` back (sign: +1 debit, -1 credit)."""

    account: int
    amount: int
    sign: int
    reversed: bool = False


def make_machine(loop: asyncio.AbstractEventLoop, store: Store) -> type[RuleBasedStateMachine]:
    def run(coro: Any) -> Any:
        return loop.run_until_complete(coro)

    class Ledger(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.accounts: list[Funded] = []
            self.ledger: dict[int, int] = {}
            self.held: dict[int, int] = {}
            self.holds: dict[str, ModelHold] = {}
            self.postings: dict[str, ModelPosting] = {}
            self.sent: list[Any] = []

        @initialize(deposits=st.lists(st.integers(min_value=0, max_value=5_000), min_size=2, max_size=3))
        def open_accounts(self, deposits: list[int]) -> None:
            for deposit in deposits:
                who = run(open_funded(store, deposit))
                self.accounts.append(who)
                self.ledger[who.account_id], self.held[who.account_id] = deposit, 0

        def available(self, account: int) -> int:
            return self.ledger[account] - self.held[account]

        def expect(self, account: int, amount: int, partial_ok: bool, force: bool) -> tuple[str, int]:
            available = self.available(account)
            if force or available >= amount:
                return "00", amount
            if partial_ok and available > 0:
                return "10", available
            return "51", 0

        def submit(self, operation: Any) -> Any:
            self.sent.append(operation)
            return run(store.submit(operation))

        @rule(data=st.data(), amount=amounts, partial_ok=st.booleans(), force=st.booleans(), expired=st.booleans())
        def place_hold(self, data: Any, amount: int, partial_ok: bool, force: bool, expired: bool) -> None:
            who = data.draw(st.sampled_from(self.accounts))
            expires_at = dt.datetime.now(dt.UTC) + (dt.timedelta(seconds=-1) if expired else dt.timedelta(days=1))
            rc, approved = self.expect(who.account_id, amount, partial_ok, force)
            out = self.submit(
                op(ops.PlaceHold, who, amount, partial_ok=partial_ok, force=force, expires_at=expires_at)
            )
            assert (out.rc, out.approved_minor) == (rc, approved)
            if approved:
                self.held[who.account_id] += approved
                self.holds[out.idem_key] = ModelHold(who.account_id, approved, approved=approved)

        @rule(data=st.data(), amount=amounts, partial_ok=st.booleans())
        def debit(self, data: Any, amount: int, partial_ok: bool) -> None:
            who = data.draw(st.sampled_from(self.accounts))
            rc, approved = self.expect(who.account_id, amount, partial_ok, False)
            out = self.submit(op(ops.Debit, who, amount, mti="0200", partial_ok=partial_ok))
            assert (out.rc, out.approved_minor) == (rc, approved)
            if approved:
                self.ledger[who.account_id] -= approved
                self.postings[out.idem_key] = ModelPosting(who.account_id, approved, +1)

        @rule(data=st.data(), amount=amounts)
        def refund(self, data: Any, amount: int) -> None:
            who = data.draw(st.sampled_from(self.accounts))
            out = self.submit(op(ops.Credit, who, amount, mti="0200", limits=UNBOUNDED_REFUNDS))
            assert out.rc == "00"
            self.ledger[who.account_id] += amount
            self.postings[out.idem_key] = ModelPosting(who.account_id, amount, -1)

        @precondition(lambda self: self.holds)
        @rule(data=st.data(), amount=st.integers(min_value=0, max_value=4_000))
        def capture(self, data: Any, amount: int) -> None:
            key = data.draw(st.sampled_from(sorted(self.holds)))
            hold = self.holds[key]
            out = self.submit(op(ops.Capture, None, amount, mti="0220", original_key=key))
            if not hold.active:
                assert out.rc == "25"
                return
            if amount > hold.amount:
                assert out.rc == "13", "a completion above the authorized amount is refused, the hold untouched"
                return
            assert (out.rc, out.approved_minor) == ("00", amount)
            hold.active = False
            self.held[hold.account] -= hold.amount
            self.ledger[hold.account] -= amount
            if amount:
                self.postings[out.idem_key] = ModelPosting(hold.account, amount, +1)

        @precondition(lambda self: self.holds)
        @rule(data=st.data(), amount=amounts, partial_ok=st.booleans())
        def increment(self, data: Any, amount: int, partial_ok: bool) -> None:
            key = data.draw(st.sampled_from(sorted(self.holds)))
            hold = self.holds[key]
            out = self.submit(op(ops.Increment, None, amount, original_key=key, partial_ok=partial_ok))
            if not hold.active:
                assert out.rc == "25"
                return
            rc, approved = self.expect(hold.account, amount, partial_ok, False)
            assert (out.rc, out.approved_minor) == (rc, approved)
            hold.amount += approved
            self.held[hold.account] += approved

        @precondition(lambda self: self.holds or self.postings)
        @rule(data=st.data(), remaining=st.none() | st.integers(min_value=0, max_value=2_000))
        def reverse(self, data: Any, remaining: int | None) -> None:
            key = data.draw(st.sampled_from(sorted(self.holds) + sorted(self.postings)))
            out = self.submit(op(ops.Reverse, None, 0, mti="0400", original_key=key, remaining_minor=remaining))
            if remaining is not None:
                if key in self.holds:
                    hold = self.holds[key]
                    original, reversed_ = (hold.amount if hold.active else hold.approved), hold.reversed
                else:
                    original, reversed_ = self.postings[key].amount, self.postings[key].reversed
                if not reversed_ and remaining > original:
                    assert out.rc == "13", "a replacement amount above the original is refused, the original intact"
                    return
            assert out.rc == "00"
            keep = remaining or 0
            if key in self.holds:
                hold = self.holds[key]
                expected = 0 if hold.reversed or not hold.active else max(0, hold.amount - keep)
                hold.reversed = True
                if expected:
                    hold.amount -= expected
                    hold.active = hold.amount > 0
                    self.held[hold.account] -= expected
            else:
                posting = self.postings[key]
                expected = 0 if posting.reversed else max(0, posting.amount - keep)
                posting.reversed = True
                self.ledger[posting.account] += posting.sign * expected
            assert out.approved_minor == expected

        @rule()
        def expire(self) -> None:
            run(ledger.holds.expire(store, dt.datetime.now(dt.UTC)))
            for account in self.ledger:
                view = run(ledger.accounts.get(store, account))
                active = {h.id for h in view.holds}
                for key, hold in self.holds.items():
                    if hold.account == account and hold.active:
                        hold_id = run(ledger.auths.find(store, key)).hold_id
                        if hold_id not in active:
                            hold.active = False
                            self.held[account] -= hold.amount

        @precondition(lambda self: self.sent)
        @rule(data=st.data())
        def replay(self, data: Any) -> None:
            earlier = data.draw(st.sampled_from(self.sent))
            first = run(ledger.auths.find(store, earlier.idem_key))
            again = run(store.submit(earlier))
            assert again.duplicate and (again.rc, again.approved_minor, again.hold_id) == (
                first.rc, first.approved_minor, first.hold_id,
            )

        @invariant()
        def ledger_is_consistent(self) -> None:
            assert run(ledger.invariants.check(store)) == []
            for account in self.ledger:
                view = run(ledger.accounts.get(store, account))
                assert (view.ledger_minor, view.held_minor) == (self.ledger[account], self.held[account])

    return Ledger


def test_random_operation_sequences_keep_the_ledger_consistent(db_url: str) -> None:
    loop = asyncio.new_event_loop()
    store = loop.run_until_complete(Store.open(db_url))
    try:
        run_state_machine_as_test(
            make_machine(loop, store),
            settings=settings(
                max_examples=int(os.environ.get("LEDGER_EXAMPLES", "12")),
                stateful_step_count=20,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
                derandomize="LEDGER_EXAMPLES" not in os.environ,
            ),
        )
    finally:
        loop.run_until_complete(store.close())
        loop.close()


op_specs = st.lists(
    st.tuples(
        st.sampled_from(["hold", "debit", "credit", "capture", "increment", "reverse", "replay"]),
        st.integers(min_value=0, max_value=2),  # which account
        st.integers(min_value=0, max_value=2_500),  # amount
        st.integers(min_value=0, max_value=40),  # which earlier request (for originals and replays)
        st.booleans(),  # partial_ok
    ),
    min_size=1,
    max_size=40,
)


def test_concurrent_batches_of_random_operations_never_overdraw(db_url: str) -> None:
    loop = asyncio.new_event_loop()
    store = loop.run_until_complete(Store.open(db_url, max_batch=16))

    async def play(specs: list[tuple[str, int, int, int, bool]], chunk: int) -> None:
        accounts = [await open_funded(store, 2_000) for _ in range(3)]
        sent: list[Any] = []
        for start in range(0, len(specs), chunk):
            batch = []
            for kind, who_index, amount, earlier, partial_ok in specs[start : start + chunk]:
                who = accounts[who_index]
                original = sent[earlier % len(sent)].idem_key if sent else "none"
                if kind == "replay" and sent:
                    batch.append(sent[earlier % len(sent)])
                    continue
                operation = {
                    "hold": lambda: op(ops.PlaceHold, who, amount, partial_ok=partial_ok),
                    "debit": lambda: op(ops.Debit, who, amount, mti="0200", partial_ok=partial_ok),
                    "credit": lambda: op(ops.Credit, who, amount, mti="0200", limits=UNBOUNDED_REFUNDS),
                    "capture": lambda: op(ops.Capture, None, amount, original_key=original),
                    "increment": lambda: op(ops.Increment, None, amount, original_key=original, partial_ok=partial_ok),
                    "reverse": lambda: op(ops.Reverse, None, 0, original_key=original, remaining_minor=amount // 2),
                    "replay": lambda: op(ops.Inquiry, who, 0),
                }[kind]()
                batch.append(operation)
            results = await asyncio.gather(*(store.submit(o) for o in batch))
            sent += [o for o, r in zip(batch, results) if not r.duplicate]
            assert await ledger.invariants.check(store) == []
            for who in accounts:
                view = await ledger.accounts.get(store, who.account_id)
                # captures above the hold and reversed refunds are the only way below zero (reported as warnings)
                if view.available_minor < 0:
                    report = await ledger.invariants.report(store)
                    assert any(f"account {who.account_id}:" in w for w in report["warnings"])

    @settings(max_examples=int(os.environ.get("LEDGER_EXAMPLES", "10")), deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(specs=op_specs, chunk=st.integers(min_value=1, max_value=20))
    def check(specs: list[tuple[str, int, int, int, bool]], chunk: int) -> None:
        loop.run_until_complete(play(specs, chunk))

    try:
        check()
    finally:
        loop.run_until_complete(store.close())
        loop.close()
