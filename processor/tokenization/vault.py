"""PAN vault key rotation: re-seal every card under the HSM's current data and fingerprint key versions.

The rotation is a resumable batch. Each card is re-sealed by the HSM (the PAN never leaves it) and written
back with a compare-and-set on the versions it was read with, so a run killed half-way, or two runs at
once, leave every card either fully old or fully new. The engine looks a card up by the PAN's fingerprint
under EVERY active fingerprint-key version, so a card stays findable before, during and after rotation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Column, ColumnElement, Connection, Table, func, select, update

from hsm_sim import HsmApi, TokenizedPan, all_keys
from processor.errors import ConfigurationError, InvalidRequest
from processor.ledger import StoreInterface
from processor.ledger.models import cards, payment_tokens, utcnow

DEFAULT_BATCH = 200
MAX_BATCH = 5000


async def current_versions(hsm: HsmApi) -> tuple[int, int]:
    """(DEK version, FPK version) the HSM tokenizes with now: the newest of each key type."""
    newest: dict[str, int] = {}
    for key_type in ("DEK", "FPK"):
        for info in await all_keys(hsm, key_type):
            newest[key_type] = max(newest.get(key_type, 0), int(info.version))
    missing = [kind for kind in ("DEK", "FPK") if kind not in newest]
    if missing:
        raise ConfigurationError(f"the HSM holds no {' and no '.join(missing)} key: run `processor init` first")
    return newest["DEK"], newest["FPK"]


async def rotate_vault(
    store: StoreInterface,
    hsm: HsmApi,
    *,
    batch_size: int = DEFAULT_BATCH,
    limit: int | None = None,
    progress: Callable[[dict[str, int]], None] | None = None,
) -> dict[str, Any]:
    """Re-seal (at most `limit`) cards and payment tokens behind the HSM's current versions, `batch_size` per step.

    Returns the target versions and counts: resealed, changed_meanwhile (another writer moved the row
    first; a later run picks it up if still behind), and remaining (rows still behind after this run).
    """
    if not 1 <= batch_size <= MAX_BATCH:
        raise InvalidRequest(f"batch size must be 1 to {MAX_BATCH}, got {batch_size}")
    if limit is not None and limit < 0:
        raise InvalidRequest(f"limit must not be negative, got {limit}")
    dek, fpk = await current_versions(hsm)
    counts = {"cards_resealed": 0, "tokens_resealed": 0, "changed_meanwhile": 0, "batches": 0}
    budget = limit
    for kind, select_rows, update_rows in (
        ("cards", cards_to_reseal, update_cards_vault),
        ("tokens", tokens_to_reseal, update_tokens_vault),
    ):
        after = 0
        while budget is None or budget > 0:
            size = batch_size if budget is None else min(batch_size, budget)
            rows = await select_rows(store, dek, fpk, after, size)
            if not rows:
                break
            updates = []
            for row_id, sealed, old_dek, old_fpk in rows:
                updates.append((row_id, old_dek, old_fpk, await hsm.reseal_pan(sealed, old_dek)))
            applied = await update_rows(store, updates)
            done = sum(applied)
            counts[f"{kind}_resealed"] += done
            counts["changed_meanwhile"] += len(applied) - done
            counts["batches"] += 1
            after = rows[-1][0]
            if budget is not None:
                budget -= len(rows)
            if progress is not None:
                progress(dict(counts))
    remaining = await count_behind_vault(store, dek, fpk)
    return {"data_key_version": dek, "fingerprint_key_version": fpk, **counts, "remaining": remaining}


async def rotate_keys(hsm: HsmApi) -> tuple[int, int]:
    """Make new DEK and FPK versions current in the HSM; older versions stay for opening and look-up."""
    dek, fpk = await hsm.rotate_tokenization_keys()
    return int(dek), int(fpk)


# ------------------------------------------------------------------ the vault's columns of cards and tokens

# (row id, data key version and fingerprint key version it was read with, its new vault entry)
Resealed = tuple[int, int, int, TokenizedPan]


async def cards_to_reseal(
    store: StoreInterface, dek_version: int, fpk_version: int, after_id: int, limit: int
) -> list[tuple[int, str, int, int]]:
    """(card_id, sealed_pan, data_key_version, fingerprint_version) of cards with id > after_id behind a version."""
    return await store.run_query(_behind, cards, cards.c.sealed_pan, dek_version, fpk_version, after_id, limit)


async def tokens_to_reseal(
    store: StoreInterface, dek_version: int, fpk_version: int, after_id: int, limit: int
) -> list[tuple[int, str, int, int]]:
    """(token_id, sealed_token, data_key_version, fingerprint_version) of payment tokens behind a version."""
    return await store.run_query(
        _behind, payment_tokens, payment_tokens.c.sealed_token, dek_version, fpk_version, after_id, limit
    )


async def update_card_vault(
    store: StoreInterface, card_id: int, old_dek_version: int, old_fpk_version: int, vault: TokenizedPan
) -> bool:
    """Store a re-sealed PAN if the card still has the old versions; False when another writer moved it first."""
    updated = await update_cards_vault(store, [(card_id, old_dek_version, old_fpk_version, vault)])
    return updated[0]


async def update_cards_vault(store: StoreInterface, updates: Sequence[Resealed]) -> list[bool]:
    """Re-sealed PANs, each written only if the card still has the versions it was read with; one transaction."""
    return await store.run_write(_update_cards, list(updates))


async def update_tokens_vault(store: StoreInterface, updates: Sequence[Resealed]) -> list[bool]:
    """Re-sealed token numbers, each written only if the token still has the old versions; one transaction."""
    return await store.run_write(_update_tokens, list(updates))


async def count_behind_vault(store: StoreInterface, dek_version: int, fpk_version: int) -> int:
    """Cards and payment tokens still sealed or fingerprinted under an older key version."""
    return await store.run_query(_count_behind, dek_version, fpk_version)


def _behind_versions(table: Table, dek_version: int, fpk_version: int) -> ColumnElement[bool]:
    return (table.c.data_key_version < dek_version) | (table.c.fingerprint_version < fpk_version)


def _behind(
    conn: Connection, table: Table, sealed: Column[str], dek_version: int, fpk_version: int, after_id: int, limit: int
) -> list[tuple[int, str, int, int]]:
    rows = conn.execute(
        select(table.c.id, sealed, table.c.data_key_version, table.c.fingerprint_version)
        .where(table.c.id > after_id, _behind_versions(table, dek_version, fpk_version))
        .order_by(table.c.id)
        .limit(limit)
    )
    return [(row[0], row[1], row[2], row[3]) for row in rows]


def _update_rows(
    conn: Connection, table: Table, fingerprint: Column[str], sealed: Column[str], updates: Sequence[Resealed]
) -> list[bool]:
    """Compare-and-set each row on the versions it was read with: a concurrent re-seal is never overwritten."""
    now = utcnow()
    done = []
    for row_id, old_dek, old_fpk, vault in updates:
        result = conn.execute(
            update(table)
            .where(table.c.id == row_id, table.c.data_key_version == old_dek, table.c.fingerprint_version == old_fpk)
            .values(
                {
                    fingerprint: vault.fingerprint,
                    table.c.fingerprint_version: vault.fingerprint_version,
                    sealed: vault.sealed_pan,
                    table.c.data_key_version: vault.data_key_version,
                    table.c.updated_at: now,
                }
            )
        )
        done.append(result.rowcount == 1)
    return done


def _update_cards(conn: Connection, updates: Sequence[Resealed]) -> list[bool]:
    return _update_rows(conn, cards, cards.c.pan_fingerprint, cards.c.sealed_pan, updates)


def _update_tokens(conn: Connection, updates: Sequence[Resealed]) -> list[bool]:
    return _update_rows(
        conn, payment_tokens, payment_tokens.c.token_fingerprint, payment_tokens.c.sealed_token, updates
    )


def _count_behind(conn: Connection, dek_version: int, fpk_version: int) -> int:
    total = 0
    for table in (cards, payment_tokens):
        total += conn.execute(
            select(func.count()).select_from(table).where(_behind_versions(table, dek_version, fpk_version))
        ).scalar_one()
    return int(total)
