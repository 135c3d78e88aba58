"""`terminal-sim load --provision` issues its cards through the processor's CLI and drives them.

The load generator is the outside world: it provisions by running `processor provision` (and `processor
bureau key` for its chips) and reads what they print, then pays with magstripe cards, chips and phones.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from hsm_sim import connect
from processor import ledger
from processor.config import Settings
from processor.issuing import ensure_issuer_keys
from processor.ledger import Store
from processor.server import running_engine

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:.*TripleDES.*")]


async def _init(settings: Settings) -> None:
    store = await Store.open(settings.db_url)
    hsm = await connect(settings.hsm_url)
    try:
        await ensure_issuer_keys(store, hsm)
    finally:
        await hsm.close()
        await store.close()


async def _load(settings: Settings, port: int, *extra: str) -> tuple[int, str, str]:
    env = dict(os.environ, PROCESSOR_DB_URL=settings.db_url, PROCESSOR_HSM_URL=settings.hsm_url, PYTHONWARNINGS="ignore")
    env.pop("TERMINAL_SIM_TRANSPORT_KEY", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "terminal_sim.cli", "load", "--tcp", f"127.0.0.1:{port}", "--connections", "2",
        "--seconds", "1.5", "--seed", "3", "--close-batches", "--quiet", "--json", *extra,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    return proc.returncode, out.decode(), err.decode(errors="replace")


async def test_provisioned_cards_chips_and_phones_pay_and_every_batch_balances(sqlite_url: str, tmp_path: Path) -> None:
    settings = Settings(db_url=sqlite_url, hsm_url=f"file:{tmp_path / 'hsm.json'}", log_dir=tmp_path)
    await _init(settings)
    bureau = tmp_path / "bureau"
    async with running_engine(settings) as engine:
        code, out, err = await _load(
            settings, engine.port, "--provision", "4", "--bureau-dir", str(bureau),
            "--mix", "purchase=1,chip=1,contactless=1,wallet=1",
        )
        assert code == 0, err
        summary = json.loads(out)
        assert set(summary["by_kind"]) == {"purchase", "chip", "contactless", "wallet"}
        assert summary["batches"]["closed"] == summary["batches"]["in_balance"] == 2
        assert await ledger.invariants.check(engine.store) == []
    # Every second card is magstripe-only; the chips' records, their counters and the phones' records are
    # where we asked, so the next run goes on from them.
    records = {path.name for path in bureau.glob("*.json")}
    assert {name for name in records if not name.endswith(".state.json")} == {
        "card-1.json", "card-3.json", "wallet-1.json", "wallet-2.json"
    }
    assert {"card-1.state.json", "card-3.state.json"} <= records


async def test_a_processor_that_refuses_is_one_line_and_exit_2(sqlite_url: str, tmp_path: Path) -> None:
    # `processor init` never ran: there are no issuer keys to issue cards with, and nothing is listening.
    settings = Settings(db_url=sqlite_url, hsm_url=f"file:{tmp_path / 'hsm.json'}", log_dir=tmp_path)
    code, _, err = await _load(settings, 9, "--provision", "2", "--no-chip")
    assert code == 2, err
    assert "processor provision" in err and "processor init" in err and "Traceback" not in err
