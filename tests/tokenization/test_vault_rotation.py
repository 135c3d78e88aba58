"""PAN vault key rotation: every card and token re-sealed, resumable, and findable throughout."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from processor import issuing, tokenization
from processor.errors import InvalidRequest
from processor.tokenization import (
    current_versions,
    provision_token,
    rotate_keys,
    rotate_vault,
)


async def fingerprints(hsm: Any, number: str) -> list[str]:
    return [fp for _, fp in await hsm.fingerprint_pan(number)]


async def _all_findable(store: Any, hsm: Any, cards: list[Any], tokens: list[dict[str, Any]]) -> None:
    for card in cards:
        found = await issuing.cards.find_by_fingerprints(store, await fingerprints(hsm, card.pan))
        assert found is not None and found.card_id == card.id
    for tok in tokens:
        found = await tokenization.tokens.find_by_fingerprints(store, await fingerprints(hsm, tok["token"]))
        assert found is not None and found[0].token_id == tok["id"]


async def test_rotation_reseals_everything_resumably_and_cards_stay_findable(store, hsm, keys, new_card):
    cards = [await new_card() for _ in range(5)]
    tokens = [await provision_token(store, hsm, keys, card_id=cards[0].id, wallet="phone", device_id="D")]
    assert await current_versions(hsm) == (1, 1)
    nothing = await rotate_vault(store, hsm)
    assert (nothing["cards_resealed"], nothing["remaining"]) == (0, 0)

    assert await rotate_keys(hsm) == (2, 2)
    # A run stopped after 2 rows (as if killed) leaves a mix of versions; all stay findable.
    first = await rotate_vault(store, hsm, batch_size=1, limit=2)
    assert (first["cards_resealed"], first["tokens_resealed"], first["batches"]) == (2, 0, 2)
    assert first["remaining"] == 4 and first["data_key_version"] == 2
    versions = sorted([(await issuing.cards.get(store, c.id)).data_key_version for c in cards])
    assert versions == [1, 1, 1, 2, 2]
    await _all_findable(store, hsm, cards, tokens)

    second = await rotate_vault(store, hsm, batch_size=2)
    assert (second["cards_resealed"], second["tokens_resealed"], second["remaining"]) == (3, 1, 0)
    await _all_findable(store, hsm, cards, tokens)
    for card in cards:
        rec = await issuing.cards.get(store, card.id)
        assert (rec.data_key_version, rec.fingerprint_version) == (2, 2)
        newest = dict(await hsm.fingerprint_pan(card.pan))
        assert rec.pan_fingerprint == newest[2]  # the old-version fingerprint is no longer stored
        assert await issuing.cards.find_by_fingerprints(store, [newest[1]]) is None
        assert await hsm.reveal_pan(rec.sealed_pan, rec.data_key_version, operator="ops", reason="test") == card.pan
    view = await tokenization.tokens.get(store, tokens[0]["id"])
    assert (view.data_key_version, view.fingerprint_version) == (2, 2)
    again = await rotate_vault(store, hsm)
    assert (again["cards_resealed"], again["tokens_resealed"], again["remaining"]) == (0, 0, 0)


async def test_a_card_changed_meanwhile_is_not_overwritten(store, hsm, keys, new_card):
    card = await new_card()
    await rotate_keys(hsm)
    rec = await issuing.cards.get(store, card.id)
    fresh = await hsm.reseal_pan(rec.sealed_pan, rec.data_key_version)
    assert await tokenization.vault.update_card_vault(store, card.id, 1, 1, fresh) is True
    stale = await hsm.reseal_pan(rec.sealed_pan, rec.data_key_version)
    assert await tokenization.vault.update_card_vault(store, card.id, 1, 1, stale) is False  # versions moved on: compare-and-set fails
    assert (await issuing.cards.get(store, card.id)).pan_fingerprint == fresh.fingerprint
    assert await tokenization.vault.cards_to_reseal(store, 2, 2, 0, 10) == []


async def test_lookups_never_miss_while_rotation_runs(store, hsm, keys, new_card):
    cards = [await new_card() for _ in range(12)]
    prints = {card.id: card.pan for card in cards}
    await rotate_keys(hsm)
    misses: list[int] = []
    done = asyncio.Event()

    async def authorize_loop() -> int:
        looked = 0
        while not done.is_set():
            for card_id, pan in prints.items():
                found = await issuing.cards.find_by_fingerprints(store, await fingerprints(hsm, pan))
                if found is None or found.card_id != card_id:
                    misses.append(card_id)
                looked += 1
            await asyncio.sleep(0)
        return looked

    reader = asyncio.create_task(authorize_loop())
    try:
        result = await rotate_vault(store, hsm, batch_size=3)
    finally:
        done.set()
    looked = await asyncio.wait_for(reader, timeout=10)
    assert result["cards_resealed"] == 12 and result["remaining"] == 0
    assert looked >= 12 and misses == []


async def test_bad_batch_sizes_are_refused(store, hsm, keys):
    with pytest.raises(InvalidRequest, match="batch size"):
        await rotate_vault(store, hsm, batch_size=0)
