"""The money app's API on a real uvicorn on a free loopback port, over a fresh store (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from api_helpers import AppEnv, init_issuer

from processor.api.server import running_api
from processor.config import Settings


async def _app_env(db_url: str, tmp_path: Path) -> AsyncIterator[AppEnv]:
    settings = Settings(db_url=db_url, hsm_url=f"file:{tmp_path / 'hsm.json'}", log_dir=tmp_path)
    key = await init_issuer(settings)
    async with running_api(settings, poll_interval_s=0.02) as running:
        async with httpx.AsyncClient(base_url=running.url, timeout=15) as client:
            yield AppEnv(settings, running, client, key)


@pytest.fixture
async def app_env(sqlite_url: str, tmp_path: Path) -> AsyncIterator[AppEnv]:
    """The API over SQLite (the money rules run on both databases in the tests that use `app_env_both`)."""
    async for env in _app_env(sqlite_url, tmp_path):
        yield env


@pytest.fixture
async def app_env_both(db_url: str, tmp_path: Path) -> AsyncIterator[AppEnv]:
    """The API over SQLite, then over PostgreSQL."""
    async for env in _app_env(db_url, tmp_path):
        yield env
