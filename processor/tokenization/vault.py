"""PAN vault key rotation: re-seal every card under the HSM's current data and fingerprint key versions.

The rotation is a resumable batch. Each card is re-sealed by the HSM (the PAN never leaves it) and written
back with a compare-and-set on the versions it was read with, so a run killed half-way, or two runs at
once, leave every card either fully old or fully new. The engine looks a card up by the PAN's fingerprint
under EVERY active fingerprint-key version, so a card stays findable before, during and after rotation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from processor.errors import ConfigurationError, InvalidRequest

DEFAULT_BATCH = 200
MAX_BATCH = 5000


async def current_versions(hsm: Any) -> tuple[int, int]:
    """(DEK version, FPK version) the HSM tokenizes with now: the newest of each key type."""
    newest: dict[str, int] = {}
    for info in await hsm.list_keys():
        if info.key_type in ("DEK", "FPK"):
            newest[info.key_type] = max(newest.get(info.key_type, 0), int(info.version))
    missing = [kind for kind in ("DEK", "FPK") if kind not in newest]
    if missing:
        raise ConfigurationError(f"the HSM holds no {' and no '.join(missing)} key: run `processor init` first")
    return newest["DEK"], newest["FPK"]


async def rotate_vault(
    store: Any,
    hsm: Any,
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
        ("cards", store.cards_to_reseal, store.update_cards_vault),
        ("tokens", store.tokens_to_reseal, store.update_tokens_vault),
    ):
        after = 0
        while budget is None or budget > 0:
            size = batch_size if budget is None else min(batch_size, budget)
            rows = await select_rows(dek, fpk, after, size)
            if not rows:
                break
            updates = []
            for row_id, sealed, old_dek, old_fpk in rows:
                updates.append((row_id, old_dek, old_fpk, await hsm.reseal_pan(sealed, old_dek)))
            applied = await update_rows(updates)
            done = sum(applied)
            counts[f"{kind}_resealed"] += done
            counts["changed_meanwhile"] += len(applied) - done
            counts["batches"] += 1
            after = rows[-1][0]
            if budget is not None:
                budget -= len(rows)
            if progress is not None:
                progress(dict(counts))
    remaining = await store.count_behind_vault(dek, fpk)
    return {"data_key_version": dek, "fingerprint_key_version": fpk, **counts, "remaining": remaining}


async def rotate_keys(hsm: Any) -> tuple[int, int]:
    """Make new DEK and FPK versions current in the HSM; older versions stay for opening and look-up."""
    dek, fpk = await hsm.rotate_tokenization_keys()
    return int(dek), int(fpk)
