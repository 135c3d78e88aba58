"""Every hot-path operation, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt

import pytest
from ledger_helpers import healthy, op

from processor import issuing, ledger
from processor.ledger import Store, StoreError, ops


async def balances(store: Store, account_id: int) -> tuple[int, int]:
    view = await ledger.accounts.get(store, account_id)
    return view.ledger_minor, view.available_minor


async def test_hold_reserves_funds_and_answers_balances(store: Store, funded) -> None:
    ada = await funded(10_000)
    out = await store.submit(op(ops.PlaceHold, ada, 2_500))
    assert (out.rc, out.approved_minor, out.auth_code) == ("00", 2_500, "A1B2C3")
    assert (out.ledger_minor, out.available_minor, out.currency) == (10_000, 7_500, "EUR")
    assert out.hold_id is not None and not out.duplicate
    view = await ledger.accounts.get(store, ada.account_id)
    assert [(h.id, h.amount_minor, h.status) for h in view.holds] == [(out.hold_id, 2_500, "active")]
    await healthy(store)


async def test_hold_beyond_available_is_declined_51_without_a_hold(store: Store, funded) -> None:
    ada = await funded(1_000)
    out = await store.submit(op(ops.PlaceHold, ada, 1_001))
    assert (out.rc, out.approved_minor, out.hold_id, out.auth_code) == ("51", 0, None, None)
    assert out.available_minor == 1_000
    assert await balances(store, ada.account_id) == (1_000, 1_000)
    await healthy(store)


async def test_partial_approval_holds_what_is_available(store: Store, funded) -> None:
    ada = await funded(1_000)
    await store.submit(op(ops.PlaceHold, ada, 400))
    out = await store.submit(op(ops.PlaceHold, ada, 5_000, partial_ok=True))
    assert (out.rc, out.approved_minor, out.available_minor) == ("10", 600, 0)
    nothing_left = await store.submit(op(ops.PlaceHold, ada, 100, partial_ok=True))
    assert nothing_left.rc == "51"
    partial_debit = await funded(300)
    debit = await store.submit(op(ops.Debit, partial_debit, 500, mti="0200", partial_ok=True))
    assert (debit.rc, debit.approved_minor, debit.ledger_minor) == ("10", 300, 0)
    await healthy(store)


async def test_repeated_request_gets_the_first_answer_and_changes_nothing(store: Store, funded) -> None:
    ada = await funded(1_000)
    first = await store.submit(op(ops.PlaceHold, ada, 700, idem_key="same"))
    again = await store.submit(op(ops.PlaceHold, ada, 700, idem_key="same"))
    assert again.duplicate and not first.duplicate
    assert (again.rc, again.hold_id, again.approved_minor, again.available_minor) == ("00", first.hold_id, 700, 300)
    assert await balances(store, ada.account_id) == (1_000, 300)
    stored = await ledger.auths.find(store, "same")
    assert stored is not None and stored.hold_id == first.hold_id and stored.rc == "00"
    assert await ledger.auths.find(store, "never-seen") is None
    await healthy(store)


async def test_duplicates_inside_one_batch_get_the_first_outcome(store: Store, funded) -> None:
    ada = await funded(1_000)
    results = await asyncio.gather(*(store.submit(op(ops.PlaceHold, ada, 600, idem_key="twice")) for _ in range(3)))
    assert [r.duplicate for r in results] == [False, True, True]
    assert {r.hold_id for r in results} == {results[0].hold_id}
    assert await balances(store, ada.account_id) == (1_000, 400)
    await healthy(store)


async def test_advice_holds_past_available_and_is_reported_as_warning(store: Store, funded) -> None:
    ada = await funded(1_000)
    out = await store.submit(op(ops.PlaceHold, ada, 1_500, mti="0120", force=True))
    assert (out.rc, out.approved_minor, out.available_minor) == ("00", 1_500, -500)
    forced_debit = await store.submit(op(ops.Debit, ada, 200, mti="0220", force=True))
    assert forced_debit.rc == "00" and forced_debit.available_minor == -700
    report = await healthy(store)
    assert len(report["warnings"]) == 1 and f"account {ada.account_id}" in report["warnings"][0]


async def test_debit_posts_to_clearing_and_credit_refunds(store: Store, funded) -> None:
    ada = await funded(5_000)
    debit = await store.submit(op(ops.Debit, ada, 1_200, mti="0200", kind="cash"))
    assert (debit.rc, debit.ledger_minor, debit.available_minor, debit.hold_id) == ("00", 3_800, 3_800, None)
    refund = await store.submit(op(ops.Credit, ada, 300, mti="0200", limits=ops.RefundLimits(500, 1_000)))
    assert (refund.rc, refund.ledger_minor) == ("00", 4_100)
    report = await healthy(store)
    eur = report["currencies"]["EUR"]
    assert eur["clearing_minor"] == 900 and eur["funding_minor"] == -5_000


@pytest.mark.parametrize("final_minor", [600, 1_000, 1_400, 0])
async def test_capture_posts_the_final_amount_and_releases_the_hold(store: Store, funded, final_minor: int) -> None:
    ada = await funded(2_000)
    hold = await store.submit(op(ops.PlaceHold, ada, 1_000, idem_key="auth"))
    cap = await store.submit(op(ops.Capture, None, final_minor, mti="0220", original_key="auth", tolerance_pct=40))
    assert (cap.rc, cap.approved_minor, cap.hold_id, cap.account_id) == ("00", final_minor, hold.hold_id, ada.account_id)
    assert await balances(store, ada.account_id) == (2_000 - final_minor, 2_000 - final_minor)
    assert (await ledger.accounts.get(store, ada.account_id)).holds == []
    again = await store.submit(op(ops.Capture, None, final_minor, mti="0220", original_key="auth"))
    assert again.rc == "25", "a closed hold cannot be captured twice"
    await healthy(store)


async def test_capture_of_unknown_or_declined_original_is_25(store: Store, funded) -> None:
    ada = await funded(100)
    await store.submit(op(ops.PlaceHold, ada, 500, idem_key="declined"))
    assert (await store.submit(op(ops.Capture, None, 100, original_key="declined"))).rc == "25"
    assert (await store.submit(op(ops.Capture, None, 100, original_key="nope"))).rc == "25"
    await healthy(store)


async def test_increment_raises_an_active_hold_after_a_funds_check(store: Store, funded) -> None:
    ada = await funded(1_000)
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    hold = await store.submit(op(ops.PlaceHold, ada, 500, idem_key="hotel", expires_at=expires))
    more = await store.submit(op(ops.Increment, ada, 300, original_key="hotel"))
    assert (more.rc, more.approved_minor, more.hold_id, more.available_minor) == ("00", 300, hold.hold_id, 200)
    view = await ledger.accounts.get(store, ada.account_id)
    assert view.holds[0].amount_minor == 800 and view.holds[0].expires_at > expires
    short = await store.submit(op(ops.Increment, ada, 300, original_key="hotel"))
    assert short.rc == "51"
    partial = await store.submit(op(ops.Increment, ada, 300, original_key="hotel", partial_ok=True))
    assert (partial.rc, partial.approved_minor) == ("10", 200)
    await store.submit(op(ops.Capture, None, 1_000, original_key="hotel"))
    assert (await store.submit(op(ops.Increment, ada, 1, original_key="hotel"))).rc == "25"
    await healthy(store)


async def test_reversal_releases_a_hold_once(store: Store, funded) -> None:
    ada = await funded(1_000)
    await store.submit(op(ops.PlaceHold, ada, 700, idem_key="auth"))
    rev = await store.submit(op(ops.Reverse, ada, 700, mti="0400", original_key="auth"))
    assert (rev.rc, rev.approved_minor, rev.available_minor) == ("00", 700, 1_000)
    again = await store.submit(op(ops.Reverse, ada, 700, mti="0400", original_key="auth"))
    assert (again.rc, again.approved_minor, again.duplicate) == ("00", 0, False)
    assert await balances(store, ada.account_id) == (1_000, 1_000)
    assert (await store.submit(op(ops.Capture, None, 700, original_key="auth"))).rc == "25"
    await healthy(store)


async def test_partial_reversal_reduces_the_hold_to_the_remaining_amount(store: Store, funded) -> None:
    ada = await funded(1_000)
    await store.submit(op(ops.PlaceHold, ada, 700, idem_key="auth"))
    rev = await store.submit(op(ops.Reverse, ada, 700, original_key="auth", remaining_minor=250))
    assert (rev.rc, rev.approved_minor, rev.available_minor) == ("00", 450, 750)
    assert [h.amount_minor for h in (await ledger.accounts.get(store, ada.account_id)).holds] == [250]
    await healthy(store)


async def test_reversal_of_debit_and_capture_posts_the_opposite_entry(store: Store, funded) -> None:
    ada = await funded(1_000)
    await store.submit(op(ops.Debit, ada, 400, mti="0200", idem_key="buy"))
    rev = await store.submit(op(ops.Reverse, ada, 400, original_key="buy", remaining_minor=100))
    assert (rev.rc, rev.approved_minor, rev.ledger_minor) == ("00", 300, 900)
    await store.submit(op(ops.PlaceHold, ada, 500, idem_key="auth"))
    await store.submit(op(ops.Capture, None, 500, idem_key="done", original_key="auth"))
    assert (await store.submit(op(ops.Reverse, ada, 500, original_key="done"))).approved_minor == 500
    for key in ("buy", "done"):
        assert (await store.submit(op(ops.Reverse, ada, 500, original_key=key))).approved_minor == 0
    assert await balances(store, ada.account_id) == (900, 900)
    report = await healthy(store)
    assert report["currencies"]["EUR"]["clearing_minor"] == 100


async def test_reversal_of_unknown_original_is_25(store: Store, funded) -> None:
    ada = await funded(100)
    assert (await store.submit(op(ops.Reverse, ada, 100, original_key="missing"))).rc == "25"


async def test_inquiry_and_decline_record_the_answer_and_pin_tries(store: Store, funded) -> None:
    ada = await funded(1_234)
    inquiry = await store.submit(op(ops.Inquiry, ada, 0, mti="0100"))
    assert (inquiry.rc, inquiry.ledger_minor, inquiry.available_minor) == ("00", 1_234, 1_234)
    wrong = ops.PinCheck.WRONG
    declined = await store.submit(op(ops.Decline, ada, 100, rc="55", pin=wrong, pin_try_limit=3))
    assert (declined.result, declined.rc, declined.auth_code) == (ops.Result.WRONG_PIN, "55", None)
    await store.submit(op(ops.Decline, ada, 100, rc="55", pin=wrong, pin_try_limit=3))
    assert (await issuing.cards.get(store, ada.card_id)).pin_tries == 2
    await store.submit(op(ops.PlaceHold, ada, 10, pin=ops.PinCheck.VERIFIED, pin_try_limit=3))
    assert (await issuing.cards.get(store, ada.card_id)).pin_tries == 0
    assert (await ledger.auths.find(store, declined.idem_key)).rc == "55"
    blocked = [await store.submit(op(ops.Decline, ada, 100, rc="55", pin=wrong, pin_try_limit=3)) for _ in range(3)]
    assert [b.rc for b in blocked] == ["55", "55", "75"]
    late = await store.submit(op(ops.PlaceHold, ada, 10, pin=ops.PinCheck.VERIFIED, pin_try_limit=3))
    assert (late.result, late.rc, late.hold_id) == (ops.Result.PIN_TRIES_EXCEEDED, "75", None)
    assert (await issuing.cards.get(store, ada.card_id)).pin_tries == 3


async def test_expired_holds_are_released(store: Store, funded) -> None:
    ada = await funded(1_000)
    now = dt.datetime.now(dt.UTC)
    old = await store.submit(op(ops.PlaceHold, ada, 300, idem_key="old", expires_at=now - dt.timedelta(minutes=1)))
    await store.submit(op(ops.PlaceHold, ada, 200, expires_at=now + dt.timedelta(days=1)))
    assert await ledger.holds.expire(store, now) == 1
    assert await ledger.holds.expire(store, now) == 0
    view = await ledger.accounts.get(store, ada.account_id)
    assert view.available_minor == 800 and [h.amount_minor for h in view.holds] == [200]
    assert (await store.submit(op(ops.Capture, None, 300, original_key="old"))).rc == "25"
    assert (await store.submit(op(ops.Reverse, ada, 300, original_key="old"))).approved_minor == 0
    assert old.hold_id is not None
    await healthy(store)


async def test_bad_requests_are_declined_not_raised(store: Store, funded) -> None:
    ada = await funded(1_000)
    assert (await store.submit(op(ops.PlaceHold, ada, 0))).rc == "13"
    assert (await store.submit(op(ops.Debit, ada, -5))).rc == "13"
    assert (await store.submit(op(ops.PlaceHold, ada, 10, currency="USD"))).rc == "12"
    await ledger.accounts.set_status(store, ada.account_id, "frozen")
    frozen = await store.submit(op(ops.PlaceHold, ada, 10))
    assert (frozen.rc, frozen.available_minor) == ("62", 1_000)
    assert (await store.submit(op(ops.PlaceHold, None, 10))).rc == "14"
    await healthy(store)


async def test_one_failing_operation_does_not_lose_its_batch(store: Store, funded) -> None:
    ada = await funded(1_000)
    good = [op(ops.PlaceHold, ada, 100) for _ in range(4)]
    bad = op(ops.PlaceHold, ada, 100, card_id=999_999)  # no such card: the foreign key refuses the hold
    results = await asyncio.gather(*(store.submit(o) for o in [*good[:2], bad, *good[2:]]), return_exceptions=True)
    assert isinstance(results[2], StoreError) and bad.idem_key in str(results[2])
    assert [r.rc for i, r in enumerate(results) if i != 2] == ["00"] * 4
    assert store.fallbacks == 1
    assert await balances(store, ada.account_id) == (1_000, 600)
    await healthy(store)


async def test_malformed_request_fields_are_recorded_not_refused(store: Store) -> None:
    odd = op(ops.Decline, None, 0, rc="30", reason="format error: " + "x" * 400, idem_key="k" * 200)
    out = await store.submit(dataclasses.replace(odd, terminal_id="TERMINAL-0001", stan="1234567"))
    assert (out.rc, len(out.reason)) == ("30", 200)
    assert (await ledger.auths.find(store, "k" * 200)).rc == "30"


async def test_originals_answered_earlier_in_the_same_batch_are_found(store: Store, funded) -> None:
    ada = await funded(1_000)
    chain = [
        op(ops.PlaceHold, ada, 400, idem_key="h1"),
        op(ops.Increment, None, 100, original_key="h1"),
        op(ops.Capture, None, 450, idem_key="c1", original_key="h1"),
        op(ops.Reverse, None, 450, original_key="c1", remaining_minor=50),
        op(ops.PlaceHold, ada, 200, idem_key="h2"),
        op(ops.Reverse, None, 200, original_key="h2"),
        op(ops.Reverse, None, 200, original_key="h2"),
    ]
    results = await asyncio.gather(*(store.submit(o) for o in chain))
    assert store.batches == 1, "the whole chain went through as one batch"
    assert [(r.rc, r.approved_minor) for r in results] == [
        ("00", 400), ("00", 100), ("00", 450), ("00", 400), ("00", 200), ("00", 200), ("00", 0),
    ]
    assert await balances(store, ada.account_id) == (950, 950)
    assert (await ledger.auths.find(store, "c1")).hold_id == results[0].hold_id
    await healthy(store)
