"""Fixtures of the ledger tests (the database fixtures come from tests/conftest.py)."""

from __future__ import annotations

from typing import Any

import pytest
from ledger_helpers import Funded, open_funded

from processor.ledger import Store


@pytest.fixture
def funded(store: Store) -> Any:
    """Factory: `await funded(deposit_minor)` opens an account with a card holding that much."""

    async def make(deposit_minor: int, **kw: Any) -> Funded:
        return await open_funded(store, deposit_minor, **kw)

    return make


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_db_url(request: pytest.FixtureRequest) -> str:
    """A database without any schema yet, once on each backend."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "empty_pg_url")
