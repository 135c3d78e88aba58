"""Fixtures of the tokenization tests: an in-memory HSM with the issuer's keys, and funded cards."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from hsm_sim import Hsm
from processor import issuing, ledger
from processor.issuing import issue_card
from processor.issuing.keys import IssuerKeys, ensure_issuer_keys


@pytest.fixture
async def hsm() -> AsyncIterator[Hsm]:
    h = Hsm.ephemeral()
    yield h
    await h.close()


@pytest.fixture
async def keys(store: Any, hsm: Hsm) -> IssuerKeys:
    return await ensure_issuer_keys(store, hsm)


@pytest.fixture
def new_card(store: Any, hsm: Hsm, keys: IssuerKeys) -> Any:
    """Factory: `await new_card()` issues an active card on a new funded account; returns the IssuedCard."""
    made = {"n": 0}

    async def make(deposit_minor: int = 100_00) -> Any:
        made["n"] += 1
        holder = await issuing.cardholders.create(store, f"Holder {made['n']}", f"holder{made['n']}")
        account = await ledger.accounts.open_account(store, holder, "checking", "EUR")
        await ledger.accounts.deposit(store, account, deposit_minor, reference="opening")
        return await issue_card(store, hsm, keys, account_id=account, pin="1234")

    return make
