"""`processor keys rotate --new-keys` while the engine authorizes: nobody is declined, no restart needed."""

from __future__ import annotations

import asyncio
import json
import os
import sys

from engine_helpers import Issuer

from processor.ledger import invariants


async def test_rotating_the_vault_keys_under_load_declines_nobody(issuer: Issuer) -> None:
    shop, market = issuer.terminals["shop"], issuer.terminals["market"]
    settings = issuer.settings
    env = {**os.environ, "PROCESSOR_DB_URL": settings.db_url, "PROCESSOR_HSM_URL": settings.hsm_url}
    rotation = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "processor.cli", "keys", "rotate", "--new-keys", "--batch", "1", "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=settings.log_dir,
    )
    codes: list[str] = []

    async def buy(terminal, names: list[str]) -> None:
        # Each terminal's own requests go in order (its DUKPT counter rises); the two interleave.
        while rotation.returncode is None:
            for name in names:
                codes.append((await issuer.send(terminal.card_request(issuer.cards[name], 1)))["39"])
            await asyncio.sleep(0)

    load = asyncio.gather(buy(shop, ["ada", "grace"]), buy(market, ["ivan"]))
    out, err = await asyncio.wait_for(rotation.communicate(), timeout=120)
    await asyncio.wait_for(load, timeout=30)
    assert rotation.returncode == 0, err.decode()
    result = json.loads(out)
    assert result["new_keys"]["fingerprint_key_version"] == 2 and result["remaining"] == 0
    # After the re-seal every card is found by the new fingerprint key only, and is still approved.
    for name in ("ada", "grace", "ivan"):
        terminal = market if name == "ivan" else shop
        codes.append((await issuer.send(terminal.card_request(issuer.cards[name], 1)))["39"])
    assert codes and set(codes) == {"00"}, sorted(set(codes))
    assert await invariants.check(issuer.running.store) == []
