"""Operator-side store functions, back-pressure, and the invariant checker catching real damage."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest
from ledger_helpers import healthy, op, open_funded
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from processor import issuing, ledger
from processor.issuing.cards import NewCard
from processor.ledger import Store, StoreBusy, StoreClosed, StoreError, StoreNotFound, ops


async def test_cardholders_and_accounts_are_validated(store: Store) -> None:
    holder = await issuing.cardholders.create(store, "Ada Lovelace", "ada")
    with pytest.raises(StoreError, match="handle 'ada' is already taken"):
        await issuing.cardholders.create(store, "Someone Else", "ada")
    with pytest.raises(StoreNotFound, match="cardholder 999 does not exist"):
        await ledger.accounts.open_account(store, 999, "checking", "EUR")
    with pytest.raises(StoreError, match="kind"):
        await ledger.accounts.open_account(store, holder, "internal", "EUR")
    with pytest.raises(StoreError, match="ISO 4217"):
        await ledger.accounts.open_account(store, holder, "savings", "eur")
    account = await ledger.accounts.open_account(store, holder, "savings", "JPY")
    with pytest.raises(StoreError, match="positive"):
        await ledger.accounts.deposit(store, account, 0, reference="nothing")
    with pytest.raises(StoreNotFound, match="account 4242"):
        await ledger.accounts.deposit(store, 4242, 100, reference="nowhere")
    await ledger.accounts.deposit(store, account, 5_000, reference="salary")
    view = await ledger.accounts.get(store, account)
    assert (view.kind, view.currency, view.ledger_minor, view.available_minor) == ("savings", "JPY", 5_000, 5_000)
    report = await healthy(store)
    assert report["currencies"]["JPY"]["funding_minor"] == -5_000


async def test_card_lifecycle_and_lookup_by_fingerprint(store: Store) -> None:
    who = await open_funded(store, 0, status="inactive")
    card = await issuing.cards.get(store, who.card_id)
    assert (card.status, card.account_status, card.currency, card.pin_tries) == ("inactive", "open", "EUR", 0)
    assert (await issuing.cards.find_by_fingerprints(store, ["other-version", card.pan_fingerprint])).card_id == who.card_id
    assert await issuing.cards.find_by_fingerprints(store, ["unknown"]) is None
    assert await issuing.cards.find_by_fingerprints(store, []) is None
    with pytest.raises(StoreError, match="already exists"):
        await issuing.cards.create(store, 
            NewCard(account_id=who.account_id, token="1", last4="0010", pan_fingerprint=card.pan_fingerprint,
                    sealed_pan="x", expiry="3012", service_code="201")
        )
    for status in ("active", "frozen", "active", "active", "lost"):
        await issuing.cards.set_status(store, who.card_id, status)
    with pytest.raises(StoreError, match="is lost and cannot become active"):
        await issuing.cards.set_status(store, who.card_id, "active")
    with pytest.raises(StoreNotFound):
        await issuing.cards.set_status(store, 31337, "active")
    await issuing.cards.set_status(store, who.card_id, "closed")
    assert [c.status for c in await issuing.cards.list_for_account(store, who.account_id)] == ["closed"]


async def test_merchants_terminals_and_config(store: Store) -> None:
    assert await issuing.merchants.get(store, "MERCHANT0000001") is None
    await issuing.merchants.add(store, merchant_id="MERCHANT0000001", name="Corner Shop", location="Berlin DE", mcc="5411")
    with pytest.raises(StoreError, match="already exists"):
        await issuing.merchants.add(store, merchant_id="MERCHANT0000001", name="Again", mcc="5411")
    with pytest.raises(StoreNotFound, match="merchant 'NOPE'"):
        await issuing.terminals.create(store, terminal_id="T0000001", merchant_id="NOPE")
    await issuing.terminals.create(store, 
        terminal_id="T0000001", merchant_id="MERCHANT0000001", key_scheme="dukpt-tdes", bdk_kcv="ABC123",
        initial_ksn="FFFF9876543210E00000",
    )
    terminal = await issuing.terminals.get(store, "T0000001")
    assert (terminal.merchant_id, terminal.mcc, terminal.status, terminal.bdk_kcv) == (
        "MERCHANT0000001", "5411", "active", "ABC123",
    )
    await issuing.terminals.set_status(store, "T0000001", "blocked")
    assert (await issuing.terminals.get(store, "T0000001")).status == "blocked"
    assert await issuing.terminals.get(store, "T9999999") is None
    assert await issuing.config.get(store, "issuer.bin") is None
    await issuing.config.put(store, "issuer.bin", "476173")
    await issuing.config.put(store, "issuer.bin", "999999")
    assert await issuing.config.get(store, "issuer.bin") == "999999"


async def test_submit_after_close_is_refused(db_url: str) -> None:
    store = await Store.open(db_url)
    await store.close()
    with pytest.raises(StoreClosed):
        await store.submit(op(ops.Inquiry, None, 0))


async def test_full_queue_raises_store_busy(sqlite_url: str) -> None:
    store = await Store.open(sqlite_url, queue_max=4, submit_timeout_s=0.2)
    who = await open_funded(store, 1_000)
    blocker = sqlite3.connect(sqlite_url.split("///", 1)[1], isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock: the writer waits
    try:
        pending = [asyncio.create_task(store.submit(op(ops.PlaceHold, who, 1))) for _ in range(8)]
        await asyncio.sleep(0.05)
        with pytest.raises(StoreBusy, match="write queue full"):
            await store.submit(op(ops.PlaceHold, who, 1))
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    results = await asyncio.gather(*pending, return_exceptions=True)
    assert all(getattr(r, "rc", None) == "00" or isinstance(r, StoreBusy) for r in results)
    await healthy(store)
    await store.close()


@pytest.mark.parametrize(
    "damage, expected",
    [
        ("UPDATE accounts SET ledger_minor = ledger_minor + 1 WHERE id = {account}", "postings sum to"),
        ("UPDATE postings SET amount_minor = amount_minor + 5 WHERE account_id = {account}", "does not balance"),
        ("UPDATE accounts SET held_minor = held_minor + 3 WHERE id = {account}", "active holds sum to"),
        ("UPDATE holds SET status = 'captured', captured_minor = amount_minor + 1, closed_at = created_at", "hold"),
        ("UPDATE accounts SET ledger_minor = -1 WHERE id = {account}", "below zero"),
    ],
)
async def test_invariant_check_reports_damage(store: Store, db_url: str, damage: str, expected: str) -> None:
    who = await open_funded(store, 1_000)
    await store.submit(op(ops.PlaceHold, who, 100))
    await healthy(store)
    engine = create_async_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(damage.format(account=who.account_id)))
    finally:
        await engine.dispose()
    failures = await ledger.invariants.check(store)
    assert any(expected in f for f in failures), failures


@pytest.mark.parametrize(
    "url",
    ["sqlite+aiosqlite:////nonexistent-folder/processor.db", "postgresql+asyncpg://postgres:secret@127.0.0.1:1/none"],
)
async def test_unreachable_database_is_a_clear_store_error(url: str) -> None:
    with pytest.raises(StoreError, match="cannot open the database") as raised:
        await Store.open(url)
    assert "secret" not in str(raised.value)


async def test_transfers_check_available_funds_and_currency(store: Store) -> None:
    ada, bob = await open_funded(store, 1_000), await open_funded(store, 0)
    await store.submit(op(ops.PlaceHold, ada, 300))
    await ledger.accounts.transfer(store, ada.account_id, bob.account_id, 700, reference="rent share")
    with pytest.raises(StoreError, match=r"insufficient funds in account \d+ \(available 0, needed 1\)"):
        await ledger.accounts.transfer(store, ada.account_id, bob.account_id, 1, reference="too much")
    yen = await open_funded(store, 100, currency="JPY")
    with pytest.raises(StoreError, match="is in EUR"):
        await ledger.accounts.transfer(store, bob.account_id, yen.account_id, 1, reference="wrong currency")
    assert (await ledger.accounts.get(store, bob.account_id)).ledger_minor == 700
    assert (await ledger.accounts.get(store, ada.account_id)).available_minor == 0
    await healthy(store)


async def test_interest_and_fees_post_against_internal_accounts(store: Store) -> None:
    ada = await open_funded(store, 1_000)
    await ledger.accounts.post_adjustment(store, ada.account_id, 25, purpose="interest", kind="interest", reference="November")
    await ledger.accounts.post_adjustment(store, ada.account_id, -100, purpose="fees", kind="fee", reference="card fee")
    with pytest.raises(StoreError, match="insufficient funds"):
        await ledger.accounts.post_adjustment(store, ada.account_id, -5_000, purpose="fees", kind="fee", reference="too big")
    assert (await ledger.accounts.get(store, ada.account_id)).ledger_minor == 925
    report = await healthy(store)
    assert (report["currencies"]["EUR"]["interest_minor"], report["currencies"]["EUR"]["fees_minor"]) == (-25, 100)


async def test_cardholder_by_handle_lists_its_accounts(store: Store) -> None:
    holder = await issuing.cardholders.create(store, "Ada", "ada-handle")
    first = await ledger.accounts.open_account(store, holder, "checking", "EUR")
    second = await ledger.accounts.open_account(store, holder, "savings", "EUR")
    found = await issuing.cardholders.find_by_handle(store, "ada-handle")
    assert (found.id, found.name) == (holder, "Ada")
    assert [v.id for v in await ledger.accounts.list_for_cardholder(store, found.id)] == [first, second]
    assert await issuing.cardholders.find_by_handle(store, "nobody") is None


async def test_custom_jobs_run_in_a_transaction_of_their_own(store: Store) -> None:
    from sqlalchemy import func, select

    from processor.ledger.apply import BatchState, LedgerBug, post_entry
    from processor.ledger.models import journal_entries, utcnow

    ada = await open_funded(store, 500)

    def unbalanced(conn) -> None:
        state = BatchState(now=utcnow(), internal_ids={})
        post_entry(conn, state, "fee", "fine", [(ada.account_id, -5), (ada.account_id, 5)], "EUR")
        post_entry(conn, state, "fee", "bad", [(ada.account_id, -5)], "EUR")

    with pytest.raises(LedgerBug, match="does not balance"):
        await store.run_write(unbalanced)
    count = await store.run_read(lambda conn: conn.execute(select(func.count()).select_from(journal_entries)).scalar())
    assert count == 1, "only the funding deposit: the whole job was rolled back"
    await healthy(store)
