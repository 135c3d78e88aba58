"""Chip ATC replay: an operation carrying an ATC not above the card's last one is declined, atomically."""

from __future__ import annotations

import asyncio
import datetime as dt

from ledger_helpers import healthy, op, open_funded

from processor import issuing, ledger
from processor.ledger import ops


def _hold(who, amount_minor: int, atc: int):
    return op(ops.PlaceHold, who, amount_minor, atc=atc, expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(days=7))


async def test_replayed_or_older_atc_is_declined_and_holds_nothing(store):
    who = await open_funded(store, 100_00)
    assert (await store.submit(_hold(who, 10_00, atc=5))).rc == "00"
    replay = await store.submit(_hold(who, 10_00, atc=5))
    older = await store.submit(_hold(who, 10_00, atc=3))
    assert (replay.rc, older.rc) == ("82", "82")
    assert "replayed" in replay.reason
    assert (await store.submit(_hold(who, 10_00, atc=6))).rc == "00"
    assert (await issuing.cards.get(store, who.card_id)).last_atc == 6
    assert (await ledger.accounts.get(store, who.account_id)).available_minor == 80_00
    await healthy(store)


async def test_two_copies_of_one_cryptogram_race_and_only_one_wins(store):
    who = await open_funded(store, 100_00)
    outcomes = await asyncio.gather(*(store.submit(_hold(who, 1_00, atc=9)) for _ in range(10)))
    assert sorted(o.rc for o in outcomes).count("00") == 1
    assert (await ledger.accounts.get(store, who.account_id)).available_minor == 99_00
